//! ClusterSet DNS: an authoritative server for the clusterset zone
//! (default `clusterset.local`), per the MCS DNS specification (KEP-1645
//! `specification.md`, schema 1.0.0).
//!
//! - `zone`: an immutable snapshot of every name and its records, built
//!   from the computed backends, and the pure answering logic.
//! - `server`: the hickory-server wiring (UDP and TCP, EDNS, metrics).
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
pub mod server;
pub mod zone;

use crate::backends::ServiceBackends;
use crate::model::ServiceKey;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub use server::{serve, DnsError};
pub use zone::ZoneSnapshot;

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
    config: DnsConfig,
    serial: AtomicU32,
    current: ArcSwap<ZoneSnapshot>,
}

impl Catalog {
    /// A catalog serving an empty zone.
    pub fn new(config: DnsConfig) -> Self {
        let empty = ZoneSnapshot::build(&config, 1, &BTreeMap::new());
        Self {
            config,
            serial: AtomicU32::new(1),
            current: ArcSwap::from_pointee(empty),
        }
    }

    /// Rebuilds the zone from the computed backends and swaps it in; the
    /// SOA serial increases with every publish.
    pub fn publish(&self, backends: &BTreeMap<ServiceKey, ServiceBackends>) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.current.store(Arc::new(ZoneSnapshot::build(
            &self.config,
            serial,
            backends,
        )));
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<ZoneSnapshot> {
        self.current.load_full()
    }
}
