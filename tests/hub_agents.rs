//! The hub in-process on port 0 with real file-backed agents over gRPC:
//! export deltas, full resync after a hub restart, lease expiry and return.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard::agent::{self, AgentConfig};
use switchyard::dns::DnsConfig;
use switchyard::hub::app::{self, HubConfig, RunningHub};
use switchyard::hub::lease::LeaseConfig;
use switchyard::hub::state::State;
use switchyard::model::ServiceKey;
use tokio_util::sync::CancellationToken;

fn cluster_file(id: &str, octet: u8, services: &[&str]) -> String {
    let mut s = format!("cluster: {id}\nregion: r-{id}\nservices:\n");
    for (i, name) in services.iter().enumerate() {
        s.push_str(&format!(
            "  - namespace: app\n    name: {name}\n    ports: [{{name: http, port: 8080}}]\n    endpoints: [{{address: 127.0.{octet}.{}}}]\n",
            i + 1
        ));
    }
    s
}

async fn start_hub(dir: &Path, api: SocketAddr, lease: LeaseConfig) -> RunningHub {
    let config = HubConfig {
        data_dir: dir.join("hub"),
        api,
        dns: "127.0.0.1:0".parse().unwrap(),
        dns_config: DnsConfig::default(),
        lease,
        raft: None,
        tls: None,
    };
    app::start(config, CancellationToken::new()).await.unwrap()
}

fn start_agent(path: &Path, hub: SocketAddr) -> CancellationToken {
    let token = CancellationToken::new();
    let (file, desired) =
        agent::watch::follow(path.to_path_buf(), Duration::from_millis(50), token.clone()).unwrap();
    tokio::spawn(agent::run(
        AgentConfig {
            hub: hub.to_string(),
            spec: file.spec(),
            auth: Default::default(),
            ..Default::default()
        },
        desired,
        tokio::sync::watch::channel(Default::default()).0,
        token.clone(),
    ));
    token
}

/// Waits up to 10 s for the hub's state to satisfy `pred`.
async fn eventually(hub: &RunningHub, what: &str, pred: impl Fn(&Arc<State>) -> bool) {
    let mut view = hub.hub.watch_state();
    let r = tokio::time::timeout(Duration::from_secs(10), view.wait_for(|s| pred(s))).await;
    assert!(
        r.is_ok(),
        "timed out waiting for: {what}; state: {:?}",
        hub.hub.state().backends.keys().collect::<Vec<_>>()
    );
}

fn key(s: &str) -> ServiceKey {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stream_exports_and_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        LeaseConfig::default(),
    )
    .await;
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, cluster_file("a", 51, &["web", "api"])).unwrap();
    std::fs::write(&b, cluster_file("b", 52, &["web"])).unwrap();
    let _ta = start_agent(&a, hub.api_addr);
    let _tb = start_agent(&b, hub.api_addr);

    eventually(&hub, "both clusters export web", |s| {
        s.exports.get(&key("app/web")).is_some_and(|m| m.len() == 2)
    })
    .await;
    let web = &hub.hub.state().backends[&key("app/web")];
    assert_eq!(web.clusters.iter().filter(|c| c.share > 0.0).count(), 2);

    // A delta: cluster a stops exporting api and loses its web endpoint.
    std::fs::write(
        &a,
        cluster_file("a", 51, &["web"])
            .replace("endpoints: [{address: 127.0.51.1}]", "endpoints: []"),
    )
    .unwrap();
    eventually(&hub, "api gone and a has no ready web endpoints", |s| {
        !s.backends.contains_key(&key("app/api"))
            && s.backends[&key("app/web")]
                .clusters
                .iter()
                .any(|c| c.cluster == "a" && !c.healthy)
    })
    .await;
    let web = &hub.hub.state().backends[&key("app/web")];
    let b_share = web
        .clusters
        .iter()
        .find(|c| c.cluster == "b")
        .unwrap()
        .share;
    assert_eq!(b_share, 1.0);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_resyncs_in_full_after_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        LeaseConfig::default(),
    )
    .await;
    let api = hub.api_addr;
    let a = dir.path().join("a.yaml");
    std::fs::write(&a, cluster_file("a", 53, &["web", "api"])).unwrap();
    let _ta = start_agent(&a, api);
    eventually(&hub, "api exported", |s| {
        s.backends.contains_key(&key("app/api"))
    })
    .await;
    hub.stop().await;

    // While the hub is down the cluster stops exporting api.
    std::fs::write(&a, cluster_file("a", 53, &["web"])).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let hub = start_hub(dir.path(), api, LeaseConfig::default()).await;
    // State survived the restart, then the agent's full resync removes api.
    assert!(hub.hub.state().exports.contains_key(&key("app/web")));
    eventually(&hub, "resync removed api", |s| {
        !s.backends.contains_key(&key("app/api"))
    })
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_cluster_loses_its_share_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let lease = LeaseConfig {
        ttl: Duration::from_millis(600),
        renew: Duration::from_millis(150),
        ..LeaseConfig::default()
    };
    let hub = start_hub(dir.path(), "127.0.0.1:0".parse().unwrap(), lease).await;
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, cluster_file("a", 54, &["web"])).unwrap();
    std::fs::write(&b, cluster_file("b", 55, &["web"])).unwrap();
    let _ta = start_agent(&a, hub.api_addr);
    let tb = start_agent(&b, hub.api_addr);
    eventually(&hub, "two exporters", |s| {
        s.exports.get(&key("app/web")).is_some_and(|m| m.len() == 2)
    })
    .await;

    tb.cancel();
    eventually(&hub, "b unreachable", |s| {
        s.clusters.get("b").is_some_and(|c| !c.reachable)
    })
    .await;
    let web = &hub.hub.state().backends[&key("app/web")];
    let bb = web.clusters.iter().find(|c| c.cluster == "b").unwrap();
    assert_eq!(bb.share, 0.0);
    assert!(bb.reason.contains("lease expired"), "{}", bb.reason);

    let _tb = start_agent(&b, hub.api_addr);
    eventually(&hub, "b back", |s| {
        s.backends[&key("app/web")]
            .clusters
            .iter()
            .all(|c| (c.share - 0.5).abs() < 1e-9)
    })
    .await;
    hub.stop().await;
}

/// A TCP proxy to `upstream` that the returned sender freezes: open
/// connections stay open but nothing crosses them any more, either way, and
/// new ones are accepted and never answered. That is what a cut link does
/// (a closed connection or a refused one would tell the agent at once).
async fn freezable_proxy(upstream: SocketAddr) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let mut frozen = rx.clone();
            tokio::spawn(async move {
                if *frozen.borrow() {
                    let _held = client;
                    return std::future::pending::<()>().await;
                }
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::select! {
                    _ = async {
                        tokio::join!(
                            tokio::io::copy(&mut cr, &mut sw),
                            tokio::io::copy(&mut sr, &mut cw)
                        )
                    } => return,
                    _ = frozen.wait_for(|f| *f) => {}
                }
                let _held = (cr, cw, sr, sw);
                std::future::pending::<()>().await
            });
        }
    });
    (addr, tx)
}

/// An agent whose hub replica is cut off (its connection open, nothing
/// coming back) renews through the next replica of its list before its
/// lease runs out. It used to wait for TCP to give up: the renewal had no
/// deadline of its own, and a failed renewal did not even end the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cut_off_from_its_hub_renews_through_the_next_before_the_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let lease = LeaseConfig {
        ttl: Duration::from_millis(1200),
        renew: Duration::from_millis(300),
        ..LeaseConfig::default()
    };
    // Two single-voter hubs stand in for two replicas: each records the
    // sessions it gets.
    let first = start_hub(&dir.path().join("1"), "127.0.0.1:0".parse().unwrap(), lease).await;
    let second = start_hub(&dir.path().join("2"), "127.0.0.1:0".parse().unwrap(), lease).await;
    let (proxy, freeze) = freezable_proxy(first.api_addr).await;
    let file = dir.path().join("a.yaml");
    std::fs::write(&file, cluster_file("a", 56, &["web"])).unwrap();
    let token = CancellationToken::new();
    let (f, desired) =
        agent::watch::follow(file.clone(), Duration::from_millis(50), token.clone()).unwrap();
    tokio::spawn(agent::run(
        AgentConfig {
            hub: format!("{proxy},{}", second.api_addr),
            spec: f.spec(),
            ..Default::default()
        },
        desired,
        tokio::sync::watch::channel(Default::default()).0,
        token.clone(),
    ));
    eventually(&first, "the agent's session on the first hub", |s| {
        s.exports.get(&key("app/web")).is_some_and(|m| m.len() == 1)
    })
    .await;
    assert!(second.hub.state().clusters.is_empty());
    // Sessions that work are not given up: a few renewals go by.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(second.hub.state().clusters.is_empty(), "left a working hub");

    freeze.send_replace(true);
    let frozen = std::time::Instant::now();
    eventually(&second, "the agent's session on the second hub", |s| {
        s.exports.get(&key("app/web")).is_some_and(|m| m.len() == 1)
    })
    .await;
    let moved = frozen.elapsed();
    assert!(
        moved < lease.ttl,
        "renewed through the next hub {moved:?} after the first was cut off (lease {:?})",
        lease.ttl
    );
    token.cancel();
    first.stop().await;
    second.stop().await;
}

/// The playground's `drill hub-leader`: the hub is killed in-process and
/// started again on the same address and data dir; its agent must move to
/// the new one (the old one's connections may linger, answering nothing
/// useful) and stay reachable, its exports intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_move_to_a_hub_restarted_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let lease = LeaseConfig {
        ttl: Duration::from_millis(1500),
        renew: Duration::from_millis(300),
        ..LeaseConfig::default()
    };
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let hub = start_hub(dir.path(), api, lease).await;
    let a = dir.path().join("a.yaml");
    std::fs::write(&a, cluster_file("a", 56, &["web"])).unwrap();
    let _ta = start_agent(&a, api);
    eventually(&hub, "a exports", |s| {
        s.exports.contains_key(&key("app/web"))
    })
    .await;
    hub.kill().await;
    let hub = start_hub(dir.path(), api, lease).await;
    assert!(hub.hub.state().exports.contains_key(&key("app/web")));
    // Well past a lease: still (or again) reachable, because the agent
    // renews with the new hub.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    eventually(&hub, "a reachable on the new hub", |s| {
        s.clusters.get("a").is_some_and(|c| c.reachable)
            && s.backends[&key("app/web")].clusters[0].share == 1.0
    })
    .await;
    hub.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
