//! The raft node: one task owning a raft-rs `RawNode` on sled storage.
//!
//! [`spawn`] opens the [`SledStorage`] under `data_dir/raft`, restores the
//! [`StateMachine`] from the latest snapshot and starts the task; a
//! [`NodeHandle`] proposes commands, steps peer messages in and watches the
//! [`RaftStatus`]. The task selects over its mailbox, a tick interval and
//! shutdown; after each batch of mailbox items it handles raft-rs's `Ready`
//! in the documented order: send messages, install a snapshot, apply
//! committed entries, persist entries and hard state, flush, send persisted
//! messages, advance, then the same for the light ready, and advance apply.
//!
//! The state machine lives in memory: on restart it is rebuilt from the
//! stored snapshot plus the committed entries after it.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument as _};

use crate::hub::storage::{SledStorage, StorageError, Syncer};
use crate::metrics::Metrics;

/// The replicated state machine the node drives. Must be deterministic:
/// every replica applies the same commands in the same order.
pub trait StateMachine: Send + 'static {
    /// Applies one committed command at raft `index`. The result goes back
    /// to the proposer: `Ok(reply)` or `Err(reason)` for a rejected command
    /// (a rejected command changes nothing).
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Vec<u8>, String>;
    /// Called once after each batch of applied entries (publish views here).
    fn after_batch(&mut self) {}
    /// The whole state, for a raft snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot taken at `index`.
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), String>;
}

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This replica's raft ID (non-zero).
    pub id: u64,
    /// Voter IDs of the initial configuration, including `id`.
    pub voters: Vec<u64>,
    /// Where sled keeps the log, hard state and snapshots.
    pub data_dir: PathBuf,
    /// Raft tick interval.
    pub tick: Duration,
    /// Ticks without a heartbeat before a follower starts an election.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: usize,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_every: u64,
}

impl NodeConfig {
    /// A single-voter node: what the playground runs.
    pub fn single(data_dir: PathBuf) -> Self {
        Self {
            id: 1,
            voters: vec![1],
            data_dir,
            tick: Duration::from_millis(100),
            election_tick: 5,
            heartbeat_tick: 1,
            snapshot_every: 10_000,
        }
    }
}

/// Capacity of a node's mailbox (proposals and peer messages).
const MAILBOX: usize = 4096;
/// Most mailbox items taken before the next `Ready` is handled.
const MAX_BATCH: usize = 4096;
/// Largest append message sent to a peer.
const MAX_MSG_BYTES: u64 = 1 << 20;
/// How long a follower waits for a proposal it passed to the leader to come
/// back applied before it gives up (the message may have been lost); the
/// caller may retry (commands are idempotent).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// A proposal passed on by another replica that is older than this when it
/// arrives (by this replica's clock, against the time the proposing replica
/// stamped in its context) is dropped. The proposer gives up on it after
/// [`FORWARD_TIMEOUT`] and its client may be told the write failed: a
/// message held up by a partition (in a queue, in a TCP buffer) must not
/// commit that write once the partition heals, over whatever was written
/// since. Replicas' clocks must agree to within the difference, 1 s.
const FORWARD_MAX_AGE: Duration = Duration::from_secs(1);

/// Why a proposal did not produce a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica is not the leader; send the command to `leader` (if known).
    #[error("this replica is not the raft leader (leader: {leader:?}); send writes to the leader")]
    NotLeader {
        /// The current leader's ID, if this replica knows one.
        leader: Option<u64>,
    },
    /// The state machine rejected the command; nothing changed.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// Leadership or the term changed before the command was applied. The
    /// command may still be applied later; retry if it is idempotent.
    #[error("proposal dropped by a leadership change; retry the command")]
    Dropped,
    /// The node has stopped.
    #[error("the raft node has stopped")]
    Stopped,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The [`NodeConfig`] is not usable.
    #[error("invalid raft node configuration: {0}")]
    Config(String),
    /// The raft storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The persister thread is gone (it stops only after a storage error).
    #[error("the raft persister thread stopped")]
    PersisterStopped,
    /// raft-rs refused the configuration or the stored state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The state machine could not load the stored snapshot.
    #[error("state machine cannot restore the snapshot at index {index}: {reason}")]
    Restore {
        /// The snapshot's index.
        index: u64,
        /// The state machine's reason.
        reason: String,
    },
    /// A committed configuration change does not decode.
    #[error("configuration change at index {index} does not decode: {source}")]
    ConfChange {
        /// The entry's index.
        index: u64,
        /// The decoding error.
        source: protobuf::ProtobufError,
    },
}

/// A replica's view of raft, published on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// This replica's ID.
    pub id: u64,
    /// The leader's ID, 0 when there is none.
    pub leader: u64,
    /// The current term.
    pub term: u64,
    /// The commit index.
    pub commit: u64,
    /// The index of the last entry applied to the state machine.
    pub applied: u64,
    /// `Leader`, `Follower`, `Candidate` or `PreCandidate`.
    pub role: String,
    /// Voters of the current configuration.
    pub voters: Vec<u64>,
    /// Learners of the current configuration (replicas catching up before
    /// they become voters).
    #[serde(default)]
    pub learners: Vec<u64>,
    /// Replication progress of every member, as the leader tracks it
    /// (empty on followers).
    pub progress: Vec<PeerProgress>,
}

/// How far the leader has replicated its log to one member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProgress {
    /// The member's ID.
    pub id: u64,
    /// Highest log index known to be replicated on the member.
    pub matched: u64,
    /// Next index the leader will send.
    pub next: u64,
}

/// Delivers raft messages to peers. Must not block: queue and return.
pub trait Transport: Send + Sync + 'static {
    /// Sends each message to the peer named by its `to` field. Losing a
    /// message is fine: raft retransmits.
    fn send(&self, msgs: Vec<Message>);
}

/// The transport of a single-voter group: there is nobody to talk to.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            debug!(count = msgs.len(), "no peers: dropping raft messages");
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<u8>, ProposeError>>;

type ReadReply = oneshot::Sender<Result<u64, ProposeError>>;

enum Mail {
    Propose {
        command: Vec<u8>,
        reply: Reply,
    },
    ConfChange {
        change: ConfChange,
        reply: Reply,
    },
    ReadIndex {
        reply: ReadReply,
    },
    TransferLeader {
        to: u64,
    },
    Step(Message),
    /// The persister made every `Ready` up to `number` durable (or failed).
    Persisted {
        number: u64,
        result: Result<(), StorageError>,
    },
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    mailbox: mpsc::Sender<Mail>,
    status: watch::Receiver<RaftStatus>,
}

impl NodeHandle {
    /// Proposes `command` and resolves once it is committed and applied on
    /// this replica (and `after_batch` has run), with the state machine's
    /// reply. A follower passes the proposal to the leader inside raft (as
    /// etcd does) and replies when it applies the entry itself.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.mailbox
            .send(Mail::Propose { command, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// Proposes a membership change (one at a time, as raft-rs requires)
    /// and resolves once it is applied.
    pub async fn propose_conf_change(&self, change: ConfChange) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.mailbox
            .send(Mail::ConfChange { change, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.unwrap_or(Err(ProposeError::Stopped)).map(|_| ())
    }

    /// A linearizable read barrier (raft ReadIndex): resolves with a commit
    /// index once this replica has applied at least that far (conf changes
    /// included) and the state machine has published it (`after_batch`), so
    /// a read of the applied state afterwards sees every write acknowledged
    /// before the call. Followers ask the leader.
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.mailbox
            .send(Mail::ReadIndex { reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// Asks this replica, if it leads, to hand leadership to `to` (once
    /// `to` has caught up). Watch the status to see it happen.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.mailbox
            .send(Mail::TransferLeader { to })
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    /// Watches the node's [`RaftStatus`].
    pub fn status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// Hands a message from a peer to the node. Dropped if the mailbox is
    /// full or the node stopped (raft retransmits).
    pub fn step(&self, msg: Message) {
        if let Err(err) = self.mailbox.try_send(Mail::Step(msg)) {
            debug!(%err, "raft mailbox refused a peer message");
        }
    }
}

/// Starts a raft node on `config.data_dir/raft` as a tokio task (call it
/// within a runtime). On a fresh directory the configuration is
/// `config.voters`; otherwise the node resumes from its storage, restoring
/// `sm` from the latest snapshot and re-applying the committed entries after
/// it. The task runs until `shutdown` is cancelled or every handle is dropped.
pub fn spawn<S: StateMachine>(
    config: NodeConfig,
    mut sm: S,
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(NodeHandle, JoinHandle<()>), NodeError> {
    if config.id == 0 {
        return Err(NodeError::Config("the replica ID must not be 0".into()));
    }
    let dir = config.data_dir.join("raft");
    let mut storage = SledStorage::open(&dir)?;
    if !storage.is_initialized() && !config.voters.is_empty() {
        storage.set_conf_state(ConfState {
            voters: config.voters.clone(),
            ..ConfState::default()
        })?;
    }
    let mut applied = 0;
    if let Some(snapshot) = storage.snapshot_data()? {
        let index = snapshot.get_metadata().index;
        sm.restore(index, &snapshot.data)
            .map_err(|reason| NodeError::Restore { index, reason })?;
        sm.after_batch();
        applied = index;
    }
    let only_voter = {
        let cs = storage.conf_state();
        cs.voters == [config.id] && cs.voters_outgoing.is_empty()
    };
    info!(
        id = config.id,
        dir = %dir.display(),
        applied,
        commit = storage.hard_state().commit,
        term = storage.hard_state().term,
        "starting raft node"
    );

    let raft_config = raft::Config {
        id: config.id,
        election_tick: config.election_tick,
        heartbeat_tick: config.heartbeat_tick,
        applied,
        max_size_per_msg: MAX_MSG_BYTES,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_config.validate()?;
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let mut raw = RawNode::new(&raft_config, storage, &logger)?;
    if only_voter {
        raw.campaign()?;
    }

    let (mailbox, inbox) = mpsc::channel(MAILBOX);
    let (persister, jobs) = std::sync::mpsc::channel();
    {
        let syncer = raw.store().syncer();
        let transport = transport.clone();
        let mailbox = mailbox.downgrade();
        std::thread::Builder::new()
            .name(format!("raft-persist-{}", config.id))
            .spawn(move || persist(syncer, jobs, transport, mailbox))
            .map_err(|e| NodeError::Config(format!("cannot start the persister thread: {e}")))?;
    }
    let (status_tx, status) = watch::channel(RaftStatus {
        id: config.id,
        ..RaftStatus::default()
    });
    let node = Node {
        id: config.id,
        raw,
        sm,
        transport,
        metrics,
        status: status_tx,
        pending: HashMap::new(),
        replies: Vec::new(),
        reads: HashMap::new(),
        ready_reads: Vec::new(),
        incarnation: rand::random(),
        next_seq: 0,
        applied,
        snapshot_index: applied,
        snapshot_every: config.snapshot_every,
        snapshot_now: false,
        term: 0,
        leader: 0,
        leading: false,
        persister,
        persisting: 0,
        persisted: 0,
        persist_error: None,
    };
    let span = tracing::info_span!("raft", id = config.id);
    // The node gets a thread of its own with a single-threaded runtime: its
    // fsyncs block only that thread, with no hand-off of a shared worker
    // (`block_in_place`) on every `Ready`, and the API's workers never wait
    // behind it.
    let tick = config.tick;
    // Aborting the returned task stops the node at once, without the final
    // flush (tests use it as a crash): a thread cannot be aborted, so the
    // task's drop tells the node's loop.
    let kill = CancellationToken::new();
    let killed = kill.clone();
    let thread = tokio::task::spawn_blocking(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                error!(%err, "cannot start the raft node's runtime");
                return;
            }
        };
        runtime.block_on(node.run(inbox, tick, shutdown, killed).instrument(span));
    });
    let task = tokio::spawn(async move {
        let _kill_on_abort = kill.drop_guard();
        // A panic on the node's thread fails this task too, so that
        // whoever awaits it learns the node is gone.
        if let Err(err) = thread.await {
            if err.is_panic() {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    });
    Ok((NodeHandle { mailbox, status }, task))
}

/// The task's state: the raw node, the state machine and pending proposals.
struct Node<S> {
    id: u64,
    raw: RawNode<SledStorage>,
    sm: S,
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    status: watch::Sender<RaftStatus>,
    /// Proposals of this incarnation waiting to be applied, by sequence number.
    pending: HashMap<u64, Pending>,
    /// Replies of applied proposals, sent once `after_batch` published them.
    replies: Vec<(Reply, Result<Vec<u8>, ProposeError>)>,
    /// ReadIndex requests waiting for raft to confirm an index, by sequence.
    reads: HashMap<u64, ReadReply>,
    /// Confirmed reads waiting for the applied index to reach theirs.
    ready_reads: Vec<(u64, ReadReply)>,
    /// Random per start, so entry contexts from an earlier run never match.
    incarnation: u64,
    next_seq: u64,
    applied: u64,
    snapshot_index: u64,
    snapshot_every: u64,
    /// Take a snapshot after this batch (a configuration change applied).
    snapshot_now: bool,
    term: u64,
    leader: u64,
    /// Whether this replica led at the last `observe`.
    leading: bool,
    /// Readies to make durable, in order, on the persister thread.
    persister: std::sync::mpsc::Sender<PersistJob>,
    /// The last `Ready` number handed to the persister.
    persisting: u64,
    /// The last `Ready` number the persister reported durable.
    persisted: u64,
    /// A failure the persister reported; fatal at the next `on_ready`.
    persist_error: Option<StorageError>,
}

/// A proposal waiting to be applied.
struct Pending {
    reply: Reply,
    /// Set for a proposal passed to the leader: when to stop waiting.
    forwarded_until: Option<tokio::time::Instant>,
}

/// One `Ready` for the persister: make it durable, then send its messages.
struct PersistJob {
    number: u64,
    messages: Vec<Message>,
}

/// The persister thread: group commit. It takes every job queued so far,
/// syncs storage once for all of them, tells the node, then sends the
/// messages that promised durability (votes, append acknowledgements).
/// The node goes on taking proposals and appending while a sync runs, so
/// the next sync covers everything that arrived meanwhile.
fn persist(
    syncer: Syncer,
    jobs: std::sync::mpsc::Receiver<PersistJob>,
    transport: Arc<dyn Transport>,
    mailbox: mpsc::WeakSender<Mail>,
) {
    while let Ok(first) = jobs.recv() {
        let mut number = first.number;
        let mut messages = first.messages;
        while let Ok(job) = jobs.try_recv() {
            number = job.number;
            messages.extend(job.messages);
        }
        let result = syncer.sync();
        let failed = result.is_err();
        // The node learns first: a reply to these messages, arriving
        // through the same mailbox, must find the ready marked durable.
        let Some(mailbox) = mailbox.upgrade() else {
            return;
        };
        if mailbox
            .blocking_send(Mail::Persisted { number, result })
            .is_err()
            || failed
        {
            return;
        }
        if !messages.is_empty() {
            transport.send(messages);
        }
    }
}

impl<S: StateMachine> Node<S> {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Mail>,
        tick: Duration,
        shutdown: CancellationToken,
        kill: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            if let Err(err) = self.on_ready(inbox.is_empty()) {
                break Err(err);
            }
            tokio::select! {
                biased;
                () = kill.cancelled() => {
                    warn!("raft node killed");
                    return;
                }
                () = shutdown.cancelled() => break Ok(()),
                mail = inbox.recv() => {
                    let Some(mail) = mail else { break Ok(()) };
                    self.handle(mail);
                    for _ in 1..MAX_BATCH {
                        match inbox.try_recv() {
                            Ok(mail) => self.handle(mail),
                            Err(_) => break,
                        }
                    }
                }
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.expire_forwarded();
                }
            }
        };
        match result {
            Ok(()) => info!("raft node stopped"),
            Err(err) => error!(%err, "raft node stopped on a fatal error"),
        }
        // Commands already applied get their reply even on a fatal error.
        self.send_replies();
        self.fail_pending(ProposeError::Stopped);
        if let Err(err) = self.raw.store().flush() {
            warn!(%err, "final flush of raft storage failed");
        }
    }

    fn handle(&mut self, mail: Mail) {
        match mail {
            Mail::Step(mut msg) => {
                if msg.get_msg_type() == MessageType::MsgPropose {
                    drop_stale_proposals(&mut msg, unix_ms());
                    if msg.entries.is_empty() {
                        return;
                    }
                    self.metrics
                        .forwarded_writes
                        .inc_by(msg.entries.len() as u64);
                }
                if let Err(err) = self.raw.step(msg) {
                    debug!(%err, "ignored a raft message");
                }
            }
            Mail::Propose { command, reply } => self.propose(command, reply),
            Mail::ConfChange { change, reply } => self.propose_conf_change(change, reply),
            Mail::Persisted { number, result } => match result {
                Ok(()) => {
                    // A number at or below `persisted` (a snapshot's inline
                    // sync overtook the persister) changes nothing.
                    self.raw.on_persist_ready(number);
                    self.persisted = self.persisted.max(number);
                }
                Err(err) => self.persist_error = Some(err),
            },
            Mail::TransferLeader { to } => {
                if self.raw.raft.state == StateRole::Leader {
                    info!(to, "transferring raft leadership");
                    self.raw.transfer_leader(to);
                }
            }
            Mail::ReadIndex { reply } => {
                let seq = self.next_context();
                self.raw.read_index(self.context(seq));
                self.reads.insert(seq, reply);
            }
        }
    }

    fn next_context(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A request context: this incarnation and a sequence number.
    fn context(&self, seq: u64) -> Vec<u8> {
        let mut context = self.incarnation.to_be_bytes().to_vec();
        context.extend_from_slice(&seq.to_be_bytes());
        context
    }

    /// A proposal's context: [`Self::context`], then when it was proposed
    /// (Unix milliseconds), so that a replica it is passed to can tell a
    /// stale one ([`FORWARD_MAX_AGE`]).
    fn proposal_context(&self, seq: u64) -> Vec<u8> {
        let mut context = self.context(seq);
        context.extend_from_slice(&unix_ms().to_be_bytes());
        context
    }

    fn propose_conf_change(&mut self, change: ConfChange, reply: Reply) {
        if self.raw.raft.state != StateRole::Leader {
            let leader = (self.raw.raft.leader_id != 0).then_some(self.raw.raft.leader_id);
            let _ = reply.send(Err(ProposeError::NotLeader { leader }));
            return;
        }
        let seq = self.next_context();
        match self.raw.propose_conf_change(self.context(seq), change) {
            Ok(()) => {
                self.pending.insert(
                    seq,
                    Pending {
                        reply,
                        forwarded_until: None,
                    },
                );
            }
            Err(err) => {
                let _ = reply.send(Err(ProposeError::Rejected(format!(
                    "raft refused the membership change: {err} (is another change still in progress?)"
                ))));
            }
        }
    }

    /// Proposes on the leader, or passes the proposal to the leader when
    /// this replica follows one (raft-rs sends it as `MsgPropose`; the
    /// entry keeps this replica's context, so its own apply answers).
    fn propose(&mut self, command: Vec<u8>, reply: Reply) {
        let raft = &self.raw.raft;
        let leading = raft.state == StateRole::Leader;
        if !leading && raft.leader_id == 0 {
            let _ = reply.send(Err(ProposeError::NotLeader { leader: None }));
            return;
        }
        let seq = self.next_context();
        match self.raw.propose(self.proposal_context(seq), command) {
            Ok(()) => {
                let forwarded_until =
                    (!leading).then(|| tokio::time::Instant::now() + FORWARD_TIMEOUT);
                self.pending.insert(
                    seq,
                    Pending {
                        reply,
                        forwarded_until,
                    },
                );
                self.metrics.raft_proposals.inc();
            }
            Err(err) => {
                debug!(%err, "raft dropped a proposal");
                let _ = reply.send(Err(ProposeError::Dropped));
            }
        }
    }

    /// Handles every `Ready` raft has, in the order raft-rs documents;
    /// `idle` says the mailbox is empty (nothing else waits for the node).
    fn on_ready(&mut self, idle: bool) -> Result<(), NodeError> {
        if let Some(err) = self.persist_error.take() {
            return Err(err.into());
        }
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            if !ready.messages().is_empty() {
                self.transport.send(ready.take_messages());
            }
            for rs in ready.take_read_states() {
                if let Some(reply) = self.take_read(&rs.request_ctx) {
                    self.ready_reads.push((rs.index, reply));
                }
            }
            let snapshot_installed = !ready.snapshot().is_empty();
            if snapshot_installed {
                self.install_snapshot(ready.snapshot().clone())?;
            }
            let applied_any = self.apply(ready.take_committed_entries())?;

            let store = self.raw.mut_store();
            store.persist(ready.entries(), ready.hs())?;
            let number = ready.number();
            let messages = ready.take_persisted_messages();
            // New entries, a snapshot, or a new term or vote must be durable
            // before the messages that promise them leave; the commit index
            // alone need not be (raft recovers it). Readies are made durable
            // in order, so one queued behind an unfinished sync waits too.
            let must_sync = ready.must_sync() || self.persisting > self.persisted;
            self.raw.advance_append_async(ready);
            // Sync on this thread when the ready installs a snapshot
            // (`advance_apply` below moves raft's applied index to it, which
            // raft-rs allows only once it is persisted), or when nothing else
            // waits: the hand-off to the persister and back costs two thread
            // wake-ups, most of a lone writer's latency. With work waiting
            // (or a sync already running), the persister syncs while the
            // node goes on. An inline sync covers every earlier `Ready`.
            let inline =
                snapshot_installed || (must_sync && idle && self.persisting == self.persisted);
            if inline {
                self.raw.store().flush()?;
                self.raw.on_persist_ready(number);
                self.persisting = number;
                self.persisted = number;
                if !messages.is_empty() {
                    self.transport.send(messages);
                }
            } else if must_sync {
                self.persisting = number;
                self.persister
                    .send(PersistJob { number, messages })
                    .map_err(|_| NodeError::PersisterStopped)?;
            } else {
                if !messages.is_empty() {
                    self.transport.send(messages);
                }
                self.raw.on_persist_ready(number);
            }
            self.raw.advance_apply();

            if applied_any || snapshot_installed {
                self.sm.after_batch();
            }
            self.send_replies();
            self.release_reads();
            self.maybe_snapshot()?;
        }
        self.observe();
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), NodeError> {
        let index = snapshot.get_metadata().index;
        self.sm
            .restore(index, &snapshot.data)
            .map_err(|reason| NodeError::Restore { index, reason })?;
        self.raw.mut_store().apply_snapshot(snapshot)?;
        self.applied = index;
        self.snapshot_index = index;
        self.metrics.raft_snapshots.inc();
        info!(index, "installed a snapshot from the leader");
        Ok(())
    }

    /// Applies committed entries; returns whether any was new.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<bool, NodeError> {
        let mut any = false;
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            self.applied = entry.index;
            any = true;
            let index = entry.index;
            let conf_state = match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    self.apply_command(&entry);
                    continue;
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|source| NodeError::ConfChange { index, source })?;
                    self.raw.apply_conf_change(&cc)
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|source| NodeError::ConfChange { index, source })?;
                    self.raw.apply_conf_change(&cc)
                }
            };
            let reply = self.take_pending(&entry.context);
            match conf_state {
                Ok(cs) => {
                    info!(index, voters = ?cs.voters, learners = ?cs.learners, "applied a configuration change");
                    self.raw.mut_store().set_conf_state(cs)?;
                    // A snapshot sent from now on must name the new members
                    // (a joining replica refuses one that does not).
                    self.snapshot_now = true;
                    if let Some(reply) = reply {
                        self.replies.push((reply, Ok(Vec::new())));
                    }
                }
                // Every replica refuses the same change the same way.
                Err(err) => {
                    warn!(index, %err, "refused a configuration change");
                    if let Some(reply) = reply {
                        self.replies
                            .push((reply, Err(ProposeError::Rejected(err.to_string()))));
                    }
                }
            }
        }
        Ok(any)
    }

    fn apply_command(&mut self, entry: &Entry) {
        // A new leader's empty entry carries neither command nor context.
        if entry.data.is_empty() && entry.context.is_empty() {
            return;
        }
        let result = self.sm.apply(entry.index, &entry.data);
        if let Some(reply) = self.take_pending(&entry.context) {
            self.replies
                .push((reply, result.map_err(ProposeError::Rejected)));
        } else if let Err(reason) = result {
            debug!(index = entry.index, %reason, "state machine rejected a command");
        }
    }

    fn take_read(&mut self, context: &[u8]) -> Option<ReadReply> {
        let seq = self.own_seq(context)?;
        self.reads.remove(&seq)
    }

    /// Answers confirmed reads whose index has been applied.
    fn release_reads(&mut self) {
        let applied = self.applied;
        let (done, waiting): (Vec<_>, Vec<_>) =
            self.ready_reads.drain(..).partition(|(i, _)| *i <= applied);
        self.ready_reads = waiting;
        for (index, reply) in done {
            let _ = reply.send(Ok(index));
        }
    }

    /// The sequence number of a context this incarnation made.
    fn own_seq(&self, context: &[u8]) -> Option<u64> {
        let (incarnation, rest) = context.split_at_checked(8)?;
        if incarnation != self.incarnation.to_be_bytes() {
            return None;
        }
        Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
    }

    fn take_pending(&mut self, context: &[u8]) -> Option<Reply> {
        let seq = self.own_seq(context)?;
        self.pending.remove(&seq).map(|p| p.reply)
    }

    /// Gives up on proposals passed to the leader that did not come back
    /// in time (lost on the way, or dropped by a leader about to step down).
    fn expire_forwarded(&mut self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.forwarded_until.is_some_and(|t| t <= now))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(p) = self.pending.remove(&seq) {
                let _ = p.reply.send(Err(ProposeError::Dropped));
            }
        }
    }

    /// Snapshots the state machine every `snapshot_every` entries and
    /// compacts the log up to half that far behind the snapshot.
    fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        let due =
            self.snapshot_every != 0 && self.applied >= self.snapshot_index + self.snapshot_every;
        if !due && !std::mem::take(&mut self.snapshot_now) {
            return Ok(());
        }
        self.snapshot_now = false;
        let index = self.applied;
        let data = self.sm.snapshot();
        let bytes = data.len();
        let store = self.raw.mut_store();
        let conf_state = store.conf_state().clone();
        store.create_snapshot(index, conf_state, data)?;
        // Keep a tail of the log: a follower a little behind catches up
        // from it instead of needing the whole snapshot.
        store.compact(index.saturating_sub(self.snapshot_every / 2))?;
        self.snapshot_index = index;
        self.metrics.raft_snapshots.inc();
        info!(index, bytes, "took a snapshot and compacted the raft log");
        Ok(())
    }

    /// Publishes status and metrics; drops pending proposals when the term
    /// changes or this replica stops leading.
    fn observe(&mut self) {
        let raft = &self.raw.raft;
        let is_leader = raft.state == StateRole::Leader;
        let conf = raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        let mut progress: Vec<PeerProgress> = if is_leader {
            raft.prs()
                .iter()
                .map(|(id, pr)| PeerProgress {
                    id: *id,
                    matched: pr.matched,
                    next: pr.next_idx,
                })
                .collect()
        } else {
            Vec::new()
        };
        progress.sort_by_key(|p| p.id);
        let status = RaftStatus {
            id: self.id,
            leader: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.applied,
            role: format!("{:?}", raft.state),
            voters,
            learners,
            progress,
        };
        if status.leader != self.leader {
            info!(
                leader = status.leader,
                term = status.term,
                "raft leader changed"
            );
            if status.leader != 0 {
                self.metrics.raft_leader_changes.inc();
            }
            self.leader = status.leader;
        }
        if status.term != self.term {
            // Unconfirmed reads may never be answered in a new term.
            for (_, reply) in self.reads.drain() {
                let _ = reply.send(Err(ProposeError::Dropped));
            }
        }
        // A new term, or a leader stepping down, may drop what is pending;
        // the proposers retry (commands are idempotent).
        let stepped_down = self.leading && !is_leader;
        self.leading = is_leader;
        if status.term != self.term || stepped_down {
            self.term = status.term;
            self.fail_pending(ProposeError::Dropped);
        }
        self.metrics.raft_term.set(status.term);
        self.metrics.raft_commit_index.set(status.commit);
        self.metrics.raft_applied_index.set(status.applied);
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }

    fn send_replies(&mut self) {
        for (reply, result) in self.replies.drain(..) {
            let _ = reply.send(result);
        }
    }

    fn fail_pending(&mut self, err: ProposeError) {
        if !self.pending.is_empty() {
            debug!(count = self.pending.len(), %err, "failing pending proposals");
        }
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Err(err.clone()));
        }
    }
}

/// Milliseconds since the Unix epoch, by this host's clock.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Removes from a passed-on proposal (`MsgPropose`) the entries stamped
/// more than [`FORWARD_MAX_AGE`] before `now` (see there). Entries without
/// a stamp (from a replica of an earlier version) are kept.
fn drop_stale_proposals(msg: &mut Message, now: u64) {
    let max_age = FORWARD_MAX_AGE.as_millis() as u64;
    let mut oldest = 0;
    let before = msg.entries.len();
    msg.mut_entries().retain(|e| {
        let Some(stamp) = e.context.get(16..24).and_then(|b| b.try_into().ok()) else {
            return true;
        };
        let age = now.saturating_sub(u64::from_be_bytes(stamp));
        oldest = oldest.max(age);
        age <= max_age
    });
    let dropped = before - msg.entries.len();
    if dropped > 0 {
        warn!(
            from = msg.from,
            dropped,
            age_ms = oldest,
            "dropped writes passed on by another replica: older than {FORWARD_MAX_AGE:?}, they were held up (a partition) and their proposer has given up on them; if this repeats without partitions, the replicas' clocks disagree"
        );
    }
}

/// A slog drain that forwards raft-rs's log records to tracing (target `raft`).
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::Level::ERROR,
            slog::Level::Warning => tracing::Level::WARN,
            slog::Level::Info => tracing::Level::INFO,
            slog::Level::Debug => tracing::Level::DEBUG,
            slog::Level::Trace => tracing::Level::TRACE,
        };
        if level > tracing::level_filters::LevelFilter::current() {
            return Ok(());
        }
        let mut fields = KvText::default();
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        let _ = slog::KV::serialize(values, record, &mut fields);
        let (msg, kv) = (record.msg(), fields.0.trim_start());
        match level {
            tracing::Level::ERROR => tracing::error!(target: "raft", kv, "{msg}"),
            tracing::Level::WARN => tracing::warn!(target: "raft", kv, "{msg}"),
            tracing::Level::INFO => tracing::info!(target: "raft", kv, "{msg}"),
            tracing::Level::DEBUG => tracing::debug!(target: "raft", kv, "{msg}"),
            tracing::Level::TRACE => tracing::trace!(target: "raft", kv, "{msg}"),
        }
        Ok(())
    }
}

/// slog key-values rendered as ` key=value` pairs.
#[derive(Default)]
struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::storage::tests::{tempdir, TempDir};
    use std::sync::Mutex;
    use std::time::Instant;

    /// Appends strings; commands starting with `bad` are rejected. Replies
    /// with the list's length after the append.
    #[derive(Default)]
    struct Strings {
        items: Vec<String>,
        /// What `after_batch` publishes, for the test to read.
        view: Arc<Mutex<Vec<String>>>,
    }

    impl StateMachine for Strings {
        fn apply(&mut self, _index: u64, command: &[u8]) -> Result<Vec<u8>, String> {
            let text = String::from_utf8(command.to_vec()).map_err(|e| e.to_string())?;
            if text.starts_with("bad") {
                return Err(format!("refusing {text:?}"));
            }
            self.items.push(text);
            Ok(self.items.len().to_string().into_bytes())
        }

        fn after_batch(&mut self) {
            *self.view.lock().unwrap() = self.items.clone();
        }

        fn snapshot(&self) -> Vec<u8> {
            serde_json::to_vec(&self.items).unwrap()
        }

        fn restore(&mut self, _index: u64, data: &[u8]) -> Result<(), String> {
            self.items = serde_json::from_slice(data).map_err(|e| e.to_string())?;
            Ok(())
        }
    }

    struct Running {
        handle: NodeHandle,
        task: JoinHandle<()>,
        shutdown: CancellationToken,
        view: Arc<Mutex<Vec<String>>>,
        metrics: Arc<Metrics>,
    }

    impl Running {
        fn items(&self) -> Vec<String> {
            self.view.lock().unwrap().clone()
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.unwrap();
        }
    }

    fn config(dir: &TempDir, snapshot_every: u64) -> NodeConfig {
        NodeConfig {
            tick: Duration::from_millis(10),
            snapshot_every,
            ..NodeConfig::single(dir.path().to_path_buf())
        }
    }

    fn start(config: NodeConfig) -> Running {
        start_on(config, Arc::new(NoPeers))
    }

    fn start_on(config: NodeConfig, transport: Arc<dyn Transport>) -> Running {
        // Captured per test; shown when a test fails.
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let sm = Strings::default();
        let view = sm.view.clone();
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let (handle, task) =
            spawn(config, sm, transport, metrics.clone(), shutdown.clone()).unwrap();
        Running {
            handle,
            task,
            shutdown,
            view,
            metrics,
        }
    }

    async fn propose(node: &NodeHandle, text: &str) -> Result<String, ProposeError> {
        let reply = node.propose(text.as_bytes().to_vec()).await?;
        Ok(String::from_utf8(reply).unwrap())
    }

    async fn wait_for_leader(node: &NodeHandle) -> RaftStatus {
        let mut status = node.status();
        let status =
            tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.leader != 0))
                .await
                .expect("a leader within 5 s")
                .unwrap();
        status.clone()
    }

    #[tokio::test]
    async fn proposal_returns_the_state_machine_reply() {
        let dir = tempdir();
        let node = start(config(&dir, 10_000));
        assert_eq!(propose(&node.handle, "a").await.unwrap(), "1");
        assert_eq!(propose(&node.handle, "b").await.unwrap(), "2");
        assert_eq!(node.items(), ["a", "b"]);
        assert_eq!(node.metrics.raft_proposals.get(), 2);
        node.stop().await;
    }

    #[tokio::test]
    async fn single_voter_elects_itself_at_once() {
        let dir = tempdir();
        let node = start(config(&dir, 10_000));
        let status = wait_for_leader(&node.handle).await;
        assert_eq!(status.id, 1);
        assert_eq!(status.leader, 1);
        assert_eq!(status.role, "Leader");
        assert!(status.term >= 1);
        assert_eq!(node.metrics.raft_leader_changes.get(), 1);
        assert_eq!(node.metrics.raft_term.get(), status.term);
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_proposals_are_all_applied_in_reply_order() {
        let dir = tempdir();
        let node = start(config(&dir, 10_000));
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let handle = node.handle.clone();
                tokio::spawn(async move {
                    let text = format!("item-{i}");
                    let reply = propose(&handle, &text).await.unwrap();
                    (text, reply.parse::<usize>().unwrap())
                })
            })
            .collect();
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await.unwrap());
        }
        let items = node.items();
        assert_eq!(items.len(), 1000);
        for (text, position) in replies {
            assert_eq!(
                items[position - 1],
                text,
                "reply names the slot the command took"
            );
        }
        let status = node.handle.status().borrow().clone();
        assert!(status.applied >= 1000 && status.commit >= status.applied);
        node.stop().await;
    }

    #[tokio::test]
    async fn rejected_command_changes_nothing() {
        let dir = tempdir();
        let node = start(config(&dir, 10_000));
        propose(&node.handle, "a").await.unwrap();
        let err = propose(&node.handle, "bad one").await.unwrap_err();
        assert!(
            matches!(err, ProposeError::Rejected(ref r) if r.contains("bad one")),
            "{err:?}"
        );
        assert_eq!(node.items(), ["a"]);
        assert_eq!(propose(&node.handle, "b").await.unwrap(), "2");
        node.stop().await;
    }

    #[tokio::test]
    async fn restart_keeps_state() {
        let dir = tempdir();
        let node = start(config(&dir, 10_000));
        for i in 0..20 {
            propose(&node.handle, &format!("v{i}")).await.unwrap();
        }
        node.stop().await;

        let node = start(config(&dir, 10_000));
        assert_eq!(propose(&node.handle, "after").await.unwrap(), "21");
        let items = node.items();
        assert_eq!(items.first().map(String::as_str), Some("v0"));
        assert_eq!(items.last().map(String::as_str), Some("after"));
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_after_snapshot_and_compaction_keeps_state() {
        let dir = tempdir();
        let node = start(config(&dir, 50));
        for i in 0..120 {
            propose(&node.handle, &format!("v{i}")).await.unwrap();
        }
        assert!(node.metrics.raft_snapshots.get() >= 2);
        // Abort rather than shut down: no final flush, as after a crash.
        node.task.abort();
        let _ = node.task.await;

        {
            let storage = SledStorage::open(dir.path().join("raft")).unwrap();
            let snapshot = storage.snapshot_data().unwrap().unwrap();
            assert!(snapshot.get_metadata().index >= 100);
            assert!(
                raft::Storage::first_index(&storage).unwrap() > 50,
                "log was compacted"
            );
        }

        let node = start(config(&dir, 50));
        assert_eq!(propose(&node.handle, "after").await.unwrap(), "121");
        let items = node.items();
        let expected: Vec<String> = (0..120)
            .map(|i| format!("v{i}"))
            .chain(["after".to_string()])
            .collect();
        assert_eq!(items, expected);
        node.stop().await;
    }

    /// An in-memory network between nodes of one test.
    #[derive(Default)]
    struct MemNet {
        nodes: Mutex<HashMap<u64, NodeHandle>>,
        /// Loses every proposal a follower passes to the leader.
        drop_proposals: std::sync::atomic::AtomicBool,
        /// Holds every proposal a follower passes to the leader (a
        /// partition), until `release` delivers them (the heal).
        hold_proposals: std::sync::atomic::AtomicBool,
        held: Mutex<Vec<Message>>,
    }

    impl MemNet {
        fn release(&self) {
            let held = std::mem::take(&mut *self.held.lock().unwrap());
            self.hold_proposals
                .store(false, std::sync::atomic::Ordering::Relaxed);
            self.send(held);
        }
    }

    impl Transport for MemNet {
        fn send(&self, msgs: Vec<Message>) {
            let nodes = self.nodes.lock().unwrap();
            let drop_proposals = self
                .drop_proposals
                .load(std::sync::atomic::Ordering::Relaxed);
            for msg in msgs {
                if drop_proposals && msg.get_msg_type() == MessageType::MsgPropose {
                    continue;
                }
                if msg.get_msg_type() == MessageType::MsgPropose
                    && self
                        .hold_proposals
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    self.held.lock().unwrap().push(msg);
                    continue;
                }
                if let Some(node) = nodes.get(&msg.to) {
                    node.step(msg);
                }
            }
        }
    }

    /// Three nodes on a [`MemNet`], with elections in 250-500 ms (no leader
    /// change on a loaded machine); returns them with the leader's ID.
    async fn three(net: &Arc<MemNet>, dirs: &[TempDir; 3]) -> (HashMap<u64, Running>, u64) {
        let mut nodes = HashMap::new();
        for id in 1..=3u64 {
            let node = start_on(
                NodeConfig {
                    id,
                    voters: vec![1, 2, 3],
                    tick: Duration::from_millis(50),
                    ..config(&dirs[id as usize - 1], 10_000)
                },
                net.clone(),
            );
            net.nodes.lock().unwrap().insert(id, node.handle.clone());
            nodes.insert(id, node);
        }
        let leader = wait_for_leader(&nodes[&1].handle).await.leader;
        // Every node knows the leader before the test proposes anywhere.
        for node in nodes.values() {
            let mut status = node.handle.status();
            tokio::time::timeout(
                Duration::from_secs(5),
                status.wait_for(|s| s.leader == leader),
            )
            .await
            .expect("every node follows the leader")
            .unwrap();
        }
        (nodes, leader)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follower_proposal_goes_through_the_leader_and_replies_once_applied_here() {
        let net = Arc::new(MemNet::default());
        let dirs = [tempdir(), tempdir(), tempdir()];
        let (nodes, leader) = three(&net, &dirs).await;
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        assert_eq!(propose(&nodes[&follower].handle, "a").await.unwrap(), "1");
        // The reply came after the follower applied it, not just the leader.
        assert_eq!(nodes[&follower].items(), ["a"]);
        assert_eq!(propose(&nodes[&leader].handle, "b").await.unwrap(), "2");
        let err = propose(&nodes[&follower].handle, "bad x")
            .await
            .unwrap_err();
        assert!(matches!(err, ProposeError::Rejected(_)), "{err:?}");
        assert_eq!(nodes[&leader].metrics.forwarded_writes.get(), 2);
        for (_, node) in nodes {
            node.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follower_proposal_lost_on_the_way_fails_instead_of_hanging() {
        let net = Arc::new(MemNet::default());
        let dirs = [tempdir(), tempdir(), tempdir()];
        let (nodes, leader) = three(&net, &dirs).await;
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        net.drop_proposals
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let err = propose(&nodes[&follower].handle, "lost").await.unwrap_err();
        assert_eq!(err, ProposeError::Dropped);
        assert!(started.elapsed() >= FORWARD_TIMEOUT);
        assert!(nodes[&leader].items().is_empty());
        net.drop_proposals
            .store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            propose(&nodes[&follower].handle, "kept").await.unwrap(),
            "1"
        );
        for (_, node) in nodes {
            node.stop().await;
        }
    }

    /// A partition holds up a proposal a follower passed to the leader; the
    /// follower gives up on it (its client is told the write failed), a
    /// newer write commits, then the partition heals and the held message
    /// arrives: it must not commit the old write over the newer one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proposal_held_up_past_its_proposers_timeout_is_not_applied_later() {
        let net = Arc::new(MemNet::default());
        let dirs = [tempdir(), tempdir(), tempdir()];
        let (nodes, leader) = three(&net, &dirs).await;
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        net.hold_proposals
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let err = propose(&nodes[&follower].handle, "stale")
            .await
            .unwrap_err();
        assert_eq!(err, ProposeError::Dropped);
        assert_eq!(net.held.lock().unwrap().len(), 1, "the proposal was held");
        assert_eq!(propose(&nodes[&leader].handle, "newer").await.unwrap(), "1");
        net.release();
        assert_eq!(
            propose(&nodes[&follower].handle, "after").await.unwrap(),
            "2"
        );
        assert_eq!(nodes[&leader].items(), ["newer", "after"]);
        assert_eq!(nodes[&follower].items(), ["newer", "after"]);
        for (_, node) in nodes {
            node.stop().await;
        }
    }

    #[test]
    fn stale_passed_on_entries_are_dropped_and_unstamped_ones_kept() {
        let entry = |context: Vec<u8>| Entry {
            context: context.into(),
            ..Default::default()
        };
        let stamped = |ms: u64| {
            let mut c = vec![0u8; 16];
            c.extend_from_slice(&ms.to_be_bytes());
            entry(c)
        };
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgPropose);
        msg.set_entries(
            vec![
                stamped(10_000),
                stamped(9_500),
                stamped(8_999),
                entry(vec![0u8; 16]),
                stamped(10_300),
            ]
            .into(),
        );
        drop_stale_proposals(&mut msg, 10_000);
        let kept: Vec<usize> = msg.entries.iter().map(|e| e.context.len()).collect();
        assert_eq!(kept, [24, 24, 16, 24], "only the entry 1,001 ms old goes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follower_down_across_a_compaction_catches_up_by_snapshot() {
        let net = Arc::new(MemNet::default());
        let dirs = [tempdir(), tempdir(), tempdir()];
        let config = |id: u64| NodeConfig {
            id,
            voters: vec![1, 2, 3],
            // Elections in 250-500 ms: no leader change on a loaded machine.
            tick: Duration::from_millis(50),
            ..config(&dirs[id as usize - 1], 20)
        };
        let mut nodes: HashMap<u64, Running> = HashMap::new();
        for id in 1..=3 {
            let node = start_on(config(id), net.clone());
            net.nodes.lock().unwrap().insert(id, node.handle.clone());
            nodes.insert(id, node);
        }
        let leader = wait_for_leader(&nodes[&1].handle).await.leader;
        let down = (1..=3).find(|id| *id != leader).unwrap();
        propose(&nodes[&leader].handle, "v0").await.unwrap();

        net.nodes.lock().unwrap().remove(&down);
        nodes.remove(&down).unwrap().stop().await;
        for i in 1..100 {
            propose(&nodes[&leader].handle, &format!("v{i}"))
                .await
                .unwrap();
        }
        let leader_status = nodes[&leader].handle.status().borrow().clone();
        assert!(leader_status.applied >= 100);

        // Back up: the leader's log no longer has what it missed, so it
        // must install a snapshot, then follow the log again.
        let node = start_on(config(down), net.clone());
        net.nodes.lock().unwrap().insert(down, node.handle.clone());
        let expected: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.items() != expected {
            assert!(
                Instant::now() < deadline,
                "the restarted follower did not catch up: {} items",
                node.items().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            node.metrics.raft_snapshots.get() >= 1,
            "installed a snapshot"
        );
        propose(&nodes[&leader].handle, "after").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.items().last().map(String::as_str) != Some("after") {
            assert!(Instant::now() < deadline, "the follower stopped following");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node.stop().await;
        for (_, node) in nodes {
            node.stop().await;
        }
    }

    #[tokio::test]
    async fn follower_without_leader_refuses_proposals() {
        let dir = tempdir();
        let node = start(NodeConfig {
            voters: vec![1, 2, 3],
            ..config(&dir, 10_000)
        });
        let err = propose(&node.handle, "a").await.unwrap_err();
        assert_eq!(err, ProposeError::NotLeader { leader: None });
        assert_eq!(node.handle.status().borrow().leader, 0);
        node.stop().await;
    }

    #[tokio::test]
    async fn stopped_node_reports_stopped() {
        let dir = tempdir();
        let node = start(config(&dir, 10_000));
        let handle = node.handle.clone();
        node.stop().await;
        assert_eq!(
            propose(&handle, "a").await.unwrap_err(),
            ProposeError::Stopped
        );
    }

    const CRASH_DIR: &str = "SWITCHYARD_TEST_CRASH_DIR";

    /// Child half of `acknowledged_writes_survive_kill_9`: proposes until killed.
    #[tokio::test]
    #[ignore = "run by acknowledged_writes_survive_kill_9 in a child process"]
    async fn crash_child() {
        let Ok(dir) = std::env::var(CRASH_DIR) else {
            return;
        };
        let node = start(NodeConfig {
            tick: Duration::from_millis(10),
            snapshot_every: 50,
            ..NodeConfig::single(dir.into())
        });
        for i in 0.. {
            propose(&node.handle, &format!("v{i}")).await.unwrap();
            println!("ack {i}");
        }
    }

    #[test]
    fn acknowledged_writes_survive_kill_9() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let dir = tempdir();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "hub::node::tests::crash_child"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CRASH_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = None;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            if let Some(i) = line.unwrap().strip_prefix("ack ") {
                let i: usize = i.trim().parse().unwrap();
                acked = Some(i);
                if i >= 180 {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL: no graceful shutdown, no final flush.
        child.wait().unwrap();
        let acked = acked.expect("the child acknowledged writes");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let node = start(config(&dir, 50));
            propose(&node.handle, "after").await.unwrap();
            let items = node.items();
            let (last, before) = items.split_last().unwrap();
            assert_eq!(last, "after");
            assert!(before.len() > acked, "{} items, ack {acked}", before.len());
            for (i, item) in before.iter().enumerate() {
                assert_eq!(item, &format!("v{i}"));
            }
            node.stop().await;
        });
    }
}
