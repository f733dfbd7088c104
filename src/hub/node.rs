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
