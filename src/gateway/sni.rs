//! The TLS server name (SNI) a gateway connection carries: which service
//! and port the connecting gateway wants.
//!
//! switchyard's form is `<port>.<service>.<namespace>.svc.<zone>`, e.g.
//! `8080.api.app.svc.clusterset.local` (a valid DNS name: the leading label
//! is the port). Istio's east-west form is accepted too:
//! `outbound_.<port>_._.<service>.<namespace>.svc.cluster.local` (any
//! domain after `svc.`).

use crate::model::ServiceKey;

/// The SNI for `service` port `port` in `zone`.
pub fn format(service: &ServiceKey, port: u16, zone: &str) -> String {
    format!(
        "{port}.{}.{}.svc.{}",
        service.name,
        service.namespace,
        zone.trim_end_matches('.')
    )
}

/// The service and port an SNI names, in either form; `None` otherwise.
pub fn parse(sni: &str, zone: &str) -> Option<(ServiceKey, u16)> {
    let sni = sni.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = sni.strip_prefix("outbound_.") {
        // Istio: outbound_.<port>_.<subset>_.<host>; switchyard has no
        // subsets, so only the empty one ("_") is accepted.
        let (port, rest) = rest.split_once("_.")?;
        let rest = rest.strip_prefix("_.")?;
        let mut labels = rest.splitn(4, '.');
        let (name, namespace, svc) = (labels.next()?, labels.next()?, labels.next()?);
        if svc != "svc" || labels.next().is_none() {
            return None;
        }
        return Some((
            ServiceKey::new(namespace, name).ok()?,
            port.parse().ok().filter(|p| *p != 0)?,
        ));
    }
    let suffix = format!(".svc.{}", zone.trim_end_matches('.').to_ascii_lowercase());
    let head = sni.strip_suffix(&suffix)?;
    let mut labels = head.split('.');
    let (port, name, namespace) = (labels.next()?, labels.next()?, labels.next()?);
    if labels.next().is_some() {
        return None;
    }
    Some((
        ServiceKey::new(namespace, name).ok()?,
        port.parse().ok().filter(|p| *p != 0)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_name_a_service_and_port() {
        let key: ServiceKey = "app/api-v1-multi".parse().unwrap();
        let ours = format(&key, 8080, "clusterset.local");
        assert_eq!(ours, "8080.api-v1-multi.app.svc.clusterset.local");
        assert_eq!(parse(&ours, "clusterset.local"), Some((key.clone(), 8080)));
        assert!(
            rustls_pki_types::ServerName::try_from(ours.as_str()).is_ok(),
            "a valid TLS server name"
        );
        assert_eq!(
            parse(
                "outbound_.8080_._.api-v1-multi.app.svc.cluster.local",
                "clusterset.local"
            ),
            Some((key, 8080))
        );
        for bad in [
            "api.app.svc.clusterset.local",
            "0.api.app.svc.clusterset.local",
            "8080.api.app.svc.other.zone",
            "8080.x.api.app.svc.clusterset.local",
            "outbound_.8080_.v1_.api.app.svc.cluster.local",
            "outbound_.8080_._.api.app.pod.cluster.local",
            "8080.Bad_Name.app.svc.clusterset.local",
        ] {
            assert_eq!(parse(bad, "clusterset.local"), None, "{bad}");
        }
    }
}
