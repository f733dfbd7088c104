//! The agent's Kubernetes side: kube-rs reflectors on the cluster's
//! ServiceExports, Services and EndpointSlices turn into the exports the
//! agent streams to the hub, the agent writes each ServiceExport's MCS
//! conditions back (`Valid`, `Ready`, `Conflict`), and it writes what the
//! cluster imports (ServiceImports and their EndpointSlices).
//!
//! - `resources`: the custom resources and the MCS API version served.
//! - `cluster_id`: the cluster's ID (ClusterProperty or kube-system UID).
//! - `exports`: the pure computation of exports and `Valid` conditions.
//! - `imports`: the import stream from the hub and the objects it asks for.
//! - `derived`: the Services derived for imports when the gateway runs in
//!   pods (port mode).
//! - `relay`: MultiClusterServices relayed to the hub, `Accepted` written back.
//! - `conditions`: merging conditions into an object's status.
//!
//! Everything is level-triggered: any watch event (or a periodic tick)
//! recomputes the whole desired state from the reflector stores and makes
//! the hub and the cluster match it, so a missed event heals on the next
//! pass.

pub mod cluster_id;
pub mod conditions;
pub mod derived;
pub mod exports;
pub mod imports;
pub mod relay;
pub mod resources;

use super::stream::{self, AgentConfig};
use super::watch::Desired;
use crate::model::{ClusterSpec, Condition, ServiceKey};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// How a Kubernetes agent runs.
#[derive(Debug, Clone, Default)]
pub struct KubeAgentConfig {
    /// Hub API addresses, comma-separated.
    pub hub: String,
    /// The cluster ID; detected from the cluster when `None`.
    pub cluster: Option<String>,
    /// The cluster's region and zone, for the hub.
    pub region: String,
    pub zone: String,
    /// East-west gateway addresses (gateway mode).
    pub gateway_addresses: Vec<String>,
    /// How the agent authenticates to the hub.
    pub auth: stream::HubAuth,
    /// The cluster's gateway pods, for the Services derived for imports
    /// when the gateway runs in port mode.
    pub gateway_pods: Option<derived::GatewayPods>,
}

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum KubeAgentError {
    #[error(transparent)]
    ClusterId(#[from] cluster_id::ClusterIdError),
    #[error(transparent)]
    Resources(#[from] resources::ResourceError),
    #[error("--cluster {id:?} is not a valid cluster ID: {reason}")]
    BadClusterFlag { id: String, reason: String },
}

/// Recompute at least this often, so failed status writes are retried.
const RESYNC: Duration = Duration::from_secs(30);
/// Events closer together than this are handled as one.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Starts a reflector for `api` whose every event wakes `changed`.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    changed: Arc<Notify>,
    shutdown: &CancellationToken,
) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let kind = K::kind(&dyntype).to_string();
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let events = reflector::reflector(writer, watcher(api, config)).default_backoff();
        futures::pin_mut!(events);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = events.next() => match event {
                    None => return,
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(error)) => tracing::warn!(%error, kind, "watch failed; retrying"),
                },
            }
        }
    });
    store
}

/// Runs the agent against the cluster behind `client` until shutdown.
pub async fn run(
    client: kube::Client,
    config: KubeAgentConfig,
    shutdown: CancellationToken,
) -> Result<(), KubeAgentError> {
    let cluster = match config.cluster {
        Some(id) => {
            crate::model::validate_cluster_id(&id).map_err(|e| KubeAgentError::BadClusterFlag {
                id: id.clone(),
                reason: e.to_string(),
            })?;
            id
        }
        None => cluster_id::detect(&client).await?,
    };
    let version = resources::mcs_version(&client).await?;
    tracing::info!(%cluster, mcs_version = version, "kubernetes agent starting");

    let changed = Arc::new(Notify::new());
    let services = reflect::<Service>(
        Api::all(client.clone()),
        watcher::Config::default(),
        (),
        changed.clone(),
        &shutdown,
    );
    // The cluster's own slices, not the ones the agent imports.
    let slices = reflect::<EndpointSlice>(
        Api::all(client.clone()),
        watcher::Config::default().labels(&format!(
            "{},!{}",
            exports::SERVICE_NAME_LABEL,
            resources::SOURCE_CLUSTER_LABEL
        )),
        (),
        changed.clone(),
        &shutdown,
    );
    let export_resource = resources::service_export(version);
    let service_exports = reflect::<DynamicObject>(
        Api::all_with(client.clone(), &export_resource),
        watcher::Config::default(),
        export_resource.clone(),
        changed.clone(),
        &shutdown,
    );
    for ready in [
        services.wait_until_ready().await.is_ok(),
        slices.wait_until_ready().await.is_ok(),
        service_exports.wait_until_ready().await.is_ok(),
    ] {
        if !ready {
            return Ok(());
        }
    }

    // Imports: what the hub streams, written into the cluster.
    let import_changed = Arc::new(Notify::new());
    let import_resource = resources::service_import(version);
    let stores = imports::Stores {
        namespaces: reflect::<Namespace>(
            Api::all(client.clone()),
            watcher::Config::default(),
            (),
            import_changed.clone(),
            &shutdown,
        ),
        imports: reflect::<DynamicObject>(
            Api::all_with(client.clone(), &import_resource),
            watcher::Config::default().labels(&format!(
                "{}={}",
                imports::OWNED_LABEL,
                imports::OWNED_VALUE
            )),
            import_resource.clone(),
            import_changed.clone(),
            &shutdown,
        ),
        slices: reflect::<EndpointSlice>(
            Api::all(client.clone()),
            watcher::Config::default().labels(&format!(
                "{}={}",
                resources::MANAGED_BY_LABEL,
                resources::MANAGER
            )),
            (),
            import_changed.clone(),
            &shutdown,
        ),
        derived: config.gateway_pods.clone().map(|pods| {
            let store = reflect::<Service>(
                Api::namespaced(client.clone(), &pods.namespace),
                watcher::Config::default().labels(&format!(
                    "{}={}",
                    imports::OWNED_LABEL,
                    imports::OWNED_VALUE
                )),
                (),
                import_changed.clone(),
                &shutdown,
            );
            (pods, store)
        }),
    };
    let (sets_tx, mut sets) = watch::channel(None);
    tokio::spawn(imports::follow_hub(
        config.hub.clone(),
        config.auth.clone(),
        cluster.clone(),
        sets_tx,
        shutdown.child_token(),
    ));
    tokio::spawn(imports::run(
        client.clone(),
        version,
        stores,
        sets.clone(),
        import_changed,
        shutdown.child_token(),
    ));

    // MultiClusterServices: relayed to the hub, when the cluster has the API.
    let mcs_resource = resources::multi_cluster_service();
    if relay::served(&client, &mcs_resource).await {
        let mcs_changed = Arc::new(Notify::new());
        let store = reflect::<DynamicObject>(
            Api::all_with(client.clone(), &mcs_resource),
            watcher::Config::default(),
            mcs_resource.clone(),
            mcs_changed.clone(),
            &shutdown,
        );
        tokio::spawn(relay::run(
            client.clone(),
            mcs_resource,
            cluster.clone(),
            (config.hub.clone(), config.auth.clone()),
            store,
            mcs_changed,
            shutdown.child_token(),
        ));
    }

    let (desired_tx, desired_rx) = watch::channel(Desired::default());
    let (acked_tx, mut acked_rx) = watch::channel(Desired::default());
    let session = AgentConfig {
        hub: config.hub.clone(),
        spec: ClusterSpec {
            id: cluster.clone(),
            region: config.region.clone(),
            zone: config.zone.clone(),
            gateway_addresses: config.gateway_addresses.clone(),
        },
        auth: config.auth.clone(),
        ..Default::default()
    };
    tokio::spawn(stream::run(
        session,
        desired_rx,
        acked_tx,
        shutdown.child_token(),
    ));

    loop {
        let requests: Vec<exports::ExportRequest> = service_exports
            .state()
            .iter()
            .filter_map(|o| export_request(o))
            .collect();
        let services = services.state();
        let slices = slices.state();
        let computed = exports::compute(
            &cluster,
            &requests,
            &services.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &slices.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        );
        let exports = Arc::new(computed.exports.clone());
        desired_tx.send_if_modified(|d| {
            let differs = **d != *exports;
            if differs {
                *d = exports.clone();
            }
            differs
        });
        let acked = acked_rx.borrow_and_update().clone();
        let conflicts = sets
            .borrow_and_update()
            .as_ref()
            .map(|set| imports::export_conflicts(set))
            .unwrap_or_default();
        for object in service_exports.state() {
            write_export_status(
                &client,
                &export_resource,
                &object,
                &computed,
                &acked,
                &conflicts,
            )
            .await;
        }

        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = changed.notified() => {}
            _ = acked_rx.changed() => {}
            _ = sets.changed() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

/// The ServiceExport as an export request, if its name is usable.
fn export_request(object: &DynamicObject) -> Option<exports::ExportRequest> {
    let service = ServiceKey::new(
        object.metadata.namespace.as_deref()?,
        object.metadata.name.as_deref()?,
    )
    .ok()?;
    let created_unix_ms = object
        .meta()
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_millisecond());
    Some(exports::ExportRequest {
        service,
        created_unix_ms,
    })
}

/// The conditions a ServiceExport should carry: `Conflict` once the hub
/// has reported on the export.
fn export_conditions(
    key: &ServiceKey,
    computed: &exports::Computed,
    acked: &Desired,
    conflicts: &std::collections::BTreeMap<ServiceKey, Condition>,
) -> Vec<Condition> {
    let valid = computed.valid.get(key).cloned().unwrap_or_else(|| {
        Condition::new(
            "Valid",
            false,
            "InvalidService",
            "the ServiceExport's name is not a valid service name",
        )
    });
    let ready = match computed.exports.get(key) {
        Some(export) if acked.get(key) == Some(export) => {
            Condition::new("Ready", true, "Exported", "exported to the ClusterSet hub")
        }
        Some(_) => Condition::new(
            "Ready",
            false,
            "Pending",
            "waiting for the ClusterSet hub to acknowledge the export",
        ),
        None => Condition::new(
            "Ready",
            false,
            "Failed",
            format!("not exported: {}", valid.message),
        ),
    };
    let mut out = vec![valid, ready];
    if computed.exports.contains_key(key) {
        if let Some(conflict) = conflicts.get(key) {
            out.push(conflict.clone());
        }
    }
    out
}

async fn write_export_status(
    client: &kube::Client,
    resource: &kube::core::ApiResource,
    object: &DynamicObject,
    computed: &exports::Computed,
    acked: &Desired,
    conflicts: &std::collections::BTreeMap<ServiceKey, Condition>,
) {
    let (Some(namespace), Some(name)) = (
        object.metadata.namespace.as_deref(),
        object.metadata.name.as_deref(),
    ) else {
        return;
    };
    let key = ServiceKey {
        namespace: namespace.into(),
        name: name.into(),
    };
    let desired = export_conditions(&key, computed, acked, conflicts);
    let existing: Vec<serde_json::Value> = object
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    let Some(merged) = conditions::merge(
        &existing,
        &desired,
        object.metadata.generation,
        &conditions::now(),
    ) else {
        return;
    };
    let patch = serde_json::json!({"status": {"conditions": merged}});
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    if let Err(error) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(%error, service = %key, "cannot write the ServiceExport's conditions; retrying later");
    }
}
