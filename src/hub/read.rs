//! Read views for `switchyard get`: clusters, exports, imports, mcs and
//! backends, as JSON built from the applied state. A named object comes back
//! alone; without a name, a list.

use super::state::State;
use crate::model::manifest::mcs_import_key;
use crate::model::resources::{ClusterStatus, ServiceImportSpec, ServiceImportStatus};
use crate::model::{Condition, ObjectMeta, ServiceImport, ServiceKey};
use serde_json::{json, Value};

/// Why a read cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("unknown kind {0:?}; use clusters, exports, imports, mcs, backends or gateways")]
    UnknownKind(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Key(#[from] crate::model::KeyError),
}

/// Reads `kind`, optionally one object `name` (NS/NAME, or a cluster ID);
/// imports as `cluster` sees them when it is given (each port with that
/// cluster's gateway listener, `gatewayListener`).
pub fn get(state: &State, kind: &str, name: &str, cluster: &str) -> Result<Value, ReadError> {
    let kind = match kind {
        "gateway" | "gateways" => "gateways",
        "cluster" | "clusters" => "clusters",
        "export" | "exports" => "exports",
        "import" | "imports" | "serviceimport" | "serviceimports" => "imports",
        "mcs" | "multiclusterservice" | "multiclusterservices" => "mcs",
        "backend" | "backends" => "backends",
        other => return Err(ReadError::UnknownKind(other.to_string())),
    };
    if kind == "gateways" {
        let rows: Vec<Value> = state
            .gateways
            .iter()
            .filter(|(id, _)| name.is_empty() || id.as_str() == name)
            .map(|(id, g)| gateway_row(id, g))
            .collect();
        return one_or_list(rows, name, || format!("gateway of cluster {name}"));
    }
    if kind == "clusters" {
        let rows: Vec<Value> = state
            .clusters
            .values()
            .filter(|c| name.is_empty() || c.spec.id == name)
            .map(|c| cluster_row(state, c))
            .collect();
        return one_or_list(rows, name, || format!("cluster {name}"));
    }
    let key: Option<ServiceKey> = if name.is_empty() {
        None
    } else {
        Some(name.parse()?)
    };
    let wanted = |k: &ServiceKey| key.as_ref().is_none_or(|w| w == k);
    let rows: Vec<Value> = match kind {
        "exports" => state
            .exports
            .iter()
            .filter(|(k, _)| wanted(k))
            .flat_map(|(_, by)| by.values())
            .map(|e| {
                json!({
                    "cluster": e.cluster, "service": e.service.to_string(), "type": e.service_type,
                    "sessionAffinity": e.session_affinity, "ports": e.ports,
                    "ready": e.ready_endpoints().count(), "endpoints": e.endpoints,
                })
            })
            .collect(),
        "imports" => state
            .backends
            .keys()
            .filter(|k| wanted(k))
            .map(|k| import_view(state, k, cluster))
            .collect(),
        "mcs" => state
            .mcs
            .iter()
            .filter(|(k, _)| wanted(k))
            .map(|(k, _)| mcs_view(state, k))
            .collect(),
        _ => state
            .backends
            .iter()
            .filter(|(k, _)| wanted(k))
            .map(|(_, b)| serde_json::to_value(b).unwrap_or(Value::Null))
            .collect(),
    };
    if kind == "exports" {
        // Several clusters export one service: a list even when named.
        if rows.is_empty() && !name.is_empty() {
            return Err(ReadError::NotFound(format!("exports of {name}")));
        }
        return Ok(Value::Array(rows));
    }
    let what = match kind {
        "imports" => "serviceimport",
        "mcs" => "multiclusterservice",
        _ => "backends of",
    };
    one_or_list(rows, name, || format!("{what} {name}"))
}

fn one_or_list(
    mut rows: Vec<Value>,
    name: &str,
    what: impl Fn() -> String,
) -> Result<Value, ReadError> {
    if name.is_empty() {
        return Ok(Value::Array(rows));
    }
    match rows.len() {
        0 => Err(ReadError::NotFound(what())),
        _ => Ok(rows.swap_remove(0)),
    }
}

fn cluster_row(state: &State, c: &crate::model::Cluster) -> Value {
    let exports = state
        .exports
        .values()
        .filter(|by| by.contains_key(&c.spec.id))
        .count();
    json!({
        "id": c.spec.id, "region": c.spec.region, "zone": c.spec.zone,
        "state": c.state().to_string(), "exports": exports,
        "exportRevision": state.export_revisions.get(&c.spec.id).copied().unwrap_or(0),
        "gatewayAddresses": c.spec.gateway_addresses,
        "leaseRevoked": c.lease_revoked, "withdrawn": c.withdrawn,
        "drainedServices": c.drained_services.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// A ServiceImport in its Kubernetes form, spec and status derived from the
/// computed backends.
/// A gateway: where it is, its listeners, and how far behind the
/// configuration the hub offers it is (versions and seconds).
fn gateway_row(cluster: &str, g: &super::state::GatewayRecord) -> Value {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    json!({
        "cluster": cluster,
        "inbound": g.inbound,
        "outboundCidr": g.outbound_cidr,
        "outboundPorts": g.outbound_ports,
        "listeners": g.listeners.len(),
        "offeredVersion": g.offered_version,
        "appliedVersion": g.applied_version,
        "lag": {
            "versions": g.offered_version.saturating_sub(g.applied_version),
            "seconds": g.behind_since_unix_ms.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0),
        },
        "rejected": g.rejected.as_ref().map(|(v, why)| json!({"version": v, "reason": why})),
    })
}

fn import_view(state: &State, key: &ServiceKey, cluster: &str) -> Value {
    let b = &state.backends[key];
    let declared = state.imports.get(key);
    let metadata = declared
        .map(|d| d.metadata.clone())
        .unwrap_or_else(|| ObjectMeta {
            name: key.name.to_string(),
            namespace: key.namespace.to_string(),
            ..Default::default()
        });
    let si = ServiceImport {
        api_version: declared
            .map(|d| d.api_version.clone())
            .unwrap_or_else(|| "multicluster.x-k8s.io/v1alpha1".into()),
        kind: "ServiceImport".into(),
        metadata,
        spec: ServiceImportSpec {
            service_type: b.service_type,
            ports: b.ports.clone(),
            ips: vec![],
            session_affinity: Some(b.session_affinity),
            resolution: declared.and_then(|d| d.spec.resolution.clone()),
        },
        status: ServiceImportStatus {
            clusters: b
                .clusters
                .iter()
                .filter(|c| !c.addresses.is_empty() || c.healthy)
                .map(|c| ClusterStatus {
                    cluster: c.cluster.clone(),
                })
                .collect(),
            conditions: b.conditions.clone(),
        },
    };
    let mut view = serde_json::to_value(si).unwrap_or(Value::Null);
    let gateway = state.gateways.get(cluster);
    let listener = gateway.and_then(|g| g.listeners.get(key));
    let gateway_ports = gateway.and_then(|g| g.ports.get(key));
    if let Some(ip) = listener {
        view["spec"]["ips"] = json!([ip.to_string()]);
    }
    if let (Some(ip), Some(ports)) = (
        listener,
        view.pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut),
    ) {
        for port in ports {
            let number = port["port"].as_u64().unwrap_or(0);
            port["gatewayListener"] = json!(format!("{ip}:{number}"));
            // Port mode: the port the gateway's pods listen on for it.
            if let Some(p) = u16::try_from(number)
                .ok()
                .and_then(|n| gateway_ports.and_then(|m| m.get(&n)))
            {
                port["gatewayPort"] = json!(p);
            }
        }
    }
    view
}

/// A MultiClusterService with its status: Accepted (or why not) plus the
/// weighted import's Ready and Conflict conditions.
fn mcs_view(state: &State, key: &ServiceKey) -> Value {
    let mut m = crate::model::MultiClusterService::clone(&state.mcs[key]);
    let import = mcs_import_key(&m);
    let mut conditions = Vec::new();
    match state.mcs_for(&import) {
        Some(winner) if winner.metadata.name == m.metadata.name && winner.metadata.namespace == m.metadata.namespace => {
            conditions.push(Condition::new("Accepted", true, "Accepted", format!("weights apply to ServiceImport {import}")));
        }
        Some(winner) => conditions.push(Condition::new(
            "Accepted",
            false,
            "Conflict",
            format!(
                "MultiClusterService {}/{} already weights ServiceImport {import} and is older; delete one of them",
                winner.metadata.namespace, winner.metadata.name
            ),
        )),
        None => {}
    }
    match state.backends.get(&import) {
        Some(b) => conditions.extend(b.conditions.iter().cloned()),
        None => conditions.push(Condition::new(
            "Ready",
            false,
            "ServiceImportNotFound",
            format!(
                "MultiClusterService has no endpoints: ServiceImport {import} no longer exists"
            ),
        )),
    }
    m.status.conditions = conditions;
    serde_json::to_value(m).unwrap_or(Value::Null)
}
