//! A traffic observer for the network-namespace tests: a thread that
//! enters a client's network namespace (`setns`) and runs a current-thread
//! tokio runtime there, sending
//!
//! - HTTP `GET /` at a fixed rate, a new TCP connection per request, to one
//!   address (a gateway's outbound listener), recording per request when it
//!   started and ended and which cluster answered (the backend's JSON
//!   `cluster`) or why it failed;
//! - DNS A queries at a fixed rate to one server (a hub replica),
//!   recording which clusters' addresses each answer held.
//!
//! Requests are sent open-loop: a slow or hanging one does not hold up the
//! next, as with real clients. [`Record`] computes the figures the tests
//! assert on.

use hickory_proto::rr::{RData, RecordType};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `f` on a new thread inside network namespace `ns` (by name, as
/// `ip netns` knows it); its result, or why the namespace could not be
/// entered.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let path = format!("/run/netns/{ns}");
    let handle = std::thread::spawn(move || -> Result<T, String> {
        enter(&path)?;
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| format!("the thread in {ns} panicked"))?
}

fn enter(path: &str) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {path}: {e}"))
}

/// Runs `fut` to completion on a current-thread runtime.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(fut)
}

/// One `GET /` on a new connection to `addr`: the answering cluster, or
/// why not, within `timeout`.
pub async fn http_get(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&resp);
        if !(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")) {
            return Err(format!(
                "not 200: {:?}",
                text.lines().next().unwrap_or("(nothing)")
            ));
        }
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("body {body:?}: {e}"))?;
        v["cluster"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("no cluster in {body}"))
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The A records of `name` from `server`.
pub async fn resolve(server: SocketAddr, name: &str) -> Result<Vec<IpAddr>, String> {
    let msg = switchyard::dns::client::query(server, name, RecordType::A, false)
        .await
        .map_err(|e| e.to_string())?;
    Ok(msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect())
}

/// One HTTP request.
#[derive(Debug, Clone)]
pub struct HttpSample {
    pub start: Instant,
    pub end: Instant,
    /// The cluster that answered, or why the request failed.
    pub outcome: Result<String, String>,
}

/// One DNS query.
#[derive(Debug, Clone)]
pub struct DnsSample {
    pub at: Instant,
    /// The clusters whose addresses the answer held, or why it failed.
    pub outcome: Result<BTreeSet<String>, String>,
}

/// What to send where.
#[derive(Clone)]
pub struct Plan {
    /// The client's namespace.
    pub netns: String,
    /// HTTP to this address.
    pub http: Option<SocketAddr>,
    /// How long one request may take before it counts as failed.
    pub http_timeout: Duration,
    /// DNS A queries for `dns_name` to this server.
    pub dns: Option<SocketAddr>,
    pub dns_name: String,
    /// Endpoint address → cluster, to name DNS answers.
    pub owners: HashMap<IpAddr, String>,
    /// Requests (and queries) per second.
    pub rate: u32,
}

/// Everything observed so far.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub http: Vec<HttpSample>,
    pub dns: Vec<DnsSample>,
}

/// A running observer; [`Observer::stop`] ends it and returns the record.
pub struct Observer {
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Observer {
    /// Starts sending as `plan` says; fails when the namespace cannot be
    /// entered.
    pub fn start(plan: Plan) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, r) = (stop.clone(), record.clone());
        let path = format!("/run/netns/{}", plan.netns);
        let thread = std::thread::spawn(move || {
            if let Err(e) = enter(&path) {
                let _ = ready_tx.send(Err(e.clone()));
                return Err(e);
            }
            let _ = ready_tx.send(Ok(()));
            block_on(run(plan, s, r));
            Ok(())
        });
        ready_rx
            .recv()
            .map_err(|_| "the observer thread died".to_string())??;
        Ok(Self {
            stop,
            record,
            thread: Some(thread),
        })
    }

    /// A copy of what was observed so far (requests still out are not in it).
    pub fn snapshot(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    /// Polls until `done` holds for the record; the time it took, or `None`
    /// after `limit`.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&Record) -> bool) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if done(&self.snapshot()) {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Stops sending, waits for the requests still out, returns everything.
    pub fn stop(mut self) -> Record {
        self.finish();
        self.snapshot()
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Starts `each()` every `period` until `stop`, each on its own task so a
/// slow one does not delay the next; then waits for those in flight.
async fn at_rate<F, Fut>(period: Duration, stop: Arc<AtomicBool>, each: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut out = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        out.spawn(each());
        while out.try_join_next().is_some() {}
    }
    while out.join_next().await.is_some() {}
}

async fn run(plan: Plan, stop: Arc<AtomicBool>, record: Arc<Mutex<Record>>) {
    let period = Duration::from_secs(1) / plan.rate.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = plan.http {
        let record = record.clone();
        let timeout = plan.http_timeout;
        tasks.spawn(at_rate(period, stop.clone(), move || {
            let record = record.clone();
            async move {
                let start = Instant::now();
                let outcome = http_get(addr, timeout).await;
                let sample = HttpSample {
                    start,
                    end: Instant::now(),
                    outcome,
                };
                record.lock().unwrap().http.push(sample);
            }
        }));
    }
    if let Some(server) = plan.dns {
        let owners = Arc::new(plan.owners.clone());
        let name = plan.dns_name.clone();
        tasks.spawn(at_rate(period, stop, move || {
            let (record, owners, name) = (record.clone(), owners.clone(), name.clone());
            async move {
                let at = Instant::now();
                let outcome = match tokio::time::timeout(
                    Duration::from_secs(2),
                    resolve(server, &name),
                )
                .await
                {
                    Ok(Ok(addrs)) => Ok(addrs
                        .iter()
                        .map(|a| {
                            owners
                                .get(a)
                                .cloned()
                                .unwrap_or_else(|| format!("unknown {a}"))
                        })
                        .collect()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("no DNS answer within 2s".to_string()),
                };
                record.lock().unwrap().dns.push(DnsSample { at, outcome });
            }
        }));
    }
    while tasks.join_next().await.is_some() {}
}

impl Record {
    /// Requests that started in `[from, to)`.
    pub fn http_in(&self, from: Instant, to: Instant) -> impl Iterator<Item = &HttpSample> {
        self.http
            .iter()
            .filter(move |s| s.start >= from && s.start < to)
    }

    /// Failed requests.
    pub fn failures(&self) -> Vec<&HttpSample> {
        self.http.iter().filter(|s| s.outcome.is_err()).collect()
    }

    /// Answers per cluster among the requests started in `[from, to)`.
    pub fn counts(&self, from: Instant, to: Instant) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.http_in(from, to) {
            if let Ok(c) = &s.outcome {
                *out.entry(c.clone()).or_default() += 1;
            }
        }
        out
    }

    /// DNS answers naming each cluster among the queries sent in `[from, to)`.
    pub fn dns_counts(&self, from: Instant, to: Instant) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.dns.iter().filter(|s| s.at >= from && s.at < to) {
            if let Ok(set) = &s.outcome {
                for c in set {
                    *out.entry(c.clone()).or_default() += 1;
                }
            }
        }
        out
    }

    /// How long after `since` the last request answered by `cluster`
    /// started, among those started before `until` (`None`: none did).
    pub fn last_http_from(
        &self,
        cluster: &str,
        since: Instant,
        until: Instant,
    ) -> Option<Duration> {
        self.http_in(since, until)
            .filter(|s| s.outcome.as_deref() == Ok(cluster))
            .map(|s| s.start - since)
            .max()
    }

    /// How long after `since` the first request answered by `cluster`
    /// started.
    pub fn first_http_from(&self, cluster: &str, since: Instant) -> Option<Duration> {
        self.http
            .iter()
            .filter(|s| s.start >= since && s.outcome.as_deref() == Ok(cluster))
            .map(|s| s.start - since)
            .min()
    }

    /// How long after `since` the last DNS answer naming `cluster` was
    /// asked, among the queries sent before `until`.
    pub fn last_dns_with(&self, cluster: &str, since: Instant, until: Instant) -> Option<Duration> {
        self.dns
            .iter()
            .filter(|s| s.at >= since && s.at < until)
            .filter(|s| s.outcome.as_ref().is_ok_and(|c| c.contains(cluster)))
            .map(|s| s.at - since)
            .max()
    }

    /// How long after `since` the first DNS answer naming `cluster` was asked.
    pub fn first_dns_with(&self, cluster: &str, since: Instant) -> Option<Duration> {
        self.dns
            .iter()
            .filter(|s| s.at >= since && s.outcome.as_ref().is_ok_and(|c| c.contains(cluster)))
            .map(|s| s.at - since)
            .min()
    }

    /// Requests started at or after `since` that failed or took at least
    /// `slow`: the ones that met a dead upstream first.
    pub fn troubled(&self, since: Instant, slow: Duration) -> Vec<&HttpSample> {
        self.http
            .iter()
            .filter(|s| s.start >= since && (s.outcome.is_err() || s.end - s.start >= slow))
            .collect()
    }

    /// Failed DNS queries.
    pub fn dns_failures(&self) -> Vec<&DnsSample> {
        self.dns.iter().filter(|s| s.outcome.is_err()).collect()
    }

    /// One line: requests, failures, answers per cluster.
    pub fn summary(&self) -> String {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.http {
            *by.entry(s.outcome.as_deref().unwrap_or("FAILED"))
                .or_default() += 1;
        }
        format!(
            "{} requests ({} failed), {} DNS queries ({} failed), answers {by:?}",
            self.http.len(),
            self.failures().len(),
            self.dns.len(),
            self.dns_failures().len()
        )
    }
}
