//! A cluster's export of one service: ports, type and endpoints.

use super::key::{ClusterId, ServiceKey};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// How clients reach an imported service (MCS ServiceImport `type`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum ServiceType {
    /// One name with (per answer) one cluster's addresses.
    #[default]
    ClusterSetIP,
    /// All ready endpoint addresses, plus per-endpoint names.
    Headless,
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceType::ClusterSetIP => "ClusterSetIP",
            ServiceType::Headless => "Headless",
        })
    }
}

/// Kubernetes Service session affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP,
}

/// A service port. Protocol is TCP, UDP or SCTP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_protocol: String,
    pub port: u16,
}

impl Port {
    /// Whether the port carries TCP (what the gateway proxies).
    pub fn is_tcp(&self) -> bool {
        self.protocol.is_empty() || self.protocol.eq_ignore_ascii_case("TCP")
    }
}

fn default_protocol() -> String {
    "TCP".to_string()
}

/// One endpoint (pod address) of an exported service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default = "yes")]
    pub serving: bool,
    #[serde(default)]
    pub terminating: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

fn yes() -> bool {
    true
}

impl Endpoint {
    /// A ready, serving endpoint at `address` with nothing else known.
    pub fn ready(address: IpAddr) -> Self {
        Self {
            address,
            hostname: None,
            pod: None,
            ready: true,
            serving: true,
            terminating: false,
            zone: None,
        }
    }
}

/// One cluster's export of a service, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    pub cluster: ClusterId,
    pub service: ServiceKey,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    pub ports: Vec<Port>,
    /// The ports the endpoints listen on (an EndpointSlice's ports: each
    /// named like the service port it serves, with the target port
    /// number). Empty: the endpoints listen on the service ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
    /// Creation time of the export in its cluster, unix milliseconds.
    pub created_unix_ms: i64,
}

impl Export {
    /// The port the endpoints serve `service_port` on: the endpoint port of
    /// the same name, else the service port itself.
    pub fn target_port(&self, service_port: &Port) -> u16 {
        self.endpoint_ports
            .iter()
            .find(|p| p.name == service_port.name && p.protocol == service_port.protocol)
            .map_or(service_port.port, |p| p.port)
    }

    /// Endpoints that may receive new traffic.
    pub fn ready_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.ready && !e.terminating)
    }
}

/// Why an export is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("export {service}: port {port} has protocol {protocol:?}; use TCP, UDP or SCTP")]
    BadProtocol {
        service: ServiceKey,
        port: u16,
        protocol: String,
    },
    #[error("export {service}: port 0 is not a valid port")]
    ZeroPort { service: ServiceKey },
    #[error("export {service}: port name {name:?} appears twice")]
    DuplicatePortName { service: ServiceKey, name: String },
    #[error("export {service}: endpoint hostname {hostname:?} is not a DNS-1123 label")]
    BadHostname {
        service: ServiceKey,
        hostname: String,
    },
    #[error("export {service}: {count} endpoints is more than the limit of {limit}")]
    TooManyEndpoints {
        service: ServiceKey,
        count: usize,
        limit: usize,
    },
}

/// Upper bound on endpoints per export, so one bad agent cannot blow up
/// the replicated state or a DNS answer.
pub const MAX_ENDPOINTS: usize = 1000;

impl Export {
    /// Checks what the hub relies on: protocols, ports, hostnames, size.
    pub fn validate(&self) -> Result<(), ExportError> {
        let service = || self.service.clone();
        let mut names = std::collections::BTreeSet::new();
        for p in &self.ports {
            if !matches!(p.protocol.as_str(), "TCP" | "UDP" | "SCTP") {
                return Err(ExportError::BadProtocol {
                    service: service(),
                    port: p.port,
                    protocol: p.protocol.clone(),
                });
            }
            if p.port == 0 {
                return Err(ExportError::ZeroPort { service: service() });
            }
            if !p.name.is_empty() && !names.insert(p.name.clone()) {
                return Err(ExportError::DuplicatePortName {
                    service: service(),
                    name: p.name.clone(),
                });
            }
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(ExportError::TooManyEndpoints {
                service: service(),
                count: self.endpoints.len(),
                limit: MAX_ENDPOINTS,
            });
        }
        for e in &self.endpoints {
            if let Some(h) = &e.hostname {
                if !super::key::is_dns_label(h) {
                    return Err(ExportError::BadHostname {
                        service: service(),
                        hostname: h.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}
