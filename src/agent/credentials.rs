//! How an agent gets and keeps its cluster's certificate: stored
//! credentials while they are good, else a one-time bootstrap token traded
//! for a certificate (`Join`); then a renewal (`Renew`) at two thirds of
//! each certificate's life. Credentials live in a directory or, in
//! Kubernetes, in a Secret, so a rescheduled agent keeps its identity.

use super::stream::{self, HubAuth};
use crate::identity::ca::{self, not_after_unix, not_before_unix};
use crate::identity::tls::ClientCredentials;
use crate::identity::Issued;
use crate::proto;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where an agent keeps its credentials.
#[derive(Clone)]
pub enum CredentialStore {
    /// A directory (ca.pem, cert.pem, key.pem).
    Dir(PathBuf),
    /// A Kubernetes Secret (keys ca.pem, cert.pem, key.pem).
    Secret { api: Box<Api<Secret>>, name: String },
}

/// Why the agent has no usable credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no stored credentials and no bootstrap token: create one with `switchyard token create --cluster <id>` and pass it with --token")]
    NoToken,
    #[error("cannot read or write credentials: {0}")]
    Store(String),
    #[error("cannot join the ClusterSet: {0}")]
    Join(String),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl CredentialStore {
    /// The stored credentials, if any.
    pub async fn load(&self) -> Result<Option<ClientCredentials>, CredentialError> {
        match self {
            CredentialStore::Dir(dir) => {
                if !dir.join(crate::identity::tls::CERT_FILE).exists() {
                    return Ok(None);
                }
                ClientCredentials::load(dir)
                    .map(Some)
                    .map_err(|e| CredentialError::Store(e.to_string()))
            }
            CredentialStore::Secret { api, name } => {
                let secret = api
                    .get_opt(name)
                    .await
                    .map_err(|e| CredentialError::Store(format!("Secret {name}: {e}")))?;
                let Some(data) = secret.and_then(|s| s.data) else {
                    return Ok(None);
                };
                let get = |k: &str| {
                    data.get(k)
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                };
                match (get("ca.pem"), get("cert.pem"), get("key.pem")) {
                    (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Ok(Some(ClientCredentials {
                        ca_pem,
                        identity: Some(Issued { cert_pem, key_pem }),
                    })),
                    _ => Ok(None),
                }
            }
        }
    }

    /// Stores `credentials`, replacing what was there.
    pub async fn save(&self, credentials: &ClientCredentials) -> Result<(), CredentialError> {
        match self {
            CredentialStore::Dir(dir) => credentials
                .save(dir)
                .map_err(|e| CredentialError::Store(format!("{}: {e}", dir.display()))),
            CredentialStore::Secret { api, name } => {
                let mut data = std::collections::BTreeMap::new();
                data.insert(
                    "ca.pem".to_string(),
                    ByteString(credentials.ca_pem.clone().into_bytes()),
                );
                if let Some(id) = &credentials.identity {
                    data.insert(
                        "cert.pem".to_string(),
                        ByteString(id.cert_pem.clone().into_bytes()),
                    );
                    data.insert(
                        "key.pem".to_string(),
                        ByteString(id.key_pem.clone().into_bytes()),
                    );
                }
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_string(),
                                "switchyard".to_string(),
                            )]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(data),
                    ..Default::default()
                };
                let mut value = serde_json::to_value(&secret)
                    .map_err(|e| CredentialError::Store(e.to_string()))?;
                value["apiVersion"] = "v1".into();
                value["kind"] = "Secret".into();
                api.patch(
                    name,
                    &PatchParams::apply(super::k8s::resources::MANAGER).force(),
                    &Patch::Apply(&value),
                )
                .await
                .map(|_| ())
                .map_err(|e| CredentialError::Store(format!("Secret {name}: {e}")))
            }
        }
    }
}

/// Whether credentials are for `ca_pem` and good for a while yet.
fn usable(c: &ClientCredentials, ca_pem: &str) -> bool {
    c.ca_pem == ca_pem
        && c.identity
            .as_ref()
            .and_then(|id| not_after_unix(&id.cert_pem))
            .is_some_and(|t| t > unix_now() + 60)
}

/// The agent's credentials: the stored ones if they are for `ca_pem` and
/// not about to expire, else a join with `token` (the result is stored).
pub async fn obtain(
    hubs: &str,
    ca_pem: &str,
    token: Option<&str>,
    store: &CredentialStore,
) -> Result<ClientCredentials, CredentialError> {
    if let Some(stored) = store.load().await? {
        if usable(&stored, ca_pem) {
            return Ok(stored);
        }
        tracing::info!("stored credentials are expired or from another CA; joining again");
    }
    let token = token.ok_or(CredentialError::NoToken)?;
    let (csr_pem, key_pem) = ca::request()?;
    let anonymous = HubAuth::Tls(
        watch::channel(ClientCredentials {
            ca_pem: ca_pem.to_string(),
            identity: None,
        })
        .1,
    );
    let mut last = String::from("no hub address given");
    for hub in stream::Hubs::parse(hubs).iter() {
        let channel = match stream::connect(hub, &anonymous).await {
            Ok(c) => c,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let reply = stream::agent_client(channel)
            .join(proto::JoinRequest {
                token: token.to_string(),
                csr_pem: csr_pem.clone(),
            })
            .await;
        match reply {
            Ok(reply) => {
                let reply = reply.into_inner();
                let credentials = ClientCredentials {
                    ca_pem: reply.ca_pem,
                    identity: Some(Issued {
                        cert_pem: reply.cert_pem,
                        key_pem: key_pem.clone(),
                    }),
                };
                store.save(&credentials).await?;
                tracing::info!(cluster = %reply.cluster, "joined the ClusterSet");
                return Ok(credentials);
            }
            // The hub answered: its refusal is final (an unknown, used or
            // expired token does not get better on another replica).
            Err(status) if status.code() != tonic::Code::Unavailable => {
                return Err(CredentialError::Join(status.message().to_string()))
            }
            Err(status) => last = status.message().to_string(),
        }
    }
    Err(CredentialError::Join(last))
}

/// When a certificate should be renewed: at two thirds of its life.
pub fn renewal_due(cert_pem: &str) -> Option<i64> {
    let (from, to) = (not_before_unix(cert_pem)?, not_after_unix(cert_pem)?);
    Some(from + (to - from) * 2 / 3)
}

async fn renew_once(hubs: &str, current: &ClientCredentials) -> Result<ClientCredentials, String> {
    let (csr_pem, key_pem) = ca::request().map_err(|e| e.to_string())?;
    let auth = HubAuth::Tls(watch::channel(current.clone()).1);
    let mut last = String::from("no hub address given");
    for hub in stream::Hubs::parse(hubs).iter() {
        let reply = match stream::connect(hub, &auth).await {
            Ok(channel) => {
                stream::agent_client(channel)
                    .renew(proto::RenewRequest {
                        csr_pem: csr_pem.clone(),
                    })
                    .await
            }
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        match reply {
            Ok(r) => {
                let r = r.into_inner();
                return Ok(ClientCredentials {
                    ca_pem: r.ca_pem,
                    identity: Some(Issued {
                        cert_pem: r.cert_pem,
                        key_pem,
                    }),
                });
            }
            Err(status) => last = format!("{hub}: {}", status.message()),
        }
    }
    Err(last)
}

/// Renews the credentials in `current` before they expire, storing and
/// publishing each new certificate, until shutdown.
pub async fn keep_renewed(
    hubs: String,
    store: CredentialStore,
    current: watch::Sender<ClientCredentials>,
    shutdown: CancellationToken,
) {
    loop {
        let creds = current.borrow().clone();
        let due = creds
            .identity
            .as_ref()
            .and_then(|id| renewal_due(&id.cert_pem))
            .unwrap_or_else(unix_now);
        let wait = Duration::from_secs(due.saturating_sub(unix_now()).max(0) as u64);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match renew_once(&hubs, &creds).await {
            Ok(new) => {
                if let Err(error) = store.save(&new).await {
                    tracing::warn!(%error, "renewed the certificate but cannot store it");
                }
                tracing::info!("renewed the agent's certificate");
                current.send_replace(new);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot renew the agent's certificate; retrying in 30 s");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    }
}
