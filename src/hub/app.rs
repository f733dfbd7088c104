//! Builds a running hub replica: raft node on sled, state machine, lease
//! tracker, ClusterSet DNS, and the API port serving gRPC plus `/metrics`
//! and `/healthz`.

use super::api::{AdminApi, AgentApi, Hub};
use super::authority::Authority;
use super::lease::{self, LeaseConfig, Leases};
use super::machine::Machine;
use super::node::{self, NoPeers, NodeConfig};
use super::peer::{PeerApi, PeerTransport, MAX_PEER_MESSAGE};
use super::state::Command;
use super::trust::PeerTls;
use crate::dns::{self, Catalog, DnsConfig};
use crate::identity::{Ca, Identity};
use crate::metrics::Metrics;
use crate::proto::{
    admin_service_server::AdminServiceServer, agent_service_server::AgentServiceServer,
    gateway_service_server::GatewayServiceServer, peer_service_server::PeerServiceServer,
};
use crate::wire::MAX_API_MESSAGE;
use anyhow::Context;
use axum::routing::get;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// How to run a hub replica.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub dns: SocketAddr,
    pub dns_config: DnsConfig,
    pub lease: LeaseConfig,
    /// Replication; `None` runs a single voter with no peers (the playground).
    pub raft: Option<RaftOptions>,
    /// TLS and authentication on the API; `None` serves plain HTTP/2 and
    /// trusts every caller (benchmarks, tests of other things).
    pub tls: Option<HubTls>,
}

/// TLS on the hub API: the hub's certificate comes from the ClusterSet CA,
/// agents authenticate with certificates of their cluster, administrators
/// with admin certificates (written to `DATA_DIR/admin/`).
#[derive(Debug, Clone)]
pub struct HubTls {
    /// Extra names (IP addresses or DNS names) clients reach the hub by,
    /// for its certificate (127.0.0.1, localhost and the API address are
    /// always in it).
    pub sans: Vec<String>,
    /// Load the ClusterSet CA from these PEM files (certificate, key)
    /// instead of generating one. Used only if the hub has none yet.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// Lifetime of the certificates agents get.
    pub agent_cert_ttl: Duration,
}

impl HubTls {
    /// The CA a replicated hub's peers authenticate each other with (see
    /// [`super::trust::replica_ca`]); a group of one may create it.
    fn replica_ca(&self, data_dir: &std::path::Path, r: &RaftOptions) -> anyhow::Result<Ca> {
        let group_of_one = !r.join && r.peers.len() == 1;
        super::trust::replica_ca(self.ca_files.as_ref(), data_dir, group_of_one)
            .context("cannot set up mutual TLS between hub replicas")
    }
}

impl Default for HubTls {
    fn default() -> Self {
        Self {
            sans: Vec::new(),
            ca_files: None,
            agent_cert_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Lifetime of the hub's own server certificate and of admin credentials.
const LONG_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A replica's place in a replicated hub.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    /// This replica's raft ID.
    pub id: u64,
    /// Where this replica listens for its peers.
    pub listen: SocketAddr,
    /// Initial members: ID → raft address, this replica included.
    pub peers: BTreeMap<u64, String>,
    /// Start with no configuration and wait to be added by
    /// `switchyard hub members add`.
    pub join: bool,
    /// Snapshot and compact after this many applied entries.
    pub snapshot_every: u64,
    /// Allow the test-only fault hook.
    pub fault_injection: bool,
    /// Bounds on the peer port.
    pub limits: super::trust::PeerLimits,
}

/// A started hub: where it listens and how to stop it.
pub struct RunningHub {
    pub api_addr: SocketAddr,
    pub dns_addr: SocketAddr,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    /// Cancelled when the raft node's task ends, for whatever reason.
    raft_stopped: CancellationToken,
}

impl RunningHub {
    /// Resolves when the raft node stops on its own (a fatal storage error
    /// or a bug) rather than at shutdown. A replica without its raft node
    /// serves stale state and takes no writes: the caller should stop it
    /// and exit non-zero so that its supervisor restarts it.
    pub async fn raft_stopped(&self) {
        self.raft_stopped.cancelled().await
    }

    /// Stops every task: open connections get up to 2 s to finish (agent
    /// streams never do on their own), then are cut. The raft node flushes
    /// its log before it returns.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(2), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

impl RunningHub {
    /// Kills the replica at once, as `kill -9` would: every task is
    /// aborted, nothing is flushed or said goodbye to (what was
    /// acknowledged is already on disk). For drills.
    pub async fn kill(mut self) {
        self.shutdown.cancel();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts a hub replica. A single voter (no `raft` options) waits until it
/// leads; a replica of a group starts serving at once and follows whatever
/// leader its peers elect.
pub async fn start(config: HubConfig, shutdown: CancellationToken) -> anyhow::Result<RunningHub> {
    let metrics = Arc::new(Metrics::new());
    let catalog = Arc::new(Catalog::new(config.dns_config.clone()));
    let (machine, view) = Machine::new(metrics.clone());
    let machine = machine.with_dns(catalog.clone());
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let raft_dir = config.data_dir.join("raft");
    // A replicated hub's peers authenticate each other with the ClusterSet
    // CA from the start; its first leader records the same CA in the state.
    let mut replica_ca = None;
    let (node_config, transport, raft_listener): (NodeConfig, Option<Arc<PeerTransport>>, _) =
        match &config.raft {
            None => (NodeConfig::single(raft_dir), None, None),
            Some(r) => {
                if !r.join && !r.peers.contains_key(&r.id) {
                    anyhow::bail!(
                        "--peers must include this replica ({}={}) unless it --join s an existing hub",
                        r.id,
                        r.listen
                    );
                }
                let peer_tls = match &config.tls {
                    Some(tls) => {
                        let ca = tls.replica_ca(&config.data_dir, r)?;
                        let peer_tls = PeerTls::new(&ca, r.id)
                            .context("cannot issue this replica's peer certificate")?;
                        replica_ca = Some(ca);
                        Some(peer_tls)
                    }
                    None => {
                        tracing::warn!(
                            raft = %r.listen,
                            "--insecure: the raft peer port is plaintext and unauthenticated; anyone \
                             who reaches it can join this hub and read its state. For benchmarks on \
                             a trusted machine only"
                        );
                        None
                    }
                };
                let listener = tokio::net::TcpListener::bind(r.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} for raft peers", r.listen))?;
                let node_config = NodeConfig {
                    id: r.id,
                    voters: if r.join {
                        vec![]
                    } else {
                        r.peers.keys().copied().collect()
                    },
                    data_dir: raft_dir,
                    snapshot_every: r.snapshot_every,
                    ..NodeConfig::single(PathBuf::new())
                };
                let transport = PeerTransport::new(
                    r.id,
                    &r.peers,
                    peer_tls.as_ref().map(|t| t.client().clone()),
                    shutdown.child_token(),
                );
                (node_config, Some(transport), Some((listener, peer_tls)))
            }
        };
    let peer_transport: Arc<dyn node::Transport> = match &transport {
        Some(t) => t.clone(),
        None => Arc::new(NoPeers),
    };
    let single = config.raft.is_none();
    let (node, node_task) = node::spawn(
        node_config,
        machine,
        peer_transport,
        metrics.clone(),
        shutdown.child_token(),
    )
    .context("cannot start the raft node")?;
    let mut tasks = JoinSet::new();
    let raft_stopped = CancellationToken::new();
    let stopped = raft_stopped.clone();
    tasks.spawn(async move {
        if let Err(err) = node_task.await {
            tracing::error!(%err, "the raft node's task failed");
        }
        stopped.cancel();
    });

    if single {
        let mut status = node.status();
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.leader != 0 && s.leader == s.id),
        )
        .await
        .context("the raft node did not become leader within 10 s")?
        .context("the raft node stopped")?;
    }

    let leases = Arc::new(Leases::new(config.lease));
    let (id, fault_injection) = config
        .raft
        .as_ref()
        .map(|r| (r.id, r.fault_injection))
        .unwrap_or((1, false));
    let hub = Hub::new(
        id,
        node.clone(),
        view,
        leases.clone(),
        metrics.clone(),
        transport.clone(),
        fault_injection,
    );
    tasks.spawn(lease::run(leases, hub.clone(), shutdown.child_token()));

    if let (Some(transport), Some((listener, peer_tls)), Some(r)) =
        (transport, raft_listener, &config.raft)
    {
        let api = PeerApi {
            node,
            transport: transport.clone(),
            hub: hub.clone(),
            authenticate: peer_tls.is_some(),
        };
        // Messages up to MAX_PEER_MESSAGE (snapshots travel inline) are
        // read only from callers past the mutual TLS handshake.
        let service = PeerServiceServer::new(api)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let stop = shutdown.child_token();
        let incoming =
            super::trust::incoming(listener, peer_tls, r.limits, metrics.clone(), stop.clone());
        tasks.spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "raft peer server failed");
            }
        });
        tasks.spawn(follow_members(
            hub.clone(),
            transport,
            r.peers.clone(),
            shutdown.child_token(),
        ));
    }

    let (dns_addr, dns_task) =
        dns::serve(catalog, config.dns, metrics.clone(), shutdown.child_token())
            .await
            .with_context(|| format!("cannot serve DNS on {}", config.dns))?;
    tasks.spawn(async move {
        let _ = dns_task.await;
    });

    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("cannot listen on {} for the hub API", config.api))?;
    let api_addr = listener.local_addr()?;
    let (hub, server_tls) = match &config.tls {
        None => (hub, None),
        Some(tls) => {
            let ca = ensure_ca(&hub, tls, replica_ca, &shutdown).await?;
            let mut hosts = tls.sans.clone();
            hosts.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
            if !api_addr.ip().is_unspecified() {
                hosts.push(api_addr.ip().to_string());
            }
            let server = ca
                .issue(&Identity::Hub, &hosts, LONG_TTL)
                .context("cannot issue the hub's server certificate")?;
            write_admin_credentials(&config.data_dir.join("admin"), &ca)?;
            let server_tls = crate::identity::tls::server_tls(ca.cert_pem(), &server);
            let authority = Arc::new(Authority::new(ca, tls.agent_cert_ttl));
            (hub.with_authority(authority), Some(server_tls))
        }
    };
    // Agents and gateways: explicit message limits (whole sets travel in
    // parts well below them, see crate::wire).
    let agents = AgentServiceServer::new(AgentApi(hub.clone()))
        .max_decoding_message_size(MAX_API_MESSAGE)
        .max_encoding_message_size(MAX_API_MESSAGE);
    let gateways = GatewayServiceServer::new(super::gateway_api::GatewayApi(hub.clone()))
        .max_decoding_message_size(MAX_API_MESSAGE)
        .max_encoding_message_size(MAX_API_MESSAGE);
    let router = tonic::service::Routes::new(agents)
        .add_service(AdminServiceServer::new(AdminApi(hub.clone())))
        .add_service(gateways)
        .into_axum_router()
        .merge(
            axum::Router::new()
                .route("/metrics", get(metrics_handler))
                .route("/healthz", get(healthz_handler))
                .with_state((metrics.clone(), hub.clone())),
        );
    let stop = shutdown.child_token();
    let mut server = tonic::transport::Server::builder().accept_http1(true);
    if let Some(tls) = server_tls {
        server = server
            .tls_config(tls)
            .context("the hub's TLS settings are not usable")?;
    }
    tasks.spawn(async move {
        // Small request/response RPCs: no Nagle delay on replies.
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
            conn.inspect(|tcp| {
                let _ = tcp.set_nodelay(true);
            })
        });
        if let Err(e) = server
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "hub API server failed");
        }
    });
    tracing::info!(api = %api_addr, dns = %dns_addr, data_dir = %config.data_dir.display(), "hub started");
    Ok(RunningHub {
        api_addr,
        dns_addr,
        hub,
        metrics,
        tasks,
        shutdown,
        raft_stopped,
    })
}

/// The ClusterSet CA from the replicated state. The first leader creates
/// it (or records `replica_ca`, the CA a replicated hub's peers already
/// use, or loads it from `tls.ca_files`) if the state has none yet; every
/// replica waits for it, since it cannot authenticate anyone without it.
async fn ensure_ca(
    hub: &Hub,
    tls: &HubTls,
    replica_ca: Option<Ca>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ca> {
    let wanted = match (&replica_ca, &tls.ca_files) {
        (Some(ca), _) => Some((ca.cert_pem().to_string(), ca.key_pem().to_string())),
        (None, Some((cert, key))) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let ca = Ca::from_pem(&read(cert)?, &read(key)?).context("--ca-cert/--ca-key")?;
            Some((ca.cert_pem().to_string(), ca.key_pem().to_string()))
        }
        (None, None) => None,
    };
    let mut view = hub.watch_state();
    let started = tokio::time::Instant::now();
    let mut next_log = started + Duration::from_secs(5);
    loop {
        let record = view.borrow_and_update().ca.clone();
        if let Some(record) = record {
            if let Some((cert, _)) = &wanted {
                if *cert != record.cert_pem {
                    tracing::warn!(
                        "the CA given to this replica (--ca-cert, or DATA_DIR/ca) is not the ClusterSet CA the hub's state holds: peer links use the given CA, agents, gateways and admins the state's"
                    );
                }
            }
            return Ca::from_pem(&record.cert_pem, &record.key_pem)
                .context("the ClusterSet CA in the hub's state does not load");
        }
        if hub.is_leader() {
            let (cert_pem, key_pem) = match &wanted {
                Some(pair) => pair.clone(),
                None => {
                    let ca = Ca::generate("switchyard ClusterSet CA")
                        .context("cannot create the ClusterSet CA")?;
                    (ca.cert_pem().to_string(), ca.key_pem().to_string())
                }
            };
            if let Err(status) = hub.propose(&Command::InitCa { cert_pem, key_pem }).await {
                tracing::warn!(%status, "cannot record the ClusterSet CA yet; retrying");
            }
            continue;
        }
        if tokio::time::Instant::now() >= next_log {
            tracing::info!(waited = ?started.elapsed(), "waiting for the ClusterSet CA (it needs a raft leader)");
            next_log += Duration::from_secs(5);
        }
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for the ClusterSet CA"),
            _ = view.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Admin credentials in `dir` (CA, certificate, key), issued anew unless
/// the ones there are from this CA and good for 30 more days.
fn write_admin_credentials(dir: &std::path::Path, ca: &Ca) -> anyhow::Result<()> {
    use crate::identity::tls::ClientCredentials;
    if let Ok(existing) = ClientCredentials::load(dir) {
        let fresh = existing.ca_pem == ca.cert_pem()
            && existing.identity.as_ref().is_some_and(|id| {
                crate::identity::ca::identity_of_pem(&id.cert_pem) == Some(Identity::Admin)
                    && crate::identity::ca::not_after_unix(&id.cert_pem).is_some_and(|t| {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64);
                        t - now > 30 * 24 * 3600
                    })
            });
        if fresh {
            return Ok(());
        }
    }
    let admin = ca
        .issue(&Identity::Admin, &[], LONG_TTL)
        .context("cannot issue admin credentials")?;
    ClientCredentials {
        ca_pem: ca.cert_pem().to_string(),
        identity: Some(admin),
    }
    .save(dir)
    .with_context(|| format!("cannot write admin credentials to {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "wrote admin credentials");
    Ok(())
}

type AppState = (Arc<Metrics>, Hub);

async fn metrics_handler(
    axum::extract::State((metrics, hub)): axum::extract::State<AppState>,
) -> String {
    let s = hub.raft_status();
    metrics.raft_term.set(s.term);
    metrics.raft_commit_index.set(s.commit);
    metrics.raft_applied_index.set(s.applied);
    metrics.encode()
}

async fn healthz_handler(
    axum::extract::State((_, hub)): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, String) {
    let s = hub.raft_status();
    if s.leader == 0 {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no raft leader\n".into(),
        )
    } else {
        (
            axum::http::StatusCode::OK,
            format!(
                "ok: leader {} term {} applied {}\n",
                s.leader, s.term, s.applied
            ),
        )
    }
}

/// Keeps the transport's address book in line with the replicated member
/// list (`switchyard hub members add/remove`), on top of `--peers`.
async fn follow_members(
    hub: Hub,
    transport: Arc<PeerTransport>,
    initial: BTreeMap<u64, String>,
    shutdown: CancellationToken,
) {
    let mut view = hub.watch_state();
    let mut last = BTreeMap::new();
    loop {
        let members = view.borrow_and_update().members.clone();
        if members != last {
            let mut peers = initial.clone();
            peers.extend(members.clone());
            transport.set_peers(&peers);
            last = members;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = view.changed() => if changed.is_err() { return },
        }
    }
}
