//! ClusterSet DNS: an authoritative server for the clusterset zone
//! (default `clusterset.local`), per the MCS DNS specification (KEP-1645
//! `specification.md`, schema 1.0.0).
//!
//! - `zone`: every name with its answers already in wire format, built
//!   from the computed backends: the publisher's mutable [`Zone`] and the
//!   immutable snapshots it hands to lookups.
//! - `index`: the flat name table lookups read.
//! - `wire`: parses a query and writes the response from a snapshot.
//! - `server`: UDP worker threads sharing a socket (several `SO_REUSEPORT`
//!   sockets on large machines) and pipelined TCP, with metrics.
//! - `client`: a small DNS client for `switchyard resolve` and tests.
//!
//! Readers never take a lock: [`Catalog::publish`] builds a new snapshot
//! and swaps it in with `arc-swap`; each query loads the current one.
//!
//! Weighting: for a ClusterSetIP import each answer holds the addresses of
//! one cluster, chosen by **smooth weighted round-robin** over the
//! clusters' effective weights. The sequence is precomputed per service
//! when the snapshot is built and walked with an atomic counter, so over N
//! consecutive queries each cluster's fraction is within 1/len(schedule)
//! of its share (independent random draws would be off by about 1/√N).

pub mod client;
pub mod index;
pub mod server;
pub mod wire;
pub mod zone;

use crate::backends::ServiceBackends;
use crate::model::ServiceMap;
use arc_swap::ArcSwap;
use imbl::ordmap::DiffItem;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

pub use server::{serve, DnsError};
pub use zone::{Zone, ZoneSnapshot};

/// What the DNS serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The ClusterSet zone, without a trailing dot.
    pub zone: String,
    /// TTL of every record, and the negative-caching TTL, in seconds.
    pub ttl: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            zone: "clusterset.local".into(),
            ttl: 5,
        }
    }
}

/// The current zone snapshot, swapped atomically on every change.
pub struct Catalog {
    serial: AtomicU32,
    current: ArcSwap<ZoneSnapshot>,
    /// The publisher's side, one publish at a time.
    published: Mutex<Published>,
}

/// What the current snapshot was built from and by.
struct Published {
    /// The backends, to find what changed on the next publish.
    backends: ServiceMap<ServiceBackends>,
    /// The zone's writer.
    zone: Zone,
}

impl Catalog {
    /// A catalog serving an empty zone.
    pub fn new(config: DnsConfig) -> Self {
        let zone = Zone::new(&config, 1);
        Self {
            serial: AtomicU32::new(1),
            current: ArcSwap::from_pointee(zone.snapshot()),
            published: Mutex::new(Published {
                backends: ServiceMap::new(),
                zone,
            }),
        }
    }

    /// Brings the zone up to date with the computed backends and swaps the
    /// new snapshot in; the SOA serial increases with every publish. Only
    /// services whose backends changed since the last publish are rebuilt
    /// (the maps share unchanged subtrees and compare shared values by
    /// pointer, so finding them is cheap too).
    pub fn publish(&self, backends: &ServiceMap<ServiceBackends>) {
        let mut guard = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let published = &mut *guard;
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let changes = published.backends.diff(backends).map(|item| match item {
            DiffItem::Add(k, b) | DiffItem::Update { new: (k, b), .. } => (k, Some(b.as_ref())),
            DiffItem::Remove(k, _) => (k, None),
        });
        published.zone.apply(serial, changes);
        self.current.store(Arc::new(published.zone.snapshot()));
        published.backends = backends.clone();
    }

    /// The snapshot in force now, without touching its reference count
    /// (cheap enough for every query).
    pub fn load(&self) -> arc_swap::Guard<Arc<ZoneSnapshot>> {
        self.current.load()
    }
}
