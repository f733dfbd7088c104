//! From a cluster's ServiceExports, Services and EndpointSlices to the
//! exports the agent streams to the hub, and each ServiceExport's `Valid`
//! condition. Pure: the caller reads the objects (reflector stores) and
//! writes the conditions.

use crate::model::{Condition, Endpoint, Export, Port, ServiceKey, ServiceType, SessionAffinity};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A ServiceExport as the computation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    /// The Service it exports (same namespace and name).
    pub service: ServiceKey,
    /// The ServiceExport's creationTimestamp: the oldest export wins
    /// conflicts between clusters.
    pub created_unix_ms: i64,
}

/// What the cluster exports, and why each ServiceExport is (not) valid.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Computed {
    /// Valid exports by service.
    pub exports: BTreeMap<ServiceKey, Export>,
    /// The `Valid` condition of every ServiceExport.
    pub valid: BTreeMap<ServiceKey, Condition>,
}

/// Computes the exports of `cluster`.
pub fn compute(
    cluster: &str,
    requests: &[ExportRequest],
    services: &[&Service],
    slices: &[&EndpointSlice],
) -> Computed {
    let services: BTreeMap<(String, String), &Service> = services
        .iter()
        .filter_map(|s| {
            Some((
                (s.metadata.namespace.clone()?, s.metadata.name.clone()?),
                *s,
            ))
        })
        .collect();
    let mut out = Computed::default();
    for request in requests {
        let key = &request.service;
        let Some(service) = services.get(&(key.namespace.to_string(), key.name.to_string())) else {
            out.valid.insert(
                key.clone(),
                Condition::new(
                    "Valid",
                    false,
                    "NoService",
                    format!("Service {key} does not exist; create it or delete the ServiceExport"),
                ),
            );
            continue;
        };
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            out.valid.insert(
                key.clone(),
                Condition::new(
                    "Valid",
                    false,
                    "InvalidServiceType",
                    format!("Service {key} is of type ExternalName, which cannot be exported"),
                ),
            );
            continue;
        }
        let own: Vec<&EndpointSlice> = slices
            .iter()
            .copied()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(&*key.namespace)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .map(String::as_str)
                        == Some(&*key.name)
            })
            .collect();
        let export = Export {
            cluster: cluster.to_string(),
            service: key.clone(),
            service_type: if spec.cluster_ip.as_deref() == Some("None") {
                ServiceType::Headless
            } else {
                ServiceType::ClusterSetIP
            },
            session_affinity: match spec.session_affinity.as_deref() {
                Some("ClientIP") => SessionAffinity::ClientIP,
                _ => SessionAffinity::None,
            },
            ports: service_ports(&spec),
            endpoint_ports: endpoint_ports(&own),
            endpoints: endpoints(&own),
            created_unix_ms: request.created_unix_ms,
        };
        match export.validate() {
            Ok(()) => {
                out.valid.insert(
                    key.clone(),
                    Condition::new("Valid", true, "Valid", format!("Service {key} is exported")),
                );
                out.exports.insert(key.clone(), export);
            }
            Err(e) => {
                out.valid.insert(
                    key.clone(),
                    Condition::new("Valid", false, "InvalidService", e.to_string()),
                );
            }
        }
    }
    out
}

fn port_number(n: i32) -> u16 {
    u16::try_from(n).unwrap_or(0)
}

fn service_ports(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<Port> {
    spec.ports
        .iter()
        .flatten()
        .map(|p| Port {
            name: p.name.clone().unwrap_or_default(),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            app_protocol: p.app_protocol.clone().unwrap_or_default(),
            port: port_number(p.port),
        })
        .collect()
}

/// The slices' ports, one per (name, protocol), first slice first.
fn endpoint_ports(slices: &[&EndpointSlice]) -> Vec<Port> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for slice in slices {
        for p in slice.ports.iter().flatten() {
            let name = p.name.clone().unwrap_or_default();
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let Some(port) = p.port.map(port_number).filter(|p| *p != 0) else {
                continue;
            };
            if seen.insert((name.clone(), protocol.clone())) {
                out.push(Port {
                    name,
                    protocol,
                    app_protocol: p.app_protocol.clone().unwrap_or_default(),
                    port,
                });
            }
        }
    }
    out
}

/// Endpoints of IP slices, one per address, in address order.
fn endpoints(slices: &[&EndpointSlice]) -> Vec<Endpoint> {
    let mut by_address: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for ep in &slice.endpoints {
            let Some(address) = ep.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let conditions = ep.conditions.clone().unwrap_or_default();
            // The API's rules: unset ready means ready, unset serving
            // follows ready, unset terminating means not terminating.
            let ready = conditions.ready.unwrap_or(true);
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            by_address.entry(address).or_insert(Endpoint {
                address,
                hostname: ep.hostname.clone(),
                pod,
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
                zone: ep.zone.clone(),
            });
        }
    }
    by_address.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ns: &str, name: &str, extra: serde_json::Value) -> Service {
        let mut v = json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": 80}, {"name": "grpc", "port": 9090, "appProtocol": "grpc"}]},
        });
        merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        match (target, patch) {
            (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    fn slice(ns: &str, svc: &str, name: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn request(ns: &str, name: &str) -> ExportRequest {
        ExportRequest {
            service: ServiceKey::new(ns, name).unwrap(),
            created_unix_ms: 42,
        }
    }

    #[test]
    fn a_service_and_its_slices_become_one_export() {
        let svc = service("app", "api", json!({}));
        let a = slice(
            "app",
            "api",
            "api-1",
            json!([
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "zone": "z1",
                 "targetRef": {"kind": "Pod", "name": "api-1"}},
                {"addresses": ["10.0.0.1"], "conditions": {"ready": false, "terminating": true}},
            ]),
        );
        // A second slice repeating an address (mid-update) and one of another service.
        let b = slice(
            "app",
            "api",
            "api-2",
            json!([{"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3"]}]),
        );
        let other = slice("app", "web", "web-1", json!([{"addresses": ["10.9.9.9"]}]));
        let out = compute("c1", &[request("app", "api")], &[&svc], &[&a, &b, &other]);
        let e = &out.exports[&ServiceKey::new("app", "api").unwrap()];
        assert_eq!(e.cluster, "c1");
        assert_eq!(e.service_type, ServiceType::ClusterSetIP);
        assert_eq!(e.created_unix_ms, 42);
        assert_eq!(
            e.ports
                .iter()
                .map(|p| (p.name.as_str(), p.port))
                .collect::<Vec<_>>(),
            [("http", 80), ("grpc", 9090)]
        );
        assert_eq!(e.target_port(&e.ports[0]), 8080);
        assert_eq!(
            e.target_port(&e.ports[1]),
            9090,
            "no slice port: the service port"
        );
        let addrs: Vec<String> = e.endpoints.iter().map(|p| p.address.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let one = &e.endpoints[0];
        assert!(!one.ready && !one.serving && one.terminating);
        let two = &e.endpoints[1];
        assert!(two.ready && two.serving && !two.terminating);
        assert_eq!(two.zone.as_deref(), Some("z1"));
        assert_eq!(two.pod.as_deref(), Some("api-1"));
        assert_eq!(out.valid.values().next().unwrap().reason, "Valid");
    }

    #[test]
    fn missing_and_external_name_services_are_not_valid() {
        let ext = service(
            "app",
            "ext",
            json!({"spec": {"type": "ExternalName", "externalName": "x.example"}}),
        );
        let out = compute(
            "c1",
            &[request("app", "missing"), request("app", "ext")],
            &[&ext],
            &[],
        );
        assert!(out.exports.is_empty());
        let missing = &out.valid[&ServiceKey::new("app", "missing").unwrap()];
        assert_eq!(
            (missing.status.as_str(), missing.reason.as_str()),
            ("False", "NoService")
        );
        let ext = &out.valid[&ServiceKey::new("app", "ext").unwrap()];
        assert_eq!(ext.reason, "InvalidServiceType");
    }

    #[test]
    fn headless_and_client_ip_are_carried() {
        let svc = service(
            "app",
            "db",
            json!({"spec": {"clusterIP": "None", "sessionAffinity": "ClientIP"}}),
        );
        let out = compute("c1", &[request("app", "db")], &[&svc], &[]);
        let e = out.exports.values().next().unwrap();
        assert_eq!(e.service_type, ServiceType::Headless);
        assert_eq!(e.session_affinity, SessionAffinity::ClientIP);
        assert!(
            e.endpoints.is_empty(),
            "no slices yet: exported with no endpoints"
        );
    }

    #[test]
    fn an_invalid_service_gets_a_reason_not_an_export() {
        let svc = service(
            "app",
            "bad",
            json!({"spec": {"ports": [{"name": "a", "port": 80, "protocol": "QUIC"}]}}),
        );
        let out = compute("c1", &[request("app", "bad")], &[&svc], &[]);
        assert!(out.exports.is_empty());
        let c = out.valid.values().next().unwrap();
        assert_eq!(c.reason, "InvalidService");
        assert!(c.message.contains("QUIC"), "{}", c.message);
    }
}
