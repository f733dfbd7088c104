//! Prometheus metrics of a hub process, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label set of DNS query counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// Response code name, e.g. `NoError`, `NXDomain`, `Refused`.
    pub rcode: String,
    /// `udp` or `tcp`.
    pub transport: String,
}

/// Label set of refusals on the raft peer port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerRefusalLabels {
    /// `over_cap`, `handshake`, `handshake_timeout` (connections), or
    /// `not_a_replica`, `not_a_member`, `forged_sender` (calls and messages).
    pub reason: String,
}

/// Every metric a hub exports. Cheap to share: each field is an `Arc` inside.
pub struct Metrics {
    registry: Registry,
    pub dns_queries: Family<DnsLabels, Counter>,
    pub dns_latency_seconds: Histogram,
    pub raft_term: Gauge<u64, AtomicU64>,
    pub raft_commit_index: Gauge<u64, AtomicU64>,
    pub raft_applied_index: Gauge<u64, AtomicU64>,
    pub raft_proposals: Counter,
    pub forwarded_writes: Counter,
    pub raft_leader_changes: Counter,
    pub raft_snapshots: Counter,
    pub exports: Gauge,
    pub clusters: Gauge,
    pub agents_connected: Gauge,
    pub recompute_seconds: Histogram,
    pub peer_refusals: Family<PeerRefusalLabels, Counter>,
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Self {
        Self::build(true)
    }

    /// The DNS metrics only, for a process that serves ClusterSet DNS but
    /// is not a hub (a gateway): the others exist but are not exported.
    pub fn dns_only() -> Self {
        Self::build(false)
    }

    fn build(hub: bool) -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let dns_queries = Family::<DnsLabels, Counter>::default();
        registry.register(
            "dns_queries",
            "DNS queries answered, by response code and transport",
            dns_queries.clone(),
        );
        let dns_latency_seconds = Histogram::new(exponential_buckets(0.000_000_25, 2.0, 18));
        registry.register(
            "dns_latency_seconds",
            "Time to answer one DNS query (one query in 64 is timed)",
            dns_latency_seconds.clone(),
        );
        // Hub-only metrics go to a registry nobody encodes when not a hub.
        let mut scratch = Registry::default();
        let target: &mut Registry = if hub { &mut registry } else { &mut scratch };
        let raft_term = Gauge::<u64, AtomicU64>::default();
        target.register("raft_term", "Current raft term", raft_term.clone());
        let raft_commit_index = Gauge::<u64, AtomicU64>::default();
        target.register(
            "raft_commit_index",
            "Raft commit index",
            raft_commit_index.clone(),
        );
        let raft_applied_index = Gauge::<u64, AtomicU64>::default();
        target.register(
            "raft_applied_index",
            "Raft applied index",
            raft_applied_index.clone(),
        );
        let raft_proposals = Counter::default();
        target.register(
            "raft_proposals",
            "Proposals made by this replica",
            raft_proposals.clone(),
        );
        let forwarded_writes = Counter::default();
        target.register(
            "forwarded_writes",
            "Writes followers forwarded to this replica while it led",
            forwarded_writes.clone(),
        );
        let raft_leader_changes = Counter::default();
        target.register(
            "raft_leader_changes",
            "Leader changes seen by this replica",
            raft_leader_changes.clone(),
        );
        let raft_snapshots = Counter::default();
        target.register(
            "raft_snapshots",
            "Snapshots created or installed",
            raft_snapshots.clone(),
        );
        let exports = Gauge::default();
        target.register(
            "exports",
            "Exports in the replicated state",
            exports.clone(),
        );
        let clusters = Gauge::default();
        target.register(
            "clusters",
            "Member clusters in the replicated state",
            clusters.clone(),
        );
        let agents_connected = Gauge::default();
        target.register(
            "agents_connected",
            "Agents with an open export stream to this replica",
            agents_connected.clone(),
        );
        let recompute_seconds = Histogram::new(exponential_buckets(0.000_001, 4.0, 12));
        target.register(
            "recompute_seconds",
            "Backend recomputation time per applied change",
            recompute_seconds.clone(),
        );
        let peer_refusals = Family::<PeerRefusalLabels, Counter>::default();
        target.register(
            "peer_refusals",
            "Connections, calls and raft messages the raft peer port refused, by reason",
            peer_refusals.clone(),
        );
        Self {
            registry,
            dns_queries,
            dns_latency_seconds,
            raft_term,
            raft_commit_index,
            raft_applied_index,
            raft_proposals,
            forwarded_writes,
            raft_leader_changes,
            raft_snapshots,
            exports,
            clusters,
            agents_connected,
            recompute_seconds,
            peer_refusals,
        }
    }

    /// The registry, to expose these metrics with others (one exposition).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts one refusal on the raft peer port.
    pub fn peer_refused(&self, reason: &'static str) {
        self.peer_refusals
            .get_or_create(&PeerRefusalLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}
