//! TLS between gateways: TLS 1.3 only, both sides present a gateway
//! certificate of the ClusterSet CA. The client sends the service's SNI
//! (see `sni`), so the server's certificate cannot be checked against that
//! name: the chain is checked against the name every gateway certificate
//! carries, and the peer's identity (a gateway, of the cluster meant) is
//! checked after the handshake.

use crate::identity::{Identity, Issued, GATEWAY_SERVER_NAME};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::Arc;

/// Why TLS settings cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("gateway TLS: {0}")]
pub struct TlsError(String);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    crate::identity::tls::provider()
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    crate::identity::tls::root_store(ca_pem).map_err(|e| TlsError(e.0))
}

fn identity(
    issued: &Issued,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    crate::identity::tls::chain_and_key(issued).map_err(|e| TlsError(format!("gateway {}", e.0)))
}

/// The inbound listener's settings: TLS 1.3, a client certificate of the
/// ClusterSet required.
pub fn server_config(ca_pem: &str, issued: &Issued) -> Result<Arc<ServerConfig>, TlsError> {
    crate::identity::tls::mutual_server_config(ca_pem, issued, &[]).map_err(|e| TlsError(e.0))
}

/// Checks a peer gateway's chain against the CA under the name every
/// gateway certificate carries (the SNI names a service, not the peer).
#[derive(Debug)]
struct GatewayVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for GatewayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(GATEWAY_SERVER_NAME)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?;
        match Identity::of_certificate(end_entity.as_ref()) {
            Some(Identity::Gateway(_)) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::General(
                "the peer's certificate is not a gateway's".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The settings for connecting to other gateways: TLS 1.3, this gateway's
/// certificate, peers checked as above.
pub fn client_config(ca_pem: &str, issued: &Issued) -> Result<Arc<ClientConfig>, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| TlsError(e.to_string()))?;
    let (chain, key) = identity(issued)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(GatewayVerifier { inner }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The identity of a TLS peer, from its certificates.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    Identity::of_certificate(certs?.first()?.as_ref())
}
