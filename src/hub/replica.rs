//! A hub replica's front end: every request handler goes through [`Hub`].
//!
//! Writes: a command is validated against this replica's state and
//! proposed to its raft node; on a follower, raft passes the proposal to
//! the leader (`MsgPropose`, as etcd does) and the reply comes when this
//! replica applies the entry. While there is no leader (an election, a
//! minority partition) writes are retried for up to [`WRITE_DEADLINE`] and
//! then refused with an error that says so. Every command is idempotent, so
//! retrying after a dropped proposal is safe. An acknowledged write is
//! applied on this replica and visible in its DNS before the reply.

use super::lease::Leases;
use super::machine::Reply;
use super::node::{NodeHandle, ProposeError, RaftStatus};
use super::peer::PeerTransport;
use super::state::{Command, State};
use crate::metrics::Metrics;
use crate::proto;
use raft::eraftpb::{ConfChange, ConfChangeType};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

/// How long a write may wait for a leader before it is refused.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long `hub members add` waits for a new replica to catch up before it
/// promotes it from learner to voter.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(10);

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    id: u64,
    node: NodeHandle,
    status: watch::Receiver<RaftStatus>,
    view: watch::Receiver<Arc<State>>,
    leases: Arc<Leases>,
    metrics: Arc<Metrics>,
    /// Peers, for forwarding; `None` for a single-voter hub.
    peers: Option<Arc<PeerTransport>>,
    fault_injection: bool,
    /// The CA and its rules when the API runs with TLS; `None`: no checks.
    authority: Option<Arc<super::authority::Authority>>,
}

/// A write attempt's failure: worth retrying or final.
enum Attempt {
    Retry(Status),
    Fail(Status),
}

fn classify(status: Status) -> Attempt {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Unknown => Attempt::Retry(status),
        _ => Attempt::Fail(status),
    }
}

fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::Rejected(reason) => Status::invalid_argument(reason),
        ProposeError::NotLeader { leader } => Status::unavailable(match leader {
            Some(id) => format!("this hub replica is not the raft leader (replica {id} is)"),
            None => "no raft leader is elected".into(),
        }),
        ProposeError::Dropped => Status::unavailable("the write was dropped by a leader change"),
        ProposeError::Stopped => Status::unavailable("the hub replica is shutting down"),
    }
}

impl Hub {
    /// Wires a replica's front end.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        node: NodeHandle,
        view: watch::Receiver<Arc<State>>,
        leases: Arc<Leases>,
        metrics: Arc<Metrics>,
        peers: Option<Arc<PeerTransport>>,
        fault_injection: bool,
    ) -> Self {
        let status = node.status();
        Self {
            id,
            node,
            status,
            view,
            leases,
            metrics,
            peers,
            fault_injection,
            authority: None,
        }
    }

    /// The same hub, checking callers against `authority`.
    pub fn with_authority(mut self, authority: Arc<super::authority::Authority>) -> Self {
        self.authority = Some(authority);
        self
    }

    /// The CA and its rules, when the API runs with TLS.
    pub fn authority(&self) -> Option<&super::authority::Authority> {
        self.authority.as_deref()
    }

    /// The caller must speak for `cluster` (no check without TLS).
    pub fn authorize_cluster(
        &self,
        caller: Option<&crate::identity::Identity>,
        cluster: &str,
    ) -> Result<(), Status> {
        match self.authority {
            None => Ok(()),
            Some(_) => super::authority::Authority::check_cluster(caller, cluster),
        }
    }

    /// The caller must be `cluster`'s gateway (no check without TLS).
    pub fn authorize_gateway(
        &self,
        caller: Option<&crate::identity::Identity>,
        cluster: &str,
    ) -> Result<(), Status> {
        match self.authority {
            None => Ok(()),
            Some(_) => super::authority::Authority::check_gateway(caller, cluster),
        }
    }

    /// The caller must be an administrator (no check without TLS).
    pub fn authorize_admin(
        &self,
        caller: Option<&crate::identity::Identity>,
    ) -> Result<(), Status> {
        match self.authority {
            None => Ok(()),
            Some(_) => super::authority::Authority::check_admin(caller),
        }
    }

    /// The latest applied state.
    pub fn state(&self) -> Arc<State> {
        self.view.borrow().clone()
    }

    /// A receiver that wakes on every applied batch.
    pub fn watch_state(&self) -> watch::Receiver<Arc<State>> {
        self.view.clone()
    }

    /// False once this replica's raft node has stopped (shutdown, a fatal
    /// error, or a drill's kill), while its API may still be answering.
    pub fn raft_running(&self) -> bool {
        self.status.has_changed().is_ok()
    }

    /// This replica's raft status.
    pub fn raft_status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// This replica's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The lease table (meaningful on the leader).
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        let s = self.status.borrow();
        s.leader != 0 && s.leader == s.id
    }

    /// Proposes a command (through the leader if this replica follows) and
    /// returns the reply lines once this replica applied it; its DNS serves
    /// it by then (the state machine publishes before replies go out).
    pub async fn propose(&self, cmd: &Command) -> Result<Vec<String>, Status> {
        let bytes = serde_json::to_vec(cmd).map_err(|e| Status::internal(e.to_string()))?;
        let reply = self.submit(cmd, bytes).await?;
        Ok(reply.lines)
    }

    async fn submit(&self, cmd: &Command, bytes: Vec<u8>) -> Result<Reply, Status> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let attempt = self
                .propose_command(cmd, bytes.clone())
                .await
                .map_err(classify);
            let raw = match attempt {
                Ok(raw) => raw,
                Err(Attempt::Fail(status)) => return Err(status),
                Err(Attempt::Retry(status)) => {
                    if Instant::now() >= deadline {
                        return Err(Status::unavailable(format!(
                            "no hub replica could commit the write within {WRITE_DEADLINE:?} ({}): is a majority of hub replicas up and connected?",
                            status.message()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            return serde_json::from_slice(&raw)
                .map_err(|e| Status::internal(format!("undecodable reply: {e}")));
        }
    }

    /// Validates `cmd` against this replica's state and proposes it once
    /// (`bytes` is its encoding); the state machine validates it again when
    /// it applies, so a stale check here never lets a bad command through.
    async fn propose_command(&self, cmd: &Command, bytes: Vec<u8>) -> Result<Vec<u8>, Status> {
        self.state()
            .validate(cmd)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.node.propose(bytes).await.map_err(propose_status)
    }

    /// Proposes `cmd` once on this replica and waits for its reply.
    async fn propose_once(&self, cmd: &Command) -> Result<Vec<u8>, Status> {
        let bytes = serde_json::to_vec(cmd).map_err(|e| Status::internal(e.to_string()))?;
        self.propose_command(cmd, bytes).await
    }

    fn leader_client(
        &self,
        leader: u64,
    ) -> Result<proto::peer_service_client::PeerServiceClient<tonic::transport::Channel>, Status>
    {
        let peers = self
            .peers
            .as_ref()
            .ok_or_else(|| Status::unavailable("no peers configured"))?;
        peers.client(leader).ok_or_else(|| {
            Status::unavailable(format!("no raft address known for leader {leader}"))
        })
    }

    /// A linearizable read barrier: returns once this replica has applied
    /// every write acknowledged before the call (raft ReadIndex). The node
    /// answers only after it applied through the confirmed index and
    /// published the state, so [`Self::state`] then reflects it.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        tokio::time::timeout(Duration::from_secs(3), self.node.read_index())
            .await
            .map_err(|_| Status::unavailable("no raft leader confirmed the read within 3 s; is a majority of hub replicas up?"))?
            .map_err(propose_status)?;
        Ok(())
    }

    /// Records a lease renewal; a follower passes it on to the leader,
    /// where leases live. Fails (`UNAVAILABLE`) when no leader took it
    /// within half a renewal interval: no leader is elected, or none is
    /// reachable from this replica. The agent then renews through another
    /// replica before its lease runs out, rather than losing the lease (and
    /// its cluster's traffic) to a replica cut off from the others.
    pub async fn renew_lease(&self, cluster: &str) -> Result<(), Status> {
        if self.peers.is_none() {
            self.leases.renew(cluster);
            return Ok(());
        }
        let deadline = Instant::now() + self.leases.config().renew / 2;
        let mut status = self.status.clone();
        let mut why = String::from("no raft leader is elected");
        loop {
            let leader = status.borrow_and_update().leader;
            if leader == self.id {
                self.leases.renew(cluster);
                return Ok(());
            }
            if leader != 0 {
                match self.leader_client(leader) {
                    Ok(mut client) => {
                        let req = proto::LeaseRequest {
                            cluster: cluster.to_string(),
                        };
                        // A deadline of our own: across a partition the
                        // call would otherwise wait for TCP to give up.
                        match tokio::time::timeout_at(deadline, client.renew_lease(req)).await {
                            Ok(Ok(_)) => return Ok(()),
                            Ok(Err(status)) => {
                                why = format!("leader {leader}: {}", status.message());
                            }
                            Err(_) => why = format!("leader {leader} did not answer"),
                        }
                    }
                    Err(status) => why = status.message().to_string(),
                }
            }
            if Instant::now() >= deadline {
                tracing::debug!(cluster, why, "could not pass a lease renewal to a leader");
                return Err(Status::unavailable(format!(
                    "this hub replica could not pass the lease renewal of {cluster} to a raft leader ({why}); renew through another replica"
                )));
            }
            // A leader elected or changed meanwhile, or a pause before
            // trying again.
            let pause = deadline.min(Instant::now() + Duration::from_millis(50));
            let _ = tokio::time::timeout_at(pause, status.changed()).await;
        }
    }

    /// Adds (`address` non-empty) or removes a replica, through the leader.
    pub async fn change_member(&self, id: u64, address: &str) -> Result<String, Status> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let leader = self.status.borrow().leader;
            let attempt = if leader == self.id {
                self.change_member_local(id, address)
                    .await
                    .map_err(classify)
            } else if leader == 0 {
                Err(Attempt::Retry(Status::unavailable(
                    "no raft leader is elected",
                )))
            } else {
                match self.leader_client(leader) {
                    Err(s) => Err(Attempt::Retry(s)),
                    Ok(mut client) => {
                        let change = proto::MemberChange {
                            id,
                            address: address.to_string(),
                        };
                        match client
                            .forward(proto::ForwardRequest {
                                member_change: Some(change),
                            })
                            .await
                        {
                            Ok(r) => serde_json::from_slice::<Reply>(&r.into_inner().reply)
                                .map(|r| r.lines.join("\n"))
                                .map_err(|e| Attempt::Fail(Status::internal(e.to_string()))),
                            Err(status) => Err(classify(status)),
                        }
                    }
                }
            };
            match attempt {
                Ok(line) => return Ok(line),
                Err(Attempt::Fail(s)) => return Err(s),
                Err(Attempt::Retry(s)) if Instant::now() >= deadline => return Err(s),
                Err(Attempt::Retry(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The leader's half of a membership change. Every step is idempotent,
    /// so a change cut short (a leader change, a lost reply) finishes when
    /// the same command runs again.
    pub async fn change_member_local(&self, id: u64, address: &str) -> Result<String, Status> {
        if id == 0 {
            return Err(Status::invalid_argument("replica ID 0 is reserved"));
        }
        if address.is_empty() {
            self.remove_member(id).await
        } else {
            self.add_member(id, address).await
        }
    }

    /// Adds a replica the safe way: record its address (so every replica
    /// can reach it), add it as a learner, wait until it has caught up with
    /// the log, then promote it to voter. A voter that cannot keep up would
    /// otherwise count towards the quorum from the start.
    async fn add_member(&self, id: u64, address: &str) -> Result<String, Status> {
        let status = self.raft_status();
        let known = self.state().members.get(&id).cloned();
        if status.voters.contains(&id) {
            if known.as_deref() == Some(address) {
                return Ok(format!("replica {id} is already a member at {address}"));
            }
            return Err(Status::invalid_argument(format!(
                "replica {id} is already a member (members: {:?})",
                status.voters
            )));
        }
        if known.as_deref() != Some(address) {
            self.propose_once(&Command::SetMember {
                id,
                address: Some(address.to_string()),
            })
            .await?;
        }
        if !status.learners.contains(&id) {
            self.conf_change(id, ConfChangeType::AddLearnerNode).await?;
        }
        let target = self.raft_status().commit;
        let mut watch = self.status.clone();
        let caught_up = tokio::time::timeout(
            CATCH_UP_DEADLINE,
            watch.wait_for(|s| s.progress.iter().any(|p| p.id == id && p.matched >= target)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !caught_up {
            return Err(Status::failed_precondition(format!(
                "replica {id} joined as a learner but has not caught up within {CATCH_UP_DEADLINE:?} (is it running with --join, reachable at {address}?); run the same command again to promote it once it has"
            )));
        }
        self.conf_change(id, ConfChangeType::AddNode).await?;
        Ok(format!("replica {id} added at {address}"))
    }

    /// Removes a replica: out of the raft configuration, then out of the
    /// member list. The leader does not remove itself: it hands
    /// leadership to the most up-to-date voter and the caller retries there.
    async fn remove_member(&self, id: u64) -> Result<String, Status> {
        let status = self.raft_status();
        let voter = status.voters.contains(&id);
        if !voter && !status.learners.contains(&id) {
            if self.state().members.contains_key(&id) {
                // A removal cut short after the configuration change.
                self.propose_once(&Command::SetMember { id, address: None })
                    .await?;
                return Ok(format!("replica {id} removed"));
            }
            return Err(Status::invalid_argument(format!(
                "replica {id} is not a member (members: {:?})",
                status.voters
            )));
        }
        if voter && status.voters.len() == 1 {
            return Err(Status::invalid_argument("cannot remove the last replica"));
        }
        if id == self.id {
            let to = status
                .progress
                .iter()
                .filter(|p| p.id != id && status.voters.contains(&p.id))
                .max_by_key(|p| p.matched)
                .map(|p| p.id)
                .ok_or_else(|| Status::unavailable("no other voter to hand leadership to"))?;
            self.node
                .transfer_leader(to)
                .await
                .map_err(propose_status)?;
            return Err(Status::unavailable(format!(
                "replica {id} leads: leadership moves to replica {to} before it is removed"
            )));
        }
        self.conf_change(id, ConfChangeType::RemoveNode).await?;
        self.propose_once(&Command::SetMember { id, address: None })
            .await?;
        Ok(format!("replica {id} removed"))
    }

    async fn conf_change(&self, id: u64, kind: ConfChangeType) -> Result<(), Status> {
        let mut cc = ConfChange {
            node_id: id,
            ..Default::default()
        };
        cc.set_change_type(kind);
        self.node
            .propose_conf_change(cc)
            .await
            .map_err(propose_status)
    }

    /// Test-only fault hook; refused unless enabled at start.
    pub fn isolate(&self, peers: std::collections::HashSet<u64>) -> Result<(), Status> {
        match (&self.peers, self.fault_injection) {
            (Some(p), true) => {
                p.isolate(peers);
                Ok(())
            }
            _ => Err(Status::permission_denied(
                "fault injection is disabled on this replica (start it with --enable-fault-injection, for tests only)",
            )),
        }
    }

    /// The replica set as `switchyard status` shows it: leader, term, and
    /// every member (voters, then learners) with its address, role, match
    /// and applied index.
    pub async fn cluster_status(&self) -> Value {
        let own = self.raft_status();
        let leader_status = if own.leader == self.id || own.leader == 0 {
            Some(own.clone())
        } else {
            self.remote_status(own.leader).await
        };
        let config = leader_status.as_ref().unwrap_or(&own);
        let learners = config.learners.clone();
        let ids: Vec<u64> = config.voters.iter().chain(&learners).copied().collect();
        let mut members = Vec::new();
        for id in ids {
            let s = if id == self.id {
                Some(own.clone())
            } else {
                self.remote_status(id).await
            };
            let matched = leader_status
                .as_ref()
                .and_then(|l| l.progress.iter().find(|p| p.id == id))
                .map(|p| p.matched);
            let address = match &self.peers {
                Some(p) if id != self.id => p.address(id).unwrap_or_default(),
                _ => self.own_address(),
            };
            members.push(json!({
                "id": id,
                "address": address,
                "role": match &s {
                    None => "Unreachable".to_string(),
                    Some(_) if learners.contains(&id) => "Learner".to_string(),
                    Some(s) => s.role.clone(),
                },
                "match": matched,
                "applied": s.as_ref().map(|s| s.applied),
                "term": s.as_ref().map(|s| s.term),
            }));
        }
        json!({
            "leader": own.leader,
            "term": own.term,
            "replica": self.id,
            "members": members,
        })
    }

    fn own_address(&self) -> String {
        self.peers
            .as_ref()
            .map(|p| p.own_address())
            .unwrap_or_default()
    }

    async fn remote_status(&self, id: u64) -> Option<RaftStatus> {
        let mut client = self.peers.as_ref()?.client(id)?;
        let mut req = tonic::Request::new(proto::LocalStatusRequest {});
        req.set_timeout(Duration::from_millis(500));
        let reply = client.local_status(req).await.ok()?.into_inner();
        serde_json::from_str(&reply.json).ok()
    }
}
