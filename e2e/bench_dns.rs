//! Benchmark, not a test (run with `--ignored`, see e2e/bench-dns):
//! ClusterSet DNS against NSD 4.6 and Knot DNS 3.2 (Debian) serving the same
//! names, with dnsperf, on the same machine, in the same run.
//!
//! The clusterset: N services (`s<i>.bench`) each exported by 3 clusters
//! with 2 endpoints each, served by a real `switchyard hub` fed by three
//! `switchyard agent --file` processes; each answer names one cluster's 2
//! endpoints, picked by weight. NSD and Knot serve a zone with the same
//! names, 2 A records each (the same answer size). Every server gets the
//! machine's 2 cores (NSD `server-count: 2` with `reuseport`, Knot's
//! defaults, which already use a worker per core). NSD's response rate
//! limiting is off (it would drop most NXDOMAIN answers to one client
//! address after 200/s); Knot has none by default.
//!
//! Per size and round, each server in turn (order rotating):
//! - **A**: dnsperf, 4 clients, A queries for random existing names, as
//!   fast as they are answered: queries/s, lost, average latency;
//! - **mix**: the same with 10% of the names nonexistent (NXDOMAIN), plus a
//!   TCP dnsperf alongside sending a tenth of the UDP rate reached in **A**;
//! - **latency**: p50/p99 of every query at a fixed rate (`BENCH_RATE`,
//!   default 20,000/s) from dnsperf's per-query log;
//! - server CPU seconds per 100,000 answered queries in **A**.
//!
//! Then switchyard alone, under churn: a fourth cluster speaking the agent
//! protocol (register, lease renewals, the export stream) exports the first
//! 1,000 services too and rewrites one of their endpoints 1,000 times a
//! second (`BENCH_CHURN`), in deltas of 10 every 10 ms, while dnsperf runs
//! **A** and **latency** again; each round pairs a quiet run with a
//! churned one. A probe service (`probe.lag`, exported by that cluster
//! alone) gets a new address every 100 ms and is queried every millisecond
//! until the answer shows it: the time from sending the delta to the first
//! answer carrying it is the answer lag (gRPC, raft commit, apply, backend
//! computation, DNS publish).
//!
//! `BENCH_SIZES` (default `1000,10000,100000`), `BENCH_ROUNDS` (3),
//! `BENCH_SECS` (5), `BENCH_RATE`, `BENCH_ONLY` (a server's name),
//! `BENCH_CHURN` (changes/s, 1000), `BENCH_CHURN_BATCH` (changes per
//! message, 10), `BENCH_NSD_REUSEPORT` (`yes`), `SWITCHYARD_BIN` (another
//! build of switchyard to run).
//!
//! Before the churned rounds, the churn runs alone for `BENCH_SECS`: the
//! hub's CPU over that window, per change, is the control plane's cost.
//! `BENCH_CHURN_ONLY=1` measures just that (no dnsperf at all).

#[path = "support/bench.rs"]
mod bench;
#[path = "support/mod.rs"]
mod support;

use bench::{cpu_seconds, env_or, median, quiet, Processes};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchyard::dns::client;
use switchyard::model::{Endpoint, Export, Port, ServiceType, SessionAffinity};
use switchyard::proto;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The switchyard binary run: this build's, or `SWITCHYARD_BIN` (another
/// build, to compare two in alternation with the same harness).
fn bin() -> String {
    std::env::var("SWITCHYARD_BIN").unwrap_or_else(|_| BIN.to_string())
}
const CLUSTERS: usize = 3;
const ZONE: &str = "clusterset.local";

/// The i-th service's name.
fn name(i: usize) -> String {
    format!("s{i}.bench.svc.{ZONE}")
}

/// Endpoint `e` (0 or 1) of service `i` in cluster `c`: unique, loopback
/// (nothing connects to them).
fn endpoint(c: usize, i: usize, e: usize) -> String {
    let k = i * 2 + e;
    format!(
        "127.{}.{}.{}",
        16 + c * 8 + (k >> 16),
        (k >> 8) & 255,
        k & 255
    )
}

/// A server under test.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    /// switchyard's hub API (for the churn agent).
    api: Option<String>,
    /// The processes answering queries (CPU is counted for them).
    pids: Vec<u32>,
    _processes: Processes,
}

/// Waits until `addr` answers the last service's name.
async fn until_serving(addr: SocketAddr, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(msg) = client::query(addr, &name(n - 1), RecordType::A, false).await {
            if msg.metadata.response_code == ResponseCode::NoError && msg.answers.len() == 2 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what} does not serve {n} names");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_switchyard(dir: &Path, n: usize) -> Server {
    let api = format!("127.0.0.1:{}", support::free_port());
    let raft = format!("127.0.0.1:{}", support::free_port());
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let mut p = Processes(Vec::new());
    p.0.push(
        quiet(
            Command::new(bin())
                .args(["hub", "--id", "1", "--raft", &raft, "--api", &api])
                .args(["--peers", &format!("1={raft}")])
                .args(["--dns", &addr.to_string(), "--insecure"])
                .arg("--data-dir")
                .arg(dir.join("hub")),
        )
        .spawn()
        .unwrap(),
    );
    let hub = p.0[0].id();
    for c in 0..CLUSTERS {
        let mut file = format!("cluster: c{c}\nservices:\n");
        for i in 0..n {
            let _ = writeln!(
                file,
                "  - {{namespace: bench, name: s{i}, ports: [{{name: http, port: 80}}], endpoints: [{{address: {}}}, {{address: {}}}]}}",
                endpoint(c, i, 0),
                endpoint(c, i, 1)
            );
        }
        let path = dir.join(format!("c{c}.yaml"));
        std::fs::write(&path, file).unwrap();
        p.0.push(
            quiet(
                Command::new(bin())
                    .args(["agent", "--hub", &api, "--insecure", "--file"])
                    .arg(&path),
            )
            .spawn()
            .unwrap(),
        );
    }
    until_serving(addr, n, "switchyard").await;
    Server {
        name: "switchyard",
        addr,
        api: Some(api),
        pids: vec![hub],
        _processes: p,
    }
}

/// The same names as a zone file: each with 2 A records.
fn write_zone(path: &Path, n: usize) {
    let mut z = format!(
        "$ORIGIN {ZONE}.\n$TTL 5\n@ SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 5\n@ NS ns\nns A 127.0.0.1\n"
    );
    for i in 0..n {
        let _ = writeln!(z, "s{i}.bench.svc A {}", endpoint(0, i, 0));
        let _ = writeln!(z, "s{i}.bench.svc A {}", endpoint(0, i, 1));
    }
    std::fs::write(path, z).unwrap();
}

async fn start_knot(dir: &Path, zone: &Path, n: usize) -> Server {
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let conf = dir.join("knot.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  listen: {}@{}\n  rundir: {d}\ntemplate:\n  - id: default\n    storage: {d}\n    journal-content: none\nzone:\n  - domain: {ZONE}\n    file: {}\nlog:\n  - target: stderr\n    any: error\n",
            addr.ip(),
            addr.port(),
            zone.display(),
            d = dir.display()
        ),
    )
    .unwrap();
    let child = quiet(Command::new("knotd").arg("-c").arg(&conf))
        .spawn()
        .expect("knotd is installed (bash e2e/bench-dns installs knot)");
    let pid = child.id();
    let p = Processes(vec![child]);
    until_serving(addr, n, "knot").await;
    Server {
        name: "knot",
        addr,
        api: None,
        pids: vec![pid],
        _processes: p,
    }
}

async fn start_nsd(dir: &Path, zone: &Path, n: usize) -> Server {
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let conf = dir.join("nsd.conf");
    // `BENCH_NSD_REUSEPORT=no`: NSD's two servers share one socket (as
    // switchyard's workers do) instead of one `SO_REUSEPORT` socket each.
    let reuseport = std::env::var("BENCH_NSD_REUSEPORT").unwrap_or_else(|_| "yes".into());
    std::fs::write(
        &conf,
        format!(
            "server:\n  ip-address: {}@{}\n  port: {}\n  server-count: 2\n  reuseport: {reuseport}\n  username: \"\"\n  database: \"\"\n  zonesdir: {d}\n  pidfile: {d}/nsd.pid\n  xfrdfile: {d}/xfrd.state\n  zonelistfile: {d}/zone.list\n  logfile: {d}/nsd.log\n  verbosity: 0\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\nremote-control:\n  control-enable: no\nzone:\n  name: {ZONE}\n  zonefile: {}\n",
            addr.ip(),
            addr.port(),
            addr.port(),
            zone.display(),
            d = dir.display()
        ),
    )
    .unwrap();
    let child = quiet(Command::new("nsd").args(["-d", "-c"]).arg(&conf))
        .spawn()
        .expect("nsd is installed (bash e2e/bench-dns installs nsd)");
    let p = Processes(vec![child]);
    until_serving(addr, n, "nsd").await;
    // NSD forks its servers: count the whole process tree.
    let pids = descendants(p.0[0].id());
    Server {
        name: "nsd",
        addr,
        api: None,
        pids,
        _processes: p,
    }
}

/// `pid` and every process below it.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        i += 1;
    }
    all
}

/// A dnsperf query file: `count` random names of `n`, `nx_percent` of them
/// nonexistent.
fn query_file(path: &Path, n: usize, nx_percent: u64, count: usize) {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut q = String::new();
    for _ in 0..count {
        let r = next();
        if r % 100 < nx_percent {
            let _ = writeln!(q, "nx{}.bench.svc.{ZONE} A", r % 1_000_000);
        } else {
            let _ = writeln!(q, "{} A", name((r >> 8) as usize % n));
        }
    }
    std::fs::write(path, q).unwrap();
}

/// What one dnsperf run reported.
#[derive(Default, Clone, Copy)]
struct Perf {
    qps: f64,
    sent: f64,
    lost: f64,
    avg_ms: f64,
}

fn field(out: &str, label: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn dnsperf_command(addr: SocketAddr, file: &Path, secs: u64) -> Command {
    let mut c = Command::new("dnsperf");
    c.args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(file)
        .args(["-l", &secs.to_string(), "-t", "2"]);
    c
}

fn parse(out: &std::process::Output) -> Perf {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dnsperf failed: {text}");
    Perf {
        qps: field(&text, "Queries per second:"),
        sent: field(&text, "Queries sent:"),
        lost: field(&text, "Queries lost:"),
        avg_ms: field(&text, "Average Latency (s):") * 1000.0,
    }
}

/// UDP, 4 clients, as fast as answers come.
fn run_udp(addr: SocketAddr, file: &Path, secs: u64) -> Perf {
    let out = dnsperf_command(addr, file, secs)
        .args(["-c", "4"])
        .output()
        .expect("dnsperf is installed (bash e2e/bench-dns installs it)");
    parse(&out)
}

/// UDP as [`run_udp`] plus TCP at `tcp_rate` queries/s alongside; the
/// two runs' figures added up (latency: the UDP run's).
fn run_mix(addr: SocketAddr, file: &Path, secs: u64, tcp_rate: f64) -> Perf {
    let tcp = dnsperf_command(addr, file, secs)
        .args([
            "-m",
            "tcp",
            "-c",
            "1",
            "-Q",
            &format!("{}", tcp_rate.max(1.0) as u64),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let udp = run_udp(addr, file, secs);
    let tcp = parse(&tcp.wait_with_output().unwrap());
    eprintln!(
        "  mix: UDP {:.0} q/s (lost {}), TCP {:.0} q/s (lost {})",
        udp.qps, udp.lost, tcp.qps, tcp.lost
    );
    Perf {
        qps: udp.qps + tcp.qps,
        sent: udp.sent + tcp.sent,
        lost: udp.lost + tcp.lost,
        avg_ms: udp.avg_ms,
    }
}

/// p50 and p99 (ms) at `rate` queries/s, from dnsperf's per-query log.
fn run_latency(addr: SocketAddr, file: &Path, secs: u64, rate: u64) -> (f64, f64) {
    let out = dnsperf_command(addr, file, secs)
        .args(["-c", "4", "-Q", &rate.to_string(), "-v"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (
        percentile(&mut v, 0.50) * 1000.0,
        percentile(&mut v, 0.99) * 1000.0,
    )
}

/// Services the churn cluster exports (the first ones of the set).
const CHURN_SERVICES: usize = 1000;
/// Endpoint changes per batch: 10 by default (one batch every 10 ms at
/// 1,000/s), `BENCH_CHURN_BATCH` otherwise (50: what the Kubernetes agent's
/// 50 ms debounce sends at 1,000 changes/s).
fn churn_batch() -> usize {
    env_or("BENCH_CHURN_BATCH", 10).max(1) as usize
}

/// The churn cluster's export of `service` ("ns/name") on port 80.
fn export(service: &str, addresses: &[std::net::Ipv4Addr]) -> Export {
    Export {
        cluster: "churn".into(),
        service: service.parse().expect("a valid service key"),
        service_type: ServiceType::ClusterSetIP,
        session_affinity: SessionAffinity::None,
        ports: vec![Port {
            name: "http".into(),
            protocol: "TCP".into(),
            app_protocol: String::new(),
            port: 80,
        }],
        endpoint_ports: Vec::new(),
        endpoints: addresses
            .iter()
            .map(|a| Endpoint::ready((*a).into()))
            .collect(),
        created_unix_ms: 0,
    }
}

/// The churn cluster's export of service `i` at `generation`: 2 endpoints,
/// the first one's address moving with the generation.
fn churn_export(i: usize, generation: u64) -> Export {
    let moving =
        std::net::Ipv4Addr::new(127, 64 + (generation % 64) as u8, (i >> 8) as u8, i as u8);
    let fixed = std::net::Ipv4Addr::new(127, 63, (i >> 8) as u8, i as u8);
    export(&format!("bench/s{i}"), &[moving, fixed])
}

/// The probe's export: one endpoint at `addr`.
fn probe_export(addr: std::net::Ipv4Addr) -> Export {
    export("lag/probe", &[addr])
}

fn probe_addr(k: u64) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 100, (k >> 8) as u8, k as u8)
}

/// A fourth cluster, `churn`, speaking the agent protocol itself (like
/// dnsperf for DNS, a lean generator: the hub does exactly the work a real
/// agent's deltas cause, and the 2 shared cores are not spent diffing maps
/// in this process).
struct ChurnAgent {
    updates: tokio::sync::mpsc::Sender<proto::ExportUpdate>,
    revision: u64,
    services: usize,
    shutdown: CancellationToken,
}

impl Drop for ChurnAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl ChurnAgent {
    /// Sends one delta upserting `exports`.
    async fn upsert(&mut self, exports: &[Export]) {
        self.revision += 1;
        let update = proto::ExportUpdate {
            cluster: "churn".into(),
            revision: self.revision,
            upserts: exports
                .iter()
                .map(switchyard::wire::export_to_proto)
                .collect(),
            ..Default::default()
        };
        self.updates
            .send(update)
            .await
            .expect("the export stream is open");
    }
}

async fn start_churn_agent(api: &str, dns: SocketAddr, n: usize) -> ChurnAgent {
    use proto::agent_service_client::AgentServiceClient;
    let services = n.min(CHURN_SERVICES);
    let mut client = AgentServiceClient::connect(format!("http://{api}"))
        .await
        .expect("the hub's API answers");
    let reg = client
        .register(proto::RegisterRequest {
            cluster: "churn".into(),
            ..Default::default()
        })
        .await
        .expect("the churn cluster registers")
        .into_inner();
    let shutdown = CancellationToken::new();
    let mut renew = client.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(reg.renew_ms.max(50)));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let _ = renew
                .renew_lease(proto::LeaseRequest {
                    cluster: "churn".into(),
                })
                .await;
        }
    });
    let (updates, rx) = tokio::sync::mpsc::channel(64);
    let mut full: Vec<Export> = (0..services).map(|i| churn_export(i, 0)).collect();
    full.push(probe_export(probe_addr(0)));
    let revision = reg.applied_revision + 1;
    updates
        .send(proto::ExportUpdate {
            cluster: "churn".into(),
            revision,
            full_resync: true,
            upserts: full.iter().map(switchyard::wire::export_to_proto).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut acks = client
        .stream_exports(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the export stream opens")
        .into_inner();
    // Acks must be read for the stream to go on.
    tokio::spawn(async move { while let Ok(Some(_)) = acks.message().await {} });
    let agent = ChurnAgent {
        updates,
        revision,
        services,
        shutdown,
    };
    let probe = Probe::new(dns).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe.answer().await != Some(probe_addr(0)) {
        assert!(
            Instant::now() < deadline,
            "the churn cluster's probe never resolves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent
}

/// Asks for the probe's name over one UDP socket.
struct Probe {
    socket: tokio::net::UdpSocket,
    query: Vec<u8>,
}

impl Probe {
    async fn new(dns: SocketAddr) -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(dns).await.unwrap();
        let mut m = hickory_proto::op::Message::new(
            0x1A6,
            hickory_proto::op::MessageType::Query,
            hickory_proto::op::OpCode::Query,
        );
        m.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii("probe.lag.svc.clusterset.local.").unwrap(),
            RecordType::A,
        ));
        Self {
            socket,
            query: m.to_vec().unwrap(),
        }
    }

    /// The probe's address now (`None` when unanswered within 50 ms).
    async fn answer(&self) -> Option<std::net::Ipv4Addr> {
        self.socket.send(&self.query).await.ok()?;
        let mut buf = [0u8; 512];
        loop {
            let n = tokio::time::timeout(Duration::from_millis(50), self.socket.recv(&mut buf))
                .await
                .ok()?
                .ok()?;
            let m = hickory_proto::op::Message::from_vec(&buf[..n]).ok()?;
            if m.metadata.id == 0x1A6 {
                return m.answers.iter().find_map(|r| match &r.data {
                    hickory_proto::rr::RData::A(a) => Some(a.0),
                    _ => None,
                });
            }
        }
    }
}

/// What a churned run measured besides dnsperf's figures.
struct ChurnFigures {
    changes_per_sec: f64,
    lags_ms: Vec<f64>,
}

/// Changes `rate` endpoints a second for `secs` (batches of
/// [`churn_batch`]), and measures the answer lag of the probe every 100 ms
/// meanwhile (a new address sent, then asked for every millisecond).
async fn churn(agent: &mut ChurnAgent, dns: SocketAddr, rate: u64, secs: u64) -> ChurnFigures {
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let per_batch = churn_batch();
    let batches_per_sec = (rate as usize).div_ceil(per_batch).max(1);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / batches_per_sec as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let probe = Probe::new(dns).await;
    // Ticks only while a probe is out: an idle 1 ms timer would cost this
    // process (which shares the cores with the server) a wake-up per tick.
    let mut poll = tokio::time::interval(Duration::from_millis(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut generation, mut next_service, mut changes) = (agent.revision, 0usize, 0u64);
    let mut probe_k = agent.revision;
    let mut lags = Vec::new();
    let mut waiting: Option<(std::net::Ipv4Addr, Instant)> = None;
    let mut last_probe = Instant::now();
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => {
                let mut batch = Vec::with_capacity(per_batch);
                for _ in 0..per_batch {
                    if next_service == 0 {
                        generation += 1;
                    }
                    batch.push(churn_export(next_service, generation));
                    next_service = (next_service + 1) % agent.services;
                }
                agent.upsert(&batch).await;
                changes += batch.len() as u64;
            }
            _ = tokio::time::sleep_until((last_probe + Duration::from_millis(100)).into()), if waiting.is_none() => {
                probe_k += 1;
                let addr = probe_addr(probe_k);
                last_probe = Instant::now();
                agent.upsert(&[probe_export(addr)]).await;
                waiting = Some((addr, last_probe));
                poll.reset_immediately();
            }
            _ = poll.tick(), if waiting.is_some() => if let Some((addr, sent)) = waiting {
                if probe.answer().await == Some(addr) {
                    lags.push(sent.elapsed().as_secs_f64() * 1000.0);
                    waiting = None;
                } else {
                    assert!(sent.elapsed() < Duration::from_secs(5), "the probe's change never showed in DNS");
                }
            }
        }
    }
    ChurnFigures {
        changes_per_sec: changes as f64 / started.elapsed().as_secs_f64(),
        lags_ms: lags,
    }
}

/// Percentile `p` of `v` (sorted in place).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// switchyard quiet vs under churn, `rounds` pairs.
async fn churn_rounds(s: &Server, n: usize, queries: &Path, rounds: usize, secs: u64, rate: u64) {
    let Some(api) = &s.api else { return };
    let churn_rate = env_or("BENCH_CHURN", 1000);
    let mut agent = start_churn_agent(api, s.addr, n).await;
    // The control plane's cost alone: the hub's CPU while it takes the
    // churn with no dnsperf running (the probe's queries included).
    let cpu = cpu_seconds(&s.pids);
    let alone = churn(&mut agent, s.addr, churn_rate, secs).await;
    let used = cpu_seconds(&s.pids) - cpu;
    let changes = alone.changes_per_sec * secs as f64;
    println!(
        "\n{n} services, churn alone: {:.0} changes/s for {secs} s, the hub used {:.2} CPU-s ({:.0}% of a core), {:.0} µs per change",
        alone.changes_per_sec,
        used,
        used / secs as f64 * 100.0,
        used / changes * 1e6
    );
    if std::env::var_os("BENCH_CHURN_ONLY").is_some() {
        return;
    }
    let (mut quiet_qps, mut churn_qps, mut quiet_p99, mut churn_p99) =
        (vec![], vec![], vec![], vec![]);
    let (mut churn_lost, mut applied, mut lags) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let (addr, file) = (s.addr, queries.to_path_buf());
        let quiet = tokio::task::spawn_blocking(move || run_udp(addr, &file, secs))
            .await
            .unwrap();
        let file = queries.to_path_buf();
        let (_, quiet_lat) =
            tokio::task::spawn_blocking(move || run_latency(addr, &file, secs, rate))
                .await
                .unwrap();
        let file = queries.to_path_buf();
        let perf = tokio::task::spawn_blocking(move || run_udp(addr, &file, secs));
        let during = churn(&mut agent, s.addr, churn_rate, secs).await;
        let churned = perf.await.unwrap();
        let file = queries.to_path_buf();
        let lat = tokio::task::spawn_blocking(move || run_latency(addr, &file, secs, rate));
        let during_lat = churn(&mut agent, s.addr, churn_rate, secs).await;
        let (_, churned_p99) = lat.await.unwrap();
        let mut round_lags: Vec<f64> = during
            .lags_ms
            .iter()
            .chain(&during_lat.lags_ms)
            .copied()
            .collect();
        eprintln!(
            "{n} services, churn round {round}: quiet {:.0} q/s (p99 {:.3} ms), churned {:.0} q/s (lost {}, p99 {:.3} ms), {:.0} changes/s, lag p50/p99/max {:.1}/{:.1}/{:.1} ms over {} probes",
            quiet.qps, quiet_lat, churned.qps, churned.lost, churned_p99, during.changes_per_sec,
            percentile(&mut round_lags, 0.5), percentile(&mut round_lags, 0.99), percentile(&mut round_lags, 1.0), round_lags.len()
        );
        quiet_qps.push(quiet.qps);
        churn_qps.push(churned.qps);
        quiet_p99.push(quiet_lat);
        churn_p99.push(churned_p99);
        churn_lost.push(churned.lost);
        applied.push(during.changes_per_sec);
        lags.extend(round_lags);
    }
    println!("\n{n} services, switchyard under {churn_rate} endpoint changes/s, medians of {rounds} paired rounds × {secs} s:\n");
    println!("| run | A q/s | lost | p99 ms (at {rate}/s) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| quiet | {:.0} | 0 | {:.3} |",
        median(&quiet_qps),
        median(&quiet_p99)
    );
    println!(
        "| churned | {:.0} | {:.0} | {:.3} |",
        median(&churn_qps),
        median(&churn_lost),
        median(&churn_p99)
    );
    println!(
        "\nchurned / quiet: q/s {:.2}, p99 {:.2}; {:.0} changes/s sent; answer lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} probes",
        median(&churn_qps) / median(&quiet_qps),
        median(&churn_p99) / median(&quiet_p99),
        median(&applied),
        percentile(&mut lags, 0.5),
        percentile(&mut lags, 0.99),
        percentile(&mut lags, 1.0),
        lags.len()
    );
}

#[derive(Default, Clone)]
struct Figures {
    qps: Vec<f64>,
    lost: Vec<f64>,
    avg_ms: Vec<f64>,
    mix_qps: Vec<f64>,
    mix_lost: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu: Vec<f64>,
}

async fn one_size(n: usize, rounds: usize, secs: u64, rate: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let zone = dir.join("clusterset.local.zone");
    write_zone(&zone, n);
    let queries = dir.join("a.txt");
    let mixed = dir.join("mix.txt");
    query_file(&queries, n, 0, 200_000);
    query_file(&mixed, n, 10, 200_000);
    let only = std::env::var("BENCH_ONLY").ok();
    let mut servers = Vec::new();
    for which in ["switchyard", "nsd", "knot"] {
        if only.as_deref().is_some_and(|o| o != which) {
            continue;
        }
        let sub: PathBuf = dir.join(which);
        std::fs::create_dir_all(&sub).unwrap();
        let started = Instant::now();
        let server = match which {
            "switchyard" => start_switchyard(&sub, n).await,
            "nsd" => start_nsd(&sub, &zone, n).await,
            _ => start_knot(&sub, &zone, n).await,
        };
        eprintln!(
            "{n} services: {which} serving after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        servers.push(server);
    }
    let mut figures = vec![Figures::default(); servers.len()];
    if std::env::var_os("BENCH_CHURN_ONLY").is_some() {
        if let Some(sy) = servers.iter().find(|s| s.name == "switchyard") {
            churn_rounds(sy, n, &queries, rounds, secs, rate).await;
        }
        return;
    }
    for round in 0..rounds {
        for k in 0..servers.len() {
            let i = (k + round) % servers.len();
            let s = &servers[i];
            let f = &mut figures[i];
            let cpu = cpu_seconds(&s.pids);
            let a = run_udp(s.addr, &queries, secs);
            let used = cpu_seconds(&s.pids) - cpu;
            let mix = run_mix(s.addr, &mixed, secs, a.qps / 9.0);
            let (p50, p99) = run_latency(s.addr, &queries, secs, rate);
            f.qps.push(a.qps);
            f.lost.push(a.lost);
            f.avg_ms.push(a.avg_ms);
            f.mix_qps.push(mix.qps);
            f.mix_lost.push(mix.lost);
            f.p50.push(p50);
            f.p99.push(p99);
            f.cpu.push(used / (a.qps * secs as f64) * 100_000.0);
            eprintln!(
                "{n} services, round {round}, {}: A {:.0} q/s (lost {} of {}), mix {:.0} q/s (lost {}), p50/p99 {:.3}/{:.3} ms at {rate}/s",
                s.name, a.qps, a.lost, a.sent, mix.qps, mix.lost, p50, p99
            );
        }
    }
    println!("\n{n} services, medians of {rounds} rounds × {secs} s:\n");
    println!("| server | A q/s | lost | avg ms | mix q/s | mix lost | p50 ms | p99 ms (at {rate}/s) | CPU s per 100k |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, f) in servers.iter().zip(&figures) {
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.0} | {:.0} | {:.3} | {:.3} | {:.2} |",
            s.name,
            median(&f.qps),
            median(&f.lost),
            median(&f.avg_ms),
            median(&f.mix_qps),
            median(&f.mix_lost),
            median(&f.p50),
            median(&f.p99),
            median(&f.cpu),
        );
    }
    if let Some(sy) = servers.iter().position(|s| s.name == "switchyard") {
        churn_rounds(&servers[sy], n, &queries, rounds, secs, rate).await;
        for (s, f) in servers.iter().zip(&figures) {
            if s.name == "switchyard" {
                continue;
            }
            let y = &figures[sy];
            println!(
                "\nswitchyard / {}: A q/s {:.2}, mix q/s {:.2}, p99 {:.2}",
                s.name,
                median(&y.qps) / median(&f.qps),
                median(&y.mix_qps) / median(&f.mix_qps),
                median(&y.p99) / median(&f.p99),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run e2e/bench-dns"]
async fn dns_against_nsd_and_knot() {
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;
    let secs = env_or("BENCH_SECS", 5);
    let rate = env_or("BENCH_RATE", 20_000);
    let sizes = std::env::var("BENCH_SIZES").unwrap_or_else(|_| "1000,10000,100000".into());
    for size in sizes.split(',') {
        let n: usize = size.trim().parse().expect("BENCH_SIZES: numbers");
        one_size(n, rounds, secs, rate).await;
    }
}
