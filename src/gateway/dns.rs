//! The cluster-local ClusterSet DNS a gateway serves in gateway mode: every
//! service's name answers with this cluster's outbound listener for it
//! (the MCS specification's per-cluster ClusterSetIP), from the routes the
//! hub streamed, so it keeps answering while the hub is away.

use super::routes::RouteTable;
use crate::backends::{ClusterBackend, ServiceBackends};
use crate::model::{Endpoint, ServiceMap, ServiceType, SessionAffinity};
use std::net::IpAddr;
use std::sync::Arc;

/// The zone's content: one "cluster" per service, this gateway's listener.
pub fn backends(table: &RouteTable, cluster: &str) -> ServiceMap<ServiceBackends> {
    let mut out = ServiceMap::new();
    for route in table.routes() {
        let Some(ip) = route.listener else {
            continue;
        };
        let address = IpAddr::V4(ip);
        out.insert(
            route.service.clone(),
            Arc::new(ServiceBackends {
                service: route.service.clone(),
                service_type: ServiceType::ClusterSetIP,
                ports: route.service_ports.clone(),
                session_affinity: SessionAffinity::None,
                multi_cluster_service: None,
                clusters: vec![ClusterBackend {
                    cluster: cluster.to_string(),
                    weight: None,
                    effective_weight: 1,
                    share: 1.0,
                    healthy: true,
                    reason: "this cluster's gateway listener".into(),
                    addresses: vec![address],
                    endpoints: vec![Endpoint::ready(address)],
                }],
                conditions: Vec::new(),
                revision: table.version,
            }),
        );
    }
    out
}
