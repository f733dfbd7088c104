//! Benchmark, not a test (run with `--ignored`, see e2e/bench-gateway): the
//! east-west data path, switchyard's gateways against HAProxy 2.6 (Debian)
//! doing the same work on the same machine, in the same run.
//!
//! Both carry a connection the same way: client → cluster A's proxy (plain
//! TCP listener) → TLS 1.3 with client certificates, SNI naming the service
//! → cluster B's proxy (verifies the peer against the CA, routes on the
//! SNI) → the backend. switchyard runs as real processes (`switchyard hub`,
//! two `agent --file`, two `gateway`, joined with bootstrap tokens);
//! HAProxy as two processes (one per cluster) with certificates of the same
//! kind (ECDSA P-256) from a CA of the same kind. Neither reuses upstream
//! connections. The client and the backend run in this process.
//!
//! Measured, per round, each system in turn (rounds alternate), medians
//! over rounds:
//! - throughput: bytes/s the backend streams to 1 client connection, and
//!   to 64 concurrent ones;
//! - latency of a 64-byte request/response on an open connection (p50,
//!   p99), and of connect + request/response (a new connection each).
//!   Direct client → backend figures are printed too: the proxies' added
//!   latency is the difference.

#[path = "support/bench.rs"]
mod bench;
#[path = "support/mod.rs"]
mod support;

use bench::{cpu_seconds, env_or, median, quiet, Processes};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchyard::identity::ca::Ca;
use switchyard::identity::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
/// The backend: cluster "west", service bench/sink.
const BACKEND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77, 1, 1)), 9000);
const SNI: &str = "9000.sink.bench.svc.clusterset.local";
const CHUNK: usize = 64 * 1024;
const SMALL: usize = 64;

/// The backend: the first byte says what a connection wants: `S` a stream
/// of bytes until the client goes, `E` echo.
async fn serve_backend() {
    let listener = TcpListener::bind(BACKEND).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_err() {
                    return;
                }
                match mode[0] {
                    b'S' => {
                        let data = vec![0x5a; CHUNK];
                        while s.write_all(&data).await.is_ok() {}
                    }
                    _ => {
                        let mut buf = vec![0u8; CHUNK];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
    });
}

/// One proxy chain under test: where clients connect.
struct System {
    name: &'static str,
    entry: SocketAddr,
    /// The processes on the data path (the two proxies).
    proxies: Vec<u32>,
    _processes: Processes,
}

fn cli(args: &[&str], credentials: &Path) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("SWITCHYARD_CREDENTIALS", credentials)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "switchyard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until an echo through `entry` works.
async fn until_echo(entry: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(entry)).await
        {
            let mut buf = [0u8; 4];
            let ok = s.write_all(b"Eping").await.is_ok()
                && tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if ok && &buf == b"ping" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what} does not carry traffic");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// switchyard: a hub, the agents of west (exports bench/sink) and east, and
/// both clusters' gateways, all joined with bootstrap tokens.
async fn start_switchyard(dir: &Path) -> System {
    let api = format!("127.0.0.1:{}", support::free_port());
    let raft = format!("127.0.0.1:{}", support::free_port());
    let mut p = Processes(Vec::new());
    let mut proxies = Vec::new();
    p.0.push(
        quiet(
            Command::new(BIN)
                .args(["hub", "--id", "1", "--raft", &raft, "--api", &api])
                .args(["--peers", &format!("1={raft}")])
                .args(["--dns", &format!("127.0.0.1:{}", support::free_port())])
                .arg("--data-dir")
                .arg(dir.join("hub")),
        )
        .spawn()
        .unwrap(),
    );
    let admin = dir.join("hub/admin");
    let ca = admin.join("ca.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ca.exists() || TcpStream::connect(&api).await.is_err() {
        assert!(Instant::now() < deadline, "the hub did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = ca.to_str().unwrap();
    for (cluster, octet) in [("west", 1), ("east", 2)] {
        let file = dir.join(format!("{cluster}.yaml"));
        let services = if cluster == "west" {
            format!(
                "  - namespace: bench\n    name: sink\n    ports: [{{name: tcp, port: 9000}}]\n    endpoints: [{{address: {}}}]\n",
                BACKEND.ip()
            )
        } else {
            String::new()
        };
        std::fs::write(&file, format!("cluster: {cluster}\nservices:\n{services}")).unwrap();
        let token = |role: &str| {
            cli(
                &[
                    "token",
                    "create",
                    "--cluster",
                    cluster,
                    "--role",
                    role,
                    "--hub",
                    &api,
                ],
                &admin,
            )
        };
        p.0.push(
            quiet(
                Command::new(BIN)
                    .args([
                        "agent",
                        "--hub",
                        &api,
                        "--ca",
                        ca,
                        "--token",
                        &token("agent"),
                    ])
                    .arg("--file")
                    .arg(&file)
                    .arg("--identity-dir")
                    .arg(dir.join(format!("agent-{cluster}"))),
            )
            .spawn()
            .unwrap(),
        );
        p.0.push(
            quiet(
                Command::new(BIN)
                    .args(["gateway", "--cluster", cluster, "--hub", &api, "--ca", ca])
                    .args(["--token", &token("gateway")])
                    .args(["--inbound", &format!("127.77.{octet}.250:15443")])
                    .args(["--outbound-cidr", &format!("127.77.{octet}.128/26")])
                    .arg("--data-dir")
                    .arg(dir.join(format!("gateway-{cluster}"))),
            )
            .spawn()
            .unwrap(),
        );
        proxies.push(p.0.last().unwrap().id());
    }
    // East's listener for bench/sink, once the hub has allocated it.
    let entry = loop {
        let out = cli(
            &[
                "get",
                "imports",
                "--cluster",
                "east",
                "-o",
                "json",
                "--hub",
                &api,
            ],
            &admin,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let listener = v
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|i| i["spec"]["ports"][0]["gatewayListener"].as_str())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        if let Some(l) = listener {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no listener for bench/sink: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    until_echo(entry, "switchyard").await;
    System {
        name: "switchyard",
        entry,
        proxies,
        _processes: p,
    }
}

/// HAProxy: cluster A's process forwards its listener to B's over TLS 1.3
/// with a client certificate and the service's SNI, verifying B's
/// certificate; B's requires a client certificate of the CA, routes on the
/// SNI and forwards to the backend.
async fn start_haproxy(dir: &Path) -> System {
    let ca = Ca::generate("bench haproxy").unwrap();
    // HAProxy checks the server's certificate against the SNI it sends (its
    // verifyhost applies only without SNI): B's certificate names the
    // service too.
    let write_pem = |name: &str, cluster: &str| {
        let issued = ca
            .issue(
                &Identity::Gateway(cluster.into()),
                &[SNI.to_string()],
                Duration::from_secs(86400),
            )
            .unwrap();
        let path = dir.join(name);
        std::fs::write(&path, issued.cert_pem + &issued.key_pem).unwrap();
        path
    };
    let (a_pem, b_pem) = (write_pem("a.pem", "east"), write_pem("b.pem", "west"));
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    if std::env::var("BENCH_KEEP").is_ok() {
        eprintln!("haproxy files in {}", dir.display());
        std::fs::write(dir.join("ca.key"), ca.key_pem()).unwrap();
    }
    let entry: SocketAddr = "127.78.2.129:9000".parse().unwrap();
    let inbound = "127.78.1.250:15443";
    // The same buffer size as the gateway's (proxy.rs): 64 KiB each way.
    let bufsize = std::env::var("BENCH_HAPROXY_BUFSIZE").unwrap_or_else(|_| "65536".into());
    let common = format!("global\n  maxconn 4000\n  tune.bufsize {bufsize}\n  log stderr format raw local0 err\ndefaults\n  mode tcp\n  log global\n  option tcplog\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n");
    let a = format!(
        "{common}frontend outbound\n  bind {entry}\n  default_backend west\nbackend west\n  server w {inbound} ssl crt {} ca-file {} verify required sni str({SNI}) ssl-min-ver TLSv1.3\n",
        a_pem.display(),
        ca_path.display()
    );
    let b = format!(
        "{common}frontend inbound\n  bind {inbound} ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3\n  use_backend sink if {{ ssl_fc_sni -i {SNI} }}\nbackend sink\n  server s {BACKEND}\n",
        b_pem.display(),
        ca_path.display()
    );
    let mut p = Processes(Vec::new());
    for (name, config) in [("a.cfg", a), ("b.cfg", b)] {
        let path = dir.join(name);
        std::fs::write(&path, config).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output();
        let check = check.expect("haproxy is installed (bash e2e/bench-gateway installs it)");
        assert!(
            check.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        p.0.push(
            Command::new("haproxy")
                .args(["-db", "-f"])
                .arg(&path)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    until_echo(entry, "haproxy").await;
    let proxies = p.0.iter().map(Child::id).collect();
    System {
        name: "haproxy",
        entry,
        proxies,
        _processes: p,
    }
}

/// Bytes/s the backend streams through `entry` to `conns` connections.
async fn throughput(entry: SocketAddr, conns: usize, secs: u64) -> f64 {
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(entry).await.unwrap();
            s.write_all(b"S").await.unwrap();
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            while Instant::now() < stop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            total
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// p50 and p99 of a 64-byte request/response: on one open connection
/// (`reconnect` false) or each on a new connection.
async fn latency(entry: SocketAddr, n: usize, reconnect: bool) -> (Duration, Duration) {
    let msg = [b'x'; SMALL];
    let mut back = [0u8; SMALL];
    let mut samples = Vec::with_capacity(n);
    let mut open: Option<TcpStream> = None;
    for _ in 0..n {
        let start = Instant::now();
        let s = match open.as_mut() {
            Some(s) if !reconnect => s,
            _ => {
                let mut s = TcpStream::connect(entry).await.unwrap();
                s.set_nodelay(true).unwrap();
                s.write_all(b"E").await.unwrap();
                open.insert(s)
            }
        };
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        samples.push(start.elapsed());
        if reconnect {
            open = None;
        }
    }
    samples.sort();
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

#[derive(Default, Clone)]
struct Figures {
    one: Vec<f64>,
    many: Vec<f64>,
    open_p50: Vec<Duration>,
    open_p99: Vec<Duration>,
    new_p50: Vec<Duration>,
    new_p99: Vec<Duration>,
    /// Proxy CPU seconds per GiB carried in the throughput runs.
    cpu_per_gib: Vec<f64>,
}

fn median_d(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

async fn measure(entry: SocketAddr, proxies: &[u32], secs: u64, f: &mut Figures) {
    let cpu = cpu_seconds(proxies);
    f.one.push(throughput(entry, 1, secs).await);
    f.many.push(throughput(entry, 64, secs).await);
    let gib = (f.one.last().unwrap() + f.many.last().unwrap()) * secs as f64 / (1u64 << 30) as f64;
    f.cpu_per_gib.push((cpu_seconds(proxies) - cpu) / gib);
    let (p50, p99) = latency(entry, 20_000, false).await;
    f.open_p50.push(p50);
    f.open_p99.push(p99);
    let (p50, p99) = latency(entry, 2_000, true).await;
    f.new_p50.push(p50);
    f.new_p99.push(p99);
}

fn gib(bps: f64) -> String {
    format!("{:.2} GiB/s", bps / (1u64 << 30) as f64)
}

fn us(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run e2e/bench-gateway"]
async fn gateway_data_path_against_haproxy() {
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;
    let secs = env_or("BENCH_SECS", 5);
    let tmp = tempfile::tempdir().unwrap();
    // BENCH_KEEP: keep the configurations, certificates and state.
    let dir = if std::env::var("BENCH_KEEP").is_ok() {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    serve_backend().await;
    let sy_dir = dir.join("switchyard");
    let ha_dir = dir.join("haproxy");
    std::fs::create_dir_all(&sy_dir).unwrap();
    std::fs::create_dir_all(&ha_dir).unwrap();
    let systems = [
        start_switchyard(&sy_dir).await,
        start_haproxy(&ha_dir).await,
    ];
    let mut figures = vec![Figures::default(); systems.len()];
    let mut direct = Figures::default();
    for round in 0..rounds {
        // Alternate which system goes first.
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for i in order {
            measure(systems[i].entry, &systems[i].proxies, secs, &mut figures[i]).await;
            eprintln!(
                "round {round} {}: 1 conn {}, 64 conns {}, open p50/p99 {}/{}, new p50/p99 {}/{}, proxy CPU {:.2} s/GiB",
                systems[i].name,
                gib(*figures[i].one.last().unwrap()),
                gib(*figures[i].many.last().unwrap()),
                us(*figures[i].open_p50.last().unwrap()),
                us(*figures[i].open_p99.last().unwrap()),
                us(*figures[i].new_p50.last().unwrap()),
                us(*figures[i].new_p99.last().unwrap()),
                figures[i].cpu_per_gib.last().unwrap(),
            );
        }
        measure(BACKEND, &[], secs, &mut direct).await;
    }
    println!("\n| path | 1 conn | 64 conns | open p50 | open p99 | new conn p50 | new conn p99 | proxy CPU per GiB |");
    println!("|---|---|---|---|---|---|---|---|");
    let rows = systems
        .iter()
        .map(|s| s.name)
        .zip(figures.iter())
        .chain(std::iter::once(("direct (no proxy)", &direct)));
    for (name, f) in rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            gib(median(&f.one)),
            gib(median(&f.many)),
            us(median_d(&f.open_p50)),
            us(median_d(&f.open_p99)),
            us(median_d(&f.new_p50)),
            us(median_d(&f.new_p99)),
            if f.cpu_per_gib.iter().all(|c| *c == 0.0) {
                "-".to_string()
            } else {
                format!("{:.2} s", median(&f.cpu_per_gib))
            },
        );
    }
    let (sy, ha) = (&figures[0], &figures[1]);
    println!(
        "\nswitchyard / haproxy: throughput 1 conn {:.2}, 64 conns {:.2}; p99 open {:.2}, p99 new {:.2} (medians over {rounds} rounds of {secs} s)",
        median(&sy.one) / median(&ha.one),
        median(&sy.many) / median(&ha.many),
        median_d(&sy.open_p99).as_secs_f64() / median_d(&ha.open_p99).as_secs_f64(),
        median_d(&sy.new_p99).as_secs_f64() / median_d(&ha.new_p99).as_secs_f64(),
    );
}
