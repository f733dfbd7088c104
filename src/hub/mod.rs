//! The hub: raft node, sled storage, state machine and gRPC services.

pub mod node;
pub mod storage;
