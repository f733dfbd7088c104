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

fn served() -> Vec<Resource> {
    vec![
        Resource::namespaces(),
        Resource::services(),
        Resource::endpoint_slices(),
        service_exports("v1alpha1"),
        service_exports("v1beta1"),
    ]
}

async fn start_hub(dir: &std::path::Path) -> RunningHub {
    let config = HubConfig {
        data_dir: dir.join("hub"),
        api: "127.0.0.1:0".parse().unwrap(),
        dns: "127.0.0.1:0".parse().unwrap(),
        dns_config: DnsConfig::default(),
        lease: LeaseConfig::default(),
        raft: None,
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
    server
        .create(&Resource::services(), service("api"))
        .unwrap();
    server
        .create(
            &slices,
            slice("api-1", "api", &[("10.1.0.1", true), ("10.1.0.2", true)]),
        )
        .unwrap();
    server
        .create(&service_exports("v1beta1"), export("api"))
        .unwrap();
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
        conditions(&server, "v1beta1", "api") == ["Valid=True/Valid", "Ready=True/Exported"]
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
    ])
    .await;
    let uid = server
        .get(&Resource::namespaces(), "", "kube-system")
        .unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .create(&Resource::services(), service("api"))
        .unwrap();
    server
        .create(
            &Resource::endpoint_slices(),
            slice("api-1", "api", &[("10.2.0.1", true)]),
        )
        .unwrap();
    server
        .create(&service_exports("v1alpha1"), export("api"))
        .unwrap();
    let _agent = start_agent(&server, &hub, None);
    eventually_state(&hub, "exported under the kube-system UID", |s| {
        ready(s, &uid, "api").is_some_and(|r| r.len() == 1)
    })
    .await;
    eventually("conditions on the v1alpha1 object", || {
        conditions(&server, "v1alpha1", "api") == ["Valid=True/Valid", "Ready=True/Exported"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_recover_after_410_and_after_an_api_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let mut server = start_cluster(served()).await;
    let slices = Resource::endpoint_slices();
    server
        .create(&Resource::services(), service("api"))
        .unwrap();
    server
        .create(&slices, slice("api-1", "api", &[("10.3.0.1", true)]))
        .unwrap();
    server
        .create(&service_exports("v1beta1"), export("api"))
        .unwrap();
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
