//! The hub: raft node, sled storage, state machine and gRPC services.

pub mod api;
pub mod app;
pub mod lease;
pub mod machine;
pub mod node;
pub mod read;
pub mod state;
