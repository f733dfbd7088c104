//! The custom resources the agent reads and writes, as kube-rs
//! `ApiResource`s, and the API version each is served at.
//!
//! ServiceExport and ServiceImport belong to the Multi-Cluster Services API
//! (`multicluster.x-k8s.io`, served as `v1beta1` and `v1alpha1`; the agent
//! uses `v1beta1` when the cluster serves it, else `v1alpha1`, so clusters
//! with older MCS CRDs work unchanged). MultiClusterService is switchyard's
//! own (`switchyard.io/v1alpha1`); ClusterProperty is the About API's
//! (`about.k8s.io/v1alpha1`).

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};

/// The MCS API group.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// switchyard's API group.
pub const SWITCHYARD_GROUP: &str = "switchyard.io";
/// Label on EndpointSlices naming the multi-cluster service they belong to.
pub const MCS_SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";
/// Label on EndpointSlices naming the cluster their endpoints live in.
pub const SOURCE_CLUSTER_LABEL: &str = "multicluster.kubernetes.io/source-cluster";
/// `endpointslice.kubernetes.io/managed-by` on the slices the agent writes.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The agent's value of [`MANAGED_BY_LABEL`] (and its field manager).
pub const MANAGER: &str = "agent.switchyard.io";

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// ServiceExport at `version`.
pub fn service_export(version: &str) -> ApiResource {
    resource(MCS_GROUP, version, "ServiceExport", "serviceexports")
}

/// ServiceImport at `version`.
pub fn service_import(version: &str) -> ApiResource {
    resource(MCS_GROUP, version, "ServiceImport", "serviceimports")
}

/// switchyard's MultiClusterService.
pub fn multi_cluster_service() -> ApiResource {
    resource(
        SWITCHYARD_GROUP,
        "v1alpha1",
        "MultiClusterService",
        "multiclusterservices",
    )
}

/// The About API's ClusterProperty (cluster-scoped).
pub fn cluster_property() -> ApiResource {
    resource(
        "about.k8s.io",
        "v1alpha1",
        "ClusterProperty",
        "clusterproperties",
    )
}

/// Why the MCS API cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// Neither version of the MCS CRDs is served.
    #[error("the cluster serves no ServiceExport API ({MCS_GROUP} v1beta1 or v1alpha1): install the CRDs (switchyard install)")]
    NoMcsApi,
    /// The API server failed otherwise.
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// The MCS API version the cluster serves: `v1beta1` if it can, else `v1alpha1`.
pub async fn mcs_version(client: &kube::Client) -> Result<&'static str, ResourceError> {
    for version in ["v1beta1", "v1alpha1"] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &service_export(version));
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(version),
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ResourceError::NoMcsApi)
}
