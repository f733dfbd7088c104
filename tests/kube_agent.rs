//! The Kubernetes agent's real kube-rs code against testkube (a test API
//! server speaking list/watch over HTTP), streaming to an in-process hub:
//! the export lifecycle, endpoint churn, MCS conditions, the cluster ID, and
//! watch recovery after a 410 and after an API server restart.

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use switchyard::agent::k8s::{self, KubeAgentConfig};
use switchyard::dns::DnsConfig;
use switchyard::hub::app::{self, HubConfig, RunningHub};
use switchyard::hub::lease::LeaseConfig;
use switchyard::hub::state::State;
use switchyard::model::ServiceKey;
use testkube::{ApiServer, Options, Resource};
use tokio_util::sync::CancellationToken;

fn service_exports(version: &str) -> Resource {
    Resource::new(
        "multicluster.x-k8s.io",
        version,
        "serviceexports",
        "ServiceExport",
        true,
    )
    .with_status()
}

fn service_imports(version: &str) -> Resource {
    Resource::new(
        "multicluster.x-k8s.io",
        version,
        "serviceimports",
        "ServiceImport",
        true,
    )
    .with_status()
}

fn served() -> Vec<Resource> {
    vec![
        Resource::namespaces(),
        Resource::services(),
        Resource::endpoint_slices(),
        service_exports("v1alpha1"),
        service_exports("v1beta1"),
        service_imports("v1alpha1"),
        service_imports("v1beta1"),
    ]
}

async fn start_hub(dir: &std::path::Path) -> RunningHub {
    start_hub_with(dir, LeaseConfig::default()).await
}

async fn start_hub_with(dir: &std::path::Path, lease: LeaseConfig) -> RunningHub {
    let config = HubConfig {
        data_dir: dir.join("hub"),
        api: "127.0.0.1:0".parse().unwrap(),
        dns: "127.0.0.1:0".parse().unwrap(),
        dns_config: DnsConfig::default(),
        lease,
        raft: None,
        tls: None,
    };
    app::start(config, CancellationToken::new()).await.unwrap()
}

/// An API server with the kube-system and app namespaces.
async fn start_cluster(resources: Vec<Resource>) -> ApiServer {
    let mut options = Options::new(resources);
    options.bookmark_interval = Duration::from_millis(200);
    let server = ApiServer::start(options).await.unwrap();
    for ns in ["kube-system", "app"] {
        server
            .create(&Resource::namespaces(), json!({"metadata": {"name": ns}}))
            .unwrap();
    }
    server
}

fn start_agent(server: &ApiServer, hub: &RunningHub, cluster: Option<&str>) -> CancellationToken {
    let token = CancellationToken::new();
    let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let config = KubeAgentConfig {
        hub: hub.api_addr.to_string(),
        cluster: cluster.map(str::to_string),
        ..Default::default()
    };
    let stop = token.clone();
    tokio::spawn(async move {
        if let Err(e) = k8s::run(client, config, stop).await {
            panic!("agent failed: {e}");
        }
    });
    token
}

fn service(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "app"},
           "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn slice(name: &str, service: &str, ready: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = ready
        .iter()
        .map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}}))
        .collect();
    json!({"metadata": {"name": name, "namespace": "app",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// Creates Service `name`, its EndpointSlice `<name>-1` with `endpoints`
/// (address, ready), and its ServiceExport in `version`.
fn export_service(server: &ApiServer, version: &str, name: &str, endpoints: &[(&str, bool)]) {
    server.create(&Resource::services(), service(name)).unwrap();
    server
        .create(
            &Resource::endpoint_slices(),
            slice(&format!("{name}-1"), name, endpoints),
        )
        .unwrap();
    server
        .create(&service_exports(version), export(name))
        .unwrap();
}

fn export(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "app"}})
}

async fn eventually_state(hub: &RunningHub, what: &str, pred: impl Fn(&Arc<State>) -> bool) {
    let mut view = hub.hub.watch_state();
    let r = tokio::time::timeout(Duration::from_secs(10), view.wait_for(|s| pred(s))).await;
    assert!(r.is_ok(), "timed out waiting for: {what}");
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ready endpoint addresses `cluster` exports for `app/name`, if exported.
fn ready(state: &State, cluster: &str, name: &str) -> Option<Vec<String>> {
    let key: ServiceKey = format!("app/{name}").parse().unwrap();
    let e = state.exports.get(&key)?.get(cluster)?;
    Some(e.ready_endpoints().map(|p| p.address.to_string()).collect())
}

/// `type=status/reason` of each condition on a ServiceExport.
fn conditions(server: &ApiServer, version: &str, name: &str) -> Vec<String> {
    let Some(obj) = server.get(&service_exports(version), "app", name) else {
        return vec![];
    };
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    format!(
                        "{}={}/{}",
                        c["type"].as_str().unwrap(),
                        c["status"].as_str().unwrap(),
                        c["reason"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_lifecycle_with_endpoint_churn_and_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let server = start_cluster(served()).await;
    let slices = Resource::endpoint_slices();
    export_service(
        &server,
        "v1beta1",
        "api",
        &[("10.1.0.1", true), ("10.1.0.2", true)],
    );
    let _agent = start_agent(&server, &hub, Some("c1"));

    eventually_state(&hub, "api exported with two ready endpoints", |s| {
        ready(s, "c1", "api").is_some_and(|r| r.len() == 2)
    })
    .await;
    let state = hub.hub.state();
    let key: ServiceKey = "app/api".parse().unwrap();
    let e = &state.exports[&key]["c1"];
    assert_eq!(e.ports[0].port, 80);
    assert_eq!(e.target_port(&e.ports[0]), 8080);
    assert!(
        e.created_unix_ms > 0,
        "from the ServiceExport's creationTimestamp"
    );
    eventually("Valid and Ready on the ServiceExport", || {
        conditions(&server, "v1beta1", "api")
            == [
                "Valid=True/Valid",
                "Ready=True/Exported",
                "Conflict=False/NoConflicts",
            ]
    })
    .await;

    // Endpoint churn: one endpoint stops being ready, a new one appears.
    server
        .replace(
            &slices,
            slice(
                "api-1",
                "api",
                &[("10.1.0.1", false), ("10.1.0.2", true), ("10.1.0.3", true)],
            ),
        )
        .unwrap();
    eventually_state(&hub, "churn reaches the hub", |s| {
        ready(s, "c1", "api") == Some(vec!["10.1.0.2".into(), "10.1.0.3".into()])
    })
    .await;

    // Exports that cannot be valid get the MCS reasons, and are not exported.
    server
        .create(&service_exports("v1beta1"), export("ghost"))
        .unwrap();
    let mut ext = service("ext");
    ext["spec"] = json!({"type": "ExternalName", "externalName": "db.example.com"});
    server.create(&Resource::services(), ext).unwrap();
    server
        .create(&service_exports("v1beta1"), export("ext"))
        .unwrap();
    eventually("NoService and InvalidServiceType", || {
        conditions(&server, "v1beta1", "ghost")
            .first()
            .map(String::as_str)
            == Some("Valid=False/NoService")
            && conditions(&server, "v1beta1", "ext")
                .first()
                .map(String::as_str)
                == Some("Valid=False/InvalidServiceType")
    })
    .await;
    assert_eq!(
        conditions(&server, "v1beta1", "ghost")[1],
        "Ready=False/Failed"
    );
    assert!(ready(&hub.hub.state(), "c1", "ghost").is_none());

    // The Service appears later: the export becomes valid on its own.
    server
        .create(&Resource::services(), service("ghost"))
        .unwrap();
    eventually_state(&hub, "ghost exported once its Service exists", |s| {
        ready(s, "c1", "ghost").is_some()
    })
    .await;

    // Deleting the ServiceExport withdraws the export.
    server
        .delete(&service_exports("v1beta1"), "app", "api")
        .unwrap();
    eventually_state(&hub, "api withdrawn", |s| ready(s, "c1", "api").is_none()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_id_is_the_kube_system_uid_and_old_mcs_crds_work() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    // A cluster with only the v1alpha1 MCS CRDs.
    let server = start_cluster(vec![
        Resource::namespaces(),
        Resource::services(),
        Resource::endpoint_slices(),
        service_exports("v1alpha1"),
        service_imports("v1alpha1"),
    ])
    .await;
    let uid = server
        .get(&Resource::namespaces(), "", "kube-system")
        .unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    export_service(&server, "v1alpha1", "api", &[("10.2.0.1", true)]);
    let _agent = start_agent(&server, &hub, None);
    eventually_state(&hub, "exported under the kube-system UID", |s| {
        ready(s, &uid, "api").is_some_and(|r| r.len() == 1)
    })
    .await;
    eventually("conditions on the v1alpha1 object", || {
        conditions(&server, "v1alpha1", "api")
            == [
                "Valid=True/Valid",
                "Ready=True/Exported",
                "Conflict=False/NoConflicts",
            ]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_recover_after_410_and_after_an_api_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let mut server = start_cluster(served()).await;
    let slices = Resource::endpoint_slices();
    export_service(&server, "v1beta1", "api", &[("10.3.0.1", true)]);
    let _agent = start_agent(&server, &hub, Some("c3"));
    eventually_state(&hub, "first export", |s| {
        ready(s, "c3", "api") == Some(vec!["10.3.0.1".into()])
    })
    .await;

    // Down, changed, history compacted: the resumed watches get 410 Gone
    // and must list again to see the change.
    server.stop().await;
    server
        .replace(&slices, slice("api-1", "api", &[("10.3.0.2", true)]))
        .unwrap();
    server
        .create(&Resource::services(), service("web"))
        .unwrap();
    server
        .create(&service_exports("v1beta1"), export("web"))
        .unwrap();
    server.compact();
    server.resume().await.unwrap();
    eventually_state(&hub, "changes made during the outage arrive", |s| {
        ready(s, "c3", "api") == Some(vec!["10.3.0.2".into()]) && ready(s, "c3", "web").is_some()
    })
    .await;

    // A plain restart: watches resume from their resourceVersion.
    server.restart().await.unwrap();
    server
        .replace(&slices, slice("api-1", "api", &[("10.3.0.3", true)]))
        .unwrap();
    eventually_state(&hub, "changes after a restart arrive", |s| {
        ready(s, "c3", "api") == Some(vec!["10.3.0.3".into()])
    })
    .await;
}

/// `cluster -> [ready addresses]` of the imported slices of app/`name`.
fn imported_slices(server: &ApiServer, name: &str) -> Vec<(String, Vec<String>)> {
    slices_by(server, name, |e| {
        e["addresses"][0].as_str().unwrap().to_string()
    })
}

/// Each imported slice's source cluster and its endpoints' `ready`.
fn slice_readiness(server: &ApiServer, name: &str) -> Vec<(String, Vec<bool>)> {
    slices_by(server, name, |e| e["conditions"]["ready"] == true)
}

/// Each imported slice of `name`: its source cluster and `each` of its
/// endpoints, sorted.
fn slices_by<T: Ord>(
    server: &ApiServer,
    name: &str,
    each: impl Fn(&Value) -> T,
) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = server
        .list(&Resource::endpoint_slices())
        .iter()
        .filter(|s| s["metadata"]["labels"]["multicluster.kubernetes.io/service-name"] == name)
        .map(|s| {
            let cluster = s["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]
                .as_str()
                .unwrap()
                .to_string();
            let endpoints = s["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(&each)
                .collect();
            (cluster, endpoints)
        })
        .collect();
    out.sort();
    out
}

fn import_clusters(server: &ApiServer, name: &str) -> Option<Vec<String>> {
    let si = server.get(&service_imports("v1beta1"), "app", name)?;
    Some(
        si.pointer("/status/clusters")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| c["cluster"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn condition(server: &ApiServer, name: &str, type_: &str) -> Option<(String, String, String)> {
    let obj = server.get(&service_exports("v1beta1"), "app", name)?;
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
                c["message"].as_str().unwrap().to_string(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_import_each_other_and_conflicts_show_on_both() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_with(
        dir.path(),
        LeaseConfig {
            ttl: Duration::from_millis(1500),
            renew: Duration::from_millis(300),
            grace: Duration::from_millis(1500),
        },
    )
    .await;
    let c1 = start_cluster(served()).await;
    let c2 = start_cluster(served()).await;
    for (server, ip) in [(&c1, "10.1.0.1"), (&c2, "10.2.0.1")] {
        export_service(server, "v1beta1", "api", &[(ip, true)]);
    }
    let _a1 = start_agent(&c1, &hub, Some("c1"));
    let a2 = start_agent(&c2, &hub, Some("c2"));

    // Each cluster gets a ServiceImport backed by both, and one slice per
    // source cluster, owned by the ServiceImport.
    for server in [&c1, &c2] {
        eventually("imports in both clusters", || {
            import_clusters(server, "api") == Some(vec!["c1".into(), "c2".into()])
                && imported_slices(server, "api")
                    == [
                        ("c1".into(), vec!["10.1.0.1".into()]),
                        ("c2".into(), vec!["10.2.0.1".into()]),
                    ]
        })
        .await;
        let si = server
            .get(&service_imports("v1beta1"), "app", "api")
            .unwrap();
        let uid = si["metadata"]["uid"].as_str().unwrap();
        assert_eq!(si["spec"]["type"], "ClusterSetIP");
        assert_eq!(si["spec"]["ports"][0]["port"], 80);
        for s in server.list(&Resource::endpoint_slices()) {
            if s["metadata"]["labels"]["multicluster.kubernetes.io/service-name"] == "api" {
                assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], uid);
                assert_eq!(
                    s["ports"][0]["port"], 8080,
                    "the source cluster's target port"
                );
            }
        }
    }
    // No conflict yet: both say so.
    eventually("NoConflicts on both exports", || {
        [&c1, &c2].iter().all(|s| {
            condition(s, "api", "Conflict").is_some_and(|c| c.0 == "False" && c.1 == "NoConflicts")
        })
    })
    .await;

    // c2 turns its Service headless: c1's export is older and wins the type;
    // both exports carry the conflict, naming the dissenting cluster.
    c2.patch(
        &Resource::services(),
        "app",
        "api",
        json!({"spec": {"clusterIP": "None"}}),
    )
    .unwrap();
    eventually("TypeConflict on both exports", || {
        [&c1, &c2].iter().all(|s| {
            condition(s, "api", "Conflict")
                .is_some_and(|c| c.0 == "True" && c.1 == "TypeConflict" && c.2.contains("c2"))
        })
    })
    .await;
    c2.patch(
        &Resource::services(),
        "app",
        "api",
        json!({"spec": {"clusterIP": null}}),
    )
    .unwrap();

    // Endpoint changes in c2 reach c1's imported slice.
    c2.replace(
        &Resource::endpoint_slices(),
        slice("api-1", "api", &[("10.2.0.1", true), ("10.2.0.2", true)]),
    )
    .unwrap();
    eventually("c2's new endpoint imported in c1", || {
        imported_slices(&c1, "api")
            .contains(&("c2".into(), vec!["10.2.0.1".into(), "10.2.0.2".into()]))
    })
    .await;

    // A deleted import comes back (the agent owns it).
    c1.delete(&service_imports("v1beta1"), "app", "api")
        .unwrap();
    eventually("the import is recreated", || {
        imported_slices(&c1, "api").len() == 2
    })
    .await;

    // Namespace sameness: a service in a namespace c1 lacks is not imported
    // there, and appears once the namespace does.
    c2.create(
        &Resource::namespaces(),
        json!({"metadata": {"name": "other"}}),
    )
    .unwrap();
    let mut other = service("db");
    other["metadata"]["namespace"] = json!("other");
    c2.create(&Resource::services(), other).unwrap();
    c2.create(
        &service_exports("v1beta1"),
        json!({"metadata": {"name": "db", "namespace": "other"}}),
    )
    .unwrap();
    eventually("db imported in c2", || {
        c2.get(&service_imports("v1beta1"), "other", "db").is_some()
    })
    .await;
    assert!(c1.get(&service_imports("v1beta1"), "other", "db").is_none());
    c1.create(
        &Resource::namespaces(),
        json!({"metadata": {"name": "other"}}),
    )
    .unwrap();
    eventually("db imported in c1 once the namespace exists", || {
        c1.get(&service_imports("v1beta1"), "other", "db").is_some()
    })
    .await;

    // c2's agent goes away: once its lease expires, c1 keeps c2's slice
    // with its endpoints not ready, and after the grace period stops
    // importing it; the ServiceImport stays (c1 still serves it).
    a2.cancel();
    eventually("c2's endpoints not ready once its lease expired", || {
        slice_readiness(&c1, "api")
            == [("c1".into(), vec![true]), ("c2".into(), vec![false, false])]
    })
    .await;
    eventually("c2's slice removed after the grace period", || {
        imported_slices(&c1, "api") == [("c1".into(), vec!["10.1.0.1".into()])]
    })
    .await;

    // c1 withdraws its export: nothing serves app/api any more except the
    // unreachable c2, whose export the hub still holds.
    c1.delete(&service_exports("v1beta1"), "app", "api")
        .unwrap();
    eventually("c1's own slice removed", || {
        imported_slices(&c1, "api").is_empty()
    })
    .await;
}

fn multi_cluster_services() -> Resource {
    Resource::new(
        "switchyard.io",
        "v1alpha1",
        "multiclusterservices",
        "MultiClusterService",
        true,
    )
    .with_status()
}

fn accepted(server: &ApiServer, name: &str) -> Option<(String, String, String)> {
    let obj = server.get(&multi_cluster_services(), "app", name)?;
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")
        .map(|c| {
            (
                c["status"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
                c["message"].as_str().unwrap().to_string(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_cluster_services_are_relayed_and_get_accepted_or_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let mut resources = served();
    resources.push(multi_cluster_services());
    let server = start_cluster(resources).await;
    export_service(&server, "v1beta1", "api", &[("10.5.0.1", true)]);
    let mcs = |name: &str, cluster: &str| {
        json!({"metadata": {"name": name, "namespace": "app"},
               "spec": {"serviceImport": {"name": "api"},
                        "clusterBackends": [{"cluster": cluster, "weight": 3}]}})
    };
    server
        .create(&multi_cluster_services(), mcs("weights", "c5"))
        .unwrap();
    server
        .create(&multi_cluster_services(), mcs("typo", "c-five"))
        .unwrap();
    let _agent = start_agent(&server, &hub, Some("c5"));

    eventually("Accepted on the good one, Invalid on the bad one", || {
        accepted(&server, "weights").is_some_and(|c| c.0 == "True")
            && accepted(&server, "typo").is_some_and(|c| c.0 == "False" && c.1 == "Invalid")
    })
    .await;
    let why = accepted(&server, "typo").unwrap().2;
    assert!(
        why.contains("c-five"),
        "the message names the unknown cluster: {why}"
    );
    let key: ServiceKey = "app/weights".parse().unwrap();
    let state = hub.hub.state();
    assert_eq!(
        state.mcs[&key].metadata.annotations["switchyard.io/relayed-from"],
        "c5"
    );
    let api: ServiceKey = "app/api".parse().unwrap();
    assert_eq!(
        state.backends[&api].multi_cluster_service.as_deref(),
        Some("app/weights")
    );

    // Deleted in the cluster: deleted at the hub.
    server
        .delete(&multi_cluster_services(), "app", "weights")
        .unwrap();
    eventually_state(&hub, "the relayed MultiClusterService is gone", |s| {
        !s.mcs.contains_key(&key)
    })
    .await;
}

/// A derived Service: name, clusterIP, uid, [(port, targetPort)].
type Derived = (String, String, String, Vec<(u64, u64)>);

/// The derived Services in the gateway's namespace.
fn derived_services(server: &ApiServer) -> Vec<Derived> {
    let mut out: Vec<_> = server
        .list(&Resource::services())
        .iter()
        .filter(|s| s["metadata"]["namespace"] == "switchyard")
        .map(|s| {
            let ports = s["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["port"].as_u64().unwrap(),
                        p["targetPort"].as_u64().unwrap(),
                    )
                })
                .collect();
            (
                s["metadata"]["name"].as_str().unwrap().to_string(),
                s["spec"]["clusterIP"].as_str().unwrap_or("").to_string(),
                s["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                ports,
            )
        })
        .collect();
    out.sort();
    out
}

/// A gateway in port mode (in pods): the agent derives, per import, a
/// Service selecting the gateway pods with the hub's ClusterSetIP and the
/// gateway's listener ports, names that address in the ServiceImport,
/// recreates the Service when the hub moves the address, and deletes it
/// with the import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_in_port_mode_gets_a_derived_service_per_import() {
    use switchyard::hub::state::Command;
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let east = start_cluster(served()).await;
    let west = start_cluster(served()).await;
    west.create(
        &Resource::namespaces(),
        json!({"metadata": {"name": "switchyard"}}),
    )
    .unwrap();
    export_service(&east, "v1beta1", "api", &[("10.1.0.1", true)]);
    let _east_agent = start_agent(&east, &hub, Some("east"));
    let west_stop = CancellationToken::new();
    {
        let client =
            kube::Client::try_from(kube::Config::new(west.url().parse().unwrap())).unwrap();
        let config = KubeAgentConfig {
            hub: hub.api_addr.to_string(),
            cluster: Some("west".into()),
            gateway_pods: Some(
                k8s::derived::GatewayPods::new(
                    "switchyard",
                    "app.kubernetes.io/name=switchyard-gateway",
                )
                .unwrap(),
            ),
            ..Default::default()
        };
        let stop = west_stop.clone();
        tokio::spawn(async move { k8s::run(client, config, stop).await.unwrap() });
    }
    eventually_state(&hub, "both clusters registered", |s| {
        s.clusters.contains_key("west") && s.backends.contains_key(&"app/api".parse().unwrap())
    })
    .await;
    let register = |cidr: &str| Command::RegisterGateway {
        cluster: "west".into(),
        inbound: "192.0.2.10:15443".into(),
        outbound_cidr: cidr.into(),
        outbound_ports: "20000-20999".into(),
    };
    hub.hub.propose(&register("10.96.0.128/28")).await.unwrap();

    eventually("a derived Service for app/api", || {
        let d = derived_services(&west);
        d.len() == 1 && d[0].1 == "10.96.0.129" && d[0].3 == [(80, 20000)]
    })
    .await;
    let service = west
        .list(&Resource::services())
        .into_iter()
        .find(|s| s["metadata"]["namespace"] == "switchyard")
        .unwrap();
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/name"],
        "switchyard-gateway"
    );
    assert_eq!(
        service["metadata"]["labels"]["multicluster.kubernetes.io/service-name"],
        "api"
    );
    assert_eq!(
        service["metadata"]["labels"]["switchyard.io/import-namespace"],
        "app"
    );
    let si = west.get(&service_imports("v1beta1"), "app", "api").unwrap();
    assert_eq!(si["spec"]["ips"], json!(["10.96.0.129"]));
    let first_uid = derived_services(&west)[0].2.clone();

    // The hub moves the ClusterSetIP (a new range): the Service is created
    // again with the new address (a ClusterIP cannot change in place).
    hub.hub.propose(&register("10.96.1.0/28")).await.unwrap();
    eventually("the derived Service recreated on the new address", || {
        let d = derived_services(&west);
        d.len() == 1 && d[0].1 == "10.96.1.1" && d[0].2 != first_uid
    })
    .await;
    eventually("the ServiceImport names the new address", || {
        west.get(&service_imports("v1beta1"), "app", "api")
            .is_some_and(|si| si["spec"]["ips"] == json!(["10.96.1.1"]))
    })
    .await;

    // The export goes away: the import and its derived Service with it.
    east.delete(&service_exports("v1beta1"), "app", "api")
        .unwrap();
    eventually("the derived Service deleted with the import", || {
        derived_services(&west).is_empty()
            && west
                .get(&service_imports("v1beta1"), "app", "api")
                .is_none()
    })
    .await;
    west_stop.cancel();
}
