//! A cluster's agent: watches a source of the cluster's services (a YAML
//! file here; kube-rs watchers later) and streams them to the hub.
//!
//! - `source`: the cluster file format and its parsing.
//! - `watch`: polls the file and publishes the desired exports on change.
//! - `stream`: registration, lease renewal and the export stream.

pub mod source;
pub mod stream;
pub mod watch;

pub use source::{ClusterFile, ServiceEntry, SourceError};
pub use stream::{run, AgentConfig};
