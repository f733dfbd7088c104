//! The raft node: one task owning a raft-rs `RawNode` on sled storage.
//!
//! INTERFACE CONTRACT (implementation pending): see `StateMachine`,
//! `NodeConfig`, `NodeHandle`, `spawn`.

use std::path::PathBuf;
use std::time::Duration;

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
    pub election_tick: usize,
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
            election_tick: 10,
            heartbeat_tick: 3,
            snapshot_every: 10_000,
        }
    }
}

// ---- TEMPORARY STUB (replaced by the raft branch) ----
use crate::metrics::Metrics;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a proposal did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("{0}")]
    Rejected(String),
    #[error("proposal dropped")]
    Dropped,
    #[error("node stopped")]
    Stopped,
}
/// Node start errors.
#[derive(Debug, thiserror::Error)]
#[error("node: {0}")]
pub struct NodeError(String);
/// Raft status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RaftStatus {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub role: String,
}
/// Sends raft messages to peers.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, msgs: Vec<raft::eraftpb::Message>);
}
/// No peers.
pub struct NoPeers;
impl Transport for NoPeers {
    fn send(&self, _msgs: Vec<raft::eraftpb::Message>) {}
}
/// Handle.
#[derive(Clone)]
pub struct NodeHandle {
    status: tokio::sync::watch::Receiver<RaftStatus>,
}
impl NodeHandle {
    pub async fn propose(&self, _command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        Err(ProposeError::Stopped)
    }
    pub fn status(&self) -> tokio::sync::watch::Receiver<RaftStatus> {
        self.status.clone()
    }
}
pub fn spawn<S: StateMachine>(
    _config: NodeConfig,
    _sm: S,
    _transport: Arc<dyn Transport>,
    _metrics: Arc<Metrics>,
    _shutdown: CancellationToken,
) -> Result<(NodeHandle, tokio::task::JoinHandle<()>), NodeError> {
    Err(NodeError("stub".into()))
}
