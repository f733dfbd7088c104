//! The cluster's ID in the ClusterSet, as the MCS API defines it: the
//! ClusterProperty `cluster.clusterset.k8s.io` when the cluster has one,
//! else the UID of the `kube-system` namespace (unique and stable for the
//! cluster's life). A flag on the agent overrides both.

use super::resources::cluster_property;
use crate::model::validate_cluster_id;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject};

/// The ClusterProperty that holds the cluster ID.
pub const CLUSTER_ID_PROPERTY: &str = "cluster.clusterset.k8s.io";

/// Why no cluster ID could be found.
#[derive(Debug, thiserror::Error)]
pub enum ClusterIdError {
    /// Neither source gave an ID.
    #[error("cannot determine the cluster ID: no ClusterProperty {CLUSTER_ID_PROPERTY} and no kube-system namespace UID; pass --cluster")]
    NotFound,
    /// The ID found is not usable.
    #[error("cluster ID {id:?} (from {source_name}) is not valid: {reason}; pass --cluster")]
    Invalid {
        /// The ID.
        id: String,
        /// Where it came from.
        source_name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The API server failed.
    #[error("cannot read the cluster ID from the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

fn check(id: String, source_name: &'static str) -> Result<String, ClusterIdError> {
    validate_cluster_id(&id).map_err(|e| ClusterIdError::Invalid {
        id: id.clone(),
        source_name,
        reason: e.to_string(),
    })?;
    Ok(id)
}

/// Finds the cluster ID (see the module docs).
pub async fn detect(client: &kube::Client) -> Result<String, ClusterIdError> {
    let properties: Api<DynamicObject> = Api::all_with(client.clone(), &cluster_property());
    match properties.get_opt(CLUSTER_ID_PROPERTY).await {
        Ok(Some(p)) => {
            if let Some(value) = p.data.pointer("/spec/value").and_then(|v| v.as_str()) {
                return check(
                    value.to_string(),
                    "ClusterProperty cluster.clusterset.k8s.io",
                );
            }
        }
        Ok(None) => {}
        // The About API's CRD is not installed: fall through.
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let uid = namespaces
        .get_opt("kube-system")
        .await?
        .and_then(|ns| ns.metadata.uid)
        .ok_or(ClusterIdError::NotFound)?;
    check(uid, "the kube-system namespace UID")
}
