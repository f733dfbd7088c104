//! `switchyard drill ...`: flags, defaults (the playground's addresses when
//! one runs from the data dir), Ctrl-C, and printing the report.

use super::{Format, HubTarget};
use crate::drill::{self, report::Slo, Commands, Drill, DrillOptions};
use crate::model::ServiceKey;
use crate::playground::control;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// The drills.
#[derive(Debug, clap::Subcommand)]
pub enum DrillCommand {
    /// Planned: drain a cluster (or one service on it); its share moves to
    /// the other clusters, gateways let open connections finish.
    Drain {
        #[arg(long)]
        cluster: String,
        /// Drain only this service (NS/NAME).
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        common: DrillArgs,
    },
    /// Unplanned: lose a cluster. In the playground its agent and gateway
    /// stop; on a real ClusterSet the hub revokes its lease.
    ClusterDown {
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        common: DrillArgs,
    },
    /// Lose the hub's raft leader replica (the playground kills its hub;
    /// elsewhere pass --command).
    HubLeader {
        #[command(flatten)]
        common: DrillArgs,
    },
    /// Undo whatever a drill left behind: drains, revoked leases, and in
    /// the playground stopped clusters or a killed hub.
    Restore {
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
        /// A playground data dir (default: .switchyard, when a playground
        /// runs from it).
        #[arg(long)]
        playground: Option<PathBuf>,
    },
}

/// Flags every drill takes.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
    hub: String,
    /// A playground data dir to drive (default: .switchyard, when a
    /// playground runs from it and --hub is its API).
    #[arg(long)]
    playground: Option<PathBuf>,
    /// The service the synthetic traffic goes to (NS/NAME); by default the
    /// drained service or the first the cluster exports.
    #[arg(long = "traffic-service")]
    traffic_service: Option<String>,
    /// The DNS whose answers are watched for the shift (the hub's).
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// The DNS that HTTP clients resolve through; playground: the gateway
    /// DNS of the --from cluster.
    #[arg(long)]
    via: Option<SocketAddr>,
    /// Playground: the cluster whose gateway carries the HTTP traffic (by
    /// default the first cluster other than the target).
    #[arg(long)]
    from: Option<String>,
    #[arg(long, default_value = "clusterset.local")]
    zone: String,
    /// DNS queries per second, and as many HTTP requests per second.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Traffic before the action, for a baseline.
    #[arg(long, default_value = "2s")]
    warmup: humantime::Duration,
    /// How long the fault stays before the restore (default: the lease
    /// plus 3 s for cluster-down, 3 s otherwise).
    #[arg(long)]
    hold: Option<humantime::Duration>,
    /// How long to wait after the restore for traffic to come back.
    #[arg(long, default_value = "15s")]
    settle: humantime::Duration,
    /// The hub's lease, ms (the playground's is read from it).
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
    /// Make the fault with this shell command instead ($SWITCHYARD_DRILL_CLUSTER,
    /// $SWITCHYARD_DRILL_LEADER are set); needs --restore-command.
    #[arg(long, requires = "restore_command")]
    command: Option<String>,
    /// Undo the --command fault.
    #[arg(long, requires = "command")]
    restore_command: Option<String>,
    /// SLO: most ms from the action to the hub's detection (default for
    /// cluster-down: the lease + 1 s).
    #[arg(long)]
    slo_detect_ms: Option<u64>,
    /// SLO: most ms until DNS and gateways stop sending to the cluster
    /// (default: the lease + 1 s for cluster-down, 1 s for drain).
    #[arg(long)]
    slo_shift_ms: Option<u64>,
    /// SLO: most failed HTTP requests (default 0 for drain and hub-leader).
    #[arg(long)]
    slo_failed: Option<u64>,
    /// SLO: highest p99 HTTP latency, ms.
    #[arg(long)]
    slo_p99_ms: Option<f64>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
}

/// The playground to drive: the one named, or the one running from
/// `.switchyard` when `hub` is its API.
fn playground_dir(
    named: Option<&Path>,
    hub: &str,
) -> anyhow::Result<Option<(PathBuf, control::Info)>> {
    match named {
        Some(dir) => {
            let info = control::info(dir).with_context(|| {
                format!(
                    "no running playground in {} (no {})",
                    dir.display(),
                    control::INFO
                )
            })?;
            Ok(Some((dir.to_path_buf(), info)))
        }
        None => {
            let dir = Path::new(".switchyard");
            Ok(control::info(dir)
                .filter(|info| hub.split(',').any(|h| h.trim() == info.api.to_string()))
                .map(|info| (dir.to_path_buf(), info)))
        }
    }
}

/// Runs a drill command; `Ok(false)` when the verdict is FAIL.
pub async fn run(cmd: DrillCommand, credentials: Option<&Path>) -> anyhow::Result<bool> {
    let (drill, args) = match cmd {
        DrillCommand::Restore {
            cluster,
            hub,
            playground,
        } => {
            let target = HubTarget::new(&hub, credentials)?;
            let dir = playground_dir(playground.as_deref(), &hub)?.map(|(d, _)| d);
            let done = drill::restore_all(&target, dir.as_deref(), cluster.as_deref()).await?;
            if done.is_empty() {
                println!("nothing to restore");
            }
            for line in done {
                println!("{line}");
            }
            return Ok(true);
        }
        DrillCommand::Drain {
            cluster,
            service,
            common,
        } => {
            let service = service
                .map(|s| s.parse::<ServiceKey>().context("--service"))
                .transpose()?;
            (Drill::Drain { cluster, service }, common)
        }
        DrillCommand::ClusterDown { cluster, common } => (Drill::ClusterDown { cluster }, common),
        DrillCommand::HubLeader { common } => (Drill::HubLeader, common),
    };
    if args.rate == 0 || args.rate > 10_000 {
        bail!("--rate must be between 1 and 10000 per second");
    }
    let hub = HubTarget::new(&args.hub, credentials)?;
    let playground = playground_dir(args.playground.as_deref(), &args.hub)?;
    let target = drill.cluster();
    let (dns, via, lease_ms) = match &playground {
        Some((_, info)) => {
            let from = match &args.from {
                Some(f) => Some(
                    info.gateways
                        .iter()
                        .find(|g| &g.cluster == f)
                        .with_context(|| {
                            format!("--from {f}: no gateway of that cluster in the playground")
                        })?,
                ),
                None => info
                    .gateways
                    .iter()
                    .find(|g| Some(g.cluster.as_str()) != target),
            };
            (
                args.dns.or(Some(info.dns)),
                args.via.or(from.map(|g| g.dns)),
                info.lease_ms,
            )
        }
        None => (args.dns, args.via, args.lease_ms),
    };
    if dns.is_none() {
        bail!("no DNS to watch: pass --dns (the hub's ClusterSet DNS address)");
    }
    let traffic_service = args
        .traffic_service
        .map(|s| s.parse::<ServiceKey>().context("--traffic-service"))
        .transpose()?;
    let opts = DrillOptions {
        drill,
        hub,
        playground: playground.map(|(d, _)| d),
        commands: args
            .command
            .zip(args.restore_command)
            .map(|(action, restore)| Commands { action, restore }),
        service: traffic_service,
        zone: args.zone,
        dns,
        via,
        rate: args.rate,
        warmup: *args.warmup,
        hold: args.hold.map(|h| *h),
        settle: *args.settle,
        lease_ms,
        slo: Slo {
            detect_ms: args.slo_detect_ms,
            shift_ms: args.slo_shift_ms,
            failed: args.slo_failed,
            p99_ms: args.slo_p99_ms,
        },
    };
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: restoring");
            on_signal.cancel();
        }
    });
    let report = drill::run(opts, interrupt).await?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&report)?),
        Format::Table => print!("{}", drill::report::render(&report)),
    }
    Ok(report.pass)
}
