//! A cluster's agent: watches a source of the cluster's services (the
//! Kubernetes API, or a YAML file in the playground) and streams them to
//! the hub.
//!
//! - `credentials`: joining with a token, storing and renewing the certificate.
//! - `k8s`: the Kubernetes source (kube-rs reflectors, MCS conditions).
//! - `source`: the cluster file format and its parsing.
//! - `watch`: polls the file and publishes the desired exports on change.
//! - `stream`: registration, lease renewal and the export stream.

pub mod credentials;
pub mod k8s;
pub mod source;
pub mod stream;
pub mod watch;

pub use source::{ClusterFile, ServiceEntry, SourceError};
pub use stream::{run, AgentConfig};
