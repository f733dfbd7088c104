//! Failover end to end, in network namespaces: the real binary as 3 hub
//! replicas (one raft group, TLS with the hub's own CA), and 3 clusters,
//! each a namespace running its file agent, its east-west gateway and 3
//! HTTP backends of the exported service `app/web`; every host is wired to
//! one bridge, and faults are real: a link set down, `kill -9`.
//!
//! An observer in cluster c1 (e2e/support/traffic.rs) sends 50 HTTP
//! requests a second through c1's gateway (a new connection each, to the
//! listener c1's gateway DNS names) and 50 DNS queries a second to a hub
//! replica, and records which cluster answered each.
//!
//! - cluster link cut: c2's link goes down; the hub's DNS and c1's gateway
//!   stop sending to c2 within lease + 1 s; only requests in flight at the
//!   cut fail; after the link is back c2 gets traffic again.
//! - hub leader kill -9, made by `switchyard drill hub-leader --command`
//!   from inside c1: no request fails (the observer's nor the drill's), no
//!   export and no weight is lost, a write through a survivor succeeds,
//!   the restarted replica catches up.
//! - hub minority partition: a follower cut off; no request fails, every
//!   cluster keeps its traffic, writes through the majority succeed and
//!   reach the gateways, the isolated replica refuses writes and
//!   linearizable reads; after the heal it converges.
//! - planned drain: `switchyard drill drain` (the hub's Drain RPC) from
//!   inside c1: no request fails, the cluster gets no new requests after
//!   the shift, and the drill's own report agrees.
//!
//! Needs root and `ip netns`; without them every test says why on one line
//! and passes. Tests run one at a time (their timing bounds assume the
//! machine is not shared with another topology). `--nocapture` shows the
//! measured figures.

#[path = "support/netns.rs"]
mod topology;
#[path = "support/traffic.rs"]
mod traffic;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use topology::{Net, Procs};
use traffic::{Observer, Plan, Record};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const SERVICE: &str = "app/web";
const NAME: &str = "web.app.svc.clusterset.local";
const MCS: &str = "app/web-global";
/// Hub leases: a cluster whose agent has not renewed for this long is
/// unreachable; agents renew every `RENEW_MS`.
const LEASE_MS: u64 = 1500;
const RENEW_MS: u64 = 500;
/// The failover bound asserted: lease + 1 s.
const BOUND: Duration = Duration::from_millis(LEASE_MS + 1000);
/// Requests and DNS queries per second.
const RATE: u32 = 50;
/// A request without an answer within this long failed (the gateway's
/// connect timeout is 2 s: one dead upstream and a good one fit).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// A request that took this long met a dead upstream first (they take
/// milliseconds otherwise).
const SLOW: Duration = Duration::from_secs(1);

/// How soon a gateway whose hub replica was cut off follows a write made
/// through the others: its HTTP/2 pings (every 1 s, 2 s to answer) find the
/// connection dead, it reopens its configuration stream on the next replica;
/// plus the 1 s of requests (50) the test needs to see the new shares.
const GATEWAY_MOVES: Duration = Duration::from_secs(6);

/// One topology at a time: the timing bounds assume the 2 cores are ours.
static SERIAL: Mutex<()> = Mutex::new(());

struct Hub {
    id: u64,
    host: String,
    api: String,
}

struct Cluster {
    id: String,
    host: String,
    gateway_dns: SocketAddr,
}

/// Hubs, clusters and their processes in namespaces; torn down on drop.
struct World {
    procs: Procs,
    net: Net,
    dir: Option<tempfile::TempDir>,
    logs: PathBuf,
    credentials: PathBuf,
    hubs: Vec<Hub>,
    clusters: Vec<Cluster>,
    /// Endpoint address → cluster.
    owners: HashMap<IpAddr, String>,
    /// c1's gateway listener for the service.
    listener: SocketAddr,
    _serial: MutexGuard<'static, ()>,
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

impl World {
    /// Builds the topology and waits until c1's gateway sends to all three
    /// clusters; `None` (after one line saying why) when namespaces cannot
    /// be made here.
    fn start(tag: &str, subnet: [u8; 3]) -> Option<World> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(why) = topology::available() {
            eprintln!("SKIPPED e2e_netns {tag}: cannot create network namespaces here ({why}); run as root with iproute2");
            return None;
        }
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mut net = Net::create(tag, subnet).expect("create the core namespace");
        net.add_host("ctl", 5).unwrap();
        let mut hubs = Vec::new();
        for id in 1..=3u64 {
            let host = format!("hub{id}");
            let ip = net.add_host(&host, 10 + id as u8).unwrap();
            hubs.push(Hub {
                id,
                host,
                api: format!("{ip}:7700"),
            });
        }
        let mut clusters = Vec::new();
        for i in 1..=3u8 {
            let host = format!("c{i}");
            let ip = net.add_host(&host, 20 + i).unwrap();
            clusters.push(Cluster {
                id: host.clone(),
                host,
                gateway_dns: SocketAddr::new(IpAddr::V4(ip), 5353),
            });
        }
        let mut w = World {
            procs: Procs::default(),
            net,
            credentials: dir.path().join("hub1/admin"),
            dir: Some(dir),
            logs,
            hubs,
            clusters,
            owners: HashMap::new(),
            listener: "0.0.0.0:0".parse().unwrap(),
            _serial: serial,
        };
        w.start_hubs();
        w.start_clusters();
        w.wait_serving();
        eprintln!(
            "[{tag}] topology up in {:.1} s (namespaces {}-*)",
            started.elapsed().as_secs_f64(),
            w.net.prefix
        );
        Some(w)
    }

    fn root(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn hub_name(i: usize) -> String {
        format!("hub{}", i + 1)
    }

    fn start_hubs(&mut self) {
        let peers = self
            .hubs
            .iter()
            .map(|h| format!("{}={}:7800", h.id, self.net.host_ip(&h.host)))
            .collect::<Vec<_>>()
            .join(",");
        // Replicas authenticate each other with the ClusterSet CA from the
        // first election on: made once, given to every replica.
        let ca = self.root().join("ca");
        let made = std::process::Command::new(BIN)
            .args(["hub", "init-ca", "--out"])
            .arg(&ca)
            .status()
            .expect("run switchyard hub init-ca");
        assert!(made.success(), "switchyard hub init-ca failed");
        for i in 0..self.hubs.len() {
            let h = &self.hubs[i];
            let ip = self.net.host_ip(&h.host);
            let data = self.root().join(format!("hub{}", h.id));
            let mut a = args(&[
                "hub",
                "--id",
                &h.id.to_string(),
                "--raft",
                &format!("{ip}:7800"),
                "--api",
                &h.api,
                "--dns",
                &format!("{ip}:5353"),
                "--peers",
                &peers,
                "--lease-ms",
                &LEASE_MS.to_string(),
                "--renew-ms",
                &RENEW_MS.to_string(),
                "--ca-cert",
            ]);
            a.push(ca.join("ca.pem").into_os_string());
            a.push("--ca-key".into());
            a.push(ca.join("ca-key.pem").into_os_string());
            a.push("--data-dir".into());
            a.push(data.into_os_string());
            let host = h.host.clone();
            self.procs.spawn(
                &self.net,
                &self.logs,
                &Self::hub_name(i),
                &host,
                Path::new(BIN),
                a,
            );
        }
        // The first leader makes the CA; every replica then writes admin
        // credentials.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !["ca.pem", "cert.pem", "key.pem"]
            .iter()
            .all(|f| self.credentials.join(f).exists())
        {
            assert!(
                Instant::now() < deadline,
                "hub1 wrote no admin credentials within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.leader(&[0, 1, 2], Duration::from_secs(20));
    }

    /// The hub API list for cluster `i` (0-based): every replica, starting
    /// with replica i, so each replica serves one cluster's agent and
    /// gateway first.
    fn hub_list(&self, i: usize) -> String {
        (0..self.hubs.len())
            .map(|k| self.hubs[(i + k) % self.hubs.len()].api.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_clusters(&mut self) {
        let ca = self.credentials.join("ca.pem");
        for i in 0..self.clusters.len() {
            let (id, host) = (self.clusters[i].id.clone(), self.clusters[i].host.clone());
            let n = i as u8 + 1;
            // Backends on loopback addresses of the cluster's namespace.
            let mut endpoints = Vec::new();
            for k in 0..3u8 {
                let addr = self.net.addr(60 + 10 * n + k);
                self.net.add_loopback_address(&host, addr).unwrap();
                self.owners.insert(IpAddr::V4(addr), id.clone());
                self.procs.spawn(
                    &self.net,
                    &self.logs,
                    &format!("backend-{id}-{k}"),
                    &host,
                    Path::new(BIN),
                    args(&[
                        "backend",
                        "--cluster",
                        &id,
                        "--service",
                        SERVICE,
                        "--pod",
                        &format!("web-{k}"),
                        "--listen",
                        &format!("{addr}:8080"),
                    ]),
                );
                endpoints.push(addr);
            }
            let file = self.root().join(format!("{id}.yaml"));
            let eps: Vec<String> = endpoints
                .iter()
                .enumerate()
                .map(|(k, a)| format!("      - {{address: {a}, pod: web-{k}}}\n"))
                .collect();
            std::fs::write(
                &file,
                format!(
                    "cluster: {id}\nregion: r{n}\nservices:\n  - namespace: app\n    name: web\n    ports:\n      - {{name: http, port: 8080}}\n    endpoints:\n{}",
                    eps.concat()
                ),
            )
            .unwrap();
            let token = self.token(&id, "agent");
            let mut a = args(&["agent", "--file"]);
            a.push(file.into_os_string());
            a.extend(args(&[
                "--hub",
                &self.hub_list(i),
                "--token",
                &token,
                "--ca",
            ]));
            a.push(ca.clone().into_os_string());
            a.push("--identity-dir".into());
            a.push(self.root().join(format!("agent-{id}")).into_os_string());
            self.procs.spawn(
                &self.net,
                &self.logs,
                &format!("agent-{id}"),
                &host,
                Path::new(BIN),
                a,
            );

            // The gateway: outbound listeners from a /28 made local here.
            let cidr = format!("{}/28", self.net.addr(128 + 16 * (n - 1)));
            self.net.add_local_range(&host, &cidr).unwrap();
            let ip = self.net.host_ip(&host);
            let token = self.token(&id, "gateway");
            let mut a = args(&[
                "gateway",
                "--cluster",
                &id,
                "--hub",
                &self.hub_list(i),
                "--token",
                &token,
                "--inbound",
                &format!("{ip}:15443"),
                "--outbound-cidr",
                &cidr,
                "--dns",
                &self.clusters[i].gateway_dns.to_string(),
                "--metrics",
                &format!("{ip}:9090"),
                "--ca",
            ]);
            a.push(ca.clone().into_os_string());
            a.push("--data-dir".into());
            a.push(self.root().join(format!("gateway-{id}")).into_os_string());
            self.procs.spawn(
                &self.net,
                &self.logs,
                &format!("gateway-{id}"),
                &host,
                Path::new(BIN),
                a,
            );
        }
    }

    /// Waits until the hub sees three healthy clusters and c1's gateway
    /// sends requests to each of them.
    fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (ok, out, _) = self.cli(0, &["get", "backends", SERVICE, "-o", "json"]);
            let healthy = ok
                && serde_json::from_str::<serde_json::Value>(&out)
                    .ok()
                    .and_then(|v| {
                        v["clusters"].as_array().map(|a| {
                            a.iter()
                                .filter(|c| c["healthy"] == serde_json::Value::Bool(true))
                                .count()
                        })
                    })
                    == Some(3);
            if healthy {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the hub did not see 3 healthy clusters: {out}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let dns = self.clusters[0].gateway_dns;
        let ns = self.net.ns(&self.clusters[0].host);
        loop {
            let answer =
                traffic::in_netns(&ns, move || traffic::block_on(traffic::resolve(dns, NAME)))
                    .unwrap();
            if let Ok(Some(ip)) = answer.map(|a| a.first().copied()) {
                self.listener = SocketAddr::new(ip, 8080);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "c1's gateway DNS does not name a listener for {NAME}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        loop {
            let counts = self.sample(30);
            if counts.len() == 3 && !counts.contains_key("FAILED") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "c1's gateway does not reach all three clusters: {counts:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `n` sequential requests through c1's gateway: answers per cluster
    /// (`FAILED` for failures).
    fn sample(&self, n: usize) -> BTreeMap<String, usize> {
        let addr = self.listener;
        traffic::in_netns(&self.net.ns(&self.clusters[0].host), move || {
            traffic::block_on(async move {
                let mut counts = BTreeMap::new();
                for _ in 0..n {
                    let c = traffic::http_get(addr, HTTP_TIMEOUT)
                        .await
                        .unwrap_or_else(|_| "FAILED".into());
                    *counts.entry(c).or_default() += 1;
                }
                counts
            })
        })
        .unwrap()
    }

    /// Runs the CLI in `host` against `hub` with the admin credentials.
    fn cli_in(&self, host: &str, hub: &str, a: &[&str]) -> (bool, String, String) {
        let out = self
            .net
            .command(host, Path::new(BIN))
            .args(a)
            .env("SWITCHYARD_HUB", hub)
            .env("SWITCHYARD_CREDENTIALS", &self.credentials)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI from the operator's host against hub replica `i`.
    fn cli(&self, i: usize, a: &[&str]) -> (bool, String, String) {
        self.cli_in("ctl", &self.hubs[i].api, a)
    }

    fn cli_ok(&self, i: usize, a: &[&str]) -> String {
        let (ok, out, err) = self.cli(i, a);
        assert!(
            ok,
            "`switchyard {}` via hub{} failed: {err}",
            a.join(" "),
            i + 1
        );
        out
    }

    fn json(&self, i: usize, a: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(i, a)).unwrap()
    }

    fn token(&self, cluster: &str, role: &str) -> String {
        self.cli_ok(
            0,
            &["token", "create", "--cluster", cluster, "--role", role],
        )
        .trim()
        .to_string()
    }

    /// The index of the leader, asking the replicas in `alive` (one of them).
    fn leader(&self, alive: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            for &i in alive {
                let (ok, out, _) = self.cli(i, &["status", "-o", "json"]);
                if !ok {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                let id = v["leader"].as_u64().unwrap_or(0);
                if let Some(l) = alive.iter().copied().find(|&k| self.hubs[k].id == id) {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {alive:?} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Applies the ServiceImport and a MultiClusterService with `weights`,
    /// and waits until c1's gateway follows them.
    fn apply_mcs(&self, weights: &[(&str, u64)]) {
        let backends: String = weights
            .iter()
            .map(|(c, w)| format!("    - {{cluster: {c}, weight: {w}}}\n"))
            .collect();
        let path = self.root().join("mcs.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {{name: web, namespace: app}}\nspec: {{type: ClusterSetIP, ports: [{{port: 8080}}]}}\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: MultiClusterService\nmetadata: {{name: web-global, namespace: app}}\nspec:\n  serviceImport: {{name: web, namespace: app}}\n  clusterBackends:\n{backends}"
            ),
        )
        .unwrap();
        self.cli_ok(0, &["apply", "-f", path.to_str().unwrap()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let counts = self.sample(100);
            if shares_within(&counts, weights, 0.05) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "c1's gateway does not follow {weights:?}: {counts:?}"
            );
        }
    }

    /// An observer in c1: HTTP through c1's gateway, DNS to hub replica `dns_hub`.
    fn observe(&self, dns_hub: usize) -> Observer {
        let h = &self.hubs[dns_hub];
        Observer::start(Plan {
            netns: self.net.ns(&self.clusters[0].host),
            http: Some(self.listener),
            http_timeout: HTTP_TIMEOUT,
            dns: Some(SocketAddr::new(IpAddr::V4(self.net.host_ip(&h.host)), 5353)),
            dns_name: NAME.to_string(),
            owners: self.owners.clone(),
            rate: RATE,
        })
        .unwrap()
    }

    /// The MultiClusterService's weights as replica `i` holds them
    /// (`consistent`: a linearizable read).
    fn weights_at(&self, i: usize, consistent: bool) -> BTreeMap<String, u64> {
        let mut a = vec!["get", "mcs", MCS, "-o", "json"];
        if consistent {
            a.push("--consistent");
        }
        let v = self.json(i, &a);
        weights_of(&v)
    }

    /// Every export as replica `i` holds it: (cluster, service, endpoints).
    fn exports_at(&self, i: usize, consistent: bool) -> Vec<String> {
        let mut a = vec!["get", "exports", "-o", "json"];
        if consistent {
            a.push("--consistent");
        }
        exports_of(&self.json(i, &a))
    }

    /// The last lines of the hubs', agents' and gateways' logs (printed
    /// when a test fails, by `Drop`).
    /// Starts `switchyard drill ARGS` inside c1: DNS watched on replica
    /// `dns_hub`, HTTP through c1's gateway, a 1 s warm-up, JSON out.
    fn drill(&self, dns_hub: usize, args: &[&str]) -> std::process::Child {
        let hub_dns = SocketAddr::new(IpAddr::V4(self.net.host_ip(&self.hubs[dns_hub].host)), 5353);
        self.net
            .command(&self.clusters[0].host, Path::new(BIN))
            .arg("drill")
            .args(args)
            .args(["--dns", &hub_dns.to_string()])
            .args(["--via", &self.clusters[0].gateway_dns.to_string()])
            .args(["--warmup", "1s", "-o", "json"])
            .env("SWITCHYARD_CREDENTIALS", &self.credentials)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn logs(&self) -> String {
        self.procs.tails(&["hub", "agent", "gateway"], 25)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.procs.kill_all();
        self.net.teardown();
        // SWITCHYARD_E2E_KEEP=1 keeps the data dirs and logs for a look.
        if std::env::var_os("SWITCHYARD_E2E_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("kept {}", dir.keep().display());
            }
        }
    }
}

fn weights_of(mcs: &serde_json::Value) -> BTreeMap<String, u64> {
    mcs["spec"]["clusterBackends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["cluster"].as_str().unwrap_or_default().to_string(),
                b["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// One line per export: cluster, service, ready endpoints, and every
/// endpoint's address, sorted.
fn exports_of(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut eps: Vec<String> = e["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|ep| ep["address"].as_str().unwrap_or_default().to_string())
                .collect();
            eps.sort();
            format!(
                "{} {} ready={} {}",
                e["cluster"].as_str().unwrap_or_default(),
                e["service"].as_str().unwrap_or_default(),
                e["ready"],
                eps.join(",")
            )
        })
        .collect();
    out.sort();
    out
}

/// Whether each cluster's share of `counts` is within `tol` of its weight's.
/// True when only the weighted clusters answered, each within `tol` of its
/// share, or within three standard deviations of it when there are too few
/// samples for `tol` to be meaningful (a drain on a loaded machine can leave
/// a window of 40 requests, where one deviation is 7 points).
fn shares_within(counts: &BTreeMap<String, usize>, weights: &[(&str, u64)], tol: f64) -> bool {
    let total: usize = counts.values().sum();
    let sum: u64 = weights.iter().map(|(_, w)| w).sum();
    total > 0
        && counts.keys().all(|c| weights.iter().any(|(w, _)| w == c))
        && weights.iter().all(|(c, w)| {
            let share = *counts.get(*c).unwrap_or(&0) as f64 / total as f64;
            let want = *w as f64 / sum as f64;
            let sigma = (want * (1.0 - want) / total as f64).sqrt();
            (share - want).abs() <= tol.max(3.0 * sigma)
        })
}

/// Answers per cluster in each `width` window of `[from, to)`.
fn windows(
    rec: &Record,
    from: Instant,
    to: Instant,
    width: Duration,
) -> Vec<BTreeMap<String, usize>> {
    let mut out = Vec::new();
    let mut t = from;
    while t + width <= to {
        out.push(rec.counts(t, t + width));
        t += width;
    }
    out
}

/// No request and no DNS query failed, and all three clusters answered
/// requests in every second from `from` to `to` (`what` names `from`).
fn assert_undisturbed(rec: &Record, from: Instant, to: Instant, what: &str) {
    assert!(
        rec.failures().is_empty(),
        "requests failed: {:?}\n{}",
        rec.failures().first(),
        rec.summary()
    );
    assert!(rec.dns_failures().is_empty(), "{}", rec.summary());
    for (k, win) in windows(rec, from, to, Duration::from_secs(1))
        .iter()
        .enumerate()
    {
        assert_eq!(
            win.len(),
            3,
            "second {k} after {what}: {win:?}\n{}",
            rec.summary()
        );
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// "N ms", or "never".
fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_string(), |d| format!("{} ms", d.as_millis()))
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

#[test]
fn cluster_link_cut_moves_traffic_off_within_the_lease_and_back_after_restore() {
    let Some(w) = World::start("cut", [10, 77, 1]) else {
        return;
    };
    let obs = w.observe(0);
    let began = Instant::now();
    std::thread::sleep(Duration::from_secs(2));

    // Shifts count from before `ip link set down` runs; a request started
    // before it returned may have been in flight when the link went down.
    let cut = Instant::now();
    w.net.cut("c2");
    let cut_done = Instant::now();
    sleep_until(cut + BOUND + Duration::from_secs(3));
    let restored = Instant::now();
    w.net.restore("c2");
    let back = obs.wait_for(Duration::from_secs(20), |r| {
        r.first_http_from("c2", restored).is_some() && r.first_dns_with("c2", restored).is_some()
    });
    std::thread::sleep(Duration::from_millis(500));
    let rec = obs.stop();

    let dns_shift = rec.last_dns_with("c2", cut, restored).unwrap_or_default();
    let http_shift = rec.last_http_from("c2", cut, restored).unwrap_or_default();
    let troubled: Vec<_> = rec
        .troubled(cut, SLOW)
        .into_iter()
        .filter(|s| s.start < restored)
        .collect();
    let tried_dead = troubled
        .iter()
        .map(|s| s.start - cut)
        .max()
        .unwrap_or_default();
    let failed = rec.failures();
    let in_flight = rec
        .http
        .iter()
        .filter(|s| s.start < cut_done && s.end > cut)
        .count();
    let http_back = rec.first_http_from("c2", restored);
    let dns_back = rec.first_dns_with("c2", restored);
    eprintln!(
        "link cut: DNS stopped naming c2 after {} ms, last c2 answer through the gateway: {}, last request slowed by the dead c2 started {} ms after the cut ({} slowed); failed {}/{} ({in_flight} in flight at the cut); after restore c2 back in DNS after {}, through the gateway after {}",
        ms(dns_shift),
        opt_ms(rec.last_http_from("c2", cut, restored)),
        ms(tried_dead),
        troubled.len(),
        failed.len(),
        rec.http.len(),
        opt_ms(dns_back),
        opt_ms(http_back),
    );
    let report = || rec.summary();

    // Before the cut everything answered, from every cluster.
    assert!(
        rec.http_in(began, cut)
            .filter(|s| s.end < cut)
            .all(|s| s.outcome.is_ok()),
        "failures before the cut: {}",
        report()
    );
    assert_eq!(rec.counts(began, cut).len(), 3, "{}", report());
    assert_eq!(rec.dns_counts(began, cut).len(), 3, "{}", report());

    // DNS and the gateway stop sending to c2 within lease + 1 s.
    assert!(
        dns_shift <= BOUND,
        "DNS named c2 {dns_shift:?} after the cut"
    );
    assert!(
        http_shift <= BOUND,
        "c2 answered {http_shift:?} after the cut"
    );
    assert!(
        tried_dead <= BOUND,
        "c1's gateway still tried c2 {tried_dead:?} after the cut: {}",
        report()
    );
    let settled = rec.counts(cut + BOUND, restored);
    assert!(
        !settled.contains_key("c2") && settled.len() == 2,
        "after lease + 1 s: {settled:?}"
    );
    let dns_settled = rec.dns_counts(cut + BOUND, restored);
    assert!(
        !dns_settled.contains_key("c2") && dns_settled.len() == 2,
        "DNS after lease + 1 s: {dns_settled:?}"
    );

    // Only requests in flight at the cut failed: none started after it,
    // and a handful at most (50 a second, each taking milliseconds).
    let late: Vec<_> = failed.iter().filter(|s| s.start >= cut_done).collect();
    assert!(
        late.is_empty(),
        "{} requests started after the cut failed, the first {:?} after it: {:?}\n{}",
        late.len(),
        late.first().map(|s| s.start - cut_done),
        late.first().map(|s| &s.outcome),
        report()
    );
    assert!(
        failed.len() <= 5,
        "{} requests in flight at the cut failed\n{}",
        failed.len(),
        report()
    );
    assert!(rec.dns_failures().is_empty(), "{}", report());

    // The link back: c2 gets traffic again.
    assert!(
        back.is_some(),
        "c2 got no traffic within 20 s of the restore (DNS after {dns_back:?}, gateway after {http_back:?}): {}",
        report()
    );
}

#[test]
fn hub_leader_kill_9_loses_no_request_no_export_and_no_weight() {
    let Some(mut w) = World::start("kill", [10, 77, 2]) else {
        return;
    };
    w.apply_mcs(&[("c1", 50), ("c2", 30), ("c3", 20)]);
    let leader = w.leader(&[0, 1, 2], Duration::from_secs(10));
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let via = survivors[0];
    let exports = w.exports_at(via, true);
    let weights = w.weights_at(via, true);
    assert_eq!(exports.len(), 3, "{exports:?}");
    for (e, c) in exports.iter().zip(["c1", "c2", "c3"]) {
        let eps = e.rsplit(' ').next().unwrap_or("").split(',').count();
        assert!(
            e.starts_with(&format!("{c} {SERVICE} ready=3 ")) && eps == 3,
            "{exports:?}"
        );
    }

    let obs = w.observe(via);
    std::thread::sleep(Duration::from_secs(2));
    // `switchyard drill hub-leader` from inside c1 makes the kill: its
    // --command SIGKILLs the replica the hub names as leader (by the pid
    // files written here); the test restarts it below, so the drill's
    // restore does nothing. The drill's own traffic and report are checked
    // at the end.
    for i in 0..3 {
        let pid = w.procs.pid(&World::hub_name(i)).expect("hub running");
        std::fs::write(w.root().join(format!("hub{}.pid", i + 1)), pid.to_string()).unwrap();
    }
    let kill = format!(
        "kill -9 $(cat {}/hub$SWITCHYARD_DRILL_LEADER.pid)",
        w.root().display()
    );
    let hubs: Vec<&str> = w.hubs.iter().map(|h| h.api.as_str()).collect();
    let drill = w.drill(
        via,
        &[
            "hub-leader",
            "--hub",
            &hubs.join(","),
            "--command",
            &kill,
            "--restore-command",
            "true",
            "--hold",
            "4s",
        ],
    );
    let asked = Instant::now();
    while !w.procs.exited(&World::hub_name(leader)) {
        assert!(
            asked.elapsed() < Duration::from_secs(15),
            "the drill did not kill hub{}",
            leader + 1
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Instant::now();
    let new_leader = w.leader(&survivors, Duration::from_secs(10));
    let elected = killed.elapsed();
    // A write through a survivor.
    let t = Instant::now();
    w.cli_ok(via, &["weights", "set", MCS, "c3=25"]);
    let written = Instant::now();
    sleep_until(killed + BOUND + Duration::from_secs(3));
    let end = Instant::now();
    let rec = obs.stop();
    eprintln!(
        "leader kill -9: hub{} killed, hub{} leads after {} ms; a write took {} ms; failed {}/{}; DNS failed {}/{}",
        leader + 1,
        new_leader + 1,
        ms(elected),
        ms(written - t),
        rec.failures().len(),
        rec.http.len(),
        rec.dns_failures().len(),
        rec.dns.len()
    );
    let report = || rec.summary();
    // No cluster lost its lease to the leader change: all three answered
    // in every second after the kill until the new weights.
    assert_undisturbed(&rec, killed, written, "the kill");
    // The gateway follows the write made after the kill.
    let after = rec.counts(written + Duration::from_secs(1), end);
    let want = [("c1", 50), ("c2", 30), ("c3", 25)];
    assert!(
        shares_within(&after, &want, 0.06),
        "after the write: {after:?}\n{}",
        report()
    );

    // Nothing lost: every export and every weight, plus the new one.
    assert_eq!(w.exports_at(via, true), exports, "exports changed");
    let mut expected = weights.clone();
    expected.insert("c3".into(), 25);
    assert_eq!(w.weights_at(via, true), expected, "weights changed");

    // The drill saw the same: no failed request through c1's gateway, a
    // new leader, nothing lost (the weight written meanwhile is a change,
    // not a loss).
    let out = drill.wait_with_output().unwrap();
    let drill_report = drill_report(&out);
    eprintln!(
        "leader kill -9 (drill hub-leader): detect {} ms, failed {}/{}, DNS failed {}/{}, restored {}, pass {}, notes {}",
        drill_report["detect_ms"],
        drill_report["failed_requests"],
        drill_report["total_requests"],
        drill_report["dns_failures"],
        drill_report["dns_queries"],
        drill_report["restored"],
        drill_report["pass"],
        drill_report["notes"]
    );
    assert!(out.status.success(), "the drill failed: {drill_report}");
    assert_eq!(drill_report["pass"], true, "{drill_report}");
    assert_eq!(drill_report["failed_requests"], 0, "{drill_report}");
    assert_eq!(drill_report["restored"], true, "{drill_report}");
    let detect = drill_report["detect_ms"]
        .as_u64()
        .expect("a new leader seen");
    assert!(detect < 10_000, "{drill_report}");
    let notes = drill_report["notes"].to_string();
    assert!(!notes.contains("lost"), "{drill_report}");

    // The killed replica comes back and catches up (its own state, read
    // locally, not through the leader).
    let name = World::hub_name(leader);
    w.procs.restart(&w.net, Path::new(BIN), &name);
    let restarted = Instant::now();
    loop {
        let (ok, out, _) = w.cli(leader, &["get", "mcs", MCS, "-o", "json"]);
        if ok {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            if weights_of(&v) == expected && w.exports_at(leader, false) == exports {
                break;
            }
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "hub{} did not catch up within 20 s",
            leader + 1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "leader kill -9: hub{} restarted and caught up in {} ms",
        leader + 1,
        ms(restarted.elapsed())
    );
}

#[test]
fn hub_minority_partition_leaves_the_data_plane_alone_and_heals() {
    let Some(w) = World::start("part", [10, 77, 3]) else {
        return;
    };
    w.apply_mcs(&[("c1", 50), ("c2", 30), ("c3", 20)]);
    let leader = w.leader(&[0, 1, 2], Duration::from_secs(10));
    // The first follower: the replica one cluster's agent and gateway
    // talk to first.
    let isolated = (0..3).find(|&i| i != leader).unwrap();
    let majority: Vec<usize> = (0..3).filter(|&i| i != isolated).collect();
    let obs = w.observe(leader);
    std::thread::sleep(Duration::from_secs(2));

    let cut = Instant::now();
    w.net.cut(&w.hubs[isolated].host);
    // Writes through the majority.
    let t = Instant::now();
    w.cli_ok(
        majority[1],
        &["weights", "set", MCS, "c1=20", "c2=30", "c3=50"],
    );
    let written = Instant::now();
    // c1's gateway follows the write (its configuration stream may have
    // been on the isolated replica: it moves to another one).
    let new_weights = [("c1", 20), ("c2", 30), ("c3", 50)];
    let followed = obs.wait_for(GATEWAY_MOVES, |r| {
        let mut after: Vec<_> = r.http_in(written, Instant::now()).collect();
        after.sort_by_key(|s| s.start);
        let last = &after[after.len().saturating_sub(50)..];
        let mut counts = BTreeMap::new();
        for s in last {
            if let Ok(c) = &s.outcome {
                *counts.entry(c.clone()).or_insert(0usize) += 1;
            }
        }
        last.len() == 50 && shares_within(&counts, &new_weights, 0.06)
    });
    let followed_at = Instant::now();
    // The isolated replica refuses writes and linearizable reads, and does
    // not claim to lead.
    let (host, api) = (&w.hubs[isolated].host, &w.hubs[isolated].api);
    let t_refused = Instant::now();
    let (ok, _, refusal) = w.cli_in(host, api, &["weights", "set", MCS, "c1=99"]);
    let refused_after = t_refused.elapsed();
    assert!(!ok, "the isolated replica took a write");
    assert!(
        refusal.contains("majority"),
        "refusal without a reason: {refusal}"
    );
    let (ok, out, _) = w.cli_in(
        host,
        api,
        &["get", "mcs", MCS, "--consistent", "-o", "json"],
    );
    assert!(
        !ok,
        "the isolated replica served a linearizable read: {out}"
    );
    let (ok, out, err) = w.cli_in(host, api, &["status", "-o", "json"]);
    assert!(ok, "status on the isolated replica: {err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let claimed = status["leader"].as_u64().unwrap_or(0);
    assert_ne!(
        claimed, w.hubs[isolated].id,
        "the isolated replica claims to lead: {out}"
    );
    sleep_until(written + BOUND + Duration::from_secs(2));
    sleep_until(followed_at + Duration::from_secs(2));
    let healed = Instant::now();
    w.net.restore(&w.hubs[isolated].host);
    let want: BTreeMap<String, u64> = [("c1", 20), ("c2", 30), ("c3", 50)]
        .iter()
        .map(|(c, n)| (c.to_string(), *n))
        .collect();
    loop {
        let (ok, out, err) = w.cli(isolated, &["get", "mcs", MCS, "-o", "json"]);
        let have = ok.then(|| weights_of(&serde_json::from_str(&out).unwrap()));
        if have.as_ref() == Some(&want) {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(20),
            "hub{} did not converge within 20 s of the heal: it has {have:?} (want {want:?}; the majority has {:?}) {err}",
            isolated + 1,
            w.weights_at(majority[0], true)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let converged = healed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let end = Instant::now();
    let rec = obs.stop();
    eprintln!(
        "minority partition: hub{} cut off (hub{} leads); a write through the majority took {} ms and reached c1's gateway after {}; the isolated replica refused a write after {} ms ({}) and names leader {claimed}; converged {} ms after the heal; failed {}/{}",
        isolated + 1,
        leader + 1,
        ms(written - t),
        opt_ms(followed),
        ms(refused_after),
        refusal.lines().next().unwrap_or("").trim(),
        ms(converged),
        rec.failures().len(),
        rec.http.len()
    );
    let report = || rec.summary();
    // Every cluster keeps its traffic: a hub partition takes no healthy
    // cluster out (its agent renews through another replica).
    assert_undisturbed(&rec, cut, end, "the cut");
    // The hub's DNS (a majority replica) too: no lease ran out.
    let mut t = cut;
    while t + Duration::from_secs(1) <= end {
        let dns = rec.dns_counts(t, t + Duration::from_secs(1));
        assert_eq!(
            dns.len(),
            3,
            "DNS {:?} after the cut: {dns:?}\n{}",
            t - cut,
            report()
        );
        t += Duration::from_secs(1);
    }
    // The write made during the partition reached c1's gateway, and it
    // stayed on it.
    assert!(
        followed.is_some(),
        "c1's gateway did not follow the write within {GATEWAY_MOVES:?}: {:?} since\n{}",
        rec.counts(written, healed),
        report()
    );
    let during = rec.counts(followed_at, healed);
    assert!(
        shares_within(&during, &new_weights, 0.06),
        "c1's gateway during the partition, after the write: {during:?}\n{}",
        report()
    );
    // The refused write is nowhere.
    assert_eq!(w.weights_at(majority[0], true), want);
    assert_eq!(w.weights_at(isolated, true), want);
}

/// The JSON report a finished drill printed.
fn drill_report(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "the drill printed no JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Cluster `id`'s state ("Healthy", "Drained", ...) as replica `i` has it.
fn cluster_state(w: &World, i: usize, id: &str) -> Option<String> {
    let (ok, out, _) = w.cli(i, &["get", "clusters", id, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let one = match &v {
        serde_json::Value::Array(a) => a.iter().find(|c| c["id"] == id)?.clone(),
        other => other.clone(),
    };
    one["state"].as_str().map(String::from)
}

#[test]
fn planned_drain_shifts_without_a_failed_request() {
    let Some(w) = World::start("drain", [10, 77, 4]) else {
        return;
    };
    w.apply_mcs(&[("c1", 50), ("c2", 30), ("c3", 20)]);
    let obs = w.observe(0);
    std::thread::sleep(Duration::from_secs(2));

    // `switchyard drill drain` from inside c1: the hub's Drain RPC, its own
    // traffic through c1's gateway and its report; it restores at its end.
    // The test watches the hub for when c2 is drained and back.
    let drill = w.drill(
        0,
        &[
            "drain",
            "--cluster",
            "c2",
            "--hub",
            &w.hubs[1].api,
            "--lease-ms",
            &LEASE_MS.to_string(),
            "--hold",
            "3s",
        ],
    );
    // Each poll counts from before it asked: the drain took effect at or
    // before the first poll that saw it (up to one poll, ~50 ms, earlier),
    // and was still in force when the last one that saw it asked.
    let started = Instant::now();
    let (mut drained, mut last_drained, mut restored) = (None, None, None);
    while restored.is_none() && started.elapsed() < Duration::from_secs(20) {
        let asked = Instant::now();
        match cluster_state(&w, 2, "c2").as_deref() {
            Some("Drained") => {
                drained.get_or_insert(asked);
                last_drained = Some(asked);
            }
            Some("Healthy") if drained.is_some() => restored = Some(asked),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = drill.wait_with_output().unwrap();
    let (Some(drain), Some(still_drained), Some(undrain)) = (drained, last_drained, restored)
    else {
        panic!(
            "the hub never showed c2 drained and back (drained {drained:?}); the drill said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The polled replica may apply the restore a little after the one c1's
    // gateway follows.
    let drained_until = still_drained - Duration::from_millis(200);
    let back = obs.wait_for(Duration::from_secs(5), |r| {
        r.first_http_from("c2", undrain).is_some() && r.first_dns_with("c2", undrain).is_some()
    });
    std::thread::sleep(Duration::from_millis(500));
    let rec = obs.stop();
    let drill_report = drill_report(&out);

    // The drain is seen (polling) up to 20 ms after it took effect: the
    // shift is measured from there, and bounded by the drill's own SLO (1 s).
    let http_shift = rec.last_http_from("c2", drain, drained_until);
    let dns_shift = rec.last_dns_with("c2", drain, drained_until);
    eprintln!(
        "planned drain (drill drain c2, Drain RPC): drained for {} ms; last c2 request through the gateway {} and last DNS answer naming c2 {} after the hub showed the drain; failed {}/{}; c2 back {} after the last poll that saw the drain; the drill's report: gateway shift {} ms, DNS shift {} ms, failed {}/{}, pass {}",
        ms(undrain - drain),
        opt_ms(http_shift),
        opt_ms(dns_shift),
        rec.failures().len(),
        rec.http.len(),
        opt_ms(rec.first_http_from("c2", still_drained)),
        drill_report["gateway_shift_ms"],
        drill_report["dns_shift_ms"],
        drill_report["failed_requests"],
        drill_report["total_requests"],
        drill_report["pass"],
    );
    let report = || format!("{}\n{drill_report}", rec.summary());
    assert!(
        rec.failures().is_empty(),
        "requests failed: {:?}\n{}",
        rec.failures().first(),
        report()
    );
    assert!(rec.dns_failures().is_empty(), "{}", report());
    assert_eq!(rec.counts(drain - Duration::from_secs(1), drain).len(), 3);
    // No new request to c2 once the drain is 1 s old.
    let shift_bound = Duration::from_secs(1);
    assert!(
        http_shift.unwrap_or_default() <= shift_bound,
        "c2 got a request {http_shift:?} after the drain\n{}",
        report()
    );
    assert!(
        dns_shift.unwrap_or_default() <= shift_bound,
        "DNS named c2 {dns_shift:?} after the drain"
    );
    let while_drained = rec.counts(drain + shift_bound, drained_until);
    assert!(
        shares_within(&while_drained, &[("c1", 50), ("c3", 20)], 0.06),
        "while drained: {while_drained:?}"
    );
    assert!(
        back.is_some(),
        "c2 got nothing back within 5 s of the restore: {}",
        report()
    );
    // The drill agrees: its own traffic through c1's gateway lost nothing.
    assert!(out.status.success(), "the drill failed: {}", report());
    assert_eq!(drill_report["pass"], true, "{}", report());
    assert_eq!(drill_report["failed_requests"], 0, "{}", report());
    assert_eq!(drill_report["restored"], true, "{}", report());
}
