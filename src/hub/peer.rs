//! Replica-to-replica networking: the raft transport (one gRPC stream per
//! peer, reconnecting with backoff) and the peer service that receives raft
//! messages, forwarded membership changes, lease renewals and status
//! requests.
//!
//! Links are mutual TLS between replicas ([`super::trust`]) unless the hub
//! runs `--insecure`; every call checks that its caller is a replica of
//! this hub, and every raft message that it comes from the caller.
//!
//! A test-only fault hook ([`PeerTransport::isolate`]) drops raft traffic to
//! and from chosen replicas, to rehearse partitions without touching the
//! network; a replica enables it only with `--enable-fault-injection`.

use super::node::{NodeHandle, Transport};
use crate::proto::{
    self, peer_service_client::PeerServiceClient, peer_service_server::PeerService,
};
use protobuf::Message as _;
use raft::eraftpb::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

/// Largest message between replicas (snapshots travel inline).
pub const MAX_PEER_MESSAGE: usize = 512 * 1024 * 1024;
/// Raft messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Most raft messages sent to a peer as one stream item.
const BATCH: usize = 256;

struct Link {
    address: String,
    queue: mpsc::Sender<Message>,
    stop: CancellationToken,
}

/// Sends raft messages to peers by ID over gRPC streams.
pub struct PeerTransport {
    id: u64,
    own: Mutex<String>,
    links: Mutex<HashMap<u64, Link>>,
    isolated: RwLock<HashSet<u64>>,
    /// One RPC client (one HTTP/2 connection) per peer for forwarded
    /// writes, lease renewals and status, reused across calls.
    rpc: Mutex<HashMap<u64, (String, PeerServiceClient<Channel>)>>,
    /// How links dial peers: mutual TLS, or plain HTTP/2 (`--insecure`).
    tls: Option<ClientTlsConfig>,
    shutdown: CancellationToken,
}

impl PeerTransport {
    /// A transport for replica `id` that knows `peers` (ID → raft address;
    /// its own entry is ignored) and dials them with `tls` (plain HTTP/2
    /// without it).
    pub fn new(
        id: u64,
        peers: &BTreeMap<u64, String>,
        tls: Option<ClientTlsConfig>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let t = Arc::new(Self {
            id,
            own: Mutex::new(String::new()),
            links: Mutex::new(HashMap::new()),
            isolated: RwLock::new(HashSet::new()),
            rpc: Mutex::new(HashMap::new()),
            tls,
            shutdown,
        });
        t.set_peers(peers);
        t
    }

    /// Points the transport at `peers`: new peers get a link, changed
    /// addresses reconnect, peers no longer listed are dropped.
    pub fn set_peers(&self, peers: &BTreeMap<u64, String>) {
        if let (Some(a), Ok(mut own)) = (peers.get(&self.id), self.own.lock()) {
            own.clone_from(a);
        }
        let Ok(mut links) = self.links.lock() else {
            return;
        };
        links.retain(|id, link| {
            let keep = peers.get(id) == Some(&link.address);
            if !keep {
                link.stop.cancel();
            }
            keep
        });
        for (id, address) in peers {
            if *id == self.id || links.contains_key(id) {
                continue;
            }
            let (queue, rx) = mpsc::channel(QUEUE);
            let stop = self.shutdown.child_token();
            tokio::spawn(run_link(
                *id,
                address.clone(),
                self.tls.clone(),
                rx,
                stop.clone(),
            ));
            links.insert(
                *id,
                Link {
                    address: address.clone(),
                    queue,
                    stop,
                },
            );
        }
    }

    /// The raft address of a peer, if known.
    pub fn address(&self, id: u64) -> Option<String> {
        self.links.lock().ok()?.get(&id).map(|l| l.address.clone())
    }

    /// This replica's own raft address, as the member list gives it.
    pub fn own_address(&self) -> String {
        self.own.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// A reusable RPC client for a peer (connected lazily, reconnecting on
    /// its own), or `None` when its address is unknown.
    pub fn client(&self, id: u64) -> Option<PeerServiceClient<Channel>> {
        let address = self.address(id)?;
        let mut rpc = self.rpc.lock().ok()?;
        if let Some((a, c)) = rpc.get(&id) {
            if *a == address {
                return Some(c.clone());
            }
        }
        let client = peer_client(&address, self.tls.as_ref()).ok()?;
        rpc.insert(id, (address, client.clone()));
        Some(client)
    }

    /// Every known peer's address.
    pub fn addresses(&self) -> BTreeMap<u64, String> {
        self.links
            .lock()
            .map(|l| {
                l.iter()
                    .map(|(id, link)| (*id, link.address.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Test-only fault hook: drop raft traffic to and from `peers`; an empty
    /// set heals.
    pub fn isolate(&self, peers: HashSet<u64>) {
        tracing::warn!(?peers, "fault injection: isolating raft traffic");
        if let Ok(mut i) = self.isolated.write() {
            *i = peers;
        }
    }

    /// True when traffic with `peer` is being dropped by the fault hook.
    pub fn is_isolated(&self, peer: u64) -> bool {
        self.isolated
            .read()
            .map(|i| i.contains(&peer))
            .unwrap_or(false)
    }
}

impl Transport for PeerTransport {
    fn send(&self, msgs: Vec<Message>) {
        let Ok(links) = self.links.lock() else { return };
        for msg in msgs {
            if self.is_isolated(msg.to) {
                continue;
            }
            match links.get(&msg.to) {
                Some(link) => {
                    if link.queue.try_send(msg).is_err() {
                        tracing::debug!("peer queue full or closed; dropping a raft message");
                    }
                }
                None => {
                    tracing::debug!(to = msg.to, "no address for raft peer; dropping a message")
                }
            }
        }
    }
}

/// A lazily connecting client for a peer's raft address, over mutual TLS
/// with `tls` (plain HTTP/2 without it).
pub fn peer_client(
    address: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<PeerServiceClient<Channel>, tonic::transport::Error> {
    let endpoint = match tls {
        Some(tls) => {
            Endpoint::from_shared(format!("https://{address}"))?.tls_config(tls.clone())?
        }
        None => Endpoint::from_shared(format!("http://{address}"))?,
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        // A peer cut off by the network does not close the connection:
        // pings find out, and the link reconnects (at once when the
        // partition heals) instead of waiting on TCP's retransmission
        // backoff, which left a healed replica behind for seconds.
        .http2_keep_alive_interval(crate::identity::tls::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::identity::tls::KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(PeerServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE))
}

/// Keeps one stream open to a peer and feeds it from the queue.
async fn run_link(
    peer: u64,
    address: String,
    tls: Option<ClientTlsConfig>,
    mut queue: mpsc::Receiver<Message>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Ok(mut client) = peer_client(&address, tls.as_ref()) else {
            tracing::warn!(peer, %address, "invalid peer address");
            return;
        };
        let (tx, rx) = mpsc::channel::<proto::RaftMessages>(16);
        let call = tokio::spawn(async move { client.raft(ReceiverStream::new(rx)).await });
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    call.abort();
                    return;
                }
                msg = queue.recv() => {
                    let Some(msg) = msg else { call.abort(); return };
                    // Whatever else is queued goes in the same item: one
                    // HTTP/2 frame for a burst of appends and acknowledgements.
                    let mut messages = Vec::new();
                    let mut next = Some(msg);
                    while let Some(msg) = next.take() {
                        if let Ok(bytes) = msg.write_to_bytes() {
                            messages.push(bytes);
                        }
                        if messages.len() < BATCH {
                            next = queue.try_recv().ok();
                        }
                    }
                    if tx.send(proto::RaftMessages { messages }).await.is_err() {
                        break;
                    }
                    backoff = Duration::from_millis(50);
                }
            }
        }
        if let Ok(Err(status)) = call.await {
            tracing::debug!(peer, %address, %status, "raft stream to peer ended");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Handlers the peer service calls into the hub for.
pub struct PeerApi {
    pub node: NodeHandle,
    pub transport: Arc<PeerTransport>,
    pub hub: super::api::Hub,
    /// Whether callers must be replicas of this hub (false only with
    /// `--insecure`, where nobody is authenticated).
    pub authenticate: bool,
}

impl PeerApi {
    /// The replica ID of a call's caller, checked: it presented a replica
    /// certificate of the ClusterSet CA, and that replica belongs to this
    /// hub (a replica not yet configured, started with `--join`, accepts
    /// any replica of the CA: it learns its members from the leader).
    /// `None` when the hub authenticates nobody (`--insecure`).
    fn caller<T>(&self, req: &Request<T>) -> Result<Option<u64>, Status> {
        if !self.authenticate {
            return Ok(None);
        }
        let who = req
            .extensions()
            .get::<super::trust::PeerIdentity>()
            .and_then(|p| p.identity.clone());
        let Some(crate::identity::Identity::Replica(id)) = who else {
            self.hub.metrics().peer_refused("not_a_replica");
            let who = who.map_or("a caller without a certificate".to_string(), |i| {
                i.to_string()
            });
            tracing::warn!(%who, "raft peer port: refused a call from something that is not a hub replica");
            return Err(Status::permission_denied(format!(
                "the raft peer port serves only this hub's replicas; {who} is not one"
            )));
        };
        if !self.is_member(id) {
            self.hub.metrics().peer_refused("not_a_member");
            tracing::warn!(
                replica = id,
                "raft peer port: refused a call from a replica that is not a member"
            );
            return Err(Status::permission_denied(format!(
                "replica {id} is not a member of this hub; an administrator adds it with `switchyard hub members add {id} ADDRESS`"
            )));
        }
        Ok(Some(id))
    }

    /// True when replica `id` is a member: a voter or learner of the raft
    /// configuration, a replica the member list records (added by an
    /// administrator), or one of the initial `--peers`. A replica with no
    /// configuration yet counts every replica of the CA as a member.
    fn is_member(&self, id: u64) -> bool {
        let status = self.hub.raft_status();
        if status.voters.is_empty() && status.learners.is_empty() {
            return true;
        }
        status.voters.contains(&id)
            || status.learners.contains(&id)
            || self.hub.state().members.contains_key(&id)
            || self.transport.address(id).is_some()
    }
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn raft(
        &self,
        req: Request<tonic::Streaming<proto::RaftMessages>>,
    ) -> Result<Response<proto::RaftAck>, Status> {
        let caller = self.caller(&req)?;
        let mut inbound = req.into_inner();
        while let Some(item) = inbound.next().await {
            for bytes in item?.messages {
                let msg = match Message::parse_from_bytes(&bytes) {
                    Ok(msg) => msg,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable raft message from a peer");
                        continue;
                    }
                };
                if caller.is_some_and(|id| id != msg.from) {
                    // A replica speaks only for itself.
                    self.hub.metrics().peer_refused("forged_sender");
                    tracing::warn!(caller = ?caller, from = msg.from, "raft peer port: dropped a raft message sent in another replica's name");
                    continue;
                }
                if self.transport.is_isolated(msg.from) {
                    continue;
                }
                self.node.step(msg);
            }
        }
        Ok(Response::new(proto::RaftAck {}))
    }

    async fn forward(
        &self,
        req: Request<proto::ForwardRequest>,
    ) -> Result<Response<proto::ForwardReply>, Status> {
        self.caller(&req)?;
        let change = req
            .into_inner()
            .member_change
            .ok_or_else(|| Status::invalid_argument("a forward request names no member change"))?;
        let line = self
            .hub
            .change_member_local(change.id, &change.address)
            .await?;
        let reply = super::machine::Reply {
            index: 0,
            lines: vec![line],
        };
        let bytes = serde_json::to_vec(&reply).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::ForwardReply { reply: bytes }))
    }

    async fn renew_lease(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseResponse>, Status> {
        self.caller(&req)?;
        let cluster = req.into_inner().cluster;
        // Leases live on the leader: a replica that no longer leads says so
        // and the sender tries the one that does.
        if !self.hub.is_leader() {
            return Err(Status::unavailable("this replica is not the raft leader"));
        }
        self.hub.leases().renew(&cluster);
        let known = self.hub.state().clusters.contains_key(&cluster);
        Ok(Response::new(proto::LeaseResponse {
            lease_ms: self.hub.leases().config().ttl.as_millis() as u64,
            known,
        }))
    }

    async fn local_status(
        &self,
        req: Request<proto::LocalStatusRequest>,
    ) -> Result<Response<proto::LocalStatusReply>, Status> {
        self.caller(&req)?;
        let json = serde_json::to_string(&self.hub.raft_status())
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::LocalStatusReply { json }))
    }
}
