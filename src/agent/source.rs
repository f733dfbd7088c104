//! The cluster file: one cluster's services and endpoints in YAML. It stands
//! in for the Kubernetes API in the playground and in tests.
//!
//! ```yaml
//! cluster: us-west-1
//! region: us-west
//! zone: us-west-1a
//! services:
//!   - namespace: app
//!     name: api-v1-multi
//!     type: ClusterSetIP          # or Headless
//!     ports: [{name: http, port: 8080}]
//!     endpoints:
//!       - {address: 127.0.1.1, pod: api-v1-multi-0}
//!       - {address: 127.0.1.2, pod: api-v1-multi-1, ready: false}
//! ```

use crate::model::{
    validate_cluster_id, ClusterId, ClusterSpec, Endpoint, Export, Port, ServiceKey, ServiceType,
    SessionAffinity,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Why a cluster file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: malformed cluster file: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// One cluster's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterFile {
    pub cluster: ClusterId,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_addresses: Vec<String>,
    #[serde(default)]
    pub services: Vec<ServiceEntry>,
}

/// One exported service of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type", default)]
    pub service_type: ServiceType,
    #[serde(default, skip_serializing_if = "is_default_affinity")]
    pub session_affinity: SessionAffinity,
    pub ports: Vec<Port>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// When the export was created, unix ms (oldest wins conflicts); 0 if unknown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_unix_ms: i64,
}

fn is_default_affinity(a: &SessionAffinity) -> bool {
    *a == SessionAffinity::None
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl ClusterFile {
    /// Parses and checks a cluster file's text; `path` is for messages.
    pub fn parse(path: &str, text: &str) -> Result<Self, SourceError> {
        let file: ClusterFile = serde_yaml::from_str(text).map_err(|e| SourceError::Parse {
            path: path.into(),
            reason: e.to_string(),
        })?;
        file.exports().map_err(|reason| SourceError::Invalid {
            path: path.into(),
            reason,
        })?;
        Ok(file)
    }

    /// Reads and parses a cluster file.
    pub fn load(path: &Path) -> Result<Self, SourceError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&p, &text)
    }

    /// What the agent registers.
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            id: self.cluster.clone(),
            region: self.region.clone(),
            zone: self.zone.clone(),
            gateway_addresses: self.gateway_addresses.clone(),
        }
    }

    /// The cluster's exports by service, validated.
    pub fn exports(&self) -> Result<BTreeMap<ServiceKey, Export>, String> {
        validate_cluster_id(&self.cluster).map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for s in &self.services {
            let service = ServiceKey::new(&s.namespace, &s.name)
                .map_err(|e| format!("service {}/{}: {e}", s.namespace, s.name))?;
            let export = Export {
                cluster: self.cluster.clone(),
                service: service.clone(),
                service_type: s.service_type,
                session_affinity: s.session_affinity,
                ports: s.ports.clone(),
                endpoint_ports: Vec::new(),
                endpoints: s.endpoints.clone(),
                created_unix_ms: s.created_unix_ms,
            };
            export.validate().map_err(|e| e.to_string())?;
            if out.insert(service.clone(), export).is_some() {
                return Err(format!("service {service} is listed twice"));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "cluster: us-west-1\nregion: us-west\nservices:\n  - namespace: app\n    name: db\n    type: Headless\n    ports: [{name: pg, port: 5432}]\n    endpoints:\n      - {address: 127.0.1.21, hostname: db-0}\n      - {address: 127.0.1.22, hostname: db-1, ready: false}\n";

    #[test]
    fn parses_services_and_endpoints() {
        let f = ClusterFile::parse("f", FILE).unwrap();
        let ex = f.exports().unwrap();
        let db = &ex[&"app/db".parse().unwrap()];
        assert_eq!(db.service_type, ServiceType::Headless);
        assert_eq!(db.ready_endpoints().count(), 1);
        assert_eq!(db.ports[0].protocol, "TCP");
    }

    #[test]
    fn errors_name_the_file_and_problem() {
        let e = ClusterFile::parse("c.yaml", "cluster: [")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.yaml: malformed cluster file"), "{e}");
        let e = ClusterFile::parse("c.yaml", &FILE.replace("127.0.1.21", "nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.yaml"), "{e}");
        let e = ClusterFile::parse("c.yaml", &FILE.replace("cluster: us-west-1", "cluster: US"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster ID \"US\""), "{e}");
        let e = ClusterFile::parse(
            "c.yaml",
            &FILE
                .replace("protocol", "x")
                .replace("port: 5432}", "port: 5432, protocol: HTTP}"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("protocol \"HTTP\""), "{e}");
    }
}
