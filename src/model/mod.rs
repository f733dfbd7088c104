//! Domain types of the ClusterSet and their Kubernetes (YAML/JSON) forms.
//!
//! `key` names things, `cluster` and `export` are what agents report,
//! `resources` holds the user-facing Kubernetes objects (ServiceImport,
//! MultiClusterService, ServiceExport) and `manifest` parses documents.

pub mod cluster;
pub mod export;
#[cfg(test)]
pub mod fixtures;
pub mod key;
pub mod manifest;
pub mod meta;
pub mod resources;

pub use cluster::{Cluster, ClusterSpec, ClusterState};
pub use export::{Endpoint, Export, Port, ServiceType, SessionAffinity};
pub use key::{host_port, validate_cluster_id, ClusterId, KeyError, ServiceKey, ServiceMap};
pub use meta::{Condition, ObjectMeta};
pub use resources::{ClusterBackendRef, MultiClusterService, ServiceExport, ServiceImport};
