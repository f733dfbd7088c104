//! `switchyard drill`: rehearse a failover with traffic running, and get a
//! measured report.
//!
//! A drill sends synthetic traffic (DNS queries for a service's ClusterSet
//! name, HTTP requests to it), takes an action (drain a cluster, lose a
//! cluster, lose the hub's raft leader), watches the hub notice and the
//! traffic move, holds the fault, restores it, and reports the timeline,
//! the failures, the p99 latency and a verdict against SLO flags. Every
//! drill restores at its end, on Ctrl-C, and when something goes wrong.
//!
//! How a fault is made depends on where the drill runs: against a running
//! playground (its control socket) the agent and gateway of a cluster are
//! stopped, or the hub killed; against a real ClusterSet the hub's admin
//! API drains a cluster or revokes its lease; `--command` runs any command
//! instead (a chaos tool, `kubectl delete pod`, `ip link set down`).
//!
//! - `traffic`: the synthetic DNS and HTTP traffic and its samples.
//! - `report`: timeline, verdict and rendering, from the samples.

pub mod report;
pub mod traffic;

use crate::cli::{self, HubTarget};
use crate::model::ServiceKey;
use crate::playground::control::{self, Request};
use crate::proto;
use anyhow::{anyhow, bail, Context};
use report::{Observed, Report, Slo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use traffic::{Traffic, TrafficPlan};

type Admin = proto::admin_service_client::AdminServiceClient<tonic::transport::Channel>;

/// Which drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drill {
    /// Planned: the cluster's share (of one service, or all) moves away.
    Drain {
        cluster: String,
        service: Option<ServiceKey>,
    },
    /// Unplanned: the cluster is lost.
    ClusterDown { cluster: String },
    /// The hub's raft leader replica is lost.
    HubLeader,
}

impl Drill {
    /// The drill's name, as on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Drill::Drain { .. } => "drain",
            Drill::ClusterDown { .. } => "cluster-down",
            Drill::HubLeader => "hub-leader",
        }
    }

    /// The cluster the drill is about (none for `hub-leader`).
    pub fn cluster(&self) -> Option<&str> {
        match self {
            Drill::Drain { cluster, .. } | Drill::ClusterDown { cluster } => Some(cluster),
            Drill::HubLeader => None,
        }
    }
}

/// A user-supplied way to make (and undo) the fault.
#[derive(Debug, Clone)]
pub struct Commands {
    pub action: String,
    pub restore: String,
}

/// Everything a drill run needs.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Which drill, on what.
    pub drill: Drill,
    /// The hub's admin API (one or more replicas) and credentials.
    pub hub: HubTarget,
    /// The data dir of a running playground to drive; `None` for a real
    /// ClusterSet (or when `commands` make the fault).
    pub playground: Option<PathBuf>,
    /// Make and undo the fault with these commands instead.
    pub commands: Option<Commands>,
    /// The service the traffic goes to; by default the drained service, or
    /// the first service the cluster exports.
    pub service: Option<ServiceKey>,
    /// The ClusterSet DNS zone.
    pub zone: String,
    /// The DNS whose answers are watched (the hub's).
    pub dns: Option<SocketAddr>,
    /// The DNS HTTP clients resolve through (a cluster's gateway DNS).
    pub via: Option<SocketAddr>,
    /// DNS queries per second, and as many HTTP requests per second.
    pub rate: u32,
    /// Traffic before the action, for a baseline.
    pub warmup: Duration,
    /// How long the fault stays; by default the lease plus 3 s for a lost
    /// cluster, 3 s otherwise.
    pub hold: Option<Duration>,
    /// How long to wait, after the restore, for traffic to come back.
    pub settle: Duration,
    /// The hub's lease, for the default SLOs (the playground says its own).
    pub lease_ms: u64,
    /// SLO limits; unset ones get the drill's defaults.
    pub slo: Slo,
}

/// How the fault is made and undone.
enum Method {
    Playground(PathBuf),
    Admin,
    Command(Commands),
}

impl Method {
    fn describe(&self, drill: &Drill) -> String {
        match (self, drill) {
            (Method::Command(c), _) => format!("command: {}", c.action),
            (Method::Playground(_), Drill::Drain { .. }) | (Method::Admin, Drill::Drain { .. }) => {
                "hub admin API: drain".into()
            }
            (Method::Playground(_), Drill::ClusterDown { .. }) => {
                "playground: stopped the cluster's agent and gateway".into()
            }
            (Method::Playground(_), Drill::HubLeader) => {
                "playground: killed the hub's only replica".into()
            }
            (Method::Admin, Drill::ClusterDown { .. }) => "hub admin API: lease revoked".into(),
            (Method::Admin, Drill::HubLeader) => "none".into(),
        }
    }
}

/// What the drill learnt before acting.
struct Before {
    service: ServiceKey,
    port: u16,
    owners: BTreeMap<IpAddr, String>,
    leader: u64,
    exports: Vec<String>,
    weights: Weights,
}

/// Runs the drill; `interrupt` (Ctrl-C) cuts the hold short. The fault is
/// undone before this returns, whatever happened.
pub async fn run(opts: DrillOptions, interrupt: CancellationToken) -> anyhow::Result<Report> {
    let method = match (&opts.commands, &opts.playground) {
        (Some(c), _) => Method::Command(c.clone()),
        // A drain is the hub's business even in the playground.
        (None, Some(dir)) => Method::Playground(dir.clone()),
        (None, None) => Method::Admin,
    };
    if matches!((&method, &opts.drill), (Method::Admin, Drill::HubLeader)) {
        bail!("drill hub-leader needs a way to kill a replica: run it against the playground, or pass --command (and --restore-command); $SWITCHYARD_DRILL_LEADER holds the leader's raft ID, e.g. --command 'kubectl -n switchyard-system delete pod switchyard-hub-$((SWITCHYARD_DRILL_LEADER-1)) --grace-period=0 --force'");
    }
    let before = survey(&opts).await?;
    let plan = TrafficPlan {
        service: before.service.clone(),
        zone: opts.zone.clone(),
        dns: opts.dns.context("no DNS to watch: pass --dns")?,
        via: opts.via,
        port: before.port,
        rate: opts.rate.max(1),
        owners: before.owners.clone(),
    };
    let hold = opts.hold.unwrap_or(match opts.drill {
        Drill::ClusterDown { .. } => Duration::from_millis(opts.lease_ms) + Duration::from_secs(3),
        _ => Duration::from_secs(3),
    });
    let mut slo = opts.slo.clone();
    match opts.drill {
        Drill::ClusterDown { .. } => {
            let limit = opts.lease_ms + 1000;
            slo.detect_ms.get_or_insert(limit);
            slo.shift_ms.get_or_insert(limit);
        }
        Drill::Drain { .. } => {
            slo.failed.get_or_insert(0);
            slo.shift_ms.get_or_insert(1000);
        }
        Drill::HubLeader => {
            slo.failed.get_or_insert(0);
        }
    }

    let start = Instant::now();
    let traffic = Traffic::start(plan, start);
    let mut notes = Vec::new();
    if let (Method::Playground(_), Drill::HubLeader) = (&method, &opts.drill) {
        notes.push("the playground's hub is one replica: the DNS it serves (--dns) is down until the restart, while each cluster's gateway goes on answering and routing from its last configuration".to_string());
    }
    let mut observed = Observed {
        drill: opts.drill.name().into(),
        cluster: opts.drill.cluster().map(str::to_string),
        service: before.service.to_string(),
        method: method.describe(&opts.drill),
        notes,
        ..Default::default()
    };
    interruptible(opts.warmup, &interrupt).await;
    if let Some(cluster) = opts.drill.cluster() {
        if !traffic.reached_since(cluster, Duration::ZERO) {
            observed.notes.push(format!(
                "{cluster} got no traffic of {} before the action: the shift times say little",
                before.service
            ));
        }
    }

    observed.action_at = start.elapsed();
    let acted = act(&opts, &method, &before, false).await;
    observed.action_took = start.elapsed() - observed.action_at;
    let action_at = start + observed.action_at;
    if let Err(e) = &acted {
        observed.notes.push(format!("the action failed: {e:#}"));
    } else {
        observed.detected = watch(&opts, &before, action_at, hold, &interrupt).await;
    }
    observed.interrupted = interrupt.is_cancelled();
    if observed.interrupted {
        observed
            .notes
            .push("interrupted (Ctrl-C): restored before the hold ran out".into());
    }

    let restore_at = Instant::now();
    observed.restore_at = Some(restore_at - action_at);
    let restored = act(&opts, &method, &before, true).await;
    match restored {
        Err(e) => observed.notes.push(format!(
            "the restore failed: {e:#}; run `switchyard drill restore`"
        )),
        Ok(()) => {
            let back = back_again(&opts, &traffic, start, restore_at).await;
            observed.restored = back.is_some();
            observed.restored_at = back;
            if back.is_none() {
                observed.notes.push(format!(
                    "traffic did not come back within {:?} of the restore",
                    opts.settle
                ));
            }
        }
    }
    if opts.drill == Drill::HubLeader {
        match lost_state(&opts, &before).await {
            Ok((lost, changed)) => {
                if !lost.is_empty() {
                    observed.restored = false;
                    observed.notes.push(format!("lost: {}", lost.join(", ")));
                }
                if !changed.is_empty() {
                    observed.notes.push(format!(
                        "weights changed during the drill (written meanwhile?): {}",
                        changed.join(", ")
                    ));
                }
            }
            Err(e) => observed
                .notes
                .push(format!("could not compare the hub's state: {e:#}")),
        }
    }
    let samples = traffic.stop().await;
    acted?;
    Ok(report::build(observed, &samples, &slo))
}

/// Sleeps `d`, or less on Ctrl-C.
async fn interruptible(d: Duration, interrupt: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = interrupt.cancelled() => {}
    }
}

async fn admin_json(hub: &HubTarget, kind: &str, name: &str) -> anyhow::Result<Value> {
    let mut client = cli::admin(hub).await?;
    let reply = client
        .get(proto::GetRequest {
            kind: kind.into(),
            name: name.into(),
            consistent: false,
            cluster: String::new(),
        })
        .await
        .map_err(cli::status_error)?;
    serde_json::from_str(&reply.into_inner().json).context("unreadable answer from the hub")
}

async fn hub_status(hub: &HubTarget) -> anyhow::Result<Value> {
    let mut client = cli::admin(hub).await?;
    let reply = client
        .status(proto::StatusRequest {})
        .await
        .map_err(cli::status_error)?;
    serde_json::from_str(&reply.into_inner().json).context("unreadable status from the hub")
}

/// Reads what the drill needs from the hub: the traffic's service, its
/// addresses per cluster, the leader, and (for `hub-leader`) the exports
/// and weights that must survive.
async fn survey(opts: &DrillOptions) -> anyhow::Result<Before> {
    let clusters = admin_json(&opts.hub, "clusters", "").await?;
    if let Some(cluster) = opts.drill.cluster() {
        let known = clusters
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["id"] == cluster));
        if !known {
            bail!(
                "no cluster {cluster:?} in the ClusterSet (`switchyard get clusters` lists them)"
            );
        }
    }
    let service = match (&opts.service, &opts.drill) {
        (Some(s), _) => s.clone(),
        (
            None,
            Drill::Drain {
                service: Some(s), ..
            },
        ) => s.clone(),
        (None, drill) => {
            let exports = admin_json(&opts.hub, "exports", "").await?;
            let exported = |e: &&Value| drill.cluster().is_none_or(|c| e["cluster"] == c);
            let first = exports
                .as_array()
                .and_then(|a| a.iter().find(exported))
                .and_then(|e| e["service"].as_str())
                .context("nothing to send traffic to: no service is exported (by that cluster); pass --service")?;
            first.parse()?
        }
    };
    let backends = admin_json(&opts.hub, "backends", &service.to_string())
        .await
        .with_context(|| format!("no traffic target {service}"))?;
    let port = backends["ports"][0]["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("{service} has no port to send HTTP requests to"))?;
    let mut owners = BTreeMap::new();
    for c in backends["clusters"].as_array().into_iter().flatten() {
        let cluster = c["cluster"].as_str().unwrap_or_default();
        for a in c["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = a.as_str().and_then(|a| a.parse().ok()) {
                owners.insert(ip, cluster.to_string());
            }
        }
    }
    if let Some(cluster) = opts.drill.cluster() {
        let share = backends["clusters"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["cluster"] == cluster))
            .and_then(|c| c["share"].as_f64());
        if share.is_none_or(|s| s <= 0.0) {
            bail!("{cluster} carries none of {service}'s traffic, so the drill would show nothing: pick another --service (or cluster)");
        }
    }
    let leader = hub_status(&opts.hub).await?["leader"].as_u64().unwrap_or(0);
    let (exports, weights) = match opts.drill {
        Drill::HubLeader => state_digest(&opts.hub).await?,
        _ => (Vec::new(), Weights::new()),
    };
    Ok(Before {
        service,
        port,
        owners,
        leader,
        exports,
        weights,
    })
}

/// The hub's exports (cluster and service of each) and every
/// MultiClusterService's weight per cluster: what a lost leader must not
/// lose.
async fn state_digest(hub: &HubTarget) -> anyhow::Result<(Vec<String>, Weights)> {
    let exports = admin_json(hub, "exports", "").await?;
    let mut names: Vec<String> = exports
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{} exports {}",
                str_of(&e["cluster"]),
                str_of(&e["service"])
            )
        })
        .collect();
    names.sort();
    let mcs = admin_json(hub, "mcs", "").await?;
    let mut weights = Weights::new();
    for m in mcs.as_array().into_iter().flatten() {
        let meta = &m["metadata"];
        let name = format!("{}/{}", str_of(&meta["namespace"]), str_of(&meta["name"]));
        for b in m["spec"]["clusterBackends"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let key = format!("{name} {}", str_of(&b["cluster"]));
            weights.insert(key, b["weight"].as_i64().unwrap_or_default());
        }
    }
    Ok((names, weights))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// "NS/MCS CLUSTER" → weight.
type Weights = BTreeMap<String, i64>;

/// After a `hub-leader` drill: what the hub lost (an export, a
/// MultiClusterService or a cluster's weight in one), and which weights
/// changed (a write during the drill changes them legitimately).
async fn lost_state(
    opts: &DrillOptions,
    before: &Before,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (exports, weights) = state_digest(&opts.hub).await?;
    let mut lost: Vec<String> = before
        .exports
        .iter()
        .filter(|e| !exports.contains(e))
        .cloned()
        .collect();
    let mut changed = Vec::new();
    for (key, was) in &before.weights {
        match weights.get(key) {
            None => lost.push(format!("weight of {key}")),
            Some(now) if now != was => changed.push(format!("{key}: {was} -> {now}")),
            Some(_) => {}
        }
    }
    Ok((lost, changed))
}

/// Makes the fault, or (`restore`) undoes it.
async fn act(
    opts: &DrillOptions,
    method: &Method,
    before: &Before,
    restore: bool,
) -> anyhow::Result<()> {
    match (method, &opts.drill) {
        (Method::Command(c), drill) => {
            let command = if restore { &c.restore } else { &c.action };
            run_command(command, drill.cluster(), before.leader).await
        }
        (_, Drill::Drain { cluster, service }) => {
            let service = service
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            drain(
                &mut cli::admin(&opts.hub).await?,
                cluster,
                &service,
                restore,
            )
            .await
        }
        (Method::Admin, Drill::ClusterDown { cluster }) => {
            revoke(&mut cli::admin(&opts.hub).await?, cluster, restore).await
        }
        (Method::Playground(dir), Drill::ClusterDown { cluster }) => {
            let cluster = cluster.clone();
            let request = match restore {
                false => Request::ClusterDown { cluster },
                true => Request::ClusterUp { cluster },
            };
            control::call(dir, &request).await?;
            Ok(())
        }
        (Method::Playground(dir), Drill::HubLeader) => {
            let request = if restore {
                Request::HubStart
            } else {
                Request::HubKill
            };
            control::call(dir, &request).await?;
            Ok(())
        }
        (Method::Admin, Drill::HubLeader) => Err(anyhow!("no way to kill a hub replica")),
    }
}

/// Drains (or restores) `cluster`, or one `service` on it when not empty.
async fn drain(
    client: &mut Admin,
    cluster: &str,
    service: &str,
    restore: bool,
) -> anyhow::Result<()> {
    let req = proto::DrainRequest {
        cluster: cluster.to_string(),
        service: service.to_string(),
        restore,
    };
    client.drain(req).await.map_err(cli::status_error)?;
    Ok(())
}

/// Revokes (or gives back) `cluster`'s lease.
async fn revoke(client: &mut Admin, cluster: &str, restore: bool) -> anyhow::Result<()> {
    let req = proto::RevokeLeaseRequest {
        cluster: cluster.to_string(),
        restore,
    };
    client.revoke_lease(req).await.map_err(cli::status_error)?;
    Ok(())
}

/// Runs a user's action or restore command through `sh -c`, with the
/// drill's target in its environment.
async fn run_command(command: &str, cluster: Option<&str>, leader: u64) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("SWITCHYARD_DRILL_CLUSTER", cluster.unwrap_or_default())
        .env("SWITCHYARD_DRILL_LEADER", leader.to_string())
        .output()
        .await
        .with_context(|| format!("cannot run `{command}`"))?;
    if !output.status.success() {
        bail!(
            "`{command}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Watches the hub until `hold` has passed since the action (or Ctrl-C);
/// returns when it first saw the fault: the cluster no longer healthy, or
/// a leader other than the lost one.
async fn watch(
    opts: &DrillOptions,
    before: &Before,
    action_at: Instant,
    hold: Duration,
    interrupt: &CancellationToken,
) -> Option<Duration> {
    let mut detected = None;
    let deadline = action_at + hold;
    while Instant::now() < deadline && !interrupt.is_cancelled() {
        if detected.is_none() && noticed(opts, before).await {
            detected = Some(action_at.elapsed());
        }
        let pause = Duration::from_millis(if detected.is_some() { 200 } else { 50 });
        tokio::select! {
            () = tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))) => {}
            () = interrupt.cancelled() => {}
        }
    }
    detected
}

/// Whether the hub shows the fault now.
async fn noticed(opts: &DrillOptions, before: &Before) -> bool {
    let call = async {
        match &opts.drill {
            Drill::HubLeader => {
                let leader = hub_status(&opts.hub).await?["leader"].as_u64().unwrap_or(0);
                // A single replica comes back as the same leader.
                let single = opts.playground.is_some() && opts.commands.is_none();
                anyhow::Ok(leader != 0 && (leader != before.leader || single))
            }
            Drill::Drain {
                cluster,
                service: Some(service),
            } => {
                let b = admin_json(&opts.hub, "backends", &service.to_string()).await?;
                let share = b["clusters"]
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["cluster"] == cluster.as_str()))
                    .and_then(|c| c["share"].as_f64())
                    .unwrap_or(0.0);
                Ok(share == 0.0)
            }
            Drill::Drain { cluster, .. } | Drill::ClusterDown { cluster } => {
                let c = admin_json(&opts.hub, "clusters", cluster).await?;
                Ok(c["state"] != "Healthy")
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .is_ok_and(|r| r.unwrap_or(false))
}

/// After the restore: how long until the cluster got traffic again (for
/// `hub-leader`, until the hub answered with a leader), within `settle`.
async fn back_again(
    opts: &DrillOptions,
    traffic: &Traffic,
    start: Instant,
    restore_at: Instant,
) -> Option<Duration> {
    let since = restore_at - start;
    let deadline = restore_at + opts.settle;
    while Instant::now() < deadline {
        let back = match opts.drill.cluster() {
            Some(cluster) => traffic.reached_since(cluster, since),
            None => hub_status(&opts.hub)
                .await
                .is_ok_and(|s| s["leader"].as_u64().is_some_and(|l| l != 0)),
        };
        if back {
            return Some(restore_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// `drill restore`: undoes what any drill may have left behind: drains,
/// revoked leases, and in the playground stopped clusters and a killed
/// hub. Returns one line per thing restored.
pub async fn restore_all(
    hub: &HubTarget,
    playground: Option<&std::path::Path>,
    only: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    if let Some(dir) = playground {
        if control::call(dir, &Request::HubStart).await.is_ok() {
            done.push("started the playground's hub".to_string());
        }
        let info = control::info(dir).context("no playground description in the data dir")?;
        for cluster in info
            .clusters
            .iter()
            .filter(|c| only.is_none_or(|o| o == *c))
        {
            let up = Request::ClusterUp {
                cluster: cluster.clone(),
            };
            if let Ok(m) = control::call(dir, &up).await {
                done.push(m);
            }
        }
    }
    let clusters = admin_json(hub, "clusters", "").await?;
    if let Some(o) = only {
        if !clusters
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["id"] == o))
        {
            bail!("no cluster {o:?} in the ClusterSet");
        }
    }
    let mut client = cli::admin(hub).await?;
    for c in clusters.as_array().into_iter().flatten() {
        let id = c["id"].as_str().unwrap_or_default().to_string();
        if only.is_some_and(|o| o != id) {
            continue;
        }
        if c["leaseRevoked"] == true {
            revoke(&mut client, &id, true).await?;
            done.push(format!("gave {id} its lease back"));
        }
        if c["state"] == "Drained" {
            drain(&mut client, &id, "", true).await?;
            done.push(format!("undrained {id}"));
        }
        for s in c["drainedServices"].as_array().into_iter().flatten() {
            let service = s.as_str().unwrap_or_default();
            drain(&mut client, &id, service, true).await?;
            done.push(format!("undrained {service} on {id}"));
        }
    }
    Ok(done)
}
