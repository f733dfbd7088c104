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
    #[error("unknown kind {0:?}; use clusters, exports, imports, mcs or backends")]
    UnknownKind(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Key(#[from] crate::model::KeyError),
}

/// Reads `kind`, optionally one object `name` (NS/NAME, or a cluster ID).
pub fn get(state: &State, kind: &str, name: &str) -> Result<Value, ReadError> {
    let kind = match kind {
        "cluster" | "clusters" => "clusters",
        "export" | "exports" => "exports",
        "import" | "imports" | "serviceimport" | "serviceimports" => "imports",
        "mcs" | "multiclusterservice" | "multiclusterservices" => "mcs",
        "backend" | "backends" => "backends",
        other => return Err(ReadError::UnknownKind(other.to_string())),
    };
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
            .map(|k| import_view(state, k))
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
    })
}

/// A ServiceImport in its Kubernetes form, spec and status derived from the
/// computed backends.
fn import_view(state: &State, key: &ServiceKey) -> Value {
    let b = &state.backends[key];
    let declared = state.imports.get(key);
    let metadata = declared
        .map(|d| d.metadata.clone())
        .unwrap_or_else(|| ObjectMeta {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
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
    serde_json::to_value(si).unwrap_or(Value::Null)
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
