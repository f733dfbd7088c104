//! Names: cluster IDs and `namespace/name` service keys.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A ClusterSet member's ID (the MCS cluster ID): a DNS-1123 label.
pub type ClusterId = String;

/// Errors naming why a name is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not `NAMESPACE/NAME`.
    #[error("{0:?} is not NAMESPACE/NAME")]
    NotNamespaced(String),
    /// A part is not a DNS-1123 label.
    #[error("{what} {value:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)")]
    NotLabel { what: &'static str, value: String },
}

/// True when `s` is a DNS-1123 label, the form Kubernetes requires of
/// namespaces, Service names and cluster IDs (so they fit in DNS names).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn check_label(what: &'static str, value: &str) -> Result<(), KeyError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(KeyError::NotLabel {
            what,
            value: value.to_string(),
        })
    }
}

/// Checks a cluster ID.
pub fn validate_cluster_id(id: &str) -> Result<(), KeyError> {
    check_label("cluster ID", id)
}

/// Checks a `HOST:PORT` address (an IP address, `[IPv6]`, or a DNS name,
/// and a port) and returns it in canonical form.
pub fn host_port(text: &str) -> Result<String, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok(addr.to_string());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?}: port {port:?} is not a port number"))?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !name_ok {
        return Err(format!(
            "{text:?}: {host:?} is neither an IP address nor a DNS name"
        ));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// A service's identity across the ClusterSet: the same namespace/name in
/// every cluster is the same service (namespace sameness).
///
/// Serialized as the string `namespace/name`, so it can key JSON maps.
///
/// Both parts are shared strings: keys are copied whenever a persistent
/// map copies a tree node (every applied change copies a few nodes of 64
/// keys each), and a copy is then a reference count, not two allocations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    /// Builds a key, checking both parts are DNS labels.
    pub fn new(namespace: &str, name: &str) -> Result<Self, KeyError> {
        check_label("namespace", namespace)?;
        check_label("name", name)?;
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for ServiceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for ServiceKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ns, name) = s
            .split_once('/')
            .ok_or_else(|| KeyError::NotNamespaced(s.to_string()))?;
        Self::new(ns, name)
    }
}

/// A table keyed by service: a persistent map with shared values, so that
/// copying a whole table (to publish an immutable view after each change)
/// is O(1) and a change copies only its path in the tree.
pub type ServiceMap<V> = imbl::OrdMap<ServiceKey, std::sync::Arc<V>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespace_slash_name() {
        let k: ServiceKey = "app/api-v1".parse().unwrap();
        assert_eq!(&*k.namespace, "app");
        assert_eq!(&*k.name, "api-v1");
        assert_eq!(k.to_string(), "app/api-v1");
    }

    #[test]
    fn serializes_as_a_string_and_keys_json_maps() {
        let k: ServiceKey = "app/api".parse().unwrap();
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"app/api\"");
        let m: std::collections::BTreeMap<ServiceKey, u8> = [(k.clone(), 1)].into();
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            serde_json::from_str::<std::collections::BTreeMap<ServiceKey, u8>>(&text).unwrap(),
            m
        );
        assert!(serde_json::from_str::<ServiceKey>("\"nope\"").is_err());
    }

    #[test]
    fn rejects_bad_keys_with_reason() {
        assert_eq!(
            "app".parse::<ServiceKey>(),
            Err(KeyError::NotNamespaced("app".into()))
        );
        let err = "App/x".parse::<ServiceKey>().unwrap_err().to_string();
        assert!(err.contains("namespace \"App\""), "{err}");
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_label("us-west-1"));
    }
}
