//! The Kubernetes resources users write: ServiceImport, MultiClusterService
//! and ServiceExport, in their `apiVersion/kind/metadata/spec/status` form.

use super::export::{Port, ServiceType, SessionAffinity};
use super::meta::{Condition, ObjectMeta};
use serde::{Deserialize, Serialize};

/// API group of the Kubernetes Multi-Cluster Services API.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// The group the Gateway API guide writes ServiceImport/MultiClusterService in.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// switchyard's own API group.
pub const SWITCHYARD_GROUP: &str = "switchyard.io";

/// apiVersions accepted for ServiceImport.
pub const SERVICE_IMPORT_VERSIONS: &[&str] = &[
    "multicluster.x-k8s.io/v1alpha1",
    "multicluster.x-k8s.io/v1beta1",
    "gateway.networking.k8s.io/v1beta1",
];
/// apiVersions accepted for ServiceExport.
pub const SERVICE_EXPORT_VERSIONS: &[&str] = &[
    "multicluster.x-k8s.io/v1alpha1",
    "multicluster.x-k8s.io/v1beta1",
];
/// apiVersions accepted for MultiClusterService.
pub const MCS_VERSIONS: &[&str] = &[
    "gateway.networking.k8s.io/v1beta1",
    "switchyard.io/v1alpha1",
];

/// `ServiceImport`: a service as the whole ClusterSet sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceImport {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceImportSpec,
    #[serde(default, skip_serializing_if = "ServiceImportStatus::is_empty")]
    pub status: ServiceImportStatus,
}

/// ServiceImport `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceImportSpec {
    #[serde(rename = "type", default)]
    pub service_type: ServiceType,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// `DNS` in the Gateway API guide; accepted and kept, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
}

/// ServiceImport `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ServiceImportStatus {
    fn is_empty(&self) -> bool {
        self.clusters.is_empty() && self.conditions.is_empty()
    }
}

/// One cluster backing an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster: String,
}

/// `ServiceExport`: marks a Service in a member cluster for export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceExport {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `MultiClusterService`: per-cluster weights for a ServiceImport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MultiClusterService {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: MultiClusterServiceSpec,
    #[serde(default, skip_serializing_if = "MultiClusterServiceStatus::is_empty")]
    pub status: MultiClusterServiceStatus,
}

/// MultiClusterService `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MultiClusterServiceSpec {
    pub service_import: ServiceImportRef,
    #[serde(default)]
    pub cluster_backends: Vec<ClusterBackendRef>,
}

/// Which ServiceImport a MultiClusterService weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceImportRef {
    pub name: String,
    /// Defaults to the MultiClusterService's own namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// A cluster and its relative weight. Kept signed so that a negative
/// weight reaches validation and gets a clear message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterBackendRef {
    pub cluster: String,
    #[serde(default = "default_weight")]
    pub weight: i64,
}

fn default_weight() -> i64 {
    1
}

/// MultiClusterService `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MultiClusterServiceStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl MultiClusterServiceStatus {
    fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }
}

impl MultiClusterService {
    /// The namespace of the referenced ServiceImport (defaults to its own).
    pub fn import_namespace(&self) -> &str {
        if self.spec.service_import.namespace.is_empty() {
            &self.metadata.namespace
        } else {
            &self.spec.service_import.namespace
        }
    }
}
