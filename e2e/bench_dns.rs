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
//! `BENCH_SIZES` (default `1000,10000,100000`), `BENCH_ROUNDS` (3),
//! `BENCH_SECS` (5), `BENCH_RATE`, `BENCH_ONLY` (a server's name).

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

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
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
            Command::new(BIN)
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
                Command::new(BIN)
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
        pids: vec![pid],
        _processes: p,
    }
}

async fn start_nsd(dir: &Path, zone: &Path, n: usize) -> Server {
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let conf = dir.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  ip-address: {}@{}\n  port: {}\n  server-count: 2\n  reuseport: yes\n  username: \"\"\n  database: \"\"\n  zonesdir: {d}\n  pidfile: {d}/nsd.pid\n  xfrdfile: {d}/xfrd.state\n  zonelistfile: {d}/zone.list\n  logfile: {d}/nsd.log\n  verbosity: 0\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\nremote-control:\n  control-enable: no\nzone:\n  name: {ZONE}\n  zonefile: {}\n",
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
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)));
    (
        at(0.50).copied().unwrap_or(f64::NAN) * 1000.0,
        at(0.99).copied().unwrap_or(f64::NAN) * 1000.0,
    )
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
