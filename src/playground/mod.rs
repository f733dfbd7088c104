//! `switchyard up`: a whole ClusterSet in one process: a single-voter hub
//! (the same raft/sled code a replicated hub runs), one file-backed agent
//! per cluster talking gRPC to it, and a real HTTP server behind every
//! endpoint address.
//!
//! - `config`: the clusterset description (built in, or `--config FILE`).
//! - `backend`: the small HTTP servers that stand in for pods.
//! - `up`: starts everything and stops it in order.
//! - `control`: the socket through which drills stop and start its parts.

pub mod backend;
pub mod config;
pub mod control;
pub mod up;

pub use config::ClusterSetConfig;
pub use up::{up, UpOptions};
