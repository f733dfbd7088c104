//! Starts the playground and stops it in order on shutdown.

use super::backend::{self, BackendIdentity};
use super::config::ClusterSetConfig;
use super::control;
use crate::agent::{self, AgentConfig, ClusterFile};
use crate::dns::DnsConfig;
use crate::hub::app::{self as hub_app, HubConfig};
use crate::hub::lease::LeaseConfig;
use crate::identity::tls::ClientCredentials;
use crate::identity::Identity;
use anyhow::{bail, Context};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// `switchyard up` options.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub dns: SocketAddr,
    pub api: SocketAddr,
    /// A clusterset description; the built-in one when `None`.
    pub config: Option<PathBuf>,
    pub lease: LeaseConfig,
    pub dns_config: DnsConfig,
    /// Serve the API without TLS (and without authentication).
    pub insecure: bool,
    /// How the clusters reach each other.
    pub network: Network,
}

/// How the playground's clusters reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Network {
    /// One flat network: the hub's DNS answers with remote pod addresses.
    Flat,
    /// Each cluster behind its east-west gateway: cross-cluster traffic
    /// goes through the gateways over mTLS, and each cluster's DNS answers
    /// with its gateway's listeners.
    Gateway,
}

/// A playground cluster's gateway, once up.
#[derive(Debug, Clone)]
pub struct GatewayBound {
    pub cluster: String,
    /// The mTLS listener other gateways connect to.
    pub inbound: SocketAddr,
    /// The cluster-local ClusterSet DNS.
    pub dns: SocketAddr,
    pub metrics: SocketAddr,
}

/// Where the playground listens, once up.
#[derive(Debug, Clone)]
pub struct Bound {
    pub api: SocketAddr,
    pub dns: SocketAddr,
    pub cluster_files: Vec<(String, PathBuf)>,
    /// Empty on a flat network.
    pub gateways: Vec<GatewayBound>,
}

/// Loads the clusterset description named by `--config`, or the built-in one.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<ClusterSetConfig> {
    match path {
        None => Ok(ClusterSetConfig::builtin()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Ok(ClusterSetConfig::parse(&p.display().to_string(), &text)?)
        }
    }
}

/// Runs the playground until `shutdown`; `ready` receives the bound
/// addresses once every agent's exports are applied.
pub async fn up(
    opts: UpOptions,
    shutdown: CancellationToken,
    ready: tokio::sync::oneshot::Sender<Bound>,
) -> anyhow::Result<()> {
    if opts.network == Network::Gateway && opts.insecure {
        bail!("--network gateway needs the ClusterSet CA for the gateways' mTLS: drop --insecure, or use --network flat");
    }
    let files = match (&opts.config, existing_cluster_files(&opts.data_dir)?) {
        // A restart: the data dir's cluster files (perhaps edited) are the truth.
        (None, existing) if !existing.is_empty() => existing,
        (path, _) => write_cluster_files(&opts.data_dir, &load_config(path.as_deref())?)?,
    };

    let hub_config = HubConfig {
        data_dir: opts.data_dir.join("hub"),
        api: opts.api,
        dns: opts.dns,
        dns_config: opts.dns_config.clone(),
        lease: opts.lease,
        raft: None,
        tls: (!opts.insecure).then(hub_app::HubTls::default),
    };
    let hub = hub_app::start(hub_config.clone(), CancellationToken::new()).await?;

    let clusters_shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut agents = HashMap::new();
    let mut gateways = BTreeMap::new();
    let result = async {
        agents = start_clusters(&files, &hub, &mut tasks, &clusters_shutdown).await?;
        wait_ready(&hub.hub, &files).await?;
        if opts.network == Network::Gateway {
            gateways = start_gateways(&opts, &files, &hub, &clusters_shutdown).await?;
            wait_gateways_ready(&hub.hub, gateways.values()).await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        clusters_shutdown.cancel();
        for (_, g) in gateways {
            g.stop().await;
        }
        while tasks.join_next().await.is_some() {}
        hub.stop().await;
        return Err(e);
    }
    let bound = Bound {
        api: hub.api_addr,
        dns: hub.dns_addr,
        cluster_files: files.clone(),
        gateways: gateways
            .values()
            .map(|g| GatewayBound {
                cluster: g.shared.cluster.clone(),
                inbound: g.inbound,
                dns: g.dns.unwrap_or(hub.dns_addr),
                metrics: g.metrics.unwrap_or(hub.api_addr),
            })
            .collect(),
    };
    let (calls_tx, calls) = mpsc::channel(8);
    let control_dir = opts.data_dir.clone();
    if let Err(e) = control::serve(&control_dir, calls_tx, clusters_shutdown.child_token()) {
        tracing::warn!(error = %e, dir = %control_dir.display(), "no control socket: drills cannot drive this playground");
    }
    write_info(&opts, &bound);
    let _ = ready.send(bound);

    let mut running = Running {
        opts,
        files,
        hub_config,
        hub: Some(hub),
        agents,
        gateways,
        tasks,
        shutdown: clusters_shutdown,
    };
    let raft_failed = running.serve(shutdown, calls).await;
    tracing::info!("stopping: gateways, agents and backends first, then the hub");
    running.shutdown.cancel();
    for (_, g) in running.gateways {
        g.stop().await;
    }
    while running.tasks.join_next().await.is_some() {}
    if let Some(hub) = running.hub {
        hub.stop().await;
    }
    let _ = std::fs::remove_file(control_dir.join(control::INFO));
    if raft_failed {
        anyhow::bail!("the hub's raft node stopped (the log above says why)");
    }
    Ok(())
}

/// Writes `DATA_DIR/playground.json` for the clients that drive the
/// playground (`switchyard drill`).
fn write_info(opts: &UpOptions, bound: &Bound) {
    let info = control::Info {
        api: bound.api,
        dns: bound.dns,
        lease_ms: opts.lease.ttl.as_millis() as u64,
        gateways: bound
            .gateways
            .iter()
            .map(|g| control::GatewayInfo {
                cluster: g.cluster.clone(),
                dns: g.dns,
            })
            .collect(),
        clusters: bound
            .cluster_files
            .iter()
            .map(|(id, _)| id.clone())
            .collect(),
    };
    let path = opts.data_dir.join(control::INFO);
    let written = serde_json::to_vec_pretty(&info)
        .map_err(std::io::Error::other)
        .and_then(|text| std::fs::write(&path, text));
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "cannot describe the playground for drills");
    }
}

/// The playground once up: what a drill may stop and start again.
struct Running {
    opts: UpOptions,
    files: Vec<(String, PathBuf)>,
    hub_config: HubConfig,
    /// `None` while a drill has the hub killed.
    hub: Option<hub_app::RunningHub>,
    /// Each running agent's stop token.
    agents: HashMap<String, CancellationToken>,
    gateways: BTreeMap<String, crate::gateway::RunningGateway>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Running {
    /// Answers control calls until `shutdown`; true when the hub's raft
    /// node stopped on its own.
    async fn serve(
        &mut self,
        shutdown: CancellationToken,
        mut calls: mpsc::Receiver<control::Call>,
    ) -> bool {
        loop {
            let raft_stopped = async {
                match &self.hub {
                    Some(hub) => hub.raft_stopped().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = raft_stopped => return true,
                Some((request, reply)) = calls.recv() => {
                    tracing::info!(?request, "playground control");
                    let answer = match self.handle(&request).await {
                        Ok(message) => control::Reply { ok: true, message },
                        Err(e) => control::Reply { ok: false, message: format!("{e:#}") },
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }

    async fn handle(&mut self, request: &control::Request) -> anyhow::Result<String> {
        use control::Request;
        match request {
            Request::ClusterDown { cluster } => {
                self.path_of(cluster)?;
                let agent = self.agents.remove(cluster);
                let gateway = self.gateways.remove(cluster);
                if agent.is_none() && gateway.is_none() {
                    bail!("cluster {cluster} is already down");
                }
                if let Some(token) = agent {
                    token.cancel();
                }
                if let Some(g) = gateway {
                    g.stop().await;
                }
                Ok(format!("stopped the agent and gateway of {cluster}"))
            }
            Request::ClusterUp { cluster } => {
                let path = self.path_of(cluster)?.to_path_buf();
                let hub = self
                    .hub
                    .as_ref()
                    .context("the hub is down: start it first")?;
                let mut started = Vec::new();
                if !self.agents.contains_key(cluster) {
                    let (_, token) =
                        start_agent(cluster, &path, hub, &mut self.tasks, &self.shutdown)?;
                    self.agents.insert(cluster.clone(), token);
                    started.push("agent");
                }
                if self.opts.network == Network::Gateway && !self.gateways.contains_key(cluster) {
                    let g = start_gateway(&self.opts, cluster, &path, hub, &self.shutdown).await?;
                    self.gateways.insert(cluster.clone(), g);
                    started.push("gateway");
                }
                match started.is_empty() {
                    true => bail!("cluster {cluster} is already up"),
                    false => Ok(format!(
                        "started the {} of {cluster}",
                        started.join(" and ")
                    )),
                }
            }
            Request::HubKill => {
                let hub = self.hub.take().context("the hub is already down")?;
                hub.kill().await;
                Ok("killed the hub".into())
            }
            Request::HubStart => {
                if self.hub.is_some() {
                    bail!("the hub is already running");
                }
                // The killed replica's files may take a moment to let go.
                let mut tries = 0;
                let hub = loop {
                    match hub_app::start(self.hub_config.clone(), CancellationToken::new()).await {
                        Ok(hub) => break hub,
                        Err(e) if tries < 20 => {
                            tries += 1;
                            tracing::debug!(error = %format!("{e:#}"), "hub restart: retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(e.context("cannot restart the hub")),
                    }
                };
                self.hub = Some(hub);
                Ok("started the hub".into())
            }
        }
    }

    fn path_of(&self, cluster: &str) -> anyhow::Result<&Path> {
        self.files
            .iter()
            .find(|(id, _)| id == cluster)
            .map(|(_, p)| p.as_path())
            .with_context(|| {
                let known: Vec<&str> = self.files.iter().map(|(id, _)| id.as_str()).collect();
                format!(
                    "no cluster {cluster:?} in the playground (it has {})",
                    known.join(", ")
                )
            })
    }
}

/// The cluster files a previous run left in `DATA_DIR/clusters/`.
fn existing_cluster_files(data_dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = data_dir.join("clusters");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let file = ClusterFile::load(&path)?;
            out.push((file.cluster, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes each cluster's file under `DATA_DIR/clusters/`, replacing what
/// was there (a first start, or an explicit `--config`).
fn write_cluster_files(
    data_dir: &Path,
    config: &ClusterSetConfig,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = data_dir.join("clusters");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (_, stale) in existing_cluster_files(data_dir).unwrap_or_default() {
        let _ = std::fs::remove_file(stale);
    }
    let mut out = Vec::new();
    for c in &config.clusters {
        let path = dir.join(format!("{}.yaml", c.cluster));
        let text = format!(
            "# Cluster {} of the switchyard playground. Edit and save: the agent\n# streams the change to the hub (remove endpoints, mark them ready: false, ...).\n{}",
            c.cluster,
            serde_yaml::to_string(c).unwrap_or_default()
        );
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        out.push((c.cluster.clone(), path));
    }
    Ok(out)
}

/// Agents' certificates in the playground: issued directly by its hub's
/// CA (a real agent joins with a bootstrap token), for a year.
const AGENT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Starts every cluster's backends and agent; returns each agent's stop
/// token.
async fn start_clusters(
    files: &[(String, PathBuf)],
    hub: &hub_app::RunningHub,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<HashMap<String, CancellationToken>> {
    let mut agents = HashMap::new();
    for (id, path) in files {
        let (file, token) = start_agent(id, path, hub, tasks, shutdown)?;
        start_backends(&file, tasks, shutdown).await?;
        agents.insert(id.clone(), token);
    }
    Ok(agents)
}

/// Starts one cluster's agent following its file; returns the file as
/// read and the agent's stop token.
fn start_agent(
    id: &str,
    path: &Path,
    hub: &hub_app::RunningHub,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(ClusterFile, CancellationToken)> {
    let token = shutdown.child_token();
    let (file, desired) = agent::watch::follow(
        path.to_path_buf(),
        Duration::from_millis(200),
        token.child_token(),
    )?;
    let auth = match hub.hub.authority() {
        None => agent::stream::HubAuth::Insecure,
        Some(authority) => {
            let identity = authority
                .ca()
                .issue(&Identity::Cluster(id.to_string()), &[], AGENT_TTL)
                .context("cannot issue a playground agent's certificate")?;
            let credentials = ClientCredentials {
                ca_pem: authority.ca_pem().to_string(),
                identity: Some(identity),
            };
            agent::stream::HubAuth::Tls(tokio::sync::watch::channel(credentials).1)
        }
    };
    let config = AgentConfig {
        hub: hub.api_addr.to_string(),
        spec: file.spec(),
        auth,
        ..Default::default()
    };
    let (acked, _) = tokio::sync::watch::channel(Default::default());
    tasks.spawn(agent::run(config, desired, acked, token.child_token()));
    tracing::info!(cluster = %id, file = %path.display(), "agent started");
    Ok((file, token))
}

/// Where a playground cluster's gateway listens: on its first
/// `gatewayAddresses` entry when the cluster file names one, else on .250 of
/// the /24 of its first endpoint (127.0.2.250 for us-east-1); inbound
/// (15443), DNS and metrics (9090) there, outbound listeners from .128/26
/// of that /24.
fn gateway_addresses(file: &ClusterFile) -> anyhow::Result<(std::net::Ipv4Addr, String)> {
    let configured = file.gateway_addresses.first().map(|a| {
        a.parse::<std::net::Ipv4Addr>()
            .ok()
            .filter(|ip| ip.is_loopback())
            .with_context(|| {
                format!(
                    "cluster {}: gateway address {a:?} is not an IPv4 loopback address",
                    file.cluster
                )
            })
    });
    let ip = match configured {
        Some(ip) => ip?,
        None => {
            let first = file
                .services
                .iter()
                .flat_map(|s| &s.endpoints)
                .find_map(|e| match e.address {
                    std::net::IpAddr::V4(v4) if v4.is_loopback() => Some(v4),
                    _ => None,
                })
                .with_context(|| {
                    format!(
                        "cluster {}: no IPv4 endpoint to place its gateway by; set gatewayAddresses in its file",
                        file.cluster
                    )
                })?;
            let [a, b, c, _] = first.octets();
            std::net::Ipv4Addr::new(a, b, c, 250)
        }
    };
    let [a, b, c, _] = ip.octets();
    Ok((ip, format!("{a}.{b}.{c}.128/26")))
}

/// Starts one gateway per cluster, each in its own /24.
async fn start_gateways(
    opts: &UpOptions,
    files: &[(String, PathBuf)],
    hub: &hub_app::RunningHub,
    shutdown: &CancellationToken,
) -> anyhow::Result<BTreeMap<String, crate::gateway::RunningGateway>> {
    let mut out = BTreeMap::new();
    let mut placed: Vec<(String, String)> = Vec::new();
    for (id, path) in files {
        let (_, cidr) = gateway_addresses(&ClusterFile::load(path)?)?;
        if let Some((other, _)) = placed.iter().find(|(_, c)| *c == cidr) {
            bail!("the gateways of {other} and {id} would share {cidr}: give one of them gatewayAddresses in its cluster file (another /24)");
        }
        placed.push((id.clone(), cidr));
        let running = start_gateway(opts, id, path, hub, shutdown).await?;
        out.insert(id.clone(), running);
    }
    Ok(out)
}

/// Starts a cluster's gateway with a certificate issued by the hub's CA (a
/// real gateway joins with a token of role gateway).
async fn start_gateway(
    opts: &UpOptions,
    id: &str,
    path: &Path,
    hub: &hub_app::RunningHub,
    shutdown: &CancellationToken,
) -> anyhow::Result<crate::gateway::RunningGateway> {
    let authority = hub
        .hub
        .authority()
        .context("the gateway network needs the hub's CA")?;
    let (ip, cidr) = gateway_addresses(&ClusterFile::load(path)?)?;
    let identity = authority
        .ca()
        .issue(&Identity::Gateway(id.to_string()), &[], AGENT_TTL)
        .context("cannot issue a playground gateway's certificate")?;
    let credentials = ClientCredentials {
        ca_pem: authority.ca_pem().to_string(),
        identity: Some(identity),
    };
    let dir = opts.data_dir.join("gateways").join(id);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let options = crate::gateway::GatewayOptions {
        cluster: id.to_string(),
        hub: hub.api_addr.to_string(),
        credentials: tokio::sync::watch::channel(credentials).1,
        inbound: SocketAddr::new(ip.into(), 15443),
        advertise: None,
        outbound_cidr: cidr,
        outbound_ports: None,
        dns: Some(SocketAddr::new(ip.into(), opts.dns.port())),
        dns_config: opts.dns_config.clone(),
        metrics: Some(SocketAddr::new(ip.into(), 9090)),
        settings: Default::default(),
        outliers: Default::default(),
        cache: Some(dir.join("config.pb")),
    };
    let running = crate::gateway::start(options, shutdown.child_token())
        .await
        .with_context(|| format!("cannot start the gateway of {id}"))?;
    tracing::info!(cluster = %id, inbound = %running.inbound, "gateway started");
    Ok(running)
}

/// Waits until every gateway routes every service of the ClusterSet on a
/// listener of its own.
async fn wait_gateways_ready(
    hub: &crate::hub::api::Hub,
    gateways: impl Iterator<Item = &crate::gateway::RunningGateway> + Clone,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let services = hub.state().backends.len();
        let pending: Vec<&str> = gateways
            .clone()
            .filter(|g| {
                let table = g.shared.table.load();
                table.routes().filter(|r| r.listener.is_some()).count() < services
            })
            .map(|g| g.shared.cluster.as_str())
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the gateways of {} did not receive their routes within 20 s",
                pending.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_backends(
    file: &ClusterFile,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    for s in &file.services {
        for e in &s.endpoints {
            for p in &s.ports {
                if p.protocol != "TCP" {
                    continue;
                }
                let who = BackendIdentity {
                    cluster: file.cluster.clone(),
                    service: format!("{}/{}", s.namespace, s.name),
                    pod: e
                        .pod
                        .clone()
                        .or_else(|| e.hostname.clone())
                        .unwrap_or_else(|| e.address.to_string()),
                };
                backend::spawn(
                    tasks,
                    SocketAddr::new(e.address, p.port),
                    who,
                    shutdown.child_token(),
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn wait_ready(hub: &crate::hub::api::Hub, files: &[(String, PathBuf)]) -> anyhow::Result<()> {
    let mut view = hub.watch_state();
    let all_in = |s: &crate::hub::state::State| {
        files
            .iter()
            .all(|(id, _)| s.export_revisions.contains_key(id))
    };
    let waited = tokio::time::timeout(Duration::from_secs(20), view.wait_for(|s| all_in(s))).await;
    match waited {
        Ok(Ok(_)) => Ok(()),
        _ => {
            let s = hub.state();
            let missing: Vec<&str> = files
                .iter()
                .filter(|(id, _)| !s.export_revisions.contains_key(id))
                .map(|(id, _)| id.as_str())
                .collect();
            bail!(
                "agents of {} did not deliver their exports within 20 s",
                missing.join(", ")
            )
        }
    }
}

/// The banner printed once the playground is up.
pub fn banner(bound: &Bound, data_dir: &Path, zone: &str) -> String {
    let dns_port = bound.dns.port();
    let dns_ip = bound.dns.ip();
    let mut s = String::new();
    s.push_str("switchyard playground is up\n\n");
    s.push_str(&format!(
        "  hub API (gRPC, /metrics, /healthz)  {}\n",
        bound.api
    ));
    s.push_str(&format!(
        "  ClusterSet DNS (UDP and TCP)        {}   zone {zone}\n",
        bound.dns
    ));
    s.push_str(&format!(
        "  data dir                            {}\n",
        data_dir.display()
    ));
    let credentials = data_dir.join("hub/admin");
    let tls = credentials.join(crate::identity::tls::CA_FILE).exists();
    if tls {
        s.push_str(&format!(
            "  admin credentials (TLS)             {}\n",
            credentials.display()
        ));
    }
    s.push('\n');
    s.push_str("  clusters (edit a file to change that cluster's endpoints):\n");
    for (id, path) in &bound.cluster_files {
        s.push_str(&format!("    {id:<14} {}\n", path.display()));
    }
    let mut hub_flag = if bound.api.to_string() == "127.0.0.1:7700" {
        String::new()
    } else {
        format!(" --hub {}", bound.api)
    };
    // The CLI finds the playground's credentials by itself only from here.
    if tls && data_dir != Path::new(".switchyard") {
        hub_flag.push_str(&format!(" --credentials {}", credentials.display()));
    }
    let dns_flag = if bound.dns.to_string() == "127.0.0.1:5353" {
        String::new()
    } else {
        format!(" --dns {}", bound.dns)
    };
    if !bound.gateways.is_empty() {
        s.push_str(
            "\n  east-west gateways (each cluster's DNS answers with its gateway's listeners):\n",
        );
        s.push_str(&format!(
            "    {:<14} {:<21} {:<21} {}\n",
            "CLUSTER", "INBOUND (mTLS)", "CLUSTER DNS", "METRICS"
        ));
        for g in &bound.gateways {
            s.push_str(&format!(
                "    {:<14} {:<21} {:<21} http://{}/metrics\n",
                g.cluster, g.inbound, g.dns, g.metrics
            ));
        }
    }
    s.push_str("\nTry (`switchyard` is `cargo run --release --` from the repository):\n");
    s.push_str(&format!(
        "  dig @{dns_ip} -p {dns_port} api-v1-multi.app.svc.{zone}\n"
    ));
    s.push_str(&format!(
        "  switchyard resolve api-v1-multi.app.svc.{zone}{dns_flag}{hub_flag}\n"
    ));
    // A client in a cluster: its DNS names the gateway's listener.
    match bound.gateways.get(1).or(bound.gateways.first()) {
        Some(g) => {
            s.push_str(&format!(
                "  curl http://$(switchyard resolve -q api-v1-multi.app.svc.{zone} --dns {}):8080/   # from {}, through its gateway\n",
                g.dns, g.cluster
            ));
            s.push_str(&format!("  switchyard get gateways{hub_flag}\n"));
            s.push_str(&format!(
                "  switchyard get imports --cluster {}{hub_flag}\n",
                g.cluster
            ));
        }
        None => s.push_str(&format!(
            "  curl http://$(switchyard resolve -q api-v1-multi.app.svc.{zone}{dns_flag}):8080/\n"
        )),
    }
    s.push_str(&format!(
        "  switchyard apply -f docs/examples/seed-mcs.yaml{hub_flag}\n"
    ));
    s.push_str(&format!(
        "  switchyard get backends app/api-v1-multi{hub_flag}\n"
    ));
    s.push_str(&format!(
        "  switchyard weights set app/api-v1-global us-west-1=20 us-east-1=80{hub_flag}\n"
    ));
    s.push_str(&format!(
        "  dig @{dns_ip} -p {dns_port} SRV _http._tcp.db.app.svc.{zone}\n"
    ));
    s.push_str("\nCtrl-C stops everything; state is kept in the data dir.\n");
    s
}
