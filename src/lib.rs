//! switchyard: a multi-cluster global traffic manager for Kubernetes.
//!
//! # Layout
//!
//! - [`model`]: domain types and their Kubernetes YAML/JSON forms.
//! - [`backends`]: the pure weighted backend computation.
//! - [`hub`]: the raft-replicated state machine on sled, and its gRPC APIs.
//! - [`dns`]: the ClusterSet DNS authority (its own UDP/TCP answer path).
//! - [`gateway`]: a cluster's east-west gateway (tokio + rustls), programmed by the hub.
//! - [`identity`]: the ClusterSet CA, certificates, bootstrap tokens, TLS.
//! - [`agent`]: a cluster's agent: sources (file) and the export stream.
//! - [`playground`]: `switchyard up`, a whole ClusterSet in one process.
//! - [`cli`]: client subcommands (apply, get, weights, resolve).
//! - [`drill`]: failover drills with synthetic traffic and a measured report.
//! - [`metrics`]: Prometheus metrics.
#![forbid(unsafe_code)]

pub mod agent;
pub mod backends;
pub mod cli;
pub mod dns;
pub mod drill;
pub mod gateway;
pub mod hub;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod playground;
pub mod wire;

/// A client for etcd's KV.Put (`proto/etcd`), for the write benchmark.
pub mod etcd {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

/// Generated gRPC types and services of `proto/switchyard/v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("switchyard.v1");
}
