//! Benchmark, not a test (run with `--ignored`, see e2e/bench-raft):
//! committed writes/s and commit latency of the hub against etcd 3.4 on
//! the same machine, in the same run, with the same payload and the same
//! durability (both fsync before acknowledging; etcd by default, the hub's
//! raft node flushes sled before any reply).
//!
//! For 1 and 3 replicas of each, with 1 and 64 concurrent clients: etcd
//! clients `Put` a 256-byte value under one of 256 keys; hub clients apply
//! a 256-byte ServiceImport manifest under one of 256 names, as the JSON
//! `switchyard apply` sends (the hub parses, validates, replicates, fsyncs,
//! applies, recomputes and republishes DNS before it answers). Clients spread over all members; followers forward
//! to the leader in both systems. Rounds alternate the two systems;
//! figures are medians over rounds.

#[path = "support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::free_port;
use switchyard::etcd::kv_client::KvClient;
use switchyard::etcd::PutRequest;
use switchyard::proto::admin_service_client::AdminServiceClient;
use switchyard::proto::{ApplyRequest, StatusRequest};
use tonic::transport::{Channel, Endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const PAYLOAD: usize = 256;
const KEYS: usize = 256;

#[derive(Clone, Copy, PartialEq, Debug)]
enum System {
    Etcd,
    Switchyard,
}

struct Group {
    children: Vec<Child>,
    clients: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Group {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(system: System, n: usize) -> Group {
    let dir = tempfile::tempdir().unwrap();
    let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut children = Vec::new();
    for i in 0..n {
        let child = match system {
            System::Etcd => {
                let cluster = (0..n)
                    .map(|j| format!("n{j}=http://127.0.0.1:{}", peer_ports[j]))
                    .collect::<Vec<_>>()
                    .join(",");
                Command::new("etcd")
                    .args(["--name", &format!("n{i}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("etcd{i}")))
                    .args([
                        "--listen-client-urls",
                        &format!("http://127.0.0.1:{}", client_ports[i]),
                    ])
                    .args([
                        "--advertise-client-urls",
                        &format!("http://127.0.0.1:{}", client_ports[i]),
                    ])
                    .args([
                        "--listen-peer-urls",
                        &format!("http://127.0.0.1:{}", peer_ports[i]),
                    ])
                    .args([
                        "--initial-advertise-peer-urls",
                        &format!("http://127.0.0.1:{}", peer_ports[i]),
                    ])
                    .args([
                        "--initial-cluster",
                        &cluster,
                        "--initial-cluster-state",
                        "new",
                    ])
                    .args(["--log-level", "error", "--logger", "zap"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("etcd is installed (bash e2e/bench-raft installs etcd-server)")
            }
            System::Switchyard => {
                let peers = (0..n)
                    .map(|j| format!("{}=127.0.0.1:{}", j + 1, peer_ports[j]))
                    .collect::<Vec<_>>()
                    .join(",");
                Command::new(BIN)
                    .args(["hub", "--id", &(i + 1).to_string()])
                    .args(["--raft", &format!("127.0.0.1:{}", peer_ports[i])])
                    .args(["--api", &format!("127.0.0.1:{}", client_ports[i])])
                    .args(["--dns", &format!("127.0.0.1:{}", free_port())])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("hub{i}")))
                    .args(["--peers", &peers])
                    // etcd runs without TLS here too.
                    .arg("--insecure")
                    .env("RUST_LOG", "error")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            }
        };
        children.push(child);
    }
    let clients = client_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    Group {
        children,
        clients,
        _dir: dir,
    }
}

async fn channel(addr: &str) -> Option<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .tcp_nodelay(true)
        .connect()
        .await
        .ok()
}

/// A 256-byte ServiceImport as `switchyard apply` sends it: the CLI parses
/// YAML locally and sends compact JSON, as kubectl does.
fn manifest(name: &str, seq: u64) -> String {
    let head = format!(
        r#"{{"apiVersion":"multicluster.x-k8s.io/v1alpha1","kind":"ServiceImport","metadata":{{"name":"{name}","namespace":"bench","annotations":{{"v":"{seq}-"#
    );
    let tail = r#""}},"spec":{"type":"ClusterSetIP","ports":[{"port":80}]}}"#;
    let pad = PAYLOAD.saturating_sub(head.len() + tail.len() + 1);
    format!("{head}{}{tail}\n", "x".repeat(pad))
}

/// One write; true when acknowledged.
async fn write(system: System, ch: &Channel, worker: usize, seq: u64) -> bool {
    let key = (worker * 7919 + seq as usize) % KEYS;
    match system {
        System::Etcd => {
            let mut c = KvClient::new(ch.clone());
            let req = PutRequest {
                key: format!("bench/k-{key}").into_bytes(),
                value: vec![b'x'; PAYLOAD],
                ..Default::default()
            };
            c.put(req).await.is_ok()
        }
        System::Switchyard => {
            let mut c = AdminServiceClient::new(ch.clone());
            c.apply(ApplyRequest {
                manifest: manifest(&format!("k-{key}"), seq),
            })
            .await
            .is_ok()
        }
    }
}

/// Waits until a write through every client address succeeds.
async fn ready(system: System, g: &Group) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in &g.clients {
        loop {
            if let Some(ch) = channel(addr).await {
                if system == System::Switchyard {
                    let mut c = AdminServiceClient::new(ch.clone());
                    let leader = match c.status(StatusRequest {}).await {
                        Ok(s) => {
                            let v: serde_json::Value =
                                serde_json::from_str(&s.into_inner().json).unwrap_or_default();
                            v["leader"].as_u64().unwrap_or(0) != 0
                        }
                        Err(_) => false,
                    };
                    if leader && write(system, &ch, 0, 0).await {
                        break;
                    }
                } else if write(system, &ch, 0, 0).await {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{system:?} did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct Run {
    writes_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// CPU time (user + system) of all server processes per acknowledged
    /// write: steadier than writes/s on a noisy machine.
    cpu_us_per_write: f64,
}

/// CPU time (user + system) the group's server processes used so far, in µs.
fn cpu_us(g: &Group) -> f64 {
    let tick_us = 1e6 / clock_ticks_per_s();
    g.children
        .iter()
        .filter_map(|c| std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces).
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        * tick_us
}

fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn load(system: System, g: &Group, concurrency: usize, secs: f64) -> Run {
    // A few HTTP/2 connections per member; workers spread over them.
    let mut channels = Vec::new();
    for addr in &g.clients {
        for _ in 0..concurrency.div_ceil(16).max(1) {
            channels.push(channel(addr).await.expect("connect"));
        }
    }
    let warmup = Instant::now() + Duration::from_millis(500);
    let end = warmup + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let ch = channels[w % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut seq = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                seq += 1;
                let ok = write(system, &ch, w, seq).await;
                if t >= warmup {
                    if ok {
                        lat.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep_until(warmup.into()).await;
    let cpu_start = cpu_us(g);
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu_us(g) - cpu_start;
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    Run {
        writes_per_s: lat.len() as f64 / secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
        cpu_us_per_write: cpu / lat.len().max(1) as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: bash e2e/bench-raft"]
async fn writes_vs_etcd() {
    for seq in [0, 99_999] {
        let m = manifest("k-255", seq);
        assert_eq!(m.len(), PAYLOAD, "{m}");
        switchyard::model::manifest::parse(&m).expect("the payload is a valid manifest");
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    // BENCH_CONFIGS="1x1,3x64" (replicas x clients) narrows the run, for
    // profiling one case; the printed table then covers only those.
    let configs: Vec<(usize, usize)> = match std::env::var("BENCH_CONFIGS") {
        Ok(v) => v
            .split(',')
            .filter_map(|c| {
                let (r, n) = c.trim().split_once('x')?;
                Some((r.parse().ok()?, n.parse().ok()?))
            })
            .collect(),
        Err(_) => vec![(1, 1), (1, 64), (3, 1), (3, 64)],
    };
    let only_hub = std::env::var("BENCH_HUB_ONLY").is_ok();
    // results[(replicas, concurrency, system)] = runs
    let mut results: std::collections::BTreeMap<(usize, usize, u8), Vec<Run>> = Default::default();
    for round in 0..rounds {
        for replicas in [1usize, 3] {
            if !configs.iter().any(|(r, _)| *r == replicas) {
                continue;
            }
            let order = if round % 2 == 0 {
                [System::Etcd, System::Switchyard]
            } else {
                [System::Switchyard, System::Etcd]
            };
            for system in order {
                if only_hub && system == System::Etcd {
                    continue;
                }
                let g = start(system, replicas);
                ready(system, &g).await;
                for &(r, c) in configs.iter().filter(|(r, _)| *r == replicas) {
                    let run = load(system, &g, c, secs).await;
                    eprintln!(
                        "round {round} {system:?} replicas={r} clients={c}: {:.0} writes/s p50 {:.2} ms p99 {:.2} ms errors {} cpu {:.0} us/write",
                        run.writes_per_s, run.p50_ms, run.p99_ms, run.errors, run.cpu_us_per_write
                    );
                    results.entry((r, c, system as u8)).or_default().push(run);
                }
            }
        }
    }
    println!("\n| replicas | clients | etcd writes/s | hub writes/s | ratio | etcd p50 ms | hub p50 ms | etcd p99 ms | hub p99 ms | p99 ratio | etcd CPU µs/write | hub CPU µs/write |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (r, c) in configs {
        let get = |s: System, f: fn(&Run) -> f64| {
            results
                .get(&(r, c, s as u8))
                .map(|runs| median(runs.iter().map(f).collect()))
                .unwrap_or(f64::NAN)
        };
        let (ew, hw) = (
            get(System::Etcd, |x| x.writes_per_s),
            get(System::Switchyard, |x| x.writes_per_s),
        );
        let (e50, h50) = (
            get(System::Etcd, |x| x.p50_ms),
            get(System::Switchyard, |x| x.p50_ms),
        );
        let (e99, h99) = (
            get(System::Etcd, |x| x.p99_ms),
            get(System::Switchyard, |x| x.p99_ms),
        );
        let (ecpu, hcpu) = (
            get(System::Etcd, |x| x.cpu_us_per_write),
            get(System::Switchyard, |x| x.cpu_us_per_write),
        );
        println!(
            "| {r} | {c} | {ew:.0} | {hw:.0} | {:.2} | {e50:.2} | {h50:.2} | {e99:.2} | {h99:.2} | {:.2} | {ecpu:.0} | {hcpu:.0} |",
            hw / ew,
            h99 / e99
        );
    }
    let errors: u64 = results.values().flatten().map(|r| r.errors).sum();
    println!("\nmedians of {rounds} rounds of {secs} s; payload {PAYLOAD} B; errors {errors}");
}
