//! End-to-end tests of the real `switchyard` binary: `switchyard up` with
//! its file-backed agents, the CLI against it, DNS checked with a DNS client
//! (`dig` when e2e/setup could install it, and hickory-proto), and HTTP
//! requests on DNS answers reaching backends of the right cluster.
//!
//! Each test runs its own playground on its own loopback block
//! (127.<block>.<cluster>.x) and free ports, so tests run in parallel.

#[path = "support/mod.rs"]
mod support;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::free_port;
use switchyard::dns::client;
use switchyard::playground::ClusterSetConfig;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/seed-mcs.yaml");
const NAME: &str = "api-v1-multi.app.svc.clusterset.local";

struct Playground {
    child: Child,
    dir: tempfile::TempDir,
    api: SocketAddr,
    dns: SocketAddr,
    /// Endpoint address → cluster, from the config.
    owners: HashMap<IpAddr, String>,
    block: u8,
}

impl Playground {
    /// Writes the built-in clusterset moved to 127.<block>.x.x and starts it
    /// with the default network.
    fn start(block: u8) -> Self {
        Self::start_with(block, &[])
    }

    /// As `start`, with extra `up` flags.
    fn start_with(block: u8, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ClusterSetConfig::builtin();
        let mut owners = HashMap::new();
        for c in &mut config.clusters {
            for s in &mut c.services {
                for e in &mut s.endpoints {
                    let IpAddr::V4(v4) = e.address else {
                        unreachable!()
                    };
                    let o = v4.octets();
                    e.address = IpAddr::from([127, block, o[2], o[3]]);
                    owners.insert(e.address, c.cluster.clone());
                }
            }
        }
        let config_path = dir.path().join("clusterset.yaml");
        std::fs::write(&config_path, config.to_yaml()).unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut pg = Self {
            child: spawn_up(dir.path(), &config_path, api, dns, flags),
            dir,
            api,
            dns,
            owners,
            block,
        };
        pg.wait_up();
        pg
    }

    fn wait_up(&mut self) {
        let stdout = self.child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("playground is up") => return,
                Ok(_) => {}
                Err(_) => panic!("playground did not come up within 60 s"),
            }
        }
    }

    fn cluster_file(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/clusters")
            .join(format!("{id}.yaml"))
    }

    /// Runs a CLI command against this playground.
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("SWITCHYARD_HUB", self.api.to_string())
            // The playground runs over TLS with credentials it made itself.
            .env(
                "SWITCHYARD_CREDENTIALS",
                self.dir.path().join("data/hub/admin"),
            )
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "{args:?} failed: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Queries `n` times; counts answers by cluster, checking each answer
    /// holds the addresses of exactly one cluster.
    async fn tally(&self, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            let msg = client::query(self.dns, NAME, RecordType::A, false)
                .await
                .unwrap();
            assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
            assert!(msg.metadata.authoritative, "answers are authoritative");
            let clusters: std::collections::BTreeSet<&String> = msg
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => self.owners.get(&IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect();
            assert_eq!(
                clusters.len(),
                1,
                "one cluster per answer: {:?}",
                msg.answers
            );
            *counts
                .entry(clusters.into_iter().next().unwrap().clone())
                .or_default() += 1;
        }
        counts
    }

    /// Polls until every one of 20 answers comes from `only`; returns how long it took.
    async fn until_only(&self, only: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let t = self.tally(20).await;
            if t.len() == 1 && t.contains_key(only) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "answers still {t:?} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sigint(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "playground did not stop on Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_up(dir: &Path, config: &Path, api: SocketAddr, dns: SocketAddr, flags: &[&str]) -> Child {
    Command::new(BIN)
        .args(["up", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(config)
        .args(["--api", &api.to_string(), "--dns", &dns.to_string()])
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// `GET /` on addr:port with a plain HTTP/1.0 request; the JSON body.
fn http_get(addr: IpAddr, port: u16) -> serde_json::Value {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(body).unwrap()
}

fn dig_available() -> bool {
    Command::new("dig").arg("-v").output().is_ok()
}

fn dig(dns: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_weights_split_dns_answers_and_requests_reach_the_right_cluster() {
    let pg = Playground::start(41);

    // Before any MultiClusterService: equal shares over the three clusters.
    let before = pg.tally(300).await;
    assert_eq!(before.len(), 3, "{before:?}");

    let (ok, out, err) = pg.cli(&["apply", "-f", SEED]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "serviceimport app/api-v1-multi created\nmulticlusterservice app/api-v1-global created\n"
    );

    let counts = pg.tally(2000).await;
    let west = *counts.get("us-west-1").unwrap_or(&0) as f64 / 2000.0;
    let east = *counts.get("us-east-1").unwrap_or(&0) as f64 / 2000.0;
    assert!(
        (west - 0.60).abs() <= 0.03,
        "us-west-1 share {west}: {counts:?}"
    );
    assert!(
        (east - 0.40).abs() <= 0.03,
        "us-east-1 share {east}: {counts:?}"
    );
    assert!(!counts.contains_key("eu-central-1"), "{counts:?}");

    // A request on a DNS answer reaches a backend of the cluster that
    // answer belongs to.
    for _ in 0..10 {
        let msg = client::query(pg.dns, NAME, RecordType::A, true)
            .await
            .unwrap();
        let RData::A(a) = &msg.answers[0].data else {
            panic!("not A")
        };
        let addr = IpAddr::V4(a.0);
        let body = http_get(addr, 8080);
        assert_eq!(body["cluster"].as_str(), Some(pg.owners[&addr].as_str()));
        assert_eq!(body["service"], "app/api-v1-multi");
    }

    // An independent DNS client agrees (when e2e/setup installed dig).
    if dig_available() {
        let out = dig(pg.dns, &[NAME, "A"]);
        assert!(
            out.contains("status: NOERROR") && out.contains(" aa"),
            "{out}"
        );
        assert!(out.contains(&format!("127.{}.", pg.block)), "{out}");
        let out = dig(
            pg.dns,
            &["+tcp", "SRV", "_http._tcp.db.app.svc.clusterset.local"],
        );
        assert!(
            out.contains("db-0.us-west-1.db.app.svc.clusterset.local."),
            "{out}"
        );
        let out = dig(pg.dns, &["TXT", "dns-version.clusterset.local"]);
        assert!(out.contains("IN\tTXT"), "{out}");
        let out = dig(pg.dns, &["A", "nope.app.svc.clusterset.local"]);
        assert!(
            out.contains("status: NXDOMAIN") && out.contains("SOA"),
            "{out}"
        );
        let out = dig(pg.dns, &["A", "example.com"]);
        assert!(out.contains("status: REFUSED"), "{out}");
    } else {
        eprintln!("dig not installed (run e2e/setup): checked with hickory-proto only");
    }

    // The headless service answers with every cluster's ready endpoints,
    // and each per-endpoint name with one address.
    let msg = client::query(pg.dns, "db.app.svc.clusterset.local", RecordType::A, false)
        .await
        .unwrap();
    assert_eq!(msg.answers.len(), 6);
    let msg = client::query(
        pg.dns,
        "db-1.eu-central-1.db.app.svc.clusterset.local",
        RecordType::A,
        false,
    )
    .await
    .unwrap();
    assert_eq!(msg.answers.len(), 1);
    // The reserved <clusterid>.<svc> name is not answered with addresses.
    let msg = client::query(
        pg.dns,
        "us-west-1.db.app.svc.clusterset.local",
        RecordType::A,
        false,
    )
    .await
    .unwrap();
    assert!(msg.answers.is_empty());

    // `get backends` reports weights, shares and addresses per cluster.
    let b = pg.json(&["get", "backends", "app/api-v1-multi", "-o", "json"]);
    let west = b["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == "us-west-1")
        .unwrap();
    assert_eq!(west["weight"], 60);
    assert!((west["share"].as_f64().unwrap() - 0.6).abs() < 1e-9);
    assert_eq!(west["healthy"], true);
    assert_eq!(west["addresses"].as_array().unwrap().len(), 2);
    let m = pg.json(&["get", "mcs", "app/api-v1-global", "-o", "json"]);
    assert_eq!(m["kind"], "MultiClusterService");
    assert_eq!(m["apiVersion"], "gateway.networking.k8s.io/v1beta1");
    assert_eq!(m["spec"]["clusterBackends"][1]["weight"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_endpoint_loss_shift_answers_within_a_second_and_bad_input_changes_nothing() {
    let mut pg = Playground::start_with(42, &["--network", "flat"]);
    assert!(pg.cli(&["apply", "-f", SEED]).0);

    // weights set: all traffic to us-east-1 within 1 s.
    let (ok, out, err) = pg.cli(&[
        "weights",
        "set",
        "app/api-v1-global",
        "us-west-1=0",
        "us-east-1=40",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("weights set"), "{out}");
    let took = pg.until_only("us-east-1", Duration::from_secs(1)).await;
    eprintln!("weights set → answers changed in {took:?}");

    // Remove every endpoint of us-east-1 from its file: its share moves to
    // us-west-1 (weight 0 here, so restore it first) within 1 s.
    assert!(
        pg.cli(&["weights", "set", "app/api-v1-global", "us-west-1=60"])
            .0
    );
    let path = pg.cluster_file("us-east-1");
    let mut file: switchyard::agent::ClusterFile =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for s in &mut file.services {
        if s.name == "api-v1-multi" {
            s.endpoints.clear();
        }
    }
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let took = pg.until_only("us-west-1", Duration::from_secs(1)).await;
    eprintln!("endpoints removed → answers moved in {took:?}");
    let b = pg.json(&["get", "backends", "app/api-v1-multi", "-o", "json"]);
    let east = b["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == "us-east-1")
        .unwrap();
    assert_eq!(east["healthy"], false);
    assert_eq!(east["share"], 0.0);
    assert_eq!(east["reason"], "no ready endpoints");
    let (_, table, _) = pg.cli(&["get", "backends", "app/api-v1-multi"]);
    assert!(table.contains("no ready endpoints"), "{table}");

    // Bad input: one line naming the problem, non-zero exit, nothing changes.
    let seed = std::fs::read_to_string(SEED).unwrap();
    let before_mcs = pg.json(&["get", "mcs", "app/api-v1-global", "-o", "json"]);
    let before_backends = pg.json(&["get", "backends", "-o", "json"]);
    let bad = pg.dir.path().join("bad.yaml");
    let cases = [
        (
            seed.replace("weight: 40", "weight: -5"),
            "weight -5 for cluster us-east-1 is negative",
        ),
        (
            seed.replace("cluster: us-east-1", "cluster: ap-south-9"),
            "\"ap-south-9\" is not a member of the ClusterSet",
        ),
        ("kind: [unclosed\n".to_string(), "malformed YAML"),
        (
            seed.replace(
                "    name: api-v1-multi\n    namespace: app\n  clusterBackends",
                "    name: missing\n    namespace: app\n  clusterBackends",
            ),
            "ServiceImport app/missing does not exist",
        ),
        (
            seed.replace("weight: 60", "weight: 0")
                .replace("weight: 40", "weight: 0"),
            "every cluster weight is 0",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(&bad, text).unwrap();
        let (ok, _, err) = pg.cli(&["apply", "-f", bad.to_str().unwrap()]);
        assert!(!ok, "bad input accepted: {needle}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{err} does not name {needle}");
    }
    let (ok, _, err) = pg.cli(&["weights", "set", "app/api-v1-global", "us-west-1=-1"]);
    assert!(!ok && err.contains("negative"), "{err}");
    assert_eq!(
        pg.json(&["get", "mcs", "app/api-v1-global", "-o", "json"]),
        before_mcs
    );
    assert_eq!(pg.json(&["get", "backends", "-o", "json"]), before_backends);
    assert_eq!(
        pg.tally(50).await.keys().collect::<Vec<_>>(),
        vec!["us-west-1"],
        "answers stay as they were"
    );

    // Malformed DNS packets never stop the server.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed_byte = 7u8;
    for len in 0..200usize {
        let junk: Vec<u8> = (0..len)
            .map(|i| {
                seed_byte = seed_byte.wrapping_mul(31).wrapping_add(i as u8);
                seed_byte
            })
            .collect();
        udp.send_to(&junk, pg.dns).unwrap();
        if len % 20 == 0 {
            if let Ok(mut t) = TcpStream::connect(pg.dns) {
                let _ = t.write_all(&(len as u16).to_be_bytes());
                let _ = t.write_all(&junk);
            }
        }
    }
    assert_eq!(
        pg.tally(5).await.len(),
        1,
        "server still answers after malformed packets"
    );

    // Ctrl-C stops cleanly.
    let status = pg.sigint();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_kill_9_keeps_all_state() {
    let mut pg = Playground::start(43);
    assert!(pg.cli(&["apply", "-f", SEED]).0);
    assert!(
        pg.cli(&[
            "weights",
            "set",
            "app/api-v1-global",
            "us-west-1=70",
            "us-east-1=30"
        ])
        .0
    );
    let before = pg.json(&["get", "mcs", "app/api-v1-global", "-o", "json"]);

    pg.child.kill().unwrap(); // SIGKILL
    pg.child.wait().unwrap();
    let config = pg.dir.path().join("clusterset.yaml");
    // Restart without --config: the cluster files in the data dir are kept.
    pg.child = Command::new(BIN)
        .args(["up", "--data-dir"])
        .arg(pg.dir.path().join("data"))
        .args(["--api", &pg.api.to_string(), "--dns", &pg.dns.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = config;
    pg.wait_up();
    let after = pg.json(&["get", "mcs", "app/api-v1-global", "-o", "json"]);
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(
        after["metadata"]["creationTimestamp"],
        before["metadata"]["creationTimestamp"]
    );
    let counts = pg.tally(200).await;
    let west = *counts.get("us-west-1").unwrap_or(&0) as f64 / 200.0;
    assert!((west - 0.7).abs() <= 0.03, "{counts:?}");
}

/// A sample of `metrics` (the text exposition of `addr`'s /metrics): the
/// value of the line that starts with `series`, 0 when absent.
fn metric(addr: SocketAddr, series: &str) -> f64 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_network_carries_each_connection_to_the_weighted_cluster_over_mtls() {
    let pg = Playground::start_with(44, &["--network", "gateway"]);
    let b = pg.block;
    let gateway_ip = |n: u8| IpAddr::from([127, b, n, 250]);

    // Each cluster's gateway is registered with its inbound address.
    let gateways = pg.json(&["get", "gateways", "-o", "json"]);
    let inbound: HashMap<&str, &str> = gateways
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["cluster"].as_str().unwrap(),
                g["inbound"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        inbound["us-west-1"],
        SocketAddr::new(gateway_ip(1), 15443).to_string()
    );
    assert_eq!(inbound.len(), 3, "{gateways}");

    assert!(pg.cli(&["apply", "-f", SEED]).0);
    // us-east-1's listener for the service, and its DNS naming it.
    let imports = pg.json(&["get", "imports", "--cluster", "us-east-1", "-o", "json"]);
    let import = imports
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "api-v1-multi")
        .unwrap();
    let listener: SocketAddr = import["spec"]["ports"][0]["gatewayListener"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(listener.port(), 8080);
    let east_dns = SocketAddr::new(gateway_ip(2), pg.dns.port());
    let msg = client::query(east_dns, NAME, RecordType::A, false)
        .await
        .unwrap();
    let answers: Vec<String> = msg.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(answers, vec![listener.ip().to_string()]);

    // The gateway routes on the seed once eu-central-1 gets nothing.
    let started = Instant::now();
    loop {
        let sample: Vec<serde_json::Value> =
            (0..30).map(|_| http_get(listener.ip(), 8080)).collect();
        if sample.iter().all(|r| r["cluster"] != "eu-central-1") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the seed weights never reached us-east-1's gateway"
        );
    }

    let west_metrics = SocketAddr::new(gateway_ip(1), 9090);
    let east_metrics = SocketAddr::new(gateway_ip(2), 9090);
    let west_inbound = r#"switchyard_gateway_connections_total{service="app/api-v1-multi",cluster="us-west-1",direction="inbound"}"#;
    let east_to_west = r#"switchyard_gateway_connections_total{service="app/api-v1-multi",cluster="us-west-1",direction="outbound"}"#;
    let before = (
        metric(west_metrics, west_inbound),
        metric(east_metrics, east_to_west),
    );

    let ip = listener.ip();
    let counts = tokio::task::spawn_blocking(move || {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..3000 {
            let body = http_get(ip, 8080);
            assert_eq!(body["service"], "app/api-v1-multi");
            *counts
                .entry(body["cluster"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        counts
    })
    .await
    .unwrap();
    let west = *counts.get("us-west-1").unwrap_or(&0);
    let east = *counts.get("us-east-1").unwrap_or(&0);
    assert_eq!(west + east, 3000, "{counts:?}");
    assert!((west as f64 / 3000.0 - 0.60).abs() <= 0.03, "{counts:?}");
    assert!((east as f64 / 3000.0 - 0.40).abs() <= 0.03, "{counts:?}");
    // Every us-west-1 connection left us-east-1's gateway for us-west-1's
    // and came in over its mTLS listener.
    let after = (
        metric(west_metrics, west_inbound),
        metric(east_metrics, east_to_west),
    );
    assert_eq!((after.0 - before.0) as usize, west, "{counts:?}");
    assert_eq!((after.1 - before.1) as usize, west, "{counts:?}");

    // A TLS client without a ClusterSet certificate gets nothing.
    let handshakes = r#"switchyard_gateway_tls_handshake_failures_total{direction="inbound"}"#;
    assert_eq!(metric(west_metrics, handshakes), 0.0);
    assert_eq!(
        tls_without_certificate(SocketAddr::new(gateway_ip(1), 15443)).await,
        None
    );
    assert_eq!(metric(west_metrics, handshakes), 1.0);
}

/// Connects to a gateway's inbound listener over TLS without a client
/// certificate (trusting any server); what the first read returns.
async fn tls_without_certificate(addr: SocketAddr) -> Option<String> {
    use tokio::io::AsyncReadExt;
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("8080.api-v1-multi.app.svc.clusterset.local")
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into()),
        _ => None,
    }
}

/// `switchyard drill` against a running playground (lease 1.5 s): a planned
/// drain loses no request, a lost cluster stops getting traffic within
/// lease + 1 s by DNS and by the gateways, a killed hub loses no request,
/// export or weight; every drill restores by itself, with the JSON report
/// carrying the figures.
#[test]
fn drills_measure_failover_and_restore() {
    let pg = Playground::start_with(71, &["--lease-ms", "1500", "--renew-ms", "500"]);
    let data = pg.dir.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, _, err) = pg.cli(&["apply", "-f", SEED]);
    assert!(ok, "{err}");
    let drill = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["drill"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--playground", data, "-o", "json", "--warmup", "1s"]);
        let (_, out, err) = pg.cli(&all);
        let report: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: no JSON report ({e}): {out}\n{err}"));
        eprintln!("{args:?}: {report}");
        report
    };
    let num = |r: &serde_json::Value, key: &str| r[key].as_u64();

    let r = drill(&["drain", "--cluster", "us-west-1"]);
    assert_eq!(r["pass"], true, "{r}");
    assert_eq!(num(&r, "failed_requests"), Some(0));
    assert!(num(&r, "total_requests").unwrap() > 50);
    assert!(num(&r, "gateway_shift_ms").unwrap() <= 1000);
    assert!(num(&r, "dns_shift_ms").unwrap() <= 1000);
    assert_eq!(r["restored"], true);

    let r = drill(&["cluster-down", "--cluster", "us-east-1"]);
    assert_eq!(r["pass"], true, "{r}");
    for key in ["detect_ms", "dns_shift_ms", "gateway_shift_ms"] {
        let v = num(&r, key).unwrap_or_else(|| panic!("{key} missing: {r}"));
        assert!(v <= 2500, "{key} {v} ms > lease + 1 s");
    }
    // The other gateways retry a refused connection on another cluster.
    assert_eq!(num(&r, "failed_requests"), Some(0), "{r}");
    assert!(r["answered_by"]["us-east-1"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["restored"], true);

    let weights = pg.json(&["get", "mcs", "app/api-v1-global", "-o", "json"])["spec"].clone();
    let r = drill(&["hub-leader"]);
    assert_eq!(r["pass"], true, "{r}");
    assert_eq!(num(&r, "failed_requests"), Some(0), "{r}");
    assert_eq!(r["restored"], true);
    assert_eq!(
        pg.json(&["get", "mcs", "app/api-v1-global", "-o", "json"])["spec"],
        weights
    );

    // Everything is back: no drill left anything behind.
    let clusters = pg.json(&["get", "clusters", "-o", "json"]);
    for c in clusters.as_array().unwrap() {
        assert_eq!(c["state"], "Healthy", "{c}");
    }
    let (ok, out, err) = pg.cli(&["drill", "restore", "--playground", data]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "nothing to restore");

    // Bad input names the problem.
    let (ok, _, err) = pg.cli(&[
        "drill",
        "drain",
        "--cluster",
        "nowhere",
        "--playground",
        data,
    ]);
    assert!(!ok);
    assert!(err.contains("no cluster \"nowhere\""), "{err}");
}
