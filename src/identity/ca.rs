//! The ClusterSet CA: created once (ECDSA P-256) or loaded from PEM, then
//! used to issue short-lived identity certificates and to sign the
//! certificate requests agents send when they join or renew.

use super::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::time::Duration;
use time::OffsetDateTime;

/// What can go wrong with the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Generating or signing failed.
    #[error("certificate operation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CA's PEM does not load.
    #[error("the ClusterSet CA does not load ({what}): {reason}")]
    BadCa { what: &'static str, reason: String },
    /// A certificate request does not parse or verify.
    #[error("the certificate request is not valid: {0}")]
    BadRequest(String),
}

/// A certificate and its private key, in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The ClusterSet CA.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Certificates are valid from a little before now, for clocks that lag.
const BACKDATE: Duration = Duration::from_secs(300);

fn validity(params: &mut CertificateParams, ttl: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ttl;
}

impl Ca {
    /// A new CA, valid for ten years.
    pub fn generate(name: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "switchyard");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, Duration::from_secs(10 * 365 * 24 * 3600));
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadCa {
            what: "key",
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CaError::BadCa {
            what: "certificate",
            reason: e.to_string(),
        })?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate, for clients and servers to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (for the replicated state only).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn leaf(
        identity: &Identity,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
        let fixed_name = match identity {
            Identity::Gateway(_) => Some(super::GATEWAY_SERVER_NAME),
            Identity::Replica(_) => Some(super::REPLICA_SERVER_NAME),
            _ => None,
        };
        if let Some(name) = fixed_name {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.try_into()?));
        }
        for host in hosts {
            params.subject_alt_names.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into()?),
            });
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, ttl);
        Ok(params)
    }

    /// A new key and a certificate for `identity`, valid for `ttl`, also
    /// naming `hosts` (IP addresses or DNS names) for a server.
    pub fn issue(
        &self,
        identity: &Identity,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<Issued, CaError> {
        let key = KeyPair::generate()?;
        let cert = Self::leaf(identity, hosts, ttl)?.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate request for `identity`, valid for `ttl`. Only the
    /// request's public key is used: names and extensions are the CA's.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<String, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadRequest(e.to_string()))?;
        csr.params = Self::leaf(identity, &[], ttl)?;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// Checks that a certificate request parses and its signature verifies.
pub fn check_request(csr_pem: &str) -> Result<(), CaError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(|e| CaError::BadRequest(e.to_string()))
}

/// A new key and a certificate request for it, for an agent to send.
pub fn request() -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// When a PEM certificate expires (unix seconds), if it parses.
pub fn not_after_unix(cert_pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// When a PEM certificate became valid (unix seconds), if it parses.
pub fn not_before_unix(cert_pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_before.timestamp())
}

/// The identity a PEM certificate carries.
pub fn identity_of_pem(cert_pem: &str) -> Option<Identity> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    Identity::of_certificate(&pem.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_and_signed_certificates_carry_the_identity_the_ca_chose() {
        let ca = Ca::generate("test ClusterSet").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let hub = again
            .issue(
                &Identity::Hub,
                &["127.0.0.1".into(), "hub.example".into()],
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(identity_of_pem(&hub.cert_pem), Some(Identity::Hub));

        // An agent asks in its request to be someone else: the CA decides.
        let (csr, _key) = request().unwrap();
        let cert = ca
            .sign_request(
                &csr,
                &Identity::Cluster("c1".into()),
                Duration::from_secs(3600),
            )
            .unwrap();
        assert_eq!(identity_of_pem(&cert), Some(Identity::Cluster("c1".into())));
        let lifetime = not_after_unix(&cert).unwrap() - not_before_unix(&cert).unwrap();
        assert_eq!(lifetime, 3600 + BACKDATE.as_secs() as i64);

        assert!(matches!(
            ca.sign_request("garbage", &Identity::Admin, Duration::from_secs(1)),
            Err(CaError::BadRequest(_))
        ));
        assert!(matches!(
            Ca::from_pem("x", ca.key_pem()),
            Err(CaError::BadCa { .. })
        ));
    }
}
