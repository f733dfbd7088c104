//! Synthetic traffic during a drill: DNS queries for the service's
//! ClusterSet name, and HTTP requests to it (each on a new connection, as
//! a new client would open one), at a fixed rate. Every query and request
//! is recorded with when it was sent, how long it took, and which cluster
//! answered, so the report can tell when traffic left a cluster.

use crate::model::ServiceKey;
use hickory_proto::rr::{RData, RecordType};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one DNS query may take before it counts as failed.
const DNS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one HTTP request (connect, request, whole response) may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the traffic targets and how hard.
#[derive(Debug, Clone)]
pub struct TrafficPlan {
    /// The service every query and request is for.
    pub service: ServiceKey,
    /// The ClusterSet DNS zone.
    pub zone: String,
    /// The DNS whose answers are watched (the hub's, on a real ClusterSet
    /// the one member clusters forward the zone to).
    pub dns: SocketAddr,
    /// The DNS through which HTTP clients find the service (a cluster's
    /// own, answering with its gateway's listener); `dns` when `None`.
    pub via: Option<SocketAddr>,
    /// The service port the HTTP requests go to.
    pub port: u16,
    /// Queries per second, and as many requests per second.
    pub rate: u32,
    /// Endpoint address → cluster, to attribute DNS answers.
    pub owners: BTreeMap<IpAddr, String>,
}

impl TrafficPlan {
    /// The service's ClusterSet name.
    pub fn name(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.service.name, self.service.namespace, self.zone
        )
    }
}

/// One DNS query.
#[derive(Debug, Clone)]
pub struct DnsSample {
    /// When it was sent, since the drill began.
    pub sent: Duration,
    /// The clusters whose addresses the answer held; `None` if it failed.
    pub clusters: Option<Vec<String>>,
}

/// One HTTP request.
#[derive(Debug, Clone)]
pub struct HttpSample {
    pub sent: Duration,
    pub latency: Duration,
    /// The cluster that answered, or why the request failed.
    pub outcome: Result<String, String>,
}

/// Everything recorded so far.
#[derive(Debug, Default)]
pub struct Samples {
    pub dns: Vec<DnsSample>,
    pub http: Vec<HttpSample>,
}

/// Traffic under way; [`Traffic::stop`] ends it and hands the samples over.
pub struct Traffic {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    samples: Arc<Mutex<Samples>>,
}

impl Traffic {
    /// Starts sending at `plan.rate` per second each, timing from `start`.
    pub fn start(plan: TrafficPlan, start: Instant) -> Self {
        let stop = CancellationToken::new();
        let samples = Arc::new(Mutex::new(Samples::default()));
        let plan = Arc::new(plan);
        let mut tasks = JoinSet::new();
        let period = Duration::from_secs(1) / plan.rate.max(1);
        for kind in [Kind::Dns, Kind::Http] {
            let (plan, samples, stop) = (plan.clone(), samples.clone(), stop.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut inflight = JoinSet::new();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let (plan, samples) = (plan.clone(), samples.clone());
                    inflight.spawn(async move {
                        let sent = start.elapsed();
                        match kind {
                            Kind::Dns => {
                                let clusters = query(&plan).await;
                                if let Ok(mut s) = samples.lock() {
                                    s.dns.push(DnsSample { sent, clusters });
                                }
                            }
                            Kind::Http => {
                                let begun = Instant::now();
                                let outcome = request(&plan).await;
                                let latency = begun.elapsed();
                                if let Ok(mut s) = samples.lock() {
                                    s.http.push(HttpSample {
                                        sent,
                                        latency,
                                        outcome,
                                    });
                                }
                            }
                        }
                    });
                    while inflight.try_join_next().is_some() {}
                }
                // What is in flight finishes (each has its own timeout).
                while inflight.join_next().await.is_some() {}
            });
        }
        Self {
            stop,
            tasks,
            samples,
        }
    }

    /// How many requests have failed so far, and how many were sent.
    pub fn failed_so_far(&self) -> (usize, usize) {
        self.samples
            .lock()
            .map(|s| {
                let failed = s.http.iter().filter(|h| h.outcome.is_err()).count();
                (failed, s.http.len())
            })
            .unwrap_or_default()
    }

    /// Whether `cluster` answered an HTTP request or appeared in a DNS
    /// answer sent at or after `since`.
    pub fn reached_since(&self, cluster: &str, since: Duration) -> bool {
        self.samples.lock().is_ok_and(|s| {
            s.http
                .iter()
                .any(|h| h.sent >= since && h.outcome.as_deref() == Ok(cluster))
                || s.dns.iter().any(|d| {
                    d.sent >= since
                        && d.clusters
                            .as_ref()
                            .is_some_and(|c| c.iter().any(|c| c == cluster))
                })
        })
    }

    /// Stops sending, waits for what is in flight, and returns every
    /// sample in the order sent.
    pub async fn stop(mut self) -> Samples {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        let mut samples =
            std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        samples.dns.sort_by_key(|d| d.sent);
        samples.http.sort_by_key(|h| h.sent);
        samples
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Dns,
    Http,
}

/// The clusters in one answer of the watched DNS, or `None` on failure.
async fn query(plan: &TrafficPlan) -> Option<Vec<String>> {
    let addrs = resolve(plan.dns, &plan.name()).await.ok()?;
    let mut clusters: Vec<String> = addrs
        .iter()
        .map(|a| {
            plan.owners
                .get(a)
                .cloned()
                .unwrap_or_else(|| format!("unknown address {a}"))
        })
        .collect();
    clusters.sort();
    clusters.dedup();
    Some(clusters)
}

/// The A records of `name` at `server`.
async fn resolve(server: SocketAddr, name: &str) -> Result<Vec<IpAddr>, String> {
    let reply = tokio::time::timeout(
        DNS_TIMEOUT,
        crate::dns::client::query(server, name, RecordType::A, false),
    )
    .await
    .map_err(|_| format!("DNS: no answer from {server} within {DNS_TIMEOUT:?}"))?
    .map_err(|e| format!("DNS: {e}"))?;
    let addrs: Vec<IpAddr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    match addrs.is_empty() {
        true => Err(format!(
            "DNS: {name} has no address at {server} ({:?})",
            reply.metadata.response_code
        )),
        false => Ok(addrs),
    }
}

/// One GET on a new connection to an address the client DNS gives: the
/// cluster named in the backend's reply.
async fn request(plan: &TrafficPlan) -> Result<String, String> {
    let run = async {
        let addrs = resolve(plan.via.unwrap_or(plan.dns), &plan.name()).await?;
        let ip = addrs[rand::random_range(0..addrs.len())];
        let addr = SocketAddr::new(ip, plan.port);
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .header(hyper::header::HOST, plan.name())
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("HTTP request: {e}"))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP from {addr}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("HTTP body from {addr}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status} from {addr}"));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("HTTP from {addr}: not the backend's JSON: {e}"))?;
        json["cluster"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("HTTP from {addr}: no \"cluster\" in the reply"))
    };
    tokio::time::timeout(HTTP_TIMEOUT, run)
        .await
        .map_err(|_| format!("HTTP: no answer within {HTTP_TIMEOUT:?}"))?
}
