//! ClusterSet identities: the ClusterSet CA, the certificates it issues to
//! hub replicas, cluster agents and administrators, one-time bootstrap
//! tokens, and reading the identity a TLS peer presents.
//!
//! An identity lives in a certificate's URI subject alternative name, in the
//! SPIFFE form `spiffe://switchyard/cluster/<id>` (a cluster's agent),
//! `spiffe://switchyard/cluster/<id>/gateway` (its east-west gateway),
//! `spiffe://switchyard/admin` (an administrator),
//! `spiffe://switchyard/hub` (a hub replica's API server certificate) and
//! `spiffe://switchyard/hub/replica/<id>` (a hub replica on its raft peer
//! links, both ends of a mutual TLS connection).
//!
//! - `ca`: creating or loading the CA, issuing and signing certificates.
//! - `token`: bootstrap tokens (format, hashing).
//! - `tls`: the TLS settings of the hub's server and of its clients.

pub mod ca;
pub mod tls;
pub mod token;

pub use ca::{Ca, CaError, Issued};

use std::fmt;

/// The URI prefix of every identity.
pub const TRUST_DOMAIN: &str = "spiffe://switchyard/";

/// A DNS name every gateway certificate carries, so that a gateway can
/// check a peer gateway's certificate chain (its identity is then checked
/// on its own): the TLS server name a connection uses is the service's.
pub const GATEWAY_SERVER_NAME: &str = "gateway.switchyard.internal";

/// The DNS name every replica certificate carries and every peer link
/// checks: peers are dialled by whatever address `--peers` gives (an IP,
/// a StatefulSet pod name), and only the CA's replica certificates hold
/// this name. The caller's replica ID is then read from its URI.
pub const REPLICA_SERVER_NAME: &str = "replica.switchyard.internal";

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A member cluster's agent.
    Cluster(String),
    /// A member cluster's east-west gateway.
    Gateway(String),
    /// An administrator: may call the admin API.
    Admin,
    /// A hub replica's API server.
    Hub,
    /// Hub replica N on the raft peer port.
    Replica(u64),
}

impl Identity {
    /// The identity's URI.
    pub fn uri(&self) -> String {
        match self {
            Identity::Cluster(id) => format!("{TRUST_DOMAIN}cluster/{id}"),
            Identity::Gateway(id) => format!("{TRUST_DOMAIN}cluster/{id}/gateway"),
            Identity::Admin => format!("{TRUST_DOMAIN}admin"),
            Identity::Hub => format!("{TRUST_DOMAIN}hub"),
            Identity::Replica(id) => format!("{TRUST_DOMAIN}hub/replica/{id}"),
        }
    }

    /// Reads an identity URI; `None` for anything else.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(TRUST_DOMAIN)?;
        match rest {
            "admin" => Some(Identity::Admin),
            "hub" => Some(Identity::Hub),
            _ if rest.starts_with("hub/replica/") => {
                let id = rest.strip_prefix("hub/replica/")?;
                // Canonical decimal only: one URI per replica.
                let n: u64 = id.parse().ok().filter(|n| *n != 0)?;
                (n.to_string() == id).then_some(Identity::Replica(n))
            }
            _ => {
                let rest = rest.strip_prefix("cluster/")?;
                let (id, gateway) = match rest.strip_suffix("/gateway") {
                    Some(id) => (id, true),
                    None => (rest, false),
                };
                crate::model::validate_cluster_id(id).ok()?;
                Some(if gateway {
                    Identity::Gateway(id.to_string())
                } else {
                    Identity::Cluster(id.to_string())
                })
            }
        }
    }

    /// The identity a DER certificate carries (its first identity URI).
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Identity::from_uri(uri),
            _ => None,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Cluster(id) => write!(f, "cluster {id}"),
            Identity::Gateway(id) => write!(f, "the gateway of cluster {id}"),
            Identity::Admin => f.write_str("admin"),
            Identity::Hub => f.write_str("hub"),
            Identity::Replica(id) => write!(f, "hub replica {id}"),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip_and_strangers_are_none() {
        for id in [
            Identity::Cluster("us-east-1".into()),
            Identity::Gateway("us-east-1".into()),
            Identity::Admin,
            Identity::Hub,
            Identity::Replica(3),
        ] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        for odd in [
            "hub/replica/0",
            "hub/replica/03",
            "hub/replica/x",
            "hub/replica/",
        ] {
            assert_eq!(Identity::from_uri(&format!("{TRUST_DOMAIN}{odd}")), None);
        }
        assert_eq!(Identity::from_uri("spiffe://other/admin"), None);
        assert_eq!(
            Identity::from_uri("spiffe://switchyard/cluster/Not_Valid"),
            None
        );
        assert_eq!(Identity::from_uri("spiffe://switchyard/something"), None);
    }
}
