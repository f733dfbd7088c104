//! The hub: raft node, sled storage, state machine and gRPC services.
//!
//! - `node`: the raft-rs `RawNode` task; `storage`: its sled log; `wal`: the
//!   write-ahead journal that makes each `Ready` durable with one fsync.
//! - `state`: commands and the replicated state; `machine`: its adapter to the node.
//! - `api`: gRPC agent and admin services; `read`: views for `get`;
//!   `imports`: what a cluster imports, streamed to its agent; `gateways`:
//!   what a cluster's east-west gateway routes, streamed to it.
//! - `lease`: cluster leases on the leader; `app`: wiring a running hub;
//!   `authority`: who may call what, and the certificates agents get;
//!   `peer`: the raft transport and peer service; `trust`: the peer port's
//!   mutual TLS (the ClusterSet CA's replica certificates).

pub mod api;
pub mod app;
pub mod authority;
pub mod gateway_api;
pub mod gateways;
pub mod imports;
pub mod lease;
pub mod machine;
pub mod node;
pub mod peer;
pub mod read;
pub mod replica;
pub mod state;
pub mod storage;
pub mod trust;
pub mod wal;
