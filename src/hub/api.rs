//! The hub's gRPC services: the agent API (register, lease, export stream)
//! and the admin API (apply, get, weights). Writes become raft proposals;
//! reads come from the applied state.

use super::read;
use super::state::{applied_objects, Command};
use crate::hub::state::TokenRole;
use crate::identity::tls::peer_identity;
use crate::identity::token::Token;
use crate::model::{manifest, validate_cluster_id, ClusterSpec, Export};
use crate::proto::{self, admin_service_server::AdminService, agent_service_server::AgentService};
use crate::wire::{check_size, export_from_proto, field_len, part_budget, MAX_API_MESSAGE};
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

pub use super::replica::Hub;

/// The agent API.
pub struct AgentApi(pub Hub);

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        req: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let caller = peer_identity(&req);
        let r = req.into_inner();
        validate_cluster_id(&r.cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.0.authorize_cluster(caller.as_ref(), &r.cluster)?;
        let spec = ClusterSpec {
            id: r.cluster.clone(),
            region: r.region,
            zone: r.zone,
            gateway_addresses: r.gateway_addresses,
        };
        let hub = &self.0;
        // A replica that cannot reach the leader refuses the session: the
        // agent goes to another one.
        hub.renew_lease(&spec.id).await?;
        let current = hub.state();
        let unchanged = current
            .clusters
            .get(&spec.id)
            .is_some_and(|c| c.spec == spec && c.reachable);
        if !unchanged {
            hub.propose(&Command::RegisterCluster { spec }).await?;
        }
        tracing::info!(cluster = %r.cluster, "agent registered");
        let lease = hub.leases().config();
        Ok(Response::new(proto::RegisterResponse {
            lease_ms: lease.ttl.as_millis() as u64,
            renew_ms: lease.renew.as_millis() as u64,
            applied_revision: hub
                .state()
                .export_revisions
                .get(&r.cluster)
                .copied()
                .unwrap_or(0),
        }))
    }

    async fn renew_lease(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseResponse>, Status> {
        let caller = peer_identity(&req);
        let r = req.into_inner();
        let hub = &self.0;
        hub.authorize_cluster(caller.as_ref(), &r.cluster)?;
        if !hub.raft_running() {
            // A stopped replica must not keep a lease alive: the agent
            // reconnects and finds a live one.
            return Err(Status::unavailable(
                "this hub replica's raft node has stopped",
            ));
        }
        let known = hub.state().clusters.contains_key(&r.cluster);
        if known {
            hub.renew_lease(&r.cluster).await?;
        }
        Ok(Response::new(proto::LeaseResponse {
            lease_ms: hub.leases().config().ttl.as_millis() as u64,
            known,
        }))
    }

    type WatchImportsStream =
        Pin<Box<dyn Stream<Item = Result<proto::ImportSet, Status>> + Send + 'static>>;

    async fn watch_imports(
        &self,
        req: Request<proto::WatchImportsRequest>,
    ) -> Result<Response<Self::WatchImportsStream>, Status> {
        let caller = peer_identity(&req);
        let proto::WatchImportsRequest {
            cluster,
            max_part_bytes: req_part_bytes,
        } = req.into_inner();
        validate_cluster_id(&cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.0.authorize_cluster(caller.as_ref(), &cluster)?;
        let (tx, rx) = mpsc::channel(4);
        let part_bytes = part_budget(req_part_bytes);
        tokio::spawn(send_imports(self.0.clone(), cluster, part_bytes, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn relay_multi_cluster_services(
        &self,
        req: Request<proto::RelayRequest>,
    ) -> Result<Response<proto::RelayReply>, Status> {
        let caller = peer_identity(&req);
        let r = req.into_inner();
        validate_cluster_id(&r.cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.0.authorize_cluster(caller.as_ref(), &r.cluster)?;
        // Objects that do not parse are refused here; the rest go to the
        // state machine, which judges each one.
        let mut refused = Vec::new();
        let mut objects = Vec::new();
        for text in &r.objects {
            match manifest::parse(text).map(|mut v| v.pop()) {
                Ok(Some(manifest::Resource::MultiClusterService(m))) => objects.push(m),
                Ok(other) => refused.push(proto::RelayResult {
                    namespace: String::new(),
                    name: String::new(),
                    accepted: false,
                    reason: "Invalid".into(),
                    message: format!(
                        "not a MultiClusterService: {}",
                        other
                            .map(|o| o.describe())
                            .unwrap_or_else(|| "empty".into())
                    ),
                }),
                Err(e) => refused.push(proto::RelayResult {
                    namespace: String::new(),
                    name: String::new(),
                    accepted: false,
                    reason: "Invalid".into(),
                    message: e.to_string(),
                }),
            }
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let lines = self
            .0
            .propose(&Command::RelayMultiClusterServices {
                cluster: r.cluster,
                objects,
                now,
            })
            .await?;
        let mut results: Vec<proto::RelayResult> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<crate::hub::state::RelayResult>(l).ok())
            .map(|r| proto::RelayResult {
                namespace: r.namespace,
                name: r.name,
                accepted: r.accepted,
                reason: r.reason,
                message: r.message,
            })
            .collect();
        results.extend(refused);
        Ok(Response::new(proto::RelayReply { results }))
    }

    async fn join(
        &self,
        req: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::CertificateReply>, Status> {
        let authority = self.0.authority().ok_or_else(|| {
            Status::failed_precondition("this hub runs without TLS: agents need no token")
        })?;
        let r = req.into_inner();
        let token = Token::parse(&r.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Check the request before spending the token on it.
        crate::identity::ca::check_request(&r.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let lines = self
            .0
            .propose(&Command::ConsumeToken {
                id: token.id.clone(),
                secret_sha256: token.secret_hash(),
                now_unix_ms,
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::InvalidArgument => Status::permission_denied(s.message()),
                _ => s,
            })?;
        let (cluster, role) = match lines.as_slice() {
            [cluster, role, ..] => (cluster.clone(), role.clone()),
            _ => {
                return Err(Status::internal(
                    "the token's cluster is missing from the reply",
                ))
            }
        };
        let identity = if role == "gateway" {
            TokenRole::Gateway.identity(&cluster)
        } else {
            TokenRole::Agent.identity(&cluster)
        };
        let cert_pem = authority.sign(&r.csr_pem, &identity)?;
        tracing::info!(%cluster, %role, token = %token.id, "joined with a bootstrap token");
        Ok(Response::new(proto::CertificateReply {
            cert_pem,
            ca_pem: authority.ca_pem().to_string(),
            cluster,
            role,
        }))
    }

    async fn renew(
        &self,
        req: Request<proto::RenewRequest>,
    ) -> Result<Response<proto::CertificateReply>, Status> {
        let authority = self
            .0
            .authority()
            .ok_or_else(|| Status::failed_precondition("this hub runs without TLS"))?;
        let identity = peer_identity(&req);
        let (cluster, role) = match &identity {
            Some(crate::identity::Identity::Cluster(id)) => (id.clone(), "agent"),
            Some(crate::identity::Identity::Gateway(id)) => (id.clone(), "gateway"),
            _ => {
                return Err(Status::unauthenticated(
                    "renewing needs the current certificate of a cluster's agent or gateway",
                ))
            }
        };
        let identity = identity.expect("matched above");
        let cert_pem = authority.sign(&req.into_inner().csr_pem, &identity)?;
        tracing::info!(%cluster, role, "certificate renewed");
        Ok(Response::new(proto::CertificateReply {
            cert_pem,
            ca_pem: authority.ca_pem().to_string(),
            cluster,
            role: role.to_string(),
        }))
    }

    type StreamExportsStream =
        Pin<Box<dyn Stream<Item = Result<proto::ExportAck, Status>> + Send + 'static>>;

    async fn stream_exports(
        &self,
        req: Request<tonic::Streaming<proto::ExportUpdate>>,
    ) -> Result<Response<Self::StreamExportsStream>, Status> {
        let caller = peer_identity(&req);
        let inbound = req.into_inner();
        let hub = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            hub.metrics().agents_connected.inc();
            serve_exports(&hub, caller, inbound, tx).await;
            hub.metrics().agents_connected.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The bound on the exports (their protobuf encoding) in one raft proposal
/// of a full resync: a resync larger than that, in one message or in parts,
/// is proposed in several [`Command::ResyncExports`] entries of about three
/// times that each (JSON), never in one large entry.
pub const RESYNC_PROPOSAL_BYTES: usize = 256 * 1024;

/// A full resync in parts under way on one export stream.
struct Resync {
    revision: u64,
    /// The agent's next part.
    next_part: u32,
    /// Tells this resync's raft entries from any other's.
    attempt: u64,
    /// The next raft entry's part number.
    step: u32,
    exports: usize,
    started: std::time::Instant,
}

/// One export stream: applies each update in order and acks it once it is
/// committed and applied (a full resync in parts: once its last part is).
/// The first error ends the stream, with that status for the agent.
async fn serve_exports(
    hub: &Hub,
    caller: Option<crate::identity::Identity>,
    mut inbound: tonic::Streaming<proto::ExportUpdate>,
    tx: mpsc::Sender<Result<proto::ExportAck, Status>>,
) {
    let mut cluster = String::new();
    let mut resync: Option<Resync> = None;
    while let Some(msg) = inbound.next().await {
        let update = match msg {
            Ok(u) => u,
            Err(e) if e.code() == tonic::Code::OutOfRange => {
                // tonic's refusal of a message above MAX_API_MESSAGE: tell
                // the agent why, not just that the stream closed.
                tracing::warn!(cluster = %cluster, error = %e.message(), limit = MAX_API_MESSAGE, "export update too large; ending the stream");
                let status = Status::resource_exhausted(format!(
                    "export update larger than the hub accepts ({MAX_API_MESSAGE} bytes): {}; a full resync must travel in parts (ExportUpdate.more)",
                    e.message()
                ));
                let _ = tx.send(Err(status)).await;
                break;
            }
            Err(e) => {
                tracing::info!(cluster = %cluster, error = %e, "export stream ended");
                break;
            }
        };
        cluster = update.cluster.clone();
        // Every update, not just the first: a cluster writes only its own.
        let result = match hub.authorize_cluster(caller.as_ref(), &cluster) {
            Ok(()) => apply_update(hub, &mut resync, update).await,
            Err(status) => {
                tracing::warn!(cluster = %cluster, caller = ?caller, "refused exports for another cluster");
                Err(status)
            }
        };
        match result {
            Ok(None) => {}
            Ok(Some(ack)) => {
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
            Err(status) => {
                tracing::info!(cluster = %cluster, code = ?status.code(), error = %status.message(), "export update refused; ending the stream");
                let _ = tx.send(Err(status)).await;
                break;
            }
        }
    }
    if let Some(r) = resync {
        tracing::info!(
            cluster = %cluster,
            revision = r.revision,
            parts = r.next_part,
            exports = r.exports,
            "export stream ended in the middle of a full resync: its exports so far are upserted, nothing was removed; the agent starts the resync over"
        );
    }
}

/// Applies one update of a stream: a delta, a one-message full resync, or
/// a part of a full resync (`resync` follows the parts). Returns the ack to
/// send, if any.
async fn apply_update(
    hub: &Hub,
    resync: &mut Option<Resync>,
    u: proto::ExportUpdate,
) -> Result<Option<proto::ExportAck>, Status> {
    if !u.full_resync {
        if let Some(r) = resync {
            return Err(Status::invalid_argument(format!(
                "export delta at revision {} for cluster {} arrived before the last part of the full resync at revision {} (part {} was next)",
                u.revision, u.cluster, r.revision, r.next_part
            )));
        }
        return apply_delta(hub, u).await.map(Some);
    }
    let (in_parts, first) = match resync.as_ref() {
        Some(r) if r.revision == u.revision && r.next_part == u.part => (true, false),
        Some(r) => {
            return Err(Status::invalid_argument(format!(
                "export resync of cluster {}: part {} of revision {} arrived where part {} of revision {} was next",
                u.cluster, u.part, u.revision, r.next_part, r.revision
            )))
        }
        None if u.part == 0 => (u.more, true),
        None => {
            return Err(Status::invalid_argument(format!(
                "export resync of cluster {} at revision {}: part {} arrived without the parts before it",
                u.cluster, u.revision, u.part
            )))
        }
    };
    // A full resync's deletes are redundant (whatever it lacks goes) and
    // ignored; each export keeps its encoded size, to bound proposals.
    let mut upserts = Vec::with_capacity(u.upserts.len());
    let mut total = 0usize;
    for e in &u.upserts {
        let size = field_len(e);
        total += size;
        upserts.push((
            size,
            export_from_proto(&u.cluster, e)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        ));
    }
    if !in_parts && total <= RESYNC_PROPOSAL_BYTES {
        // One message, one entry: the command every hub version knows.
        let cmd = Command::SyncExports {
            cluster: u.cluster.clone(),
            revision: u.revision,
            full: true,
            upserts: upserts.into_iter().map(|(_, e)| e).collect(),
            deletes: Vec::new(),
        };
        hub.propose(&cmd).await?;
        tracing::debug!(cluster = %u.cluster, revision = u.revision, "full export resync applied");
        return Ok(Some(proto::ExportAck {
            revision: u.revision,
        }));
    }
    if first {
        tracing::info!(cluster = %u.cluster, revision = u.revision, "full export resync in parts started");
        *resync = Some(Resync {
            revision: u.revision,
            next_part: 0,
            attempt: rand::random(),
            step: 0,
            exports: 0,
            started: std::time::Instant::now(),
        });
    }
    let Some(r) = resync.as_mut() else {
        return Err(Status::internal("resync state lost"));
    };
    let chunks = proposal_chunks(upserts, RESYNC_PROPOSAL_BYTES);
    let count = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        r.exports += chunk.len();
        let cmd = Command::ResyncExports {
            cluster: u.cluster.clone(),
            revision: u.revision,
            attempt: r.attempt,
            part: r.step,
            last: !u.more && i + 1 == count,
            upserts: chunk,
        };
        hub.propose(&cmd).await?;
        r.step += 1;
    }
    r.next_part += 1;
    if u.more {
        tracing::debug!(cluster = %u.cluster, revision = u.revision, part = u.part, "export resync part applied");
        return Ok(None);
    }
    tracing::info!(
        cluster = %u.cluster,
        revision = u.revision,
        parts = r.next_part,
        proposals = r.step,
        exports = r.exports,
        elapsed_ms = r.started.elapsed().as_millis() as u64,
        "full export resync in parts applied"
    );
    *resync = None;
    Ok(Some(proto::ExportAck {
        revision: u.revision,
    }))
}

/// `exports` (each with its encoded size) in runs of at most `budget`
/// bytes (an export larger than that alone); one run, empty, when there
/// are none (the last part of a resync must still be proposed).
fn proposal_chunks(exports: Vec<(usize, Export)>, budget: usize) -> Vec<Vec<Export>> {
    let mut chunks = vec![Vec::new()];
    let mut used = 0usize;
    for (size, export) in exports {
        if chunks.last().is_some_and(|c| !c.is_empty()) && used + size > budget {
            chunks.push(Vec::new());
            used = 0;
        }
        used += size;
        if let Some(c) = chunks.last_mut() {
            c.push(export);
        }
    }
    chunks
}

/// Streams `cluster`'s import set whenever it changes, until the agent
/// goes away: in parts of at most `part_bytes` when the agent takes parts,
/// otherwise in one message (or an error when that would be too large).
async fn send_imports(
    hub: Hub,
    cluster: String,
    part_bytes: Option<usize>,
    tx: mpsc::Sender<Result<proto::ImportSet, Status>>,
) {
    let mut view = hub.watch_state();
    let mut last: Option<proto::ImportSet> = None;
    let mut last_inputs = None;
    loop {
        let state = view.borrow_and_update().clone();
        // An import set is a function of the backends (exports, weights,
        // health, conflicts), of the clusters' states (a lost cluster's
        // slices stay, not ready, until it is withdrawn) and of the
        // addresses and ports the cluster's gateway was given: skip the
        // rest while none changed.
        let allocations = state.gateways.get(&cluster).map(|g| g.allocations);
        let unchanged =
            last_inputs
                .as_ref()
                .is_some_and(|(b, c, a): &(crate::model::ServiceMap<_>, _, _)| {
                    b.ptr_eq(&state.backends) && *c == state.clusters && *a == allocations
                });
        if !unchanged {
            let set = super::imports::import_set(&state, &cluster);
            let differs = last.as_ref().is_none_or(|l| {
                l.services != set.services || l.export_conditions != set.export_conditions
            });
            if differs {
                let messages = match part_bytes {
                    Some(budget) => super::imports::into_parts(set.clone(), budget),
                    None => {
                        if let Err(e) = check_size(|| "the import set".into(), &set) {
                            tracing::warn!(cluster = %cluster, bytes = e.bytes, limit = e.limit, "import set too large for an agent that takes no parts; ending its stream");
                            let _ = tx
                                .send(Err(Status::resource_exhausted(format!(
                                    "{e}; upgrade the agent: agents that ask for parts (WatchImportsRequest.max_part_bytes) get any size"
                                ))))
                                .await;
                            return;
                        }
                        vec![set.clone()]
                    }
                };
                if messages.len() > 1 {
                    tracing::debug!(cluster = %cluster, version = set.version, parts = messages.len(), "sending import set in parts");
                }
                for message in messages {
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                last = Some(set);
            }
            last_inputs = Some((state.backends.clone(), state.clusters.clone(), allocations));
        }
        tokio::select! {
            () = tx.closed() => return,
            changed = view.changed() => if changed.is_err() { return },
        }
    }
}

async fn apply_delta(hub: &Hub, u: proto::ExportUpdate) -> Result<proto::ExportAck, Status> {
    let mut upserts = Vec::with_capacity(u.upserts.len());
    for e in &u.upserts {
        upserts.push(
            export_from_proto(&u.cluster, e)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        );
    }
    let mut deletes = Vec::with_capacity(u.deletes.len());
    for d in &u.deletes {
        deletes.push(
            crate::model::ServiceKey::new(&d.namespace, &d.name)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        );
    }
    let cmd = Command::SyncExports {
        cluster: u.cluster.clone(),
        revision: u.revision,
        full: false,
        upserts,
        deletes,
    };
    hub.propose(&cmd).await?;
    tracing::debug!(cluster = %u.cluster, revision = u.revision, "export delta applied");
    Ok(proto::ExportAck {
        revision: u.revision,
    })
}

/// The admin API.
pub struct AdminApi(pub Hub);

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn apply(
        &self,
        req: Request<proto::ApplyRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        let text = req.into_inner().manifest;
        let resources =
            manifest::parse(&text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let objects =
            applied_objects(resources).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let results = self.0.propose(&Command::Apply { objects, now }).await?;
        Ok(Response::new(proto::ApplyResponse { results }))
    }

    async fn get(
        &self,
        req: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        let r = req.into_inner();
        if r.consistent {
            self.0.read_barrier().await?;
        }
        let json =
            read::get(&self.0.state(), &r.kind, &r.name, &r.cluster).map_err(|e| match e {
                read::ReadError::NotFound(_) => Status::not_found(e.to_string()),
                _ => Status::invalid_argument(e.to_string()),
            })?;
        Ok(Response::new(proto::GetResponse {
            json: json.to_string(),
        }))
    }

    async fn set_weights(
        &self,
        req: Request<proto::SetWeightsRequest>,
    ) -> Result<Response<proto::SetWeightsResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        let r = req.into_inner();
        let mcs = crate::model::ServiceKey::new(&r.namespace, &r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.weights.is_empty() {
            return Err(Status::invalid_argument(
                "no weights given; write CLUSTER=WEIGHT",
            ));
        }
        let weights = r.weights.into_iter().collect();
        let lines = self
            .0
            .propose(&Command::SetWeights { mcs, weights })
            .await?;
        Ok(Response::new(proto::SetWeightsResponse {
            result: lines.join("\n"),
        }))
    }

    async fn status(
        &self,
        req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        let json = self.0.cluster_status().await.to_string();
        Ok(Response::new(proto::StatusResponse { json }))
    }

    async fn change_member(
        &self,
        req: Request<proto::MemberChangeRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        let r = req.into_inner();
        let address = if r.remove {
            String::new()
        } else {
            crate::model::host_port(&r.address).map_err(|e| {
                Status::invalid_argument(format!("replica {}: raft address {e}", r.id))
            })?
        };
        let result = self.0.change_member(r.id, &address).await?;
        Ok(Response::new(proto::MemberChangeResponse { result }))
    }

    async fn inject_fault(
        &self,
        req: Request<proto::FaultRequest>,
    ) -> Result<Response<proto::FaultResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        let peers = req.into_inner().isolate_from.into_iter().collect();
        self.0.isolate(peers)?;
        Ok(Response::new(proto::FaultResponse {}))
    }

    async fn drain(
        &self,
        req: Request<proto::DrainRequest>,
    ) -> Result<Response<proto::DrainResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        let r = req.into_inner();
        validate_cluster_id(&r.cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cmd = match r.service.as_str() {
            "" => Command::SetDrained {
                cluster: r.cluster,
                drained: !r.restore,
            },
            service => Command::DrainService {
                cluster: r.cluster,
                service: service
                    .parse()
                    .map_err(|e| Status::invalid_argument(format!("--service: {e}")))?,
                drained: !r.restore,
            },
        };
        let lines = self.0.propose(&cmd).await?;
        Ok(Response::new(proto::DrainResponse {
            result: lines.join("\n"),
        }))
    }

    async fn revoke_lease(
        &self,
        req: Request<proto::RevokeLeaseRequest>,
    ) -> Result<Response<proto::RevokeLeaseResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        let r = req.into_inner();
        validate_cluster_id(&r.cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cmd = Command::RevokeLease {
            cluster: r.cluster,
            revoked: !r.restore,
        };
        let lines = self.0.propose(&cmd).await?;
        Ok(Response::new(proto::RevokeLeaseResponse {
            result: lines.join("\n"),
        }))
    }

    async fn create_token(
        &self,
        req: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        if self.0.authority().is_none() {
            return Err(Status::failed_precondition(
                "this hub runs without TLS: agents need no token",
            ));
        }
        let r = req.into_inner();
        validate_cluster_id(&r.cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.ttl_seconds == 0 || r.ttl_seconds > 7 * 24 * 3600 {
            return Err(Status::invalid_argument(
                "--ttl must be between 1s and 7 days (168h)",
            ));
        }
        let role = match r.role.as_str() {
            "" | "agent" => TokenRole::Agent,
            "gateway" => TokenRole::Gateway,
            other => {
                return Err(Status::invalid_argument(format!(
                    "token role {other:?}: use agent or gateway"
                )))
            }
        };
        let token = Token::generate();
        let now = std::time::SystemTime::now();
        let expires = now + std::time::Duration::from_secs(r.ttl_seconds);
        let ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        };
        self.0
            .propose(&Command::CreateToken {
                id: token.id.clone(),
                cluster: r.cluster.clone(),
                secret_sha256: token.secret_hash(),
                expires_unix_ms: ms(expires),
                now_unix_ms: ms(now),
                role,
            })
            .await?;
        tracing::info!(cluster = %r.cluster, token = %token.id, "bootstrap token created");
        Ok(Response::new(proto::CreateTokenResponse {
            token: token.to_string(),
            expires: humantime::format_rfc3339_seconds(expires).to_string(),
        }))
    }

    async fn get_ca(
        &self,
        req: Request<proto::GetCaRequest>,
    ) -> Result<Response<proto::GetCaResponse>, Status> {
        self.0.authorize_admin(peer_identity(&req).as_ref())?;
        let authority = self
            .0
            .authority()
            .ok_or_else(|| Status::failed_precondition("this hub runs without TLS"))?;
        Ok(Response::new(proto::GetCaResponse {
            ca_pem: authority.ca_pem().to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_proposals_are_bounded_and_never_none() {
        let export = |i: u8| {
            crate::model::fixtures::export("a", &format!("app/s{i}"), 80, [[10, 0, 0, i].into()])
        };
        let sized: Vec<(usize, Export)> = (0..10).map(|i| (100, export(i))).collect();
        let chunks = proposal_chunks(sized.clone(), 250);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [2, 2, 2, 2, 2]
        );
        let flat: Vec<Export> = chunks.concat();
        assert_eq!(flat, sized.into_iter().map(|(_, e)| e).collect::<Vec<_>>());
        assert_eq!(proposal_chunks(vec![(1000, export(1))], 250).len(), 1);
        assert_eq!(proposal_chunks(Vec::new(), 250), [Vec::<Export>::new()]);
    }
}
