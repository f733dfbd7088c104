//! Builders for unit tests: an export of one service with ready endpoints.

use super::{Endpoint, Export, Port, ServiceType, SessionAffinity};
use std::net::IpAddr;

/// A ready endpoint.
pub fn endpoint(address: IpAddr, hostname: Option<&str>) -> Endpoint {
    Endpoint {
        hostname: hostname.map(String::from),
        ..Endpoint::ready(address)
    }
}

/// `cluster`'s ClusterSetIP export of `service` ("ns/name") on TCP `port`
/// (named "http"), with one ready endpoint per address.
pub fn export(
    cluster: &str,
    service: &str,
    port: u16,
    addresses: impl IntoIterator<Item = IpAddr>,
) -> Export {
    Export {
        cluster: cluster.into(),
        service: service.parse().expect("fixture service key"),
        service_type: ServiceType::ClusterSetIP,
        session_affinity: SessionAffinity::None,
        ports: vec![Port {
            name: "http".into(),
            protocol: "TCP".into(),
            app_protocol: String::new(),
            port,
        }],
        endpoint_ports: Vec::new(),
        endpoints: addresses.into_iter().map(|a| endpoint(a, None)).collect(),
        created_unix_ms: 0,
    }
}
