//! Relays the cluster's MultiClusterService objects (switchyard.io) to the
//! hub and writes back each one's `Accepted` condition: `True`, or `False`
//! with the reason (`Invalid`: a weight or cluster the hub refuses;
//! `Conflict`: the same name is managed from another cluster or on the
//! hub). The set sent is complete, so deleting an object in the cluster
//! deletes it at the hub.

use super::super::stream::{HubAuth, Hubs};
use super::conditions;
use crate::model::Condition;
use crate::proto;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::reflector::Store;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Refused objects are sent again this often (a cluster they name may have
/// joined since).
const RETRY_REFUSED: Duration = Duration::from_secs(30);

/// The object as the hub reads it: type, name, labels, annotations, spec.
/// (List items carry no apiVersion and kind: they come from `resource`.)
fn relayed_form(resource: &ApiResource, o: &DynamicObject) -> Option<String> {
    let object = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {
            "name": o.metadata.name,
            "namespace": o.metadata.namespace,
            "labels": o.metadata.labels.clone().unwrap_or_default(),
            "annotations": o.metadata.annotations.clone().unwrap_or_default(),
        },
        "spec": o.data.get("spec").cloned().unwrap_or(Value::Null),
    });
    serde_json::to_string(&object).ok()
}

/// Whether the cluster serves the MultiClusterService API at all.
pub async fn served(client: &kube::Client, resource: &ApiResource) -> bool {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(error) => {
            tracing::info!(%error, "no MultiClusterService API in this cluster; nothing to relay");
            false
        }
    }
}

async fn relay_once(
    hubs: &Hubs,
    auth: &HubAuth,
    turn: usize,
    request: proto::RelayRequest,
) -> Result<proto::RelayReply, String> {
    let hub = hubs.at(turn);
    let channel = super::super::stream::connect(hub, auth)
        .await
        .map_err(|e| e.to_string())?;
    super::super::stream::agent_client(channel)
        .relay_multi_cluster_services(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("hub {hub}: {}", s.message()))
}

/// Relays whenever the cluster's objects change, and refused ones again
/// every [`RETRY_REFUSED`], until shutdown.
pub async fn run(
    client: kube::Client,
    resource: ApiResource,
    cluster: String,
    (hubs, auth): (String, HubAuth),
    store: Store<DynamicObject>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let hubs = Hubs::parse(&hubs);
    // Never relay before the first list: an empty store would delete at
    // the hub everything the cluster relayed before.
    tokio::select! {
        () = shutdown.cancelled() => return,
        ready = store.wait_until_ready() => if ready.is_err() { return },
    }
    let mut last_sent: Option<Vec<String>> = None;
    let mut any_refused = false;
    let mut turn = 0usize;
    loop {
        let objects = store.state();
        let mut forms: Vec<String> = objects
            .iter()
            .filter_map(|o| relayed_form(&resource, o))
            .collect();
        forms.sort();
        let due = last_sent.as_ref() != Some(&forms) || any_refused;
        if due {
            let request = proto::RelayRequest {
                cluster: cluster.clone(),
                objects: forms.clone(),
            };
            match relay_once(&hubs, &auth, turn, request).await {
                Ok(reply) => {
                    any_refused = reply.results.iter().any(|r| !r.accepted);
                    last_sent = Some(forms);
                    for object in &objects {
                        write_accepted(&client, &resource, object, &reply.results).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot relay MultiClusterServices; retrying");
                    turn += 1;
                }
            }
        }
        let wait = if last_sent.is_none() {
            Duration::from_secs(1)
        } else {
            RETRY_REFUSED
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn write_accepted(
    client: &kube::Client,
    resource: &ApiResource,
    object: &DynamicObject,
    results: &[proto::RelayResult],
) {
    let (Some(namespace), Some(name)) = (
        object.metadata.namespace.as_deref(),
        object.metadata.name.as_deref(),
    ) else {
        return;
    };
    let Some(result) = results
        .iter()
        .find(|r| r.namespace == namespace && r.name == name)
    else {
        return;
    };
    let condition = if result.accepted {
        Condition::new(
            "Accepted",
            true,
            "Accepted",
            "the ClusterSet hub applies these weights",
        )
    } else {
        Condition::new("Accepted", false, &result.reason, result.message.clone())
    };
    let existing: Vec<Value> = object
        .data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(merged) = conditions::merge(
        &existing,
        &[condition],
        object.metadata.generation,
        &conditions::now(),
    ) else {
        return;
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    if let Err(error) = api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": merged}})),
        )
        .await
    {
        tracing::warn!(%error, namespace, name, "cannot write the MultiClusterService's status");
    }
}
