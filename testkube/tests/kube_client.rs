//! kube-rs's own client, watcher and reflector against testkube.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;
use std::time::Duration;
use testkube::{ApiServer, Options, Resource};

async fn client(server: &ApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn service(name: &str, port: u16) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "app", "labels": {"tier": "web"}},
           "spec": {"ports": [{"port": port}]}})
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start() -> ApiServer {
    let mut options = Options::new(vec![Resource::namespaces(), Resource::services()]);
    options.bookmark_interval = Duration::from_millis(200);
    let server = ApiServer::start(options).await.unwrap();
    server
        .create(
            &Resource::namespaces(),
            json!({"metadata": {"name": "app"}}),
        )
        .unwrap();
    server
}

#[tokio::test]
async fn crud_and_status_through_kube_client() {
    let server = start().await;
    let api: Api<Service> = Api::namespaced(client(&server).await, "app");
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(service("web", 80)).unwrap(),
        )
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert!(created.metadata.resource_version.is_some());
    // Optimistic concurrency: a stale resourceVersion is a 409.
    let mut stale = created.clone();
    stale.metadata.resource_version = Some("1".into());
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ports": [{"port": 81}]}})),
    )
    .await
    .unwrap();
    let err = api
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    // Status goes through the subresource only.
    api.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}})),
    )
    .await
    .unwrap();
    let got = api.get("web").await.unwrap();
    assert_eq!(got.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(got.spec.unwrap().ports.unwrap()[0].port, 81);
    assert!(got.status.unwrap().load_balancer.unwrap().ingress.is_some());
    // Server-side apply creates a missing object.
    let applied: Service = api
        .patch("api", &PatchParams::apply("test"), &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"}, "spec": {"ports": [{"port": 9}]}})))
        .await
        .unwrap();
    assert_eq!(applied.metadata.namespace.as_deref(), Some("app"));
    api.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(matches!(api.get("web").await, Err(kube::Error::Api(s)) if s.code == 404));
    // A namespaced object needs its namespace.
    let other: Api<Service> = Api::namespaced(client(&server).await, "missing");
    let mut x = service("x", 1);
    x["metadata"]["namespace"] = json!("missing");
    let err = other
        .create(&PostParams::default(), &serde_json::from_value(x).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err}"
    );
    let ns: Api<Namespace> = Api::all(client(&server).await);
    assert_eq!(ns.list(&Default::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn reflector_follows_changes_and_recovers_from_410_and_restarts() {
    let mut server = start().await;
    server
        .create(&Resource::services(), service("a", 1))
        .unwrap();
    let api: Api<Service> = Api::all(client(&server).await);
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default().labels("tier=web")),
    )
    .default_backoff()
    .touched_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    let names = |r: &reflector::Store<Service>| {
        let mut n: Vec<String> = r
            .state()
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        n.sort();
        n
    };
    eventually("initial list", || names(&reader) == ["a"]).await;
    server
        .create(&Resource::services(), service("b", 2))
        .unwrap();
    eventually("a watched add", || names(&reader) == ["a", "b"]).await;
    // Leaving the selector is a deletion for this watcher.
    server
        .patch(
            &Resource::services(),
            "app",
            "a",
            json!({"metadata": {"labels": {"tier": "db"}}}),
        )
        .unwrap();
    eventually("a label change out of the selector", || {
        names(&reader) == ["b"]
    })
    .await;

    // 410 Gone: while the server is down, objects change and the history
    // is compacted; the resumed watch gets 410 and the watcher must list
    // again to see what changed meanwhile.
    server.stop().await;
    server
        .create(&Resource::services(), service("c", 3))
        .unwrap();
    server.delete(&Resource::services(), "app", "b").unwrap();
    server.compact();
    server.resume().await.unwrap();
    eventually("re-list after 410", || names(&reader) == ["c"]).await;
    let relists = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch="))
        .count();
    assert!(
        relists >= 2,
        "the watcher listed again: {:?}",
        server.requests()
    );

    // A restart without compaction: the watch resumes where it was.
    server.restart().await.unwrap();
    server
        .create(&Resource::services(), service("d", 4))
        .unwrap();
    eventually("resume after restart", || names(&reader) == ["c", "d"]).await;
    task.abort();
}

#[tokio::test]
async fn watch_from_an_expired_version_gets_410() {
    let server = start().await;
    server
        .create(&Resource::services(), service("a", 1))
        .unwrap();
    server.compact();
    let url = format!("{}/api/v1/services?watch=1&resourceVersion=1", server.url());
    let text = reqwest_get(&url).await;
    let event: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
}

#[tokio::test]
async fn bookmarks_carry_the_current_resource_version() {
    let server = start().await;
    server
        .create(&Resource::services(), service("a", 1))
        .unwrap();
    let url = format!(
        "{}/api/v1/namespaces/app/services?watch=1&resourceVersion=2&allowWatchBookmarks=true&timeoutSeconds=1",
        server.url()
    );
    let text = reqwest_get(&url).await;
    let marks: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "BOOKMARK")
        .collect();
    assert!(!marks.is_empty(), "{text}");
    assert_eq!(marks[0]["object"]["metadata"]["resourceVersion"], "2");
}

/// A plain HTTP GET over a TCP stream (the whole body, until the server
/// closes it).
async fn reqwest_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
