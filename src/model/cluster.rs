//! ClusterSet members and their health state.

use super::key::{ClusterId, ServiceKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What a cluster says about itself when its agent registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    pub id: ClusterId,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    /// East-west gateway addresses (host:port), empty on a flat network.
    #[serde(default)]
    pub gateway_addresses: Vec<String>,
}

/// A member of the ClusterSet as the hub's replicated state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    #[serde(flatten)]
    pub spec: ClusterSpec,
    /// False once the cluster's lease expired, until its agent renews again.
    pub reachable: bool,
    /// Set by an operator or a drill: the cluster gets no traffic.
    pub drained: bool,
    /// Set by `drill cluster-down` on a real ClusterSet: the cluster counts
    /// as unreachable and its renewals are ignored until restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lease_revoked: bool,
    /// Unreachable for longer than the lease grace period: other clusters
    /// drop its imported EndpointSlices (until it is reachable again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
    /// Services drained on this cluster alone (`drill drain --service`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub drained_services: BTreeSet<ServiceKey>,
}

/// The health of a cluster as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterState {
    Healthy,
    Unreachable,
    Drained,
}

impl Cluster {
    /// A newly registered, reachable cluster.
    pub fn new(spec: ClusterSpec) -> Self {
        Self {
            spec,
            reachable: true,
            drained: false,
            lease_revoked: false,
            withdrawn: false,
            drained_services: BTreeSet::new(),
        }
    }

    /// Whether `service` is drained here, with the whole cluster or alone.
    pub fn drains(&self, service: &ServiceKey) -> bool {
        self.drained || self.drained_services.contains(service)
    }

    /// Drained wins over unreachable: an operator's decision is the more
    /// useful thing to report.
    pub fn state(&self) -> ClusterState {
        if self.drained {
            ClusterState::Drained
        } else if !self.reachable || self.lease_revoked {
            ClusterState::Unreachable
        } else {
            ClusterState::Healthy
        }
    }
}

impl std::fmt::Display for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClusterState::Healthy => "Healthy",
            ClusterState::Unreachable => "Unreachable",
            ClusterState::Drained => "Drained",
        })
    }
}
