//! Prometheus metrics of a gateway, served on its `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A service and the cluster its traffic went to, in one direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// NS/NAME.
    pub service: String,
    /// The cluster that served the connection.
    pub cluster: String,
    /// `outbound` (from this cluster's clients) or `inbound` (from
    /// another cluster's gateway).
    pub direction: String,
}

/// Why a connection was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: String,
}

/// Which listener a TLS handshake failed on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

/// Every metric a gateway exports.
pub struct GatewayMetrics {
    registry: Registry,
    pub connections: Family<RouteLabels, Counter>,
    pub active: Family<DirectionLabels, Gauge>,
    pub bytes: Family<RouteLabels, Counter>,
    pub connect_failures: Family<RouteLabels, Counter>,
    pub ejections: Family<RouteLabels, Counter>,
    pub refused: Family<RefusalLabels, Counter>,
    pub tls_handshake_failures: Family<DirectionLabels, Counter>,
    pub config_version: Gauge<u64, AtomicU64>,
    pub config_rejections: Counter,
}

impl GatewayMetrics {
    /// Builds and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchyard_gateway");
        let connections = Family::<RouteLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections proxied, by service, cluster and direction",
            connections.clone(),
        );
        let active = Family::<DirectionLabels, Gauge>::default();
        registry.register(
            "active_connections",
            "Connections open now, by direction",
            active.clone(),
        );
        let bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes carried both ways, counted when a connection ends",
            bytes.clone(),
        );
        let connect_failures = Family::<RouteLabels, Counter>::default();
        registry.register(
            "connect_failures",
            "Upstream connections that failed",
            connect_failures.clone(),
        );
        let ejections = Family::<RouteLabels, Counter>::default();
        registry.register(
            "ejections",
            "Upstreams ejected by outlier detection",
            ejections.clone(),
        );
        let refused = Family::<RefusalLabels, Counter>::default();
        registry.register("refused", "Connections refused, by reason", refused.clone());
        let tls_handshake_failures = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by direction",
            tls_handshake_failures.clone(),
        );
        let config_version = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "config_version",
            "The configuration version in force",
            config_version.clone(),
        );
        let config_rejections = Counter::default();
        registry.register(
            "config_rejections",
            "Configurations refused",
            config_rejections.clone(),
        );
        Self {
            registry,
            connections,
            active,
            bytes,
            connect_failures,
            ejections,
            refused,
            tls_handshake_failures,
            config_version,
            config_rejections,
        }
    }

    /// Counts a refusal.
    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&RefusalLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition, with the gateway's DNS metrics.
    pub fn encode(&self, dns: &crate::metrics::Metrics) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry);
        let _ = text::encode_registry(&mut out, dns.registry());
        let _ = text::encode_eof(&mut out);
        out
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}
