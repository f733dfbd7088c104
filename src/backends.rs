//! The backend computation: a pure, deterministic function from one
//! service's replicated inputs (exports, MultiClusterService, cluster
//! states) to its weighted per-cluster backends.
//!
//! No I/O, no clock, no globals: the hub calls [`compute`] for each service a
//! change touches, and property tests pin its invariants.

use crate::model::{
    manifest::mcs_import_key, Cluster, ClusterId, ClusterState, Condition, Endpoint, Export,
    MultiClusterService, Port, ServiceImport, ServiceKey, ServiceType, SessionAffinity,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Largest weight accepted: keeps sums far from overflow.
pub const MAX_WEIGHT: i64 = 1_000_000;

/// One cluster's part in a service's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBackend {
    pub cluster: ClusterId,
    /// The configured weight; `None` when no MultiClusterService applies
    /// (every healthy exporting cluster then weighs the same).
    pub weight: Option<u64>,
    /// The weight actually used: 0 unless the cluster receives traffic.
    pub effective_weight: u64,
    /// Effective fraction of traffic, in [0, 1].
    pub share: f64,
    /// The cluster can serve the service (reachable, not drained, ready
    /// endpoints).
    pub healthy: bool,
    /// Why the cluster has the share it has, in words.
    pub reason: String,
    /// Ready endpoint addresses: what DNS hands out for this cluster.
    pub addresses: Vec<IpAddr>,
    /// Ready endpoints, for per-endpoint DNS names and SRV records.
    pub endpoints: Vec<Endpoint>,
}

/// The computed backends of one ServiceImport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackends {
    pub service: ServiceKey,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    pub ports: Vec<Port>,
    pub session_affinity: SessionAffinity,
    /// The MultiClusterService whose weights apply, if any.
    pub multi_cluster_service: Option<String>,
    /// Every exporting or listed cluster, sorted by ID.
    pub clusters: Vec<ClusterBackend>,
    pub conditions: Vec<Condition>,
    /// Increases on every change of this service's backends.
    pub revision: u64,
}

impl ServiceBackends {
    /// True when at least one cluster receives traffic.
    pub fn has_healthy_backends(&self) -> bool {
        self.clusters.iter().any(|c| c.effective_weight > 0)
    }

    /// Equality ignoring `revision`: used to decide whether to bump it.
    pub fn same_as(&self, other: &ServiceBackends) -> bool {
        // Spelled out (no clone): a field added later must be named here.
        let Self {
            service,
            service_type,
            ports,
            session_affinity,
            multi_cluster_service,
            clusters,
            conditions,
            revision: _,
        } = self;
        *service == other.service
            && *service_type == other.service_type
            && *ports == other.ports
            && *session_affinity == other.session_affinity
            && *multi_cluster_service == other.multi_cluster_service
            && *clusters == other.clusters
            && *conditions == other.conditions
    }
}

/// `share` is the only float, and it is never NaN: it is set only when the
/// total weight is above zero, and JSON cannot carry a NaN. With `Eq`,
/// comparing two `Arc`s of the same backends is a pointer comparison, which
/// keeps the diffs of consecutive backend maps (DNS publish) cheap.
impl Eq for ClusterBackend {}

/// See [`ClusterBackend`]'s `Eq`.
impl Eq for ServiceBackends {}

/// The longest weighted schedule kept per service; larger weight sums are
/// scaled down proportionally.
const MAX_SCHEDULE: u64 = 1000;

/// Smooth weighted round-robin (as nginx does it): each step adds every
/// weight to its counter, picks the largest counter (lowest index on
/// ties) and subtracts the total from it. Weights are first reduced by
/// their GCD and, if their sum is still above `MAX_SCHEDULE`, scaled down.
pub fn schedule(weights: &[u64]) -> Vec<u16> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_SCHEDULE {
        w = w
            .iter()
            .map(|x| {
                if *x == 0 {
                    0
                } else {
                    (x * MAX_SCHEDULE / sum).max(1)
                }
            })
            .collect();
    }
    let total: i64 = w.iter().map(|x| *x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u16);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Everything the computation reads for one service.
pub struct ServiceInputs<'a> {
    pub service: &'a ServiceKey,
    /// A ServiceImport applied by a user, if any.
    pub declared: Option<&'a ServiceImport>,
    /// Every cluster's export of the service, in any order.
    pub exports: Vec<&'a Export>,
    /// The MultiClusterService weighting this service, if any.
    pub mcs: Option<&'a MultiClusterService>,
    pub clusters: &'a BTreeMap<ClusterId, Cluster>,
}

/// Computes a service's backends; `None` when the service does not exist
/// (nothing exports it and no ServiceImport was applied). `revision` is left
/// at 0 for the caller to assign.
pub fn compute(input: &ServiceInputs<'_>) -> Option<ServiceBackends> {
    if input.exports.is_empty() && input.declared.is_none() {
        return None;
    }
    let mut exports = input.exports.clone();
    // Oldest export first: it wins conflicts. Cluster ID breaks ties so the
    // order of the input never matters.
    exports.sort_by(|a, b| (a.created_unix_ms, &a.cluster).cmp(&(b.created_unix_ms, &b.cluster)));

    let mut conditions = Vec::new();
    let (service_type, ports, session_affinity) =
        resolve_properties(input, &exports, &mut conditions);

    let mcs_name = input
        .mcs
        .map(|m| format!("{}/{}", m.metadata.namespace, m.metadata.name));
    let listed: Option<BTreeMap<&str, u64>> = input.mcs.map(|m| {
        let mut w = BTreeMap::new();
        for b in &m.spec.cluster_backends {
            // Validation rejects negatives on apply; clamp defensively.
            w.insert(b.cluster.as_str(), b.weight.clamp(0, MAX_WEIGHT) as u64);
        }
        w
    });

    let by_cluster: BTreeMap<&str, &Export> =
        exports.iter().map(|e| (e.cluster.as_str(), *e)).collect();
    let mut ids: BTreeSet<&str> = by_cluster.keys().copied().collect();
    if let Some(l) = &listed {
        ids.extend(l.keys().copied());
    }

    let mut clusters = Vec::with_capacity(ids.len());
    for id in ids {
        let export = by_cluster.get(id).copied();
        let endpoints: Vec<Endpoint> = export
            .map(|e| e.ready_endpoints().cloned().collect())
            .unwrap_or_default();
        let mut addresses: Vec<IpAddr> = endpoints.iter().map(|e| e.address).collect();
        addresses.sort();
        addresses.dedup();
        let health = cluster_health(input, id, export, endpoints.is_empty());
        let weight = listed.as_ref().and_then(|l| l.get(id).copied());
        let (effective_weight, reason) = match (&health, &listed, weight) {
            (Err(why), _, _) => (0, why.clone()),
            (Ok(()), Some(_), None) => (
                0,
                format!(
                    "not listed in MultiClusterService {}",
                    mcs_name.as_deref().unwrap_or_default()
                ),
            ),
            (Ok(()), Some(_), Some(0)) => (
                0,
                "weight 0: drained by the MultiClusterService".to_string(),
            ),
            (Ok(()), Some(_), Some(w)) => (w, "Ready".to_string()),
            (Ok(()), None, _) => (1, "Ready".to_string()),
        };
        clusters.push(ClusterBackend {
            cluster: id.to_string(),
            weight,
            effective_weight,
            share: 0.0,
            healthy: health.is_ok(),
            reason,
            addresses,
            endpoints,
        });
    }

    let total: u64 = clusters.iter().map(|c| c.effective_weight).sum();
    if total > 0 {
        for c in &mut clusters {
            c.share = c.effective_weight as f64 / total as f64;
        }
        conditions.push(Condition::new(
            "Ready",
            true,
            "BackendsReady",
            ready_message(&clusters),
        ));
    } else {
        conditions.push(Condition::new(
            "Ready",
            false,
            "NoHealthyBackends",
            no_backends_message(input.service, &clusters),
        ));
    }

    Some(ServiceBackends {
        service: input.service.clone(),
        service_type,
        ports,
        session_affinity,
        multi_cluster_service: mcs_name,
        clusters,
        conditions,
        revision: 0,
    })
}

fn cluster_health(
    input: &ServiceInputs<'_>,
    id: &str,
    export: Option<&Export>,
    no_ready: bool,
) -> Result<(), String> {
    let Some(cluster) = input.clusters.get(id) else {
        return Err(
            "not a member of the ClusterSet (no agent registered this cluster ID)".to_string(),
        );
    };
    match cluster.state() {
        ClusterState::Unreachable => {
            let why = match cluster.lease_revoked {
                true => "its lease was revoked by an operator",
                false => "its lease expired",
            };
            let withdrawn = match cluster.withdrawn {
                true => "; its endpoints were withdrawn after the grace period",
                false => "",
            };
            return Err(format!("cluster unreachable: {why}{withdrawn}"));
        }
        ClusterState::Drained => return Err("cluster drained by an operator".to_string()),
        ClusterState::Healthy => {}
    }
    if cluster.drains(input.service) {
        return Err(format!(
            "{} drained on this cluster by an operator",
            input.service
        ));
    }
    if export.is_none() {
        return Err(format!("does not export {}", input.service));
    }
    if no_ready {
        return Err("no ready endpoints".to_string());
    }
    Ok(())
}

fn ready_message(clusters: &[ClusterBackend]) -> String {
    let parts: Vec<String> = clusters
        .iter()
        .filter(|c| c.effective_weight > 0)
        .map(|c| format!("{} {:.1}%", c.cluster, c.share * 100.0))
        .collect();
    format!("traffic goes to {}", parts.join(", "))
}

fn no_backends_message(service: &ServiceKey, clusters: &[ClusterBackend]) -> String {
    if clusters.is_empty() {
        return format!("MultiClusterService has no endpoints: no cluster exports {service}");
    }
    let parts: Vec<String> = clusters
        .iter()
        .map(|c| format!("{}: {}", c.cluster, c.reason))
        .collect();
    format!("no healthy backends for {service}: {}", parts.join("; "))
}

/// Type, ports and session affinity: from the oldest export, with a
/// `Conflict` condition naming the clusters that disagree; from the applied
/// ServiceImport when nothing exports the service.
fn resolve_properties(
    input: &ServiceInputs<'_>,
    exports: &[&Export],
    conditions: &mut Vec<Condition>,
) -> (ServiceType, Vec<Port>, SessionAffinity) {
    let Some(oldest) = exports.first() else {
        let spec = input.declared.map(|d| d.spec.clone()).unwrap_or_default();
        return (
            spec.service_type,
            spec.ports,
            spec.session_affinity.unwrap_or_default(),
        );
    };
    let mut problems: Vec<(&'static str, String)> = Vec::new();

    let type_dissent: Vec<&str> = exports
        .iter()
        .filter(|e| e.service_type != oldest.service_type)
        .map(|e| e.cluster.as_str())
        .collect();
    if !type_dissent.is_empty() {
        problems.push((
            "TypeConflict",
            format!(
                "type: {} export{} a different type than the oldest export ({} exports {}); using {}",
                type_dissent.join(", "),
                if type_dissent.len() == 1 { "s" } else { "" },
                oldest.cluster,
                oldest.service_type,
                oldest.service_type
            ),
        ));
    }
    let affinity_dissent: Vec<&str> = exports
        .iter()
        .filter(|e| e.session_affinity != oldest.session_affinity)
        .map(|e| e.cluster.as_str())
        .collect();
    if !affinity_dissent.is_empty() {
        problems.push((
            "SessionAffinityConflict",
            format!(
                "sessionAffinity: {} disagree with the oldest export ({} uses {:?})",
                affinity_dissent.join(", "),
                oldest.cluster,
                oldest.session_affinity
            ),
        ));
    }

    // Ports are the union over exports; a port number whose protocol or
    // name differs from the first (oldest) export that declared it conflicts.
    let mut ports: BTreeMap<u16, (Port, &str)> = BTreeMap::new();
    let mut port_dissent: BTreeMap<u16, (String, BTreeSet<&str>)> = BTreeMap::new();
    for e in exports {
        for p in &e.ports {
            match ports.get(&p.port) {
                None => {
                    ports.insert(p.port, (p.clone(), e.cluster.as_str()));
                }
                Some((kept, owner)) if kept.protocol != p.protocol || kept.name != p.name => {
                    port_dissent
                        .entry(p.port)
                        .or_insert_with(|| (owner.to_string(), BTreeSet::new()))
                        .1
                        .insert(e.cluster.as_str());
                }
                Some(_) => {}
            }
        }
    }
    for (port, (owner, dissent)) in &port_dissent {
        let kept = &ports[port].0;
        problems.push((
            "PortConflict",
            format!(
                "port {port}: {} declare{} it differently than the oldest export ({owner}: {}/{}); using {owner}'s",
                dissent.iter().copied().collect::<Vec<_>>().join(", "),
                if dissent.len() == 1 { "s" } else { "" },
                if kept.name.is_empty() { "unnamed" } else { &kept.name },
                kept.protocol
            ),
        ));
    }
    if let Some((reason, _)) = problems.first() {
        let message = problems
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        conditions.push(Condition::new("Conflict", true, reason, message));
    }
    (
        oldest.service_type,
        ports.into_values().map(|(p, _)| p).collect(),
        oldest.session_affinity,
    )
}

/// Why a MultiClusterService cannot be applied. Messages name the object and
/// say what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WeightError {
    #[error("MultiClusterService {mcs}: weight {weight} for cluster {cluster} is negative; weights are relative and must be 0 or more")]
    Negative {
        mcs: String,
        cluster: String,
        weight: i64,
    },
    #[error("MultiClusterService {mcs}: weight {weight} for cluster {cluster} is above the maximum of {MAX_WEIGHT}")]
    TooLarge {
        mcs: String,
        cluster: String,
        weight: i64,
    },
    #[error("MultiClusterService {mcs}: cluster {cluster:?} is not a member of the ClusterSet (members: {members})")]
    UnknownCluster {
        mcs: String,
        cluster: String,
        members: String,
    },
    #[error("MultiClusterService {mcs}: cluster {cluster} is listed twice")]
    Duplicate { mcs: String, cluster: String },
    #[error("MultiClusterService {mcs}: every cluster weight is 0, which would send traffic nowhere; give at least one cluster a positive weight")]
    AllZero { mcs: String },
    #[error("MultiClusterService {mcs}: ServiceImport {import} does not exist (no cluster exports it and none was applied); apply the ServiceImport or export the service first")]
    MissingImport { mcs: String, import: ServiceKey },
}

/// Checks a MultiClusterService against the ClusterSet's members and the
/// services that exist.
pub fn validate_mcs(
    mcs: &MultiClusterService,
    clusters: &BTreeMap<ClusterId, Cluster>,
    import_exists: impl Fn(&ServiceKey) -> bool,
) -> Result<(), WeightError> {
    let name = format!("{}/{}", mcs.metadata.namespace, mcs.metadata.name);
    let mut seen = BTreeSet::new();
    for b in &mcs.spec.cluster_backends {
        if b.weight < 0 {
            return Err(WeightError::Negative {
                mcs: name,
                cluster: b.cluster.clone(),
                weight: b.weight,
            });
        }
        if b.weight > MAX_WEIGHT {
            return Err(WeightError::TooLarge {
                mcs: name,
                cluster: b.cluster.clone(),
                weight: b.weight,
            });
        }
        if !clusters.contains_key(&b.cluster) {
            let members = clusters.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(WeightError::UnknownCluster {
                mcs: name,
                cluster: b.cluster.clone(),
                members,
            });
        }
        if !seen.insert(b.cluster.as_str()) {
            return Err(WeightError::Duplicate {
                mcs: name,
                cluster: b.cluster.clone(),
            });
        }
    }
    if !mcs.spec.cluster_backends.is_empty()
        && mcs.spec.cluster_backends.iter().all(|b| b.weight == 0)
    {
        return Err(WeightError::AllZero { mcs: name });
    }
    let import = mcs_import_key(mcs);
    if !import_exists(&import) {
        return Err(WeightError::MissingImport { mcs: name, import });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_exact_and_smooth() {
        let s = schedule(&[60, 40, 0]);
        assert_eq!(s, vec![0, 1, 0, 1, 0]);
        let s = schedule(&[80, 30]);
        assert_eq!(s.len(), 11);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 8);
        assert!(schedule(&[0, 0]).is_empty());
        let big = schedule(&[1_000_000, 1]);
        assert!(big.len() <= 1001 && big.contains(&1));
    }

    use crate::model::resources::{ClusterBackendRef, MultiClusterServiceSpec, ServiceImportRef};
    use crate::model::{ClusterSpec, ObjectMeta};
    use proptest::prelude::*;

    fn cluster(id: &str, reachable: bool, drained: bool) -> (ClusterId, Cluster) {
        let mut c = Cluster::new(ClusterSpec {
            id: id.into(),
            ..Default::default()
        });
        c.reachable = reachable;
        c.drained = drained;
        (id.into(), c)
    }

    fn export(cluster: &str, ready: usize, created: i64) -> Export {
        let addrs = (0..ready).map(|i| IpAddr::from([10, cluster.len() as u8, 0, i as u8 + 1]));
        let mut e = crate::model::fixtures::export(cluster, "app/api", 8080, addrs);
        e.created_unix_ms = created;
        e
    }

    fn mcs(weights: &[(&str, i64)]) -> MultiClusterService {
        MultiClusterService {
            api_version: "gateway.networking.k8s.io/v1beta1".into(),
            kind: "MultiClusterService".into(),
            metadata: ObjectMeta {
                name: "global".into(),
                namespace: "app".into(),
                ..Default::default()
            },
            spec: MultiClusterServiceSpec {
                service_import: ServiceImportRef {
                    name: "api".into(),
                    namespace: "app".into(),
                },
                cluster_backends: weights
                    .iter()
                    .map(|(c, w)| ClusterBackendRef {
                        cluster: c.to_string(),
                        weight: *w,
                    })
                    .collect(),
            },
            status: Default::default(),
        }
    }

    fn run(
        clusters: &BTreeMap<ClusterId, Cluster>,
        exports: &[Export],
        m: Option<&MultiClusterService>,
    ) -> ServiceBackends {
        let key = ServiceKey::new("app", "api").unwrap();
        compute(&ServiceInputs {
            service: &key,
            declared: None,
            exports: exports.iter().collect(),
            mcs: m,
            clusters,
        })
        .unwrap()
    }

    fn share(b: &ServiceBackends, id: &str) -> f64 {
        b.clusters
            .iter()
            .find(|c| c.cluster == id)
            .map(|c| c.share)
            .unwrap_or(0.0)
    }

    fn three() -> BTreeMap<ClusterId, Cluster> {
        [
            cluster("a", true, false),
            cluster("b", true, false),
            cluster("c", true, false),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn relative_weights_need_not_sum_to_100() {
        let b = run(
            &three(),
            &[export("a", 1, 1), export("b", 1, 2)],
            Some(&mcs(&[("a", 80), ("b", 30)])),
        );
        assert!((share(&b, "a") - 80.0 / 110.0).abs() < 1e-12);
        assert!((share(&b, "b") - 30.0 / 110.0).abs() < 1e-12);
    }

    #[test]
    fn same_as_ignores_the_revision_only() {
        let b = run(&three(), &[export("a", 1, 1), export("b", 1, 2)], None);
        let mut bumped = b.clone();
        bumped.revision += 1;
        assert!(b.same_as(&bumped) && bumped.same_as(&b));
        let mut moved = b.clone();
        moved.clusters[0]
            .addresses
            .push("127.0.0.99".parse().unwrap());
        assert!(!b.same_as(&moved));
        let mut typed = b.clone();
        typed.service_type = crate::model::ServiceType::Headless;
        assert!(!b.same_as(&typed));
    }

    #[test]
    fn unlisted_exporting_cluster_gets_nothing() {
        let b = run(
            &three(),
            &[export("a", 1, 1), export("b", 1, 2), export("c", 1, 3)],
            Some(&mcs(&[("a", 60), ("b", 40)])),
        );
        assert_eq!(share(&b, "c"), 0.0);
        let c = b.clusters.iter().find(|c| c.cluster == "c").unwrap();
        assert!(
            c.reason
                .contains("not listed in MultiClusterService app/global"),
            "{}",
            c.reason
        );
        assert!((share(&b, "a") - 0.6).abs() < 1e-12);
    }

    #[test]
    fn zero_weight_drains_and_no_mcs_means_equal() {
        let b = run(
            &three(),
            &[export("a", 1, 1), export("b", 1, 2)],
            Some(&mcs(&[("a", 0), ("b", 5)])),
        );
        assert_eq!(share(&b, "a"), 0.0);
        assert_eq!(share(&b, "b"), 1.0);
        let b = run(
            &three(),
            &[export("a", 1, 1), export("b", 1, 2), export("c", 2, 3)],
            None,
        );
        for id in ["a", "b", "c"] {
            assert!((share(&b, id) - 1.0 / 3.0).abs() < 1e-12);
        }
    }

    #[test]
    fn unhealthy_share_moves_to_healthy_in_proportion() {
        let mut clusters = three();
        clusters.get_mut("a").unwrap().reachable = false;
        let m = mcs(&[("a", 50), ("b", 30), ("c", 10)]);
        let b = run(
            &clusters,
            &[export("a", 1, 1), export("b", 1, 2), export("c", 1, 3)],
            Some(&m),
        );
        assert_eq!(share(&b, "a"), 0.0);
        assert!((share(&b, "b") - 0.75).abs() < 1e-12);
        assert!((share(&b, "c") - 0.25).abs() < 1e-12);
        assert!(b.clusters[0].reason.contains("lease expired"));
        // No ready endpoints is unhealthy too.
        let b = run(
            &three(),
            &[export("a", 0, 1), export("b", 1, 2)],
            Some(&mcs(&[("a", 1), ("b", 1)])),
        );
        assert_eq!(share(&b, "b"), 1.0);
        assert_eq!(b.clusters[0].reason, "no ready endpoints");
    }

    #[test]
    fn a_service_drain_or_a_revoked_lease_moves_that_share_only() {
        let mut clusters = three();
        let api = ServiceKey::new("app", "api").unwrap();
        let other = ServiceKey::new("app", "other").unwrap();
        let a = clusters.get_mut("a").unwrap();
        a.drained_services.insert(other);
        let exports = [export("a", 1, 1), export("b", 1, 2), export("c", 1, 3)];
        // Draining another service on a changes nothing for this one.
        let b = run(&clusters, &exports, None);
        assert!((share(&b, "a") - 1.0 / 3.0).abs() < 1e-12);
        clusters.get_mut("a").unwrap().drained_services.insert(api);
        let b = run(&clusters, &exports, None);
        assert_eq!(share(&b, "a"), 0.0);
        assert_eq!(share(&b, "b"), 0.5);
        assert!(b.clusters[0]
            .reason
            .contains("app/api drained on this cluster"));
        // A revoked lease is unreachable, even while `reachable` still holds.
        let c = clusters.get_mut("c").unwrap();
        c.lease_revoked = true;
        assert_eq!(c.state(), ClusterState::Unreachable);
        let b = run(&clusters, &exports, None);
        assert_eq!(share(&b, "b"), 1.0);
        assert!(b.clusters[2].reason.contains("lease was revoked"));
    }

    #[test]
    fn no_healthy_backends_names_each_cluster() {
        let mut clusters = three();
        clusters.get_mut("b").unwrap().drained = true;
        let b = run(&clusters, &[export("a", 0, 1), export("b", 1, 2)], None);
        assert!(!b.has_healthy_backends());
        let ready = b.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "NoHealthyBackends");
        assert!(
            ready.message.contains("a: no ready endpoints"),
            "{}",
            ready.message
        );
        assert!(
            ready.message.contains("b: cluster drained"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn declared_import_without_exports_says_nobody_exports_it() {
        let key = ServiceKey::new("app", "api").unwrap();
        let si: ServiceImport = serde_yaml::from_str(
            "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: api, namespace: app}\nspec: {type: ClusterSetIP, ports: [{port: 80}]}\n",
        )
        .unwrap();
        let clusters = three();
        let b = compute(&ServiceInputs {
            service: &key,
            declared: Some(&si),
            exports: vec![],
            mcs: None,
            clusters: &clusters,
        })
        .unwrap();
        assert_eq!(b.ports[0].port, 80);
        assert!(b.conditions[0]
            .message
            .contains("no cluster exports app/api"));
        assert!(compute(&ServiceInputs {
            service: &key,
            declared: None,
            exports: vec![],
            mcs: None,
            clusters: &clusters
        })
        .is_none());
    }

    #[test]
    fn oldest_export_wins_conflicts_and_condition_names_clusters() {
        let mut old = export("b", 1, 1);
        old.service_type = ServiceType::Headless;
        let mut newer = export("a", 1, 5);
        newer.ports[0].protocol = "UDP".into();
        let b = run(&three(), &[newer, old, export("c", 1, 9)], None);
        assert_eq!(b.service_type, ServiceType::Headless);
        let conflict = b.conditions.iter().find(|c| c.type_ == "Conflict").unwrap();
        assert_eq!(conflict.reason, "TypeConflict");
        assert!(
            conflict.message.contains("a, c export a different type"),
            "{}",
            conflict.message
        );
        assert!(
            conflict.message.contains("b exports Headless"),
            "{}",
            conflict.message
        );
        assert!(
            conflict
                .message
                .contains("port 8080: a declares it differently"),
            "{}",
            conflict.message
        );
        assert_eq!(b.ports[0].protocol, "TCP");
    }

    #[test]
    fn validation_names_the_problem() {
        let clusters = three();
        let exists = |_: &ServiceKey| true;
        let e = validate_mcs(&mcs(&[("a", -5)]), &clusters, exists)
            .unwrap_err()
            .to_string();
        assert!(e.contains("weight -5 for cluster a is negative"), "{e}");
        let e = validate_mcs(&mcs(&[("zz", 5)]), &clusters, exists)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"zz\" is not a member of the ClusterSet (members: a, b, c)"),
            "{e}"
        );
        let e = validate_mcs(&mcs(&[("a", 0), ("b", 0)]), &clusters, exists)
            .unwrap_err()
            .to_string();
        assert!(e.contains("every cluster weight is 0"), "{e}");
        let e = validate_mcs(&mcs(&[("a", 1)]), &clusters, |_| false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ServiceImport app/api does not exist"), "{e}");
        let e = validate_mcs(&mcs(&[("a", 1), ("a", 2)]), &clusters, exists)
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
        assert!(validate_mcs(&mcs(&[("a", 80), ("b", 30)]), &clusters, exists).is_ok());
    }

    /// A random clusterset around one service: up to five clusters with
    /// random health, exports with 0-3 ready endpoints, optional weights.
    fn scenario() -> impl Strategy<
        Value = (
            BTreeMap<ClusterId, Cluster>,
            Vec<Export>,
            Option<MultiClusterService>,
        ),
    > {
        let ids = ["c0", "c1", "c2", "c3", "c4"];
        (
            proptest::collection::vec(
                (
                    any::<bool>(),
                    any::<bool>(),
                    0usize..4,
                    any::<bool>(),
                    0i64..100,
                    0i64..4,
                ),
                5,
            ),
            any::<bool>(),
        )
            .prop_map(move |(per, with_mcs)| {
                let mut clusters = BTreeMap::new();
                let mut exports = Vec::new();
                let mut weights = Vec::new();
                for (i, (reachable, drained, ready, exports_it, weight, created)) in
                    per.into_iter().enumerate()
                {
                    let (id, c) = cluster(ids[i], reachable || i % 2 == 0, drained && i % 3 == 0);
                    clusters.insert(id, c);
                    if exports_it || i == 0 {
                        exports.push(export(ids[i], ready, created));
                    }
                    if weight % 5 != 0 {
                        weights.push((ids[i], weight));
                    }
                }
                let m = (with_mcs && !weights.is_empty()).then(|| mcs(&weights));
                (clusters, exports, m)
            })
    }

    proptest! {
        #[test]
        fn shares_sum_to_one_when_any_backend_is_healthy((clusters, exports, m) in scenario()) {
            let b = run(&clusters, &exports, m.as_ref());
            let sum: f64 = b.clusters.iter().map(|c| c.share).sum();
            if b.has_healthy_backends() {
                prop_assert!((sum - 1.0).abs() < 1e-9, "sum {sum}");
            } else {
                prop_assert_eq!(sum, 0.0);
                prop_assert!(b.conditions.iter().any(|c| c.reason == "NoHealthyBackends"));
            }
        }

        #[test]
        fn unhealthy_or_zero_weight_clusters_get_no_share((clusters, exports, m) in scenario()) {
            let b = run(&clusters, &exports, m.as_ref());
            for c in &b.clusters {
                if !c.healthy || c.weight == Some(0) || (m.is_some() && c.weight.is_none()) {
                    prop_assert_eq!(c.share, 0.0, "{} got a share: {}", c.cluster, c.reason);
                }
                if c.share > 0.0 {
                    prop_assert!(!c.addresses.is_empty());
                }
            }
            // Shares of receiving clusters are proportional to their weights.
            let recv: Vec<_> = b.clusters.iter().filter(|c| c.share > 0.0).collect();
            for pair in recv.windows(2) {
                let lhs = pair[0].share * pair[1].effective_weight as f64;
                let rhs = pair[1].share * pair[0].effective_weight as f64;
                prop_assert!((lhs - rhs).abs() < 1e-9);
            }
        }

        #[test]
        fn result_does_not_depend_on_input_order((clusters, exports, m) in scenario(), seed in any::<u64>()) {
            let a = run(&clusters, &exports, m.as_ref());
            let mut shuffled = exports.clone();
            let mut m2 = m.clone();
            // Deterministic permutation from the seed.
            let n = shuffled.len();
            for i in (1..n).rev() {
                shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % (i + 1));
            }
            if let Some(m2) = m2.as_mut() {
                m2.spec.cluster_backends.reverse();
            }
            let b = run(&clusters, &shuffled, m2.as_ref());
            prop_assert_eq!(a, b);
        }
    }
}
