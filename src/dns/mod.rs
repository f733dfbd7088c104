//! ClusterSet DNS: an authoritative server for the clusterset zone.

// ---- TEMPORARY STUB (replaced by the dns branch) ----
use crate::backends::ServiceBackends;
use crate::metrics::Metrics;
use crate::model::ServiceKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
/// Config.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub zone: String,
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
/// Catalog.
pub struct Catalog;
impl Catalog {
    pub fn new(_c: DnsConfig) -> Self {
        Catalog
    }
    pub fn publish(&self, _b: &BTreeMap<ServiceKey, ServiceBackends>) {}
}
/// Error.
#[derive(Debug, thiserror::Error)]
#[error("dns")]
pub struct DnsError;
pub async fn serve(
    _c: Arc<Catalog>,
    _l: SocketAddr,
    _m: Arc<Metrics>,
    _s: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), DnsError> {
    Ok((_l, tokio::spawn(async {})))
}
pub mod client {
    #[derive(Debug, thiserror::Error)]
    #[error("client")]
    pub struct ClientError;
    pub async fn query(
        _s: std::net::SocketAddr,
        _n: &str,
        _t: hickory_proto::rr::RecordType,
        _tcp: bool,
    ) -> Result<hickory_proto::op::Message, ClientError> {
        Err(ClientError)
    }
}
