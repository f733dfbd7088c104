//! Who may call what on the hub API, when it runs with TLS: an agent only
//! for its own cluster (the identity in its certificate), an administrator
//! for the admin API; joining needs only a bootstrap token. Also signs the
//! certificates agents get when they join or renew.

use crate::identity::{ca, Ca, Identity};
use std::time::Duration;
use tonic::Status;

/// The hub's authority: the ClusterSet CA and its rules.
pub struct Authority {
    ca: Ca,
    /// Lifetime of the certificates agents get.
    pub agent_cert_ttl: Duration,
}

impl Authority {
    /// An authority over `ca`.
    pub fn new(ca: Ca, agent_cert_ttl: Duration) -> Self {
        Self { ca, agent_cert_ttl }
    }

    /// The CA certificate.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The CA itself, for issuing the hub's own certificates.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The caller must speak for `cluster`.
    pub fn check_cluster(caller: Option<&Identity>, cluster: &str) -> Result<(), Status> {
        match caller {
            Some(Identity::Cluster(id)) if id == cluster => Ok(()),
            Some(Identity::Cluster(id)) => Err(Status::permission_denied(format!(
                "this certificate speaks for cluster {id}, not for cluster {cluster}"
            ))),
            Some(other) => Err(Status::permission_denied(format!(
                "a {other} certificate cannot act for cluster {cluster}"
            ))),
            None => Err(Status::unauthenticated(
                "no client certificate of the ClusterSet: join with a bootstrap token first",
            )),
        }
    }

    /// The caller must be `cluster`'s gateway.
    pub fn check_gateway(caller: Option<&Identity>, cluster: &str) -> Result<(), Status> {
        match caller {
            Some(Identity::Gateway(id)) if id == cluster => Ok(()),
            Some(other) => Err(Status::permission_denied(format!(
                "only the gateway of cluster {cluster} may do this; this certificate is for {other}"
            ))),
            None => Err(Status::unauthenticated(
                "no client certificate of the ClusterSet: join with a gateway bootstrap token first",
            )),
        }
    }

    /// The caller must be an administrator.
    pub fn check_admin(caller: Option<&Identity>) -> Result<(), Status> {
        match caller {
            Some(Identity::Admin) => Ok(()),
            Some(other) => Err(Status::permission_denied(format!(
                "the admin API needs admin credentials; this certificate is for {other}"
            ))),
            None => Err(Status::unauthenticated(
                "the admin API needs admin credentials (--credentials, or SWITCHYARD_CREDENTIALS)",
            )),
        }
    }

    /// A certificate for `identity` from the agent's (or gateway's) request.
    pub fn sign(&self, csr_pem: &str, identity: &Identity) -> Result<String, Status> {
        self.ca
            .sign_request(csr_pem, identity, self.agent_cert_ttl)
            .map_err(|e| match e {
                ca::CaError::BadRequest(_) => Status::invalid_argument(e.to_string()),
                _ => Status::internal(e.to_string()),
            })
    }
}
