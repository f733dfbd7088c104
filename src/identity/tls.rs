//! TLS for the hub's API: the server side (the hub's certificate, client
//! certificates optional at the handshake and required per call), the
//! client side (the CA to trust, and an identity to present), and the
//! identity of the peer of a call.

use super::{Identity, Issued};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, ServerTlsConfig};

/// What a client needs: the CA to trust and, except when joining, its
/// own certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub ca_pem: String,
    pub identity: Option<Issued>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field(
                "identity",
                &self
                    .identity
                    .as_ref()
                    .map(|i| super::ca::identity_of_pem(&i.cert_pem)),
            )
            .finish()
    }
}

/// Files of a credentials directory.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// Why credentials cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read credentials {path}: {source}")]
pub struct CredentialsError {
    pub path: String,
    pub source: std::io::Error,
}

impl ClientCredentials {
    /// Reads `dir/ca.pem` and, if present, `dir/cert.pem` and `dir/key.pem`.
    pub fn load(dir: &Path) -> Result<Self, CredentialsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CredentialsError {
                path: path.display().to_string(),
                source,
            })
        };
        let ca_pem = read(CA_FILE)?;
        let identity = if dir.join(CERT_FILE).exists() {
            Some(Issued {
                cert_pem: read(CERT_FILE)?,
                key_pem: read(KEY_FILE)?,
            })
        } else {
            None
        };
        Ok(Self { ca_pem, identity })
    }

    /// Writes the credentials to `dir` (created; key file mode 0600).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(CA_FILE), &self.ca_pem)?;
        if let Some(id) = &self.identity {
            std::fs::write(dir.join(CERT_FILE), &id.cert_pem)?;
            write_private(&dir.join(KEY_FILE), &id.key_pem)?;
        }
        Ok(())
    }

    /// The TLS settings to reach a hub at `host`.
    pub fn tls(&self, host: &str) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(host.trim_start_matches('[').trim_end_matches(']'));
        if let Some(id) = &self.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                &id.cert_pem,
                &id.key_pem,
            ));
        }
        tls
    }
}

/// Writes a secret: readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The hub's server TLS: its certificate, and client certificates of the
/// ClusterSet CA accepted but not required at the handshake (joining
/// agents have none yet; each call checks who it is from).
pub fn server_tls(ca_pem: &str, server: &Issued) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &server.cert_pem,
            &server.key_pem,
        ))
        .client_ca_root(Certificate::from_pem(ca_pem))
        .client_auth_optional(true)
}

/// Why rustls settings cannot be built from the ClusterSet's PEM.
#[derive(Debug, thiserror::Error)]
#[error("TLS settings: {0}")]
pub struct TlsSetupError(pub String);

/// The crypto provider every rustls setting of the project uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ClusterSet CA as a rustls trust store.
pub fn root_store(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsSetupError(format!("the CA does not parse: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TlsSetupError(format!("the CA is not usable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError("no CA certificate given".into()));
    }
    Ok(Arc::new(roots))
}

/// An issued certificate as a rustls chain and key.
pub fn chain_and_key(
    issued: &Issued,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError(format!("the certificate does not parse: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| TlsSetupError(format!("the key does not parse: {e}")))?;
    Ok((chain, key))
}

/// A server that speaks TLS 1.3 only and requires a client certificate of
/// the ClusterSet CA at the handshake (who the client is, is checked after
/// it: [`Identity::of_certificate`]). `alpn` lists the protocols offered.
pub fn mutual_server_config(
    ca_pem: &str,
    issued: &Issued,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(root_store(ca_pem)?, provider())
        .build()
        .map_err(|e| TlsSetupError(e.to_string()))?;
    let (chain, key) = chain_and_key(issued)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The identity of a call's TLS peer, if it presented a certificate of
/// the ClusterSet CA.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<Identity> {
    let certs = request.peer_certs()?;
    Identity::of_certificate(certs.first()?.as_ref())
}

/// The host part of `host:port` (or of a URL).
pub fn host_of(address: &str) -> &str {
    let rest = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    let rest = rest.split('/').next().unwrap_or(rest);
    match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => &rest[..i],
        _ => rest,
    }
}

/// An endpoint for the hub API at `address`: TLS with `credentials`, or
/// plain HTTP/2 without them.
pub fn endpoint(
    address: &str,
    credentials: Option<&ClientCredentials>,
) -> Result<Endpoint, tonic::transport::Error> {
    let bare = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    let endpoint = match credentials {
        Some(c) => {
            Endpoint::from_shared(format!("https://{bare}"))?.tls_config(c.tls(host_of(bare)))?
        }
        None => Endpoint::from_shared(format!("http://{bare}"))?,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        // A hub replica cut off by the network does not close the
        // connection: HTTP/2 pings find out, so that long-lived streams (a
        // gateway's configuration, an agent's exports) move to another
        // replica within seconds instead of waiting on TCP.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// How often clients of the hub API ping an HTTP/2 connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long they wait for the answer before they drop the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_found_in_addresses_and_urls() {
        assert_eq!(host_of("127.0.0.1:7700"), "127.0.0.1");
        assert_eq!(host_of("https://hub.example:443/x"), "hub.example");
        assert_eq!(host_of("[::1]:7700"), "[::1]");
        assert_eq!(host_of("hub"), "hub");
    }
}
