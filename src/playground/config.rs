//! The playground's clusterset description: a list of cluster files (see
//! [`crate::agent::ClusterFile`]). `switchyard up --print-config` writes
//! the built-in one; `--config FILE` reads any other.

use crate::agent::{ClusterFile, ServiceEntry};
use crate::model::{Endpoint, Port, ServiceType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

/// A ClusterSet: its clusters with their services and endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSetConfig {
    pub clusters: Vec<ClusterFile>,
}

/// Why a clusterset description cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: malformed clusterset config: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl ClusterSetConfig {
    /// Parses and checks a description; `path` is for messages.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let c: ClusterSetConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            reason: e.to_string(),
        })?;
        c.validate().map_err(|reason| ConfigError::Invalid {
            path: path.into(),
            reason,
        })?;
        Ok(c)
    }

    /// Checks IDs are unique, every cluster file is valid, and endpoint
    /// addresses are loopback and not shared between clusters or services
    /// (each endpoint is a real server the playground binds).
    pub fn validate(&self) -> Result<(), String> {
        if self.clusters.is_empty() {
            return Err("no clusters".into());
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for c in &self.clusters {
            if !ids.insert(&c.cluster) {
                return Err(format!("cluster {} is listed twice", c.cluster));
            }
            c.exports()
                .map_err(|e| format!("cluster {}: {e}", c.cluster))?;
            for s in &c.services {
                for e in &s.endpoints {
                    if !e.address.is_loopback() {
                        return Err(format!(
                            "cluster {} service {}/{}: endpoint {} is not a loopback address; the playground serves every endpoint itself",
                            c.cluster, s.namespace, s.name, e.address
                        ));
                    }
                    if !addrs.insert(e.address) {
                        return Err(format!("endpoint address {} is used twice", e.address));
                    }
                }
            }
        }
        Ok(())
    }

    /// The YAML form.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// The built-in ClusterSet: three clusters, `app/api-v1-multi` on all of
    /// them, `app/api-v2` on two, a headless `app/db` everywhere. Cluster `n`
    /// (1-based) serves its endpoints on 127.0.n.x.
    pub fn builtin() -> Self {
        let clusters = [
            ("us-west-1", "us-west"),
            ("us-east-1", "us-east"),
            ("eu-central-1", "eu-central"),
        ];
        let clusters = clusters
            .iter()
            .enumerate()
            .map(|(i, (id, region))| {
                let n = (i + 1) as u8;
                let ep = |host: u8, pod: String, hostname: Option<String>| Endpoint {
                    address: IpAddr::V4(Ipv4Addr::new(127, 0, n, host)),
                    hostname,
                    pod: Some(pod),
                    ready: true,
                    serving: true,
                    terminating: false,
                    zone: Some(format!("{id}a")),
                };
                let http = vec![Port {
                    name: "http".into(),
                    protocol: "TCP".into(),
                    app_protocol: "http".into(),
                    port: 8080,
                }];
                let mut services = vec![ServiceEntry {
                    namespace: "app".into(),
                    name: "api-v1-multi".into(),
                    service_type: ServiceType::ClusterSetIP,
                    session_affinity: Default::default(),
                    ports: http.clone(),
                    endpoints: (0..2)
                        .map(|k| ep(1 + k, format!("api-v1-multi-{id}-{k}"), None))
                        .collect(),
                    created_unix_ms: 0,
                }];
                if i < 2 {
                    services.push(ServiceEntry {
                        namespace: "app".into(),
                        name: "api-v2".into(),
                        service_type: ServiceType::ClusterSetIP,
                        session_affinity: Default::default(),
                        ports: http.clone(),
                        endpoints: (0..2)
                            .map(|k| ep(11 + k, format!("api-v2-{id}-{k}"), None))
                            .collect(),
                        created_unix_ms: 0,
                    });
                }
                services.push(ServiceEntry {
                    namespace: "app".into(),
                    name: "db".into(),
                    service_type: ServiceType::Headless,
                    session_affinity: Default::default(),
                    ports: vec![Port {
                        name: "http".into(),
                        protocol: "TCP".into(),
                        app_protocol: "http".into(),
                        port: 5432,
                    }],
                    endpoints: (0..2)
                        .map(|k| ep(21 + k, format!("db-{k}"), Some(format!("db-{k}"))))
                        .collect(),
                    created_unix_ms: 0,
                });
                ClusterFile {
                    cluster: id.to_string(),
                    region: region.to_string(),
                    zone: format!("{id}a"),
                    gateway_addresses: vec![],
                    services,
                }
            })
            .collect();
        Self { clusters }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_config_is_valid_and_round_trips() {
        let c = ClusterSetConfig::builtin();
        c.validate().unwrap();
        assert_eq!(ClusterSetConfig::parse("builtin", &c.to_yaml()).unwrap(), c);
        assert_eq!(c.clusters.len(), 3);
        assert_eq!(
            c.clusters[2].services.len(),
            2,
            "eu-central-1 has no api-v2"
        );
    }

    #[test]
    fn shared_or_remote_addresses_are_rejected() {
        let mut c = ClusterSetConfig::builtin();
        c.clusters[1].services[0].endpoints[0].address = "127.0.1.1".parse().unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("127.0.1.1 is used twice"));
        let mut c = ClusterSetConfig::builtin();
        c.clusters[0].services[0].endpoints[0].address = "10.0.0.1".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("not a loopback address"));
        let e = ClusterSetConfig::parse("x.yaml", "clusters: 3")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.yaml: malformed clusterset config"), "{e}");
    }
}
