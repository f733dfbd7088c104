//! The Service the agent derives for each import when the cluster's
//! east-west gateway runs in port mode (in pods): in the gateway's
//! namespace, selecting the gateway's pods, with the import's ClusterSetIP
//! (allocated by the hub) as its ClusterIP and every TCP service port sent
//! to the port the gateway listens on for it. kube-proxy then carries a
//! client's connection to `ClusterSetIP:port` to a gateway pod, which
//! routes it by the weights. The ServiceImport's `spec.ips` names the same
//! address, and so does the gateway's DNS.
//!
//! A ClusterIP cannot change: a derived Service whose address the hub moved
//! is deleted and created again. Derived Services of imports that are gone
//! are deleted.

use super::imports::{OWNED_LABEL, OWNED_VALUE};
use super::resources::MCS_SERVICE_NAME_LABEL;
use crate::model::ServiceKey;
use crate::proto;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Label on a derived Service: the namespace of the import it serves (its
/// name is in `multicluster.kubernetes.io/service-name`).
pub const IMPORT_NAMESPACE_LABEL: &str = "switchyard.io/import-namespace";

/// Where the cluster's gateway pods run and how to select them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayPods {
    /// Their namespace, where the derived Services go.
    pub namespace: String,
    /// Their labels (`key=value,...`).
    pub selector: BTreeMap<String, String>,
}

/// Why `--gateway-selector` or `--gateway-namespace` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GatewayPodsError {
    #[error("--gateway-selector {0:?}: expected key=value[,key=value...]")]
    Selector(String),
    #[error("--gateway-namespace {0:?} is not a DNS-1123 label")]
    Namespace(String),
}

impl GatewayPods {
    /// The gateway pods in `namespace` labelled as `selector` says.
    pub fn new(namespace: &str, selector: &str) -> Result<Self, GatewayPodsError> {
        ServiceKey::new(namespace, "x")
            .map_err(|_| GatewayPodsError::Namespace(namespace.to_string()))?;
        let mut labels = BTreeMap::new();
        for pair in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| GatewayPodsError::Selector(selector.to_string()))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        if labels.is_empty() {
            return Err(GatewayPodsError::Selector(selector.to_string()));
        }
        Ok(Self {
            namespace: namespace.to_string(),
            selector: labels,
        })
    }
}

/// The derived Service's name: readable, stable, unique per import, and a
/// DNS-1035 label (the service name starts it; 58 characters at most).
pub fn name(key: &ServiceKey) -> String {
    let short = |s: &str, n: usize| s[..s.len().min(n)].trim_end_matches('-').to_string();
    let h = super::imports::stable_hash(&format!("{}/{}", key.namespace, key.name));
    format!(
        "{}-{}-{:08x}",
        short(&key.name, 24),
        short(&key.namespace, 24),
        h & 0xffff_ffff
    )
}

/// The derived Service of `svc`, or `None` when the import has no
/// ClusterSetIP or no gateway ports (the gateway is not in port mode).
pub fn desired(
    svc: &proto::ImportedService,
    key: &ServiceKey,
    pods: &GatewayPods,
) -> Option<Value> {
    let ip = svc.ips.first()?;
    if svc.gateway_ports.is_empty() {
        return None;
    }
    let ports: Vec<Value> = svc
        .gateway_ports
        .iter()
        .map(|gp| {
            let declared = svc.ports.iter().find(|p| p.port == gp.port);
            let port_name = declared
                .map(|p| p.name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("tcp-{}", gp.port));
            json!({"name": port_name, "protocol": "TCP", "port": gp.port, "targetPort": gp.listener_port})
        })
        .collect();
    Some(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name(key),
            "namespace": pods.namespace,
            "labels": {
                OWNED_LABEL: OWNED_VALUE,
                MCS_SERVICE_NAME_LABEL: key.name,
                IMPORT_NAMESPACE_LABEL: key.namespace,
            },
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "selector": pods.selector,
            "sessionAffinity": if svc.session_affinity == "ClientIP" { "ClientIP" } else { "None" },
            "ports": ports,
        },
    }))
}

/// Makes the derived Services in the gateway's namespace match `want`
/// (by name).
pub async fn reconcile(
    client: &kube::Client,
    pods: &GatewayPods,
    existing: &Store<Service>,
    want: &BTreeMap<String, Value>,
) {
    let api: Api<Service> = Api::namespaced(client.clone(), &pods.namespace);
    let existing: BTreeMap<String, Value> = existing
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(pods.namespace.as_str()))
        .filter_map(|s| {
            Some((
                s.metadata.name.clone()?,
                serde_json::to_value(s.as_ref()).ok()?,
            ))
        })
        .collect();
    let apply = PatchParams::apply(super::resources::MANAGER).force();
    for (name, service) in want {
        let current = existing.get(name);
        if current.is_some_and(|c| super::imports::covers(c, service)) {
            continue;
        }
        let moved = current
            .and_then(|c| c.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty())
            .is_some_and(|ip| {
                Some(ip) != service.pointer("/spec/clusterIP").and_then(Value::as_str)
            });
        if moved {
            // Created again on the next pass, which the deletion triggers.
            tracing::info!(service = %name, "the hub moved an import's ClusterSetIP; recreating its derived Service");
            delete(&api, name).await;
            continue;
        }
        if let Err(error) = api.patch(name, &apply, &Patch::Apply(service)).await {
            tracing::warn!(%error, service = %name, namespace = %pods.namespace, "cannot write a derived Service; retrying later");
        }
    }
    for name in existing.keys().filter(|n| !want.contains_key(*n)) {
        delete(&api, name).await;
    }
}

async fn delete(api: &Api<Service>, name: &str) {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => tracing::info!(service = name, "deleted a derived Service"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(error) => {
            tracing::warn!(%error, service = name, "cannot delete a derived Service; retrying later")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import() -> proto::ImportedService {
        proto::ImportedService {
            namespace: "app".into(),
            name: "api".into(),
            ports: vec![
                proto::Port {
                    name: "http".into(),
                    protocol: "TCP".into(),
                    app_protocol: String::new(),
                    port: 80,
                },
                proto::Port {
                    name: String::new(),
                    protocol: "TCP".into(),
                    app_protocol: String::new(),
                    port: 443,
                },
            ],
            ips: vec!["10.96.0.130".into()],
            gateway_ports: vec![
                proto::ListenerPort {
                    port: 80,
                    listener_port: 20004,
                },
                proto::ListenerPort {
                    port: 443,
                    listener_port: 20005,
                },
            ],
            session_affinity: "ClientIP".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_derived_service_sends_the_cluster_set_ip_to_the_gateway_ports() {
        let pods =
            GatewayPods::new("switchyard", "app.kubernetes.io/name=switchyard-gateway").unwrap();
        let key: ServiceKey = "app/api".parse().unwrap();
        let s = desired(&import(), &key, &pods).unwrap();
        assert_eq!(s["metadata"]["namespace"], "switchyard");
        assert_eq!(s["spec"]["clusterIP"], "10.96.0.130");
        assert_eq!(
            s["spec"]["selector"]["app.kubernetes.io/name"],
            "switchyard-gateway"
        );
        assert_eq!(s["spec"]["sessionAffinity"], "ClientIP");
        let ports: Vec<(String, u64, u64)> = s["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["port"].as_u64().unwrap(),
                    p["targetPort"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [("http".into(), 80, 20004), ("tcp-443".into(), 443, 20005)]
        );
        // Address mode, or no ClusterSetIP: nothing derived.
        let mut address_mode = import();
        address_mode.gateway_ports.clear();
        assert!(desired(&address_mode, &key, &pods).is_none());
        let mut no_ip = import();
        no_ip.ips.clear();
        assert!(desired(&no_ip, &key, &pods).is_none());
    }

    #[test]
    fn names_are_stable_distinct_and_short_labels() {
        let k = |s: &str| s.parse::<ServiceKey>().unwrap();
        assert_eq!(name(&k("app/api")), name(&k("app/api")));
        assert_ne!(name(&k("a-b/c")), name(&k("a/b-c")));
        assert!(name(&k("app/api")).starts_with("api-app-"));
        let long = k(&format!("{}/{}", "n".repeat(63), "s".repeat(63)));
        let n = name(&long);
        assert!(n.len() <= 63 && n.starts_with('s'), "{n}");
    }

    #[test]
    fn bad_gateway_selectors_are_refused_by_name() {
        assert!(GatewayPods::new("ns", "nolabel")
            .unwrap_err()
            .to_string()
            .contains("--gateway-selector"));
        assert!(GatewayPods::new("ns", "").is_err());
        assert!(GatewayPods::new("Bad_NS", "a=b")
            .unwrap_err()
            .to_string()
            .contains("--gateway-namespace"));
        let p = GatewayPods::new("ns", "a=b, c=d").unwrap();
        assert_eq!(p.selector.len(), 2);
    }
}
