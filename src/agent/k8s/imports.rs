//! Writes what the cluster imports into the cluster, as the MCS API says:
//! a ServiceImport per service of the ClusterSet (in every namespace the
//! cluster has: namespace sameness), with `status.clusters`, and one set of
//! EndpointSlices per source cluster that receives traffic, labelled
//! `multicluster.kubernetes.io/service-name` and
//! `multicluster.kubernetes.io/source-cluster` and owned by the
//! ServiceImport. Whatever it wrote and no longer should is deleted.
//!
//! The hub streams the import set (`WatchImports`); a lost connection keeps
//! the last set in force (the data plane goes on) until a new one arrives.

use super::conditions;
use super::derived::{self, GatewayPods};
use super::resources::{
    self, MANAGED_BY_LABEL, MANAGER, MCS_SERVICE_NAME_LABEL, SOURCE_CLUSTER_LABEL,
};
use crate::model::{Condition, ServiceKey};
use crate::proto;
use crate::wire::{Assembler, PART_BYTES};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::reflector::Store;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Label on everything the agent writes.
pub const OWNED_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const OWNED_VALUE: &str = "switchyard";

/// The `Conflict` condition of each of the cluster's exports, as the hub
/// computed it.
pub type ExportConflicts = Arc<BTreeMap<ServiceKey, Condition>>;

/// Keeps a `WatchImports` stream open to one of `hubs` (comma-separated),
/// publishing every import set received.
pub async fn follow_hub(
    hubs: String,
    auth: super::super::stream::HubAuth,
    cluster: String,
    sets: watch::Sender<Option<Arc<proto::ImportSet>>>,
    shutdown: CancellationToken,
) {
    let hubs = super::super::stream::Hubs::parse(&hubs);
    let mut backoff = Duration::from_millis(250);
    for turn in 0usize.. {
        let hub = hubs.at(turn);
        let session = async {
            let channel = super::super::stream::connect(hub, &auth).await?;
            let mut stream = super::super::stream::agent_client(channel)
                .watch_imports(proto::WatchImportsRequest {
                    cluster: cluster.clone(),
                    max_part_bytes: PART_BYTES as u32,
                })
                .await?
                .into_inner();
            // A set comes in parts; only a complete one is applied (a
            // stream that breaks in between keeps the last complete set).
            let mut parts = Assembler::default();
            while let Some(part) = stream.message().await? {
                let Some(set) = parts
                    .push(part)
                    .map_err(|e| tonic::Status::data_loss(format!("import set: {e}")))?
                else {
                    continue;
                };
                tracing::debug!(
                    version = set.version,
                    services = set.services.len(),
                    "import set"
                );
                sets.send_replace(Some(Arc::new(set)));
                backoff = Duration::from_millis(250);
            }
            Ok::<(), super::super::stream::SessionError>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = session => {
                if let Err(error) = result {
                    tracing::warn!(%error, hub, retry_in = ?backoff, "import stream ended");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// What the cluster should hold for one import set.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    /// ServiceImports by namespace/name: (object without status, status).
    pub imports: BTreeMap<ServiceKey, (Value, Value)>,
    /// EndpointSlices by namespace/name, with the ServiceImport they
    /// belong to (their owner).
    pub slices: BTreeMap<(String, String), (ServiceKey, Value)>,
    /// Gateway port mode: the Services derived for imports, by name (in
    /// the gateway's namespace).
    pub services: BTreeMap<String, Value>,
}

/// FNV-1a of `text`: stable across builds and platforms, so the names
/// derived from it do not change on upgrade.
pub(super) fn stable_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn slice_name(service: &str, cluster: &str, family: &str) -> String {
    let h = stable_hash(&format!("{service}/{cluster}/{family}"));
    format!("{service}-{:010x}", h & 0xff_ffff_ffff)
}

fn port_json(p: &proto::Port) -> Value {
    let mut v = json!({"port": p.port, "protocol": if p.protocol.is_empty() { "TCP" } else { p.protocol.as_str() }});
    if !p.name.is_empty() {
        v["name"] = json!(p.name);
    }
    if !p.app_protocol.is_empty() {
        v["appProtocol"] = json!(p.app_protocol);
    }
    v
}

fn condition_of(c: &proto::ExportCondition) -> Condition {
    Condition {
        type_: c.r#type.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
    }
}

/// The objects `set` asks for, in the namespaces that exist; with the
/// gateway's pods known, the Services derived for a gateway in port mode.
pub fn desired(
    set: &proto::ImportSet,
    namespaces: &BTreeSet<String>,
    api_version: &str,
    gateway: Option<&GatewayPods>,
) -> Desired {
    let mut out = Desired::default();
    for svc in &set.services {
        if !namespaces.contains(&svc.namespace) {
            continue;
        }
        let Ok(key) = ServiceKey::new(&svc.namespace, &svc.name) else {
            continue;
        };
        let mut spec = json!({
            "type": svc.r#type,
            "ports": svc.ports.iter().map(port_json).collect::<Vec<_>>(),
            "sessionAffinity": svc.session_affinity,
        });
        if !svc.ips.is_empty() {
            spec["ips"] = json!(svc.ips);
        }
        let object = json!({
            "apiVersion": api_version,
            "kind": "ServiceImport",
            "metadata": {"name": svc.name, "namespace": svc.namespace,
                         "labels": {OWNED_LABEL: OWNED_VALUE}},
            "spec": spec,
        });
        let status = json!({
            "clusters": svc.clusters.iter().map(|c| json!({"cluster": c})).collect::<Vec<_>>(),
        });
        out.imports.insert(key.clone(), (object, status));
        if let Some(service) = gateway.and_then(|pods| derived::desired(svc, &key, pods)) {
            out.services.insert(derived::name(&key), service);
        }
        for source in &svc.slices {
            let mut by_family: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
            for ep in &source.endpoints {
                let Ok(address) = ep.address.parse::<IpAddr>() else {
                    continue;
                };
                let family = if address.is_ipv4() { "IPv4" } else { "IPv6" };
                let mut e = json!({
                    "addresses": [ep.address],
                    "conditions": {"ready": ep.ready, "serving": ep.serving, "terminating": ep.terminating},
                });
                if !ep.hostname.is_empty() {
                    e["hostname"] = json!(ep.hostname);
                }
                if !ep.zone.is_empty() {
                    e["zone"] = json!(ep.zone);
                }
                by_family.entry(family).or_default().push(e);
            }
            for (family, endpoints) in by_family {
                let name = slice_name(&svc.name, &source.cluster, family);
                let slice = json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {"name": name, "namespace": svc.namespace, "labels": {
                        MCS_SERVICE_NAME_LABEL: svc.name,
                        SOURCE_CLUSTER_LABEL: source.cluster,
                        MANAGED_BY_LABEL: MANAGER,
                        OWNED_LABEL: OWNED_VALUE,
                    }},
                    "addressType": family,
                    "ports": source.ports.iter().map(port_json).collect::<Vec<_>>(),
                    "endpoints": endpoints,
                });
                out.slices
                    .insert((svc.namespace.clone(), name), (key.clone(), slice));
            }
        }
    }
    out
}

/// The conflicts of the cluster's own exports in `set`.
pub fn export_conflicts(set: &proto::ImportSet) -> BTreeMap<ServiceKey, Condition> {
    set.export_conditions
        .iter()
        .filter_map(|c| {
            Some((
                ServiceKey::new(&c.namespace, &c.name).ok()?,
                condition_of(c),
            ))
        })
        .collect()
}

/// Whether `existing` already has every field `want` sets (the fields the
/// agent owns; what others added is left alone).
pub(super) fn covers(existing: &Value, want: &Value) -> bool {
    match (existing, want) {
        (Value::Object(e), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| e.get(k).is_some_and(|ev| covers(ev, v))),
        (e, w) => e == w,
    }
}

/// The objects the agent reads to reconcile imports.
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub imports: Store<DynamicObject>,
    pub slices: Store<EndpointSlice>,
    /// The Services the agent derived (gateway port mode).
    pub derived: Option<(GatewayPods, Store<Service>)>,
}

/// Makes the cluster match `set`: creates or updates what is missing or
/// different, deletes what the agent wrote and no longer should.
pub async fn reconcile(
    client: &kube::Client,
    import_resource: &ApiResource,
    stores: &Stores,
    set: &proto::ImportSet,
) {
    let namespaces: BTreeSet<String> = stores
        .namespaces
        .state()
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let gateway = stores.derived.as_ref().map(|(pods, _)| pods);
    let want = desired(set, &namespaces, &import_resource.api_version, gateway);
    if gateway.is_none() && set.services.iter().any(|s| !s.gateway_ports.is_empty()) {
        tracing::warn!("the cluster's gateway runs in port mode, but the agent does not know its pods (--gateway-namespace): no Service is derived for the imports");
    }
    let conditions_by_key: BTreeMap<ServiceKey, Vec<Condition>> = set
        .services
        .iter()
        .filter_map(|s| {
            Some((
                ServiceKey::new(&s.namespace, &s.name).ok()?,
                s.conditions.iter().map(condition_of).collect(),
            ))
        })
        .collect();
    let apply = PatchParams::apply(MANAGER).force();
    let existing_imports: BTreeMap<ServiceKey, Arc<DynamicObject>> = stores
        .imports
        .state()
        .into_iter()
        .filter_map(|o| {
            Some((
                ServiceKey::new(
                    o.metadata.namespace.as_deref()?,
                    o.metadata.name.as_deref()?,
                )
                .ok()?,
                o,
            ))
        })
        .collect();
    let mut uids: BTreeMap<ServiceKey, String> = BTreeMap::new();

    for (key, (object, status)) in &want.imports {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &key.namespace, import_resource);
        let current = existing_imports.get(key);
        let current_value = current.and_then(|c| serde_json::to_value(c.as_ref()).ok());
        let mut uid = current.and_then(|c| c.metadata.uid.clone());
        if !current_value.as_ref().is_some_and(|c| covers(c, object)) {
            match api.patch(&key.name, &apply, &Patch::Apply(object)).await {
                Ok(o) => uid = o.metadata.uid,
                Err(error) => {
                    tracing::warn!(%error, service = %key, "cannot write the ServiceImport; retrying later");
                    continue;
                }
            }
        }
        if let Some(uid) = uid {
            uids.insert(key.clone(), uid);
        }
        // Status: clusters, plus the import's conditions in the MCS form.
        let existing_conditions: Vec<Value> = current_value
            .as_ref()
            .and_then(|c| c.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let desired_conditions = conditions_by_key.get(key).cloned().unwrap_or_default();
        let merged = conditions::merge(
            &existing_conditions,
            &desired_conditions,
            None,
            &conditions::now(),
        );
        let clusters_same = current_value
            .as_ref()
            .and_then(|c| c.pointer("/status/clusters"))
            == status.get("clusters");
        if merged.is_some() || !clusters_same {
            let mut new_status = status.clone();
            new_status["conditions"] = json!(merged.unwrap_or(existing_conditions));
            if let Err(error) = api
                .patch_status(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": new_status})),
                )
                .await
            {
                tracing::warn!(%error, service = %key, "cannot write the ServiceImport's status; retrying later");
            }
        }
    }

    let existing_slices: BTreeMap<(String, String), Arc<EndpointSlice>> = stores
        .slices
        .state()
        .into_iter()
        .filter_map(|s| Some(((s.metadata.namespace.clone()?, s.metadata.name.clone()?), s)))
        .collect();
    for ((namespace, name), (owner, slice)) in &want.slices {
        let Some(uid) = uids.get(owner) else {
            continue;
        };
        let mut slice = slice.clone();
        slice["metadata"]["ownerReferences"] = json!([{
            "apiVersion": import_resource.api_version,
            "kind": "ServiceImport",
            "name": owner.name,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
        let current = existing_slices
            .get(&(namespace.clone(), name.clone()))
            .and_then(|s| serde_json::to_value(s.as_ref()).ok());
        if current.as_ref().is_some_and(|c| covers(c, &slice)) {
            continue;
        }
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
        if let Err(error) = api.patch(name, &apply, &Patch::Apply(&slice)).await {
            tracing::warn!(%error, slice = %name, namespace, "cannot write an imported EndpointSlice; retrying later");
        }
    }

    if let Some((pods, existing)) = &stores.derived {
        derived::reconcile(client, pods, existing, &want.services).await;
    }

    // Whatever the agent wrote and no longer should.
    for (key, _) in existing_imports
        .iter()
        .filter(|(k, _)| !want.imports.contains_key(*k))
    {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &key.namespace, import_resource);
        delete(
            api.delete(&key.name, &DeleteParams::background())
                .await
                .map(|_| ()),
            "ServiceImport",
            &key.to_string(),
        );
    }
    for ((namespace, name), _) in existing_slices
        .iter()
        .filter(|(k, _)| !want.slices.contains_key(*k))
    {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
        delete(
            api.delete(name, &DeleteParams::background())
                .await
                .map(|_| ()),
            "EndpointSlice",
            name,
        );
    }
}

fn delete(result: Result<(), kube::Error>, kind: &str, name: &str) {
    match result {
        Ok(()) => tracing::info!(
            kind,
            name,
            "deleted an import object that is no longer imported"
        ),
        // Already gone (the garbage collector got there first).
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(error) => tracing::warn!(%error, kind, name, "cannot delete; retrying later"),
    }
}

/// Reconciles whenever the import set, the namespaces or the agent's own
/// objects change (someone deleting an import gets it back), and every
/// `resync` anyway.
pub async fn run(
    client: kube::Client,
    mcs_version: &'static str,
    stores: Stores,
    mut sets: watch::Receiver<Option<Arc<proto::ImportSet>>>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let import_resource = resources::service_import(mcs_version);
    loop {
        let set = sets.borrow_and_update().clone();
        if let Some(set) = set {
            reconcile(&client, &import_resource, &stores, &set).await;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = sets.changed() => if changed.is_err() { return },
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> proto::ImportSet {
        let port = |p| proto::Port {
            name: "http".into(),
            protocol: "TCP".into(),
            app_protocol: String::new(),
            port: p,
        };
        let ep = |a: &str| proto::Endpoint {
            address: a.into(),
            ready: true,
            serving: true,
            ..Default::default()
        };
        proto::ImportSet {
            version: 7,
            services: vec![
                proto::ImportedService {
                    namespace: "app".into(),
                    name: "api".into(),
                    r#type: "ClusterSetIP".into(),
                    session_affinity: "None".into(),
                    ports: vec![port(80)],
                    clusters: vec!["a".into(), "b".into()],
                    slices: vec![
                        proto::SourceSlice {
                            cluster: "a".into(),
                            ports: vec![port(8080)],
                            endpoints: vec![ep("10.0.0.1"), ep("fd00::1")],
                        },
                        proto::SourceSlice {
                            cluster: "b".into(),
                            ports: vec![port(80)],
                            endpoints: vec![ep("10.0.1.1")],
                        },
                    ],
                    ..Default::default()
                },
                proto::ImportedService {
                    namespace: "elsewhere".into(),
                    name: "db".into(),
                    ..Default::default()
                },
            ],
            export_conditions: vec![],
            more: false,
        }
    }

    #[test]
    fn one_import_and_a_slice_per_source_cluster_and_family_in_existing_namespaces() {
        let namespaces = BTreeSet::from(["app".to_string()]);
        let d = desired(&set(), &namespaces, "multicluster.x-k8s.io/v1beta1", None);
        assert_eq!(d.imports.len(), 1, "no namespace 'elsewhere' here");
        let (import, status) = &d.imports[&"app/api".parse::<ServiceKey>().unwrap()];
        assert_eq!(import["apiVersion"], "multicluster.x-k8s.io/v1beta1");
        assert_eq!(import["spec"]["ports"][0]["port"], 80);
        assert_eq!(status["clusters"][1]["cluster"], "b");
        let slices: Vec<(&str, &str, u64)> = d
            .slices
            .values()
            .map(|(_, s)| {
                (
                    s["metadata"]["labels"][SOURCE_CLUSTER_LABEL]
                        .as_str()
                        .unwrap(),
                    s["addressType"].as_str().unwrap(),
                    s["ports"][0]["port"].as_u64().unwrap(),
                )
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            slices,
            [("a", "IPv4", 8080), ("a", "IPv6", 8080), ("b", "IPv4", 80)]
        );
        for (_, s) in d.slices.values() {
            assert_eq!(s["metadata"]["labels"][MCS_SERVICE_NAME_LABEL], "api");
            assert_eq!(s["metadata"]["labels"][MANAGED_BY_LABEL], MANAGER);
        }
    }

    #[test]
    fn slice_names_are_stable_and_distinct() {
        assert_eq!(
            slice_name("api", "a", "IPv4"),
            slice_name("api", "a", "IPv4")
        );
        assert_ne!(
            slice_name("a-b", "c", "IPv4"),
            slice_name("a", "b-c", "IPv4")
        );
        assert!(slice_name("api", "a", "IPv4").starts_with("api-"));
    }

    #[test]
    fn covers_ignores_fields_others_own() {
        let existing =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}, "uid": "x"}, "spec": {"t": 1}});
        assert!(covers(
            &existing,
            &json!({"metadata": {"labels": {"a": "1"}}, "spec": {"t": 1}})
        ));
        assert!(!covers(&existing, &json!({"spec": {"t": 2}})));
    }
}
