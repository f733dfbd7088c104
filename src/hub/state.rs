//! The replicated state machine: commands, their deterministic application,
//! and the derived backends, recomputed only for the services a command
//! touches.
//!
//! Every replica applies the same [`Command`]s in log order and ends in the
//! same [`State`]. Validation happens twice: on the replica that proposes (so
//! the user gets an error without a raft round trip) and here at apply time
//! (so a command that became invalid in between changes nothing).

use crate::backends::{self, ServiceBackends, ServiceInputs, WeightError};
use crate::model::manifest::{mcs_import_key, Resource};
use crate::model::{
    validate_cluster_id, Cluster, ClusterBackendRef, ClusterId, ClusterSpec, ClusterState, Export,
    MultiClusterService, ServiceImport, ServiceKey, ServiceMap,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A state change, as it travels through the raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// An agent joined (or re-joined) the ClusterSet.
    RegisterCluster { spec: ClusterSpec },
    /// The lease tracker saw a cluster's lease expire or resume.
    SetReachable { cluster: ClusterId, reachable: bool },
    /// An operator or a drill drains (or restores) a whole cluster.
    SetDrained { cluster: ClusterId, drained: bool },
    /// An operator or a drill drains (or restores) one service on one
    /// cluster: that cluster's share of the service moves to the others.
    DrainService {
        cluster: ClusterId,
        service: ServiceKey,
        drained: bool,
    },
    /// An operator or a drill revokes (or restores) a cluster's lease: the
    /// cluster is unreachable at once, and stays so whatever its agent
    /// renews, until restored.
    RevokeLease { cluster: ClusterId, revoked: bool },
    /// The leader saw a cluster unreachable for longer than the lease grace
    /// period: other clusters drop the EndpointSlices they import from it.
    /// Cleared when the cluster is reachable again.
    WithdrawCluster { cluster: ClusterId },
    /// A cluster's exports: a full resync or a delta.
    SyncExports {
        cluster: ClusterId,
        revision: u64,
        full: bool,
        upserts: Vec<Export>,
        deletes: Vec<ServiceKey>,
    },
    /// One part of a cluster's full export resync, for a resync too large
    /// for one entry. Each part's exports are upserted when it applies;
    /// the exports of the cluster missing from every part are removed, and
    /// the revision recorded, only when the `last` part applies. `attempt`
    /// (chosen by the replica that received the resync) tells the parts of
    /// one resync from another's, `part` counts from 0: part 0 starts a
    /// resync over, a part that does not continue the resync under way is
    /// refused, and a part applied again (a retried proposal) changes
    /// nothing it had not already.
    ResyncExports {
        cluster: ClusterId,
        revision: u64,
        attempt: u64,
        part: u32,
        last: bool,
        upserts: Vec<Export>,
    },
    /// Objects applied by a user, all or nothing. `now` (RFC 3339) stamps
    /// new objects' creationTimestamp, chosen by the proposer so every
    /// replica stores the same value.
    Apply {
        objects: Vec<AppliedObject>,
        now: String,
    },
    /// Per-cluster weights merged into a MultiClusterService.
    SetWeights {
        mcs: ServiceKey,
        weights: BTreeMap<ClusterId, i64>,
    },
    /// Records (or forgets, with `None`) a hub replica's raft address,
    /// before it is added to (or after it is removed from) the raft group.
    SetMember { id: u64, address: Option<String> },
    /// Every MultiClusterService a member cluster holds, relayed by its
    /// agent. Each is accepted or refused on its own (one
    /// [`RelayResult`] per object in the reply lines); those the cluster
    /// relayed before and no longer holds are deleted.
    RelayMultiClusterServices {
        cluster: ClusterId,
        objects: Vec<MultiClusterService>,
        now: String,
    },
    /// The ClusterSet CA, generated (or loaded) by the first leader. The
    /// first one applied stays: later ones change nothing.
    InitCa { cert_pem: String, key_pem: String },
    /// A bootstrap token for `cluster` (only its secret's SHA-256 is kept).
    /// Expired tokens are forgotten at the same time.
    CreateToken {
        id: String,
        cluster: ClusterId,
        secret_sha256: String,
        expires_unix_ms: i64,
        now_unix_ms: i64,
        #[serde(default)]
        role: TokenRole,
    },
    /// A joining agent spends a token: it must exist, match, be unused and
    /// unexpired at `now_unix_ms`. The reply lines are the token's cluster
    /// and role.
    ConsumeToken {
        id: String,
        secret_sha256: String,
        now_unix_ms: i64,
    },
    /// A cluster's east-west gateway announced itself: where other gateways
    /// reach it, the range its outbound listeners get addresses from, and
    /// in port mode (a gateway in a pod) the range of ports it listens on
    /// instead, one per imported service port.
    RegisterGateway {
        cluster: ClusterId,
        inbound: String,
        outbound_cidr: String,
        #[serde(default)]
        outbound_ports: String,
    },
    /// Where a gateway's configuration stands: the version last offered
    /// to it, the last it applied, and the last it refused (and why), as of
    /// `now_unix_ms`. Recorded at most twice a second per gateway.
    GatewayStatus {
        cluster: ClusterId,
        offered_version: u64,
        applied_version: u64,
        rejected: Option<(u64, String)>,
        now_unix_ms: i64,
    },
}

/// A cluster's east-west gateway as the hub keeps it. Listener addresses
/// are allocated here, in the state machine, so that every replica agrees
/// and an address stays with its service for as long as both exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRecord {
    pub inbound: String,
    pub outbound_cidr: String,
    /// The outbound listener address of each imported service: where the
    /// gateway listens, or in port mode the service's ClusterSetIP in the
    /// cluster (the ClusterIP the agent gives the Service it derives).
    pub listeners: BTreeMap<ServiceKey, std::net::Ipv4Addr>,
    /// Port mode: the range of listener ports (`FIRST-LAST`); empty in
    /// address mode.
    #[serde(default)]
    pub outbound_ports: String,
    /// Port mode: the gateway's listener port of each imported service
    /// port (TCP), by service port.
    #[serde(default)]
    pub ports: BTreeMap<ServiceKey, BTreeMap<u16, u16>>,
    /// Counts the changes to `listeners` and `ports`, so that watchers of
    /// the allocations compare one number, not the maps.
    #[serde(default)]
    pub allocations: u64,
    /// Port mode: the range ran out, so some service port waits for a
    /// listener port; the next one freed goes to it.
    #[serde(default)]
    pub ports_exhausted: bool,
    /// The last configuration version offered to the gateway.
    #[serde(default)]
    pub offered_version: u64,
    /// The last configuration version the gateway applied.
    pub applied_version: u64,
    /// The last configuration it refused, and why.
    pub rejected: Option<(u64, String)>,
    /// Since when it has been behind the offered version (unix ms).
    #[serde(default)]
    pub behind_since_unix_ms: Option<i64>,
}

impl GatewayRecord {
    /// Port mode: see `State::allocate_ports`. Whether anything changed.
    fn allocate_ports(
        &mut self,
        backends: &ServiceMap<ServiceBackends>,
        touched: Option<&BTreeSet<ServiceKey>>,
    ) -> bool {
        // Address mode is checked first: this runs on every applied command.
        let range = match self.outbound_ports.is_empty() {
            true => None,
            false => port_range(&self.outbound_ports).ok(),
        };
        let Some(range) = range else {
            let had = !self.ports.is_empty();
            self.ports.clear();
            return had;
        };
        let mut keys: Vec<ServiceKey> = match touched {
            Some(t) => t.iter().cloned().collect(),
            None => self.ports.keys().chain(backends.keys()).cloned().collect(),
        };
        let tcp_ports = |key: &ServiceKey| {
            backends.get(key).map(|b| {
                b.ports
                    .iter()
                    .filter(|p| p.is_tcp())
                    .map(|p| p.port)
                    .collect::<BTreeSet<u16>>()
            })
        };
        // Free first, so that a port freed here can be given again.
        let mut changed = false;
        let mut missing = false;
        for key in &keys {
            let Some(wanted) = tcp_ports(key) else {
                changed |= self.ports.remove(key).is_some();
                continue;
            };
            let by_port = self.ports.entry(key.clone()).or_default();
            let before = by_port.len();
            by_port.retain(|p, _| wanted.contains(p));
            changed |= by_port.len() != before;
            missing |= wanted.iter().any(|p| !by_port.contains_key(p));
            if by_port.is_empty() {
                self.ports.remove(key);
            }
        }
        if changed && self.ports_exhausted && touched.is_some() {
            // Ports were freed while others wait: every service is looked at.
            keys = backends.keys().cloned().collect();
            missing = true;
        }
        if !missing {
            return changed;
        }
        self.ports_exhausted = false;
        let used: BTreeSet<u16> = self
            .ports
            .values()
            .flat_map(|m| m.values().copied())
            .collect();
        let mut free = range.filter(|p| !used.contains(p));
        for key in &keys {
            for port in tcp_ports(key).unwrap_or_default() {
                if self.ports.get(key).is_some_and(|m| m.contains_key(&port)) {
                    continue;
                }
                // The range is full: the port gets no listener here (its
                // configuration says so) until one is freed.
                let Some(listener) = free.next() else {
                    self.ports_exhausted = true;
                    return changed;
                };
                self.ports
                    .entry(key.clone())
                    .or_default()
                    .insert(port, listener);
                changed = true;
            }
        }
        changed
    }
}

/// The ports of a `FIRST-LAST` range (both included, 1024 to 65535).
pub fn port_range(range: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (first, last) = range
        .split_once('-')
        .ok_or_else(|| format!("{range:?} is not a port range (FIRST-LAST)"))?;
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p >= 1024)
            .ok_or_else(|| format!("{range:?}: {p:?} is not a port from 1024 to 65535"))
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if first > last {
        return Err(format!("{range:?}: the first port is above the last"));
    }
    Ok(first..=last)
}

/// An IPv4 CIDR's usable addresses (network and broadcast excluded below /31).
pub fn cidr_hosts(cidr: &str) -> Result<std::ops::RangeInclusive<u32>, String> {
    let (ip, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not an IPv4 CIDR (a.b.c.d/len)"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{cidr:?}: {ip:?} is not an IPv4 address"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| (16..=32).contains(l))
        .ok_or_else(|| format!("{cidr:?}: the prefix length must be 16 to 32"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let base = u32::from(ip) & mask;
    let last = base | !mask;
    Ok(if len >= 31 {
        base..=last
    } else {
        base + 1..=last - 1
    })
}

/// The ClusterSet CA, replicated so that every hub replica can issue and
/// verify certificates. The key is a secret: the data directory must be
/// readable by the hub only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaRecord { .. }")
    }
}

/// A bootstrap token as the hub keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub cluster: ClusterId,
    pub secret_sha256: String,
    pub expires_unix_ms: i64,
    pub used: bool,
    #[serde(default)]
    pub role: TokenRole,
}

/// What a token makes its holder: the cluster's agent or its gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenRole {
    #[default]
    Agent,
    Gateway,
}

impl TokenRole {
    /// The identity a certificate for this role and cluster carries.
    pub fn identity(self, cluster: &str) -> crate::identity::Identity {
        match self {
            TokenRole::Agent => crate::identity::Identity::Cluster(cluster.to_string()),
            TokenRole::Gateway => crate::identity::Identity::Gateway(cluster.to_string()),
        }
    }
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRole::Agent => "agent",
            TokenRole::Gateway => "gateway",
        })
    }
}

/// Annotation naming the cluster a MultiClusterService was relayed from.
pub const RELAYED_FROM: &str = "switchyard.io/relayed-from";

/// The outcome of one relayed MultiClusterService, as a JSON reply line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayResult {
    pub namespace: String,
    pub name: String,
    pub accepted: bool,
    /// `Accepted`, `Conflict` (another owner) or `Invalid`.
    pub reason: String,
    /// Why not, or what happened.
    pub message: String,
}

/// An object `switchyard apply` can store in the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AppliedObject {
    ServiceImport(ServiceImport),
    MultiClusterService(MultiClusterService),
}

impl AppliedObject {
    fn key(&self) -> ServiceKey {
        let m = match self {
            AppliedObject::ServiceImport(o) => &o.metadata,
            AppliedObject::MultiClusterService(o) => &o.metadata,
        };
        ServiceKey {
            namespace: m.namespace.as_str().into(),
            name: m.name.as_str().into(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            AppliedObject::ServiceImport(_) => "serviceimport",
            AppliedObject::MultiClusterService(_) => "multiclusterservice",
        }
    }
}

/// Why a command was rejected. Each message names the object and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("{0}")]
    Invalid(String),
    #[error("cluster {0} is not registered; its agent must register before exporting")]
    UnknownCluster(ClusterId),
    #[error("MultiClusterService {0} not found")]
    McsNotFound(ServiceKey),
    #[error("{0}: ServiceExport objects are applied in a member cluster, where that cluster's agent exports the Service; the hub cannot export a service on a cluster's behalf")]
    ExportOnHub(String),
    #[error("{0} appears twice in the manifest")]
    Duplicate(String),
    #[error("bootstrap token {id} is {why}; create a new one with `switchyard token create --cluster <id>`")]
    Token { id: String, why: String },
}

/// A cluster's full export resync in parts ([`Command::ResyncExports`]):
/// the one under way, or the last one completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportResync {
    /// Which resync (chosen by the replica that received it).
    pub attempt: u64,
    /// The export revision it brings.
    pub revision: u64,
    /// The part it expects next; lower parts are replays.
    pub next_part: u32,
    /// Its last part has been applied.
    pub complete: bool,
    /// The services of the parts applied so far (emptied on completion):
    /// the cluster's exports not among them go when the last part applies.
    pub seen: imbl::OrdSet<ServiceKey>,
}

/// What the hub knows, replicated. Derived `backends` are part of it so
/// that their revisions survive snapshots and restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub clusters: BTreeMap<ClusterId, Cluster>,
    /// Exports by service, then by cluster.
    pub exports: ServiceMap<BTreeMap<ClusterId, Export>>,
    /// The last export revision applied per cluster.
    pub export_revisions: BTreeMap<ClusterId, u64>,
    /// Each cluster's latest full export resync in parts.
    #[serde(default)]
    pub export_resyncs: BTreeMap<ClusterId, ExportResync>,
    /// ServiceImports applied by users.
    pub imports: ServiceMap<ServiceImport>,
    /// MultiClusterServices by their own namespace/name.
    pub mcs: ServiceMap<MultiClusterService>,
    /// Computed backends per ServiceImport.
    pub backends: ServiceMap<ServiceBackends>,
    /// Raft addresses of hub replicas added or removed at run time; the
    /// `--peers` flag covers the initial members.
    #[serde(default)]
    pub members: BTreeMap<u64, String>,
    /// The ClusterSet CA, once the first leader created it.
    #[serde(default)]
    pub ca: Option<CaRecord>,
    /// Bootstrap tokens by ID.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    /// East-west gateways by cluster.
    #[serde(default)]
    pub gateways: BTreeMap<ClusterId, GatewayRecord>,
    /// The raft index of the last applied command.
    pub applied_index: u64,
}

/// What applying a command did: reply lines and the services whose
/// backends were recomputed.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub recomputed: BTreeSet<ServiceKey>,
}

impl State {
    /// True when a ServiceImport of that key exists (exported or applied).
    pub fn import_exists(&self, key: &ServiceKey) -> bool {
        self.exports.get(key).is_some_and(|e| !e.is_empty()) || self.imports.contains_key(key)
    }

    /// Number of exports across all clusters.
    pub fn export_count(&self) -> usize {
        self.exports.values().map(|m| m.len()).sum()
    }

    /// The MultiClusterService that weights `import`: the oldest of those
    /// that reference it (creationTimestamp, then name).
    pub fn mcs_for(&self, import: &ServiceKey) -> Option<&MultiClusterService> {
        self.mcs
            .values()
            .map(|m| &**m)
            .filter(|m| &mcs_import_key(m) == import)
            .min_by(|a, b| {
                (&a.metadata.creation_timestamp, &a.metadata.name)
                    .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
            })
    }

    /// Checks a command against the current state without changing it
    /// (and without copying it): everything `apply` could refuse.
    pub fn validate(&self, cmd: &Command) -> Result<(), StateError> {
        match cmd {
            Command::RegisterCluster { spec } => {
                validate_cluster_id(&spec.id).map_err(|e| StateError::Invalid(e.to_string()))
            }
            Command::DrainService {
                cluster,
                service,
                drained: true,
            } if self.clusters.contains_key(cluster)
                && !self
                    .exports
                    .get(service)
                    .is_some_and(|by| by.contains_key(cluster)) =>
            {
                Err(StateError::Invalid(format!(
                    "cluster {cluster} does not export {service}: nothing to drain"
                )))
            }
            Command::SetReachable { cluster, .. }
            | Command::SetDrained { cluster, .. }
            | Command::DrainService { cluster, .. }
            | Command::RevokeLease { cluster, .. }
            | Command::WithdrawCluster { cluster } => match self.clusters.contains_key(cluster) {
                true => Ok(()),
                false => Err(StateError::UnknownCluster(cluster.clone())),
            },
            Command::SyncExports {
                cluster, upserts, ..
            } => self.check_exports(cluster, upserts),
            Command::ResyncExports {
                cluster,
                attempt,
                part,
                upserts,
                ..
            } => {
                self.check_exports(cluster, upserts)?;
                self.check_resync_part(cluster, *attempt, *part)
            }
            Command::Apply { objects, .. } => self.validate_objects(objects),
            Command::RelayMultiClusterServices {
                cluster, objects, ..
            } => {
                if !self.clusters.contains_key(cluster) {
                    return Err(StateError::UnknownCluster(cluster.clone()));
                }
                let mut seen = BTreeSet::new();
                for m in objects {
                    let name = format!(
                        "multiclusterservice {}/{}",
                        m.metadata.namespace, m.metadata.name
                    );
                    if !seen.insert(name.clone()) {
                        return Err(StateError::Duplicate(name));
                    }
                }
                Ok(())
            }
            Command::SetWeights { mcs, weights } => self.merged_mcs(mcs, weights).map(|_| ()),
            Command::InitCa { .. } => Ok(()),
            Command::RegisterGateway {
                cluster,
                inbound,
                outbound_cidr,
                outbound_ports,
            } => {
                if !self.clusters.contains_key(cluster) {
                    return Err(StateError::UnknownCluster(cluster.clone()));
                }
                crate::model::host_port(inbound).map_err(|e| {
                    StateError::Invalid(format!("gateway of {cluster}: inbound {e}"))
                })?;
                cidr_hosts(outbound_cidr).map_err(|e| {
                    StateError::Invalid(format!("gateway of {cluster}: outbound range {e}"))
                })?;
                if !outbound_ports.is_empty() {
                    port_range(outbound_ports).map_err(|e| {
                        StateError::Invalid(format!("gateway of {cluster}: outbound ports {e}"))
                    })?;
                }
                Ok(())
            }
            Command::GatewayStatus { cluster, .. } => match self.gateways.contains_key(cluster) {
                true => Ok(()),
                false => Err(StateError::Invalid(format!(
                    "cluster {cluster} has no gateway registered"
                ))),
            },
            Command::CreateToken { cluster, .. } => {
                validate_cluster_id(cluster).map_err(|e| StateError::Invalid(e.to_string()))
            }
            Command::ConsumeToken {
                id,
                secret_sha256,
                now_unix_ms,
            } => self
                .check_token(id, secret_sha256, *now_unix_ms)
                .map(|_| ()),
            Command::SetMember { id, address } => match address {
                Some(a) => crate::model::host_port(a)
                    .map(|_| ())
                    .map_err(|e| StateError::Invalid(format!("replica {id}: raft address {e}"))),
                _ => Ok(()),
            },
        }
    }

    /// A MultiClusterService with `weights` merged in, validated.
    fn merged_mcs(
        &self,
        mcs: &ServiceKey,
        weights: &BTreeMap<ClusterId, i64>,
    ) -> Result<MultiClusterService, StateError> {
        let mut m = self
            .mcs
            .get(mcs)
            .map(|m| MultiClusterService::clone(m))
            .ok_or_else(|| StateError::McsNotFound(mcs.clone()))?;
        for (cluster, weight) in weights {
            match m
                .spec
                .cluster_backends
                .iter_mut()
                .find(|b| &b.cluster == cluster)
            {
                Some(b) => b.weight = *weight,
                None => m.spec.cluster_backends.push(ClusterBackendRef {
                    cluster: cluster.clone(),
                    weight: *weight,
                }),
            }
        }
        backends::validate_mcs(&m, &self.clusters, |k| self.import_exists(k))?;
        Ok(m)
    }

    /// Checks a cluster's export update: registered, its own exports only,
    /// each export valid and listed once.
    fn check_exports(&self, cluster: &ClusterId, upserts: &[Export]) -> Result<(), StateError> {
        if !self.clusters.contains_key(cluster) {
            return Err(StateError::UnknownCluster(cluster.clone()));
        }
        let mut seen = BTreeSet::new();
        for e in upserts {
            if &e.cluster != cluster {
                return Err(StateError::Invalid(format!(
                    "cluster {cluster} cannot export {} on behalf of cluster {}",
                    e.service, e.cluster
                )));
            }
            if !seen.insert(&e.service) {
                return Err(StateError::Invalid(format!(
                    "export {} appears twice in one update",
                    e.service
                )));
            }
            e.validate()
                .map_err(|err| StateError::Invalid(err.to_string()))?;
        }
        Ok(())
    }

    /// Applies a command at raft `index`. On error nothing changed: every
    /// check happens in [`State::validate`] before anything is touched.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<Outcome, StateError> {
        self.validate(cmd)?;
        let mut out = Outcome::default();
        let mut touched = BTreeSet::new();
        match cmd {
            Command::RegisterCluster { spec } => {
                let entry = self
                    .clusters
                    .entry(spec.id.clone())
                    .or_insert_with(|| Cluster::new(spec.clone()));
                let was_reachable = entry.reachable;
                entry.spec = spec.clone();
                // A revoked lease outlasts re-registration: only a restore
                // ends it.
                entry.reachable = !entry.lease_revoked;
                if entry.reachable {
                    entry.withdrawn = false;
                }
                if !was_reachable {
                    touched.extend(self.services_of_cluster(&spec.id));
                }
                out.lines.push(format!("cluster {} registered", spec.id));
            }
            Command::SetReachable { cluster, reachable } => {
                let c = self.cluster_mut(cluster)?;
                let withdrawn = c.withdrawn && *reachable;
                if c.reachable != *reachable || withdrawn {
                    c.reachable = *reachable;
                    if *reachable {
                        c.withdrawn = false;
                    }
                    touched.extend(self.services_of_cluster(cluster));
                }
                out.lines
                    .push(format!("cluster {cluster} reachable={reachable}"));
            }
            Command::SetDrained { cluster, drained } => {
                let c = self.cluster_mut(cluster)?;
                if c.drained != *drained {
                    c.drained = *drained;
                    touched.extend(self.services_of_cluster(cluster));
                }
                out.lines
                    .push(format!("cluster {cluster} drained={drained}"));
            }
            Command::DrainService {
                cluster,
                service,
                drained,
            } => {
                let c = self.cluster_mut(cluster)?;
                let changed = match drained {
                    true => c.drained_services.insert(service.clone()),
                    false => c.drained_services.remove(service),
                };
                if changed {
                    touched.insert(service.clone());
                }
                out.lines.push(format!(
                    "service {service} on cluster {cluster} drained={drained}"
                ));
            }
            Command::RevokeLease { cluster, revoked } => {
                let c = self.cluster_mut(cluster)?;
                if c.lease_revoked != *revoked {
                    c.lease_revoked = *revoked;
                    if *revoked {
                        // Renewals resume reachability after a restore.
                        c.reachable = false;
                    }
                    touched.extend(self.services_of_cluster(cluster));
                }
                out.lines
                    .push(format!("cluster {cluster} lease revoked={revoked}"));
            }
            Command::WithdrawCluster { cluster } => {
                let c = self.cluster_mut(cluster)?;
                if c.state() == ClusterState::Unreachable && !c.withdrawn {
                    c.withdrawn = true;
                    touched.extend(self.services_of_cluster(cluster));
                }
                out.lines.push(format!("cluster {cluster} withdrawn"));
            }
            Command::SyncExports {
                cluster,
                revision,
                full,
                upserts,
                deletes,
            } => {
                self.sync_exports(cluster, *revision, *full, upserts, deletes, &mut touched)?;
                out.lines
                    .push(format!("cluster {cluster} exports at revision {revision}"));
            }
            Command::ResyncExports {
                cluster,
                revision,
                attempt,
                part,
                last,
                upserts,
            } => {
                let line = self.resync_part(
                    cluster,
                    *revision,
                    *attempt,
                    *part,
                    *last,
                    upserts,
                    &mut touched,
                );
                out.lines.push(line);
            }
            Command::Apply { objects, now } => {
                for obj in objects {
                    let line = self.store_object(obj, now, &mut touched);
                    out.lines.push(line);
                }
            }
            Command::RelayMultiClusterServices {
                cluster,
                objects,
                now,
            } => {
                self.relay_mcs(cluster, objects, now, &mut touched, &mut out.lines);
            }
            Command::RegisterGateway {
                cluster,
                inbound,
                outbound_cidr,
                outbound_ports,
            } => {
                let record =
                    self.gateways
                        .entry(cluster.clone())
                        .or_insert_with(|| GatewayRecord {
                            inbound: inbound.clone(),
                            outbound_cidr: outbound_cidr.clone(),
                            listeners: BTreeMap::new(),
                            outbound_ports: outbound_ports.clone(),
                            ports: BTreeMap::new(),
                            allocations: 0,
                            ports_exhausted: false,
                            offered_version: 0,
                            applied_version: 0,
                            rejected: None,
                            behind_since_unix_ms: None,
                        });
                if record.outbound_cidr != *outbound_cidr {
                    record.listeners.clear();
                    record.allocations += 1;
                }
                if record.outbound_ports != *outbound_ports {
                    record.ports.clear();
                    record.allocations += 1;
                }
                record.inbound = inbound.clone();
                record.outbound_cidr = outbound_cidr.clone();
                record.outbound_ports = outbound_ports.clone();
                out.lines.push(format!("gateway of {cluster} at {inbound}"));
                // Other clusters route to it now: their configurations change.
                touched.extend(self.services_of_cluster(cluster));
            }
            Command::GatewayStatus {
                cluster,
                offered_version,
                applied_version,
                rejected,
                now_unix_ms,
            } => {
                if let Some(g) = self.gateways.get_mut(cluster) {
                    g.offered_version = *offered_version;
                    g.applied_version = *applied_version;
                    g.rejected = rejected.clone();
                    g.behind_since_unix_ms = if applied_version < offered_version {
                        Some(g.behind_since_unix_ms.unwrap_or(*now_unix_ms))
                    } else {
                        None
                    };
                }
                out.lines.push(format!(
                    "gateway of {cluster} at version {applied_version} of {offered_version}"
                ));
            }
            Command::InitCa { cert_pem, key_pem } => {
                if self.ca.is_none() {
                    self.ca = Some(CaRecord {
                        cert_pem: cert_pem.clone(),
                        key_pem: key_pem.clone(),
                    });
                    out.lines.push("ClusterSet CA created".into());
                } else {
                    out.lines.push("ClusterSet CA kept (one exists)".into());
                }
            }
            Command::CreateToken {
                id,
                cluster,
                secret_sha256,
                expires_unix_ms,
                now_unix_ms,
                role,
            } => {
                // Forget tokens expired for an hour or more (used or not).
                self.tokens
                    .retain(|_, t| t.expires_unix_ms + 3_600_000 > *now_unix_ms);
                self.tokens.insert(
                    id.clone(),
                    TokenRecord {
                        cluster: cluster.clone(),
                        secret_sha256: secret_sha256.clone(),
                        expires_unix_ms: *expires_unix_ms,
                        used: false,
                        role: *role,
                    },
                );
                out.lines
                    .push(format!("token {id} for the {role} of cluster {cluster}"));
            }
            Command::ConsumeToken {
                id,
                secret_sha256,
                now_unix_ms,
            } => {
                let cluster = self.check_token(id, secret_sha256, *now_unix_ms)?;
                let mut role = TokenRole::Agent;
                if let Some(t) = self.tokens.get_mut(id) {
                    t.used = true;
                    role = t.role;
                }
                out.lines.push(cluster);
                out.lines.push(role.to_string());
            }
            Command::SetMember { id, address } => match address {
                Some(a) => {
                    self.members.insert(*id, a.clone());
                    out.lines.push(format!("replica {id} at {a}"));
                }
                None => {
                    self.members.remove(id);
                    out.lines.push(format!("replica {id} forgotten"));
                }
            },
            Command::SetWeights { mcs, weights } => {
                let mut m = self.merged_mcs(mcs, weights)?;
                m.metadata.generation += 1;
                touched.insert(mcs_import_key(&m));
                self.mcs.insert(mcs.clone(), Arc::new(m));
                let list: Vec<String> = weights.iter().map(|(c, w)| format!("{c}={w}")).collect();
                out.lines.push(format!(
                    "multiclusterservice {mcs} weights set: {}",
                    list.join(" ")
                ));
            }
        }
        let before = self.backends.len();
        let mut keys_changed = false;
        for key in &touched {
            let had = self.backends.contains_key(key);
            self.recompute(key);
            keys_changed |= had != self.backends.contains_key(key);
        }
        keys_changed |= before != self.backends.len();
        let registered = matches!(cmd, Command::RegisterGateway { .. });
        if keys_changed || registered {
            self.allocate_listeners();
        }
        self.allocate_ports(if registered { None } else { Some(&touched) });
        self.applied_index = index;
        out.recomputed = touched;
        Ok(out)
    }

    /// Gives every gateway a listener address for each service with
    /// backends (the lowest free one in its range) and frees the addresses
    /// of services that are gone. Existing addresses never move.
    fn allocate_listeners(&mut self) {
        for g in self.gateways.values_mut() {
            let before = g.listeners.len();
            g.listeners.retain(|k, _| self.backends.contains_key(k));
            if g.listeners.len() != before {
                g.allocations += 1;
            }
            let Ok(range) = cidr_hosts(&g.outbound_cidr) else {
                continue;
            };
            let used: BTreeSet<u32> = g.listeners.values().map(|ip| u32::from(*ip)).collect();
            let mut free = range.filter(|ip| !used.contains(ip));
            for key in self.backends.keys() {
                if g.listeners.contains_key(key) {
                    continue;
                }
                match free.next() {
                    Some(ip) => {
                        g.listeners
                            .insert(key.clone(), std::net::Ipv4Addr::from(ip));
                        g.allocations += 1;
                    }
                    // The range is full: the service has no listener here
                    // (its configuration says so) until one is freed.
                    None => break,
                }
            }
        }
    }

    /// Port mode: gives every gateway a listener port for each TCP port of
    /// each service with backends (the lowest free one in its range), for
    /// the services in `touched` (all of them when `None`), and frees the
    /// ports of services and service ports that are gone. A port stays with
    /// its service port for as long as both exist.
    fn allocate_ports(&mut self, touched: Option<&BTreeSet<ServiceKey>>) {
        for g in self.gateways.values_mut() {
            if g.allocate_ports(&self.backends, touched) {
                g.allocations += 1;
            }
        }
    }

    /// Services whose backends depend on a cluster: those it exports and
    /// those whose MultiClusterService lists it.
    /// A member cluster, to change; refused when unknown.
    fn cluster_mut(&mut self, cluster: &str) -> Result<&mut Cluster, StateError> {
        self.clusters
            .get_mut(cluster)
            .ok_or_else(|| StateError::UnknownCluster(cluster.to_string()))
    }

    fn services_of_cluster(&self, cluster: &str) -> BTreeSet<ServiceKey> {
        let mut set: BTreeSet<ServiceKey> = self
            .exports
            .iter()
            .filter(|(_, by)| by.contains_key(cluster))
            .map(|(k, _)| k.clone())
            .collect();
        for m in self.mcs.values() {
            if m.spec.cluster_backends.iter().any(|b| b.cluster == cluster) {
                set.insert(mcs_import_key(m));
            }
        }
        set
    }

    fn sync_exports(
        &mut self,
        cluster: &ClusterId,
        revision: u64,
        full: bool,
        upserts: &[Export],
        deletes: &[ServiceKey],
        touched: &mut BTreeSet<ServiceKey>,
    ) -> Result<(), StateError> {
        let last = self.export_revisions.get(cluster).copied().unwrap_or(0);
        if !full && revision <= last {
            // A replayed delta (the agent resent after a reconnect): already applied.
            return Ok(());
        }
        if let Some(r) = self.export_resyncs.get(cluster).filter(|r| !r.complete) {
            if !full && revision < r.revision {
                // From a stream older than the resync under way.
                return Ok(());
            }
            // A complete resync or a newer delta supersedes the resync in
            // parts under way: it will not complete, so it removes nothing.
            self.export_resyncs.remove(cluster);
        }
        let seen: BTreeSet<&ServiceKey> = upserts.iter().map(|e| &e.service).collect();
        if full {
            let stale: Vec<ServiceKey> = self
                .exports
                .iter()
                .filter(|(k, by)| by.contains_key(cluster) && !seen.contains(k))
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                self.remove_export(cluster, &k, touched);
            }
        }
        for k in deletes {
            self.remove_export(cluster, k, touched);
        }
        for e in upserts {
            let by = self.exports.entry(e.service.clone()).or_default();
            if by.get(cluster) != Some(e) {
                Arc::make_mut(by).insert(cluster.clone(), e.clone());
                touched.insert(e.service.clone());
            }
        }
        self.export_revisions.insert(cluster.clone(), revision);
        Ok(())
    }

    /// Whether part `part` of resync `attempt` may apply: part 0 always (it
    /// starts a resync over, or replays the first part of the one under
    /// way); a later part only within the resync it belongs to, at most one
    /// past the parts applied (lower ones are replays); any part of a
    /// completed resync (a replay: it changes nothing).
    fn check_resync_part(
        &self,
        cluster: &ClusterId,
        attempt: u64,
        part: u32,
    ) -> Result<(), StateError> {
        if part == 0 {
            return Ok(());
        }
        match self.export_resyncs.get(cluster) {
            Some(r) if r.attempt == attempt && (r.complete || part <= r.next_part) => Ok(()),
            Some(r) if r.attempt == attempt => Err(StateError::Invalid(format!(
                "export resync of cluster {cluster} at revision {}: part {part} arrived before part {}; the agent starts the resync over",
                r.revision, r.next_part
            ))),
            _ => Err(StateError::Invalid(format!(
                "export resync of cluster {cluster}: part {part} belongs to a resync that is no longer under way (another one started); the agent starts the resync over"
            ))),
        }
    }

    /// Applies one part of a resync (checked by [`Self::check_resync_part`]).
    #[allow(clippy::too_many_arguments)]
    fn resync_part(
        &mut self,
        cluster: &ClusterId,
        revision: u64,
        attempt: u64,
        part: u32,
        last: bool,
        upserts: &[Export],
        touched: &mut BTreeSet<ServiceKey>,
    ) -> String {
        let current = self.export_resyncs.get(cluster);
        if current.is_some_and(|r| r.attempt == attempt && r.complete) {
            return format!(
                "cluster {cluster} exports at revision {revision} (part {part} again, ignored)"
            );
        }
        if part == 0 && current.is_none_or(|r| r.attempt != attempt) {
            self.export_resyncs.insert(
                cluster.clone(),
                ExportResync {
                    attempt,
                    revision,
                    next_part: 0,
                    complete: false,
                    seen: imbl::OrdSet::new(),
                },
            );
        }
        let mut seen = match self.export_resyncs.get_mut(cluster) {
            Some(r) => {
                r.next_part = r.next_part.max(part.saturating_add(1));
                std::mem::take(&mut r.seen)
            }
            // Checked before: cannot happen.
            None => imbl::OrdSet::new(),
        };
        for e in upserts {
            seen.insert(e.service.clone());
            let by = self.exports.entry(e.service.clone()).or_default();
            if by.get(cluster) != Some(e) {
                Arc::make_mut(by).insert(cluster.clone(), e.clone());
                touched.insert(e.service.clone());
            }
        }
        if !last {
            if let Some(r) = self.export_resyncs.get_mut(cluster) {
                r.seen = seen;
            }
            return format!(
                "cluster {cluster} exports at revision {revision}: part {part} applied, more to come"
            );
        }
        let stale: Vec<ServiceKey> = self
            .exports
            .iter()
            .filter(|(k, by)| by.contains_key(cluster) && !seen.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        let removed = stale.len();
        for k in stale {
            self.remove_export(cluster, &k, touched);
        }
        if let Some(r) = self.export_resyncs.get_mut(cluster) {
            r.complete = true;
        }
        self.export_revisions.insert(cluster.clone(), revision);
        format!(
            "cluster {cluster} exports at revision {revision}: {} exports in {} parts, {removed} removed",
            seen.len(),
            part + 1
        )
    }

    fn remove_export(
        &mut self,
        cluster: &str,
        key: &ServiceKey,
        touched: &mut BTreeSet<ServiceKey>,
    ) {
        if let Some(by) = self.exports.get_mut(key) {
            if Arc::make_mut(by).remove(cluster).is_some() {
                touched.insert(key.clone());
            }
            if by.is_empty() {
                self.exports.remove(key);
            }
        }
    }

    fn validate_objects(&self, objects: &[AppliedObject]) -> Result<(), StateError> {
        let mut seen = BTreeSet::new();
        for o in objects {
            let name = format!("{} {}", o.kind(), o.key());
            if !seen.insert(name.clone()) {
                return Err(StateError::Duplicate(name));
            }
        }
        let declared: BTreeSet<ServiceKey> = objects
            .iter()
            .filter_map(|o| match o {
                AppliedObject::ServiceImport(_) => Some(o.key()),
                _ => None,
            })
            .collect();
        for o in objects {
            if let AppliedObject::MultiClusterService(m) = o {
                backends::validate_mcs(m, &self.clusters, |k| {
                    self.import_exists(k) || declared.contains(k)
                })?;
            }
        }
        Ok(())
    }

    /// The cluster a token is for, if it may be spent now.
    fn check_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now_unix_ms: i64,
    ) -> Result<ClusterId, StateError> {
        let refuse = |why: &str| StateError::Token {
            id: id.to_string(),
            why: why.to_string(),
        };
        let t = self.tokens.get(id).ok_or_else(|| refuse("unknown"))?;
        // Constant-time comparison of the hashes: no timing hints.
        let same = t.secret_sha256.len() == secret_sha256.len()
            && t.secret_sha256
                .bytes()
                .zip(secret_sha256.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(refuse("not valid (wrong secret)"));
        }
        if t.used {
            return Err(refuse("already used (tokens are single-use)"));
        }
        if now_unix_ms > t.expires_unix_ms {
            return Err(refuse("expired"));
        }
        Ok(t.cluster.clone())
    }

    /// Accepts or refuses each relayed MultiClusterService and deletes
    /// those `cluster` relayed before and no longer holds.
    fn relay_mcs(
        &mut self,
        cluster: &ClusterId,
        objects: &[MultiClusterService],
        now: &str,
        touched: &mut BTreeSet<ServiceKey>,
        lines: &mut Vec<String>,
    ) {
        let mut results = Vec::with_capacity(objects.len());
        let mut kept = BTreeSet::new();
        for m in objects {
            let key = ServiceKey {
                namespace: m.metadata.namespace.as_str().into(),
                name: m.metadata.name.as_str().into(),
            };
            kept.insert(key.clone());
            let owner = self.mcs.get(&key).map(|e| {
                e.metadata
                    .annotations
                    .get(RELAYED_FROM)
                    .cloned()
                    .unwrap_or_default()
            });
            let refusal = match owner {
                Some(o) if o.is_empty() => Some(("Conflict", format!(
                    "MultiClusterService {key} was applied on the hub (switchyard apply); delete it there to manage it from cluster {cluster}"
                ))),
                Some(o) if &o != cluster => Some(("Conflict", format!(
                    "MultiClusterService {key} is managed from cluster {o}; change it there, or delete it there first"
                ))),
                _ => backends::validate_mcs(m, &self.clusters, |k| self.import_exists(k))
                    .err()
                    .map(|e| ("Invalid", e.to_string())),
            };
            let result = match refusal {
                Some((reason, message)) => RelayResult {
                    namespace: key.namespace.to_string(),
                    name: key.name.to_string(),
                    accepted: false,
                    reason: reason.to_string(),
                    message,
                },
                None => {
                    let mut m = m.clone();
                    m.metadata
                        .annotations
                        .insert(RELAYED_FROM.to_string(), cluster.clone());
                    let line =
                        self.store_object(&AppliedObject::MultiClusterService(m), now, touched);
                    RelayResult {
                        namespace: key.namespace.to_string(),
                        name: key.name.to_string(),
                        accepted: true,
                        reason: "Accepted".to_string(),
                        message: line,
                    }
                }
            };
            results.push(result);
        }
        let gone: Vec<ServiceKey> = self
            .mcs
            .iter()
            .filter(|(k, m)| {
                !kept.contains(*k) && m.metadata.annotations.get(RELAYED_FROM) == Some(cluster)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(m) = self.mcs.remove(&key) {
                touched.insert(mcs_import_key(&m));
            }
        }
        lines.extend(results.iter().filter_map(|r| serde_json::to_string(r).ok()));
    }

    fn store_object(
        &mut self,
        obj: &AppliedObject,
        now: &str,
        touched: &mut BTreeSet<ServiceKey>,
    ) -> String {
        let key = obj.key();
        let (verb, affected) = match obj {
            AppliedObject::ServiceImport(si) => {
                let mut si = si.clone();
                si.status = Default::default();
                let prev = self.imports.get(&key);
                let verb = stamp(
                    &mut si.metadata,
                    prev.map(|p| &p.metadata),
                    prev.map(|p| p.spec == si.spec),
                    now,
                );
                self.imports.insert(key.clone(), Arc::new(si));
                (verb, vec![key.clone()])
            }
            AppliedObject::MultiClusterService(m) => {
                let mut m = m.clone();
                m.status = Default::default();
                let prev = self.mcs.get(&key);
                let mut affected = vec![mcs_import_key(&m)];
                if let Some(p) = prev {
                    affected.push(mcs_import_key(p));
                }
                let verb = stamp(
                    &mut m.metadata,
                    prev.map(|p| &p.metadata),
                    prev.map(|p| p.spec == m.spec),
                    now,
                );
                self.mcs.insert(key.clone(), Arc::new(m));
                (verb, affected)
            }
        };
        if verb != "unchanged" {
            touched.extend(affected);
        }
        format!("{} {key} {verb}", obj.kind())
    }

    /// Recomputes one service's backends, bumping its revision on change.
    pub fn recompute(&mut self, key: &ServiceKey) {
        let inputs = ServiceInputs {
            service: key,
            declared: self.imports.get(key).map(|i| &**i),
            exports: self
                .exports
                .get(key)
                .map(|by| by.values().collect())
                .unwrap_or_default(),
            mcs: self.mcs_for(key),
            clusters: &self.clusters,
        };
        match backends::compute(&inputs) {
            None => {
                self.backends.remove(key);
            }
            Some(mut next) => {
                let prev_rev = self.backends.get(key).map(|b| b.revision).unwrap_or(0);
                match self.backends.get(key) {
                    Some(prev) if prev.same_as(&next) => {}
                    _ => {
                        next.revision = prev_rev + 1;
                        self.backends.insert(key.clone(), Arc::new(next));
                    }
                }
            }
        }
    }
}

/// Sets creationTimestamp and generation; returns created/configured/unchanged.
fn stamp(
    meta: &mut crate::model::ObjectMeta,
    prev: Option<&crate::model::ObjectMeta>,
    same_spec: Option<bool>,
    now: &str,
) -> &'static str {
    match prev {
        None => {
            meta.creation_timestamp = Some(now.to_string());
            meta.generation = 1;
            "created"
        }
        Some(p) => {
            meta.creation_timestamp = p.creation_timestamp.clone();
            let same = same_spec == Some(true)
                && p.labels == meta.labels
                && p.annotations == meta.annotations;
            meta.generation = if same_spec == Some(true) {
                p.generation
            } else {
                p.generation + 1
            };
            if same {
                "unchanged"
            } else {
                "configured"
            }
        }
    }
}

/// Turns parsed manifest resources into objects the hub stores.
pub fn applied_objects(resources: Vec<Resource>) -> Result<Vec<AppliedObject>, StateError> {
    resources
        .into_iter()
        .map(|r| match r {
            Resource::ServiceImport(si) => Ok(AppliedObject::ServiceImport(si)),
            Resource::MultiClusterService(m) => Ok(AppliedObject::MultiClusterService(m)),
            Resource::ServiceExport(e) => Err(StateError::ExportOnHub(format!(
                "serviceexport {}/{}",
                e.metadata.namespace, e.metadata.name
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest;
    use proptest::prelude::*;

    const SEED: &str = include_str!("../../docs/examples/seed-mcs.yaml");

    fn export(cluster: &str, ns: &str, name: &str, ready: u8) -> Export {
        let addrs =
            (0..ready).map(|i| std::net::IpAddr::from([127, 0, cluster.len() as u8, i + 1]));
        let mut e = crate::model::fixtures::export(cluster, &format!("{ns}/{name}"), 8080, addrs);
        e.created_unix_ms = 1;
        e
    }

    fn register(s: &mut State, id: &str) {
        let spec = ClusterSpec {
            id: id.into(),
            ..Default::default()
        };
        s.apply(1, &Command::RegisterCluster { spec }).unwrap();
    }

    fn playground() -> State {
        let mut s = State::default();
        for (i, c) in ["us-west-1", "us-east-1", "eu-central-1"]
            .iter()
            .enumerate()
        {
            register(&mut s, c);
            let cmd = Command::SyncExports {
                cluster: c.to_string(),
                revision: 1,
                full: true,
                upserts: vec![
                    export(c, "app", "api-v1-multi", 2),
                    export(c, "app", &format!("only-{i}"), 1),
                ],
                deletes: vec![],
            };
            s.apply(2, &cmd).unwrap();
        }
        s
    }

    fn relayed(weights: &str, name: &str) -> MultiClusterService {
        let text = format!(
            "apiVersion: switchyard.io/v1alpha1\nkind: MultiClusterService\nmetadata: {{name: {name}, namespace: app}}\nspec: {{serviceImport: {{name: api-v1-multi}}, clusterBackends: [{weights}]}}\n"
        );
        match manifest::parse(&text).unwrap().remove(0) {
            manifest::Resource::MultiClusterService(m) => m,
            other => panic!("{other:?}"),
        }
    }

    fn relay(s: &mut State, cluster: &str, objects: Vec<MultiClusterService>) -> Vec<RelayResult> {
        let cmd = Command::RelayMultiClusterServices {
            cluster: cluster.into(),
            objects,
            now: "2026-11-23T00:00:00Z".into(),
        };
        s.validate(&cmd).unwrap();
        s.apply(20, &cmd)
            .unwrap()
            .lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn relayed_mcs_are_accepted_one_by_one_owned_by_their_cluster_and_deleted_with_it() {
        let mut s = playground();
        let key: ServiceKey = "app/api-v1-multi".parse().unwrap();
        let results = relay(
            &mut s,
            "us-west-1",
            vec![
                relayed(
                    "{cluster: us-west-1, weight: 3}, {cluster: us-east-1, weight: 1}",
                    "w",
                ),
                relayed("{cluster: mars-1, weight: 1}", "bad"),
            ],
        );
        assert!(results[0].accepted, "{results:?}");
        assert!(!results[1].accepted);
        assert!(
            results[1].message.contains("mars-1"),
            "{}",
            results[1].message
        );
        let m = &s.mcs[&"app/w".parse::<ServiceKey>().unwrap()];
        assert_eq!(m.metadata.annotations[RELAYED_FROM], "us-west-1");
        assert!(
            (s.backends[&key].clusters[2].share - 0.75).abs() < 1e-9,
            "{:?}",
            s.backends[&key].clusters
        );

        // Another cluster cannot take it over.
        let other = relay(
            &mut s,
            "us-east-1",
            vec![relayed("{cluster: us-east-1, weight: 1}", "w")],
        );
        assert!(!other[0].accepted);
        assert!(
            other[0].message.contains("managed from cluster us-west-1"),
            "{}",
            other[0].message
        );

        // One applied with switchyard apply is not the cluster's either.
        apply_manifest(&mut s, SEED).unwrap();
        let hub = relay(
            &mut s,
            "us-west-1",
            vec![relayed("{cluster: us-west-1, weight: 1}", "api-v1-global")],
        );
        assert!(!hub[0].accepted);
        assert!(
            hub[0].message.contains("switchyard apply"),
            "{}",
            hub[0].message
        );

        // The cluster no longer holds it: gone from the hub, weights with it.
        relay(&mut s, "us-west-1", vec![]);
        assert!(!s.mcs.contains_key(&"app/w".parse::<ServiceKey>().unwrap()));
        assert!(
            s.mcs
                .contains_key(&"app/api-v1-global".parse::<ServiceKey>().unwrap()),
            "the hub's own stays"
        );
    }

    #[test]
    fn relay_from_an_unregistered_cluster_is_refused() {
        let s = playground();
        let cmd = Command::RelayMultiClusterServices {
            cluster: "nobody".into(),
            objects: vec![],
            now: String::new(),
        };
        assert_eq!(
            s.validate(&cmd),
            Err(StateError::UnknownCluster("nobody".into()))
        );
    }

    #[test]
    fn tokens_are_single_use_and_expire_and_the_first_ca_stays() {
        let mut s = State::default();
        let create = |id: &str, expires: i64| Command::CreateToken {
            id: id.into(),
            cluster: "c1".into(),
            secret_sha256: "aa".repeat(32),
            expires_unix_ms: expires,
            now_unix_ms: 1_000,
            role: TokenRole::Agent,
        };
        let consume = |id: &str, secret: &str, now: i64| Command::ConsumeToken {
            id: id.into(),
            secret_sha256: secret.into(),
            now_unix_ms: now,
        };
        s.apply(1, &create("t1", 10_000)).unwrap();
        s.apply(2, &create("t2", 10_000)).unwrap();
        let why = |r: Result<Outcome, StateError>| r.unwrap_err().to_string();
        assert!(why(s.apply(3, &consume("nope", &"aa".repeat(32), 2_000))).contains("unknown"));
        assert!(why(s.apply(3, &consume("t1", &"bb".repeat(32), 2_000))).contains("wrong secret"));
        assert!(why(s.apply(3, &consume("t2", &"aa".repeat(32), 20_000))).contains("expired"));
        let ok = s.apply(3, &consume("t1", &"aa".repeat(32), 2_000)).unwrap();
        assert_eq!(ok.lines, ["c1", "agent"]);
        assert!(why(s.apply(4, &consume("t1", &"aa".repeat(32), 2_001))).contains("already used"));
        // A later token creation forgets tokens expired an hour ago.
        s.apply(
            5,
            &Command::CreateToken {
                id: "t3".into(),
                cluster: "c2".into(),
                secret_sha256: "cc".repeat(32),
                expires_unix_ms: 10_000_000,
                now_unix_ms: 10_000 + 3_600_001,
                role: TokenRole::Gateway,
            },
        )
        .unwrap();
        assert_eq!(s.tokens.keys().collect::<Vec<_>>(), ["t3"]);
        assert_eq!(s.tokens["t3"].role, TokenRole::Gateway);

        s.apply(
            6,
            &Command::InitCa {
                cert_pem: "first".into(),
                key_pem: "k1".into(),
            },
        )
        .unwrap();
        s.apply(
            7,
            &Command::InitCa {
                cert_pem: "second".into(),
                key_pem: "k2".into(),
            },
        )
        .unwrap();
        assert_eq!(s.ca.as_ref().unwrap().cert_pem, "first");
        assert!(
            !format!("{:?}", s.ca).contains("k1"),
            "the key never shows in debug output"
        );
    }

    fn apply_manifest(s: &mut State, text: &str) -> Result<Outcome, StateError> {
        let objects = applied_objects(manifest::parse(text).unwrap())?;
        s.apply(
            9,
            &Command::Apply {
                objects,
                now: "2026-11-22T00:00:00Z".into(),
            },
        )
    }

    fn share(s: &State, svc: &str, cluster: &str) -> f64 {
        let b = &s.backends[&svc.parse::<ServiceKey>().unwrap()];
        b.clusters
            .iter()
            .find(|c| c.cluster == cluster)
            .map(|c| c.share)
            .unwrap_or(0.0)
    }

    #[test]
    fn seed_manifest_weights_the_import() {
        let mut s = playground();
        let out = apply_manifest(&mut s, SEED).unwrap();
        assert_eq!(
            out.lines,
            vec![
                "serviceimport app/api-v1-multi created",
                "multiclusterservice app/api-v1-global created"
            ]
        );
        assert!((share(&s, "app/api-v1-multi", "us-west-1") - 0.6).abs() < 1e-12);
        assert_eq!(share(&s, "app/api-v1-multi", "eu-central-1"), 0.0);
        // Applying the same manifest again changes nothing.
        let rev = s.backends[&"app/api-v1-multi".parse::<ServiceKey>().unwrap()].revision;
        let out = apply_manifest(&mut s, SEED).unwrap();
        assert!(
            out.lines.iter().all(|l| l.ends_with("unchanged")),
            "{:?}",
            out.lines
        );
        assert_eq!(
            s.backends[&"app/api-v1-multi".parse::<ServiceKey>().unwrap()].revision,
            rev
        );
    }

    #[test]
    fn bad_input_is_rejected_and_changes_nothing() {
        let mut s = playground();
        apply_manifest(&mut s, SEED).unwrap();
        let before = s.clone();
        for (bad, needle) in [
            (
                SEED.replace("weight: 40", "weight: -5"),
                "weight -5 for cluster us-east-1 is negative",
            ),
            (
                SEED.replace("cluster: us-east-1", "cluster: ap-south-9"),
                "\"ap-south-9\" is not a member",
            ),
            (
                SEED.replace("weight: 60", "weight: 0")
                    .replace("weight: 40", "weight: 0"),
                "every cluster weight is 0",
            ),
        ] {
            let e = apply_manifest(&mut s, &bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert_eq!(s, before);
        }
        // An MCS whose ServiceImport does not exist; the valid import in
        // the same manifest must not be applied either.
        let missing = format!(
            "{}\n---\n{}",
            SEED.split("---")
                .next()
                .unwrap()
                .replace("api-v1-multi", "new-import"),
            SEED.split("---")
                .nth(1)
                .unwrap()
                .replace("name: api-v1-multi", "name: nope")
        );
        let e = apply_manifest(&mut s, &missing).unwrap_err().to_string();
        assert!(e.contains("ServiceImport app/nope does not exist"), "{e}");
        assert_eq!(s, before);
        let e = s
            .apply(
                10,
                &Command::SetWeights {
                    mcs: "app/api-v1-global".parse().unwrap(),
                    weights: [("us-west-1".into(), -1)].into(),
                },
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
        assert_eq!(s, before);
    }

    #[test]
    fn set_weights_merges_and_recomputes() {
        let mut s = playground();
        apply_manifest(&mut s, SEED).unwrap();
        let cmd = Command::SetWeights {
            mcs: "app/api-v1-global".parse().unwrap(),
            weights: [("us-west-1".into(), 10), ("eu-central-1".into(), 30)].into(),
        };
        s.apply(11, &cmd).unwrap();
        assert!((share(&s, "app/api-v1-multi", "us-west-1") - 0.125).abs() < 1e-12);
        assert!((share(&s, "app/api-v1-multi", "eu-central-1") - 0.375).abs() < 1e-12);
        let e = s
            .apply(
                12,
                &Command::SetWeights {
                    mcs: "app/none".parse().unwrap(),
                    weights: BTreeMap::new(),
                },
            )
            .unwrap_err();
        assert_eq!(e, StateError::McsNotFound("app/none".parse().unwrap()));
    }

    #[test]
    fn unreachable_cluster_loses_share_and_comes_back() {
        let mut s = playground();
        s.apply(
            5,
            &Command::SetReachable {
                cluster: "us-east-1".into(),
                reachable: false,
            },
        )
        .unwrap();
        assert_eq!(share(&s, "app/api-v1-multi", "us-east-1"), 0.0);
        assert!((share(&s, "app/api-v1-multi", "us-west-1") - 0.5).abs() < 1e-12);
        s.apply(
            6,
            &Command::RegisterCluster {
                spec: ClusterSpec {
                    id: "us-east-1".into(),
                    ..Default::default()
                },
            },
        )
        .unwrap();
        assert!((share(&s, "app/api-v1-multi", "us-east-1") - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn full_resync_removes_missing_exports_and_replayed_deltas_are_ignored() {
        let mut s = playground();
        let only0: ServiceKey = "app/only-0".parse().unwrap();
        assert!(s.backends.contains_key(&only0));
        let resync = Command::SyncExports {
            cluster: "us-west-1".into(),
            revision: 7,
            full: true,
            upserts: vec![export("us-west-1", "app", "api-v1-multi", 2)],
            deletes: vec![],
        };
        s.apply(20, &resync).unwrap();
        assert!(!s.backends.contains_key(&only0));
        let replay = Command::SyncExports {
            cluster: "us-west-1".into(),
            revision: 7,
            full: false,
            upserts: vec![],
            deletes: vec!["app/api-v1-multi".parse().unwrap()],
        };
        s.apply(21, &replay).unwrap();
        assert!(
            s.exports[&"app/api-v1-multi".parse::<ServiceKey>().unwrap()].contains_key("us-west-1")
        );
    }

    fn part(attempt: u64, part: u32, last: bool, names: &[&str]) -> Command {
        Command::ResyncExports {
            cluster: "us-west-1".into(),
            revision: 9,
            attempt,
            part,
            last,
            upserts: names
                .iter()
                .map(|n| export("us-west-1", "app", n, 1))
                .collect(),
        }
    }

    fn exported_by_west(s: &State) -> Vec<String> {
        s.exports
            .iter()
            .filter(|(_, by)| by.contains_key("us-west-1"))
            .map(|(k, _)| k.to_string())
            .collect()
    }

    #[test]
    fn a_resync_in_parts_removes_what_it_lacks_only_with_its_last_part() {
        let mut s = playground();
        assert_eq!(exported_by_west(&s), ["app/api-v1-multi", "app/only-0"]);
        s.apply(10, &part(5, 0, false, &["a", "b"])).unwrap();
        s.apply(11, &part(5, 1, false, &["c"])).unwrap();
        // Upserted as they come; nothing removed, the revision not recorded.
        assert_eq!(
            exported_by_west(&s),
            ["app/a", "app/api-v1-multi", "app/b", "app/c", "app/only-0"]
        );
        assert!(s
            .backends
            .contains_key(&"app/c".parse::<ServiceKey>().unwrap()));
        assert_eq!(s.export_revisions["us-west-1"], 1);
        // A retried proposal of a part already applied changes nothing.
        let before = s.clone();
        s.apply(12, &part(5, 1, false, &["c"])).unwrap();
        s.apply(13, &part(5, 0, false, &["a", "b"])).unwrap();
        assert_eq!(s.exports, before.exports);
        assert_eq!(s.export_resyncs, before.export_resyncs);
        // The last part: exactly the set remains.
        let out = s.apply(14, &part(5, 2, true, &["api-v1-multi"])).unwrap();
        assert!(
            out.lines[0].contains("4 exports in 3 parts, 1 removed"),
            "{:?}",
            out.lines
        );
        assert_eq!(
            exported_by_west(&s),
            ["app/a", "app/api-v1-multi", "app/b", "app/c"]
        );
        assert!(!s
            .backends
            .contains_key(&"app/only-0".parse::<ServiceKey>().unwrap()));
        assert_eq!(s.export_revisions["us-west-1"], 9);
        let done = &s.export_resyncs["us-west-1"];
        assert!(done.complete && done.seen.is_empty());
        // Any part of the completed resync again: ignored.
        let before = s.clone();
        s.apply(15, &part(5, 0, false, &["only-0"])).unwrap();
        s.apply(16, &part(5, 2, true, &[])).unwrap();
        assert_eq!(s.exports, before.exports);
        // The others' exports were never touched.
        assert!(s.exports[&"app/only-1".parse::<ServiceKey>().unwrap()].contains_key("us-east-1"));
    }

    #[test]
    fn resync_parts_out_of_order_or_of_an_abandoned_resync_are_refused() {
        let mut s = playground();
        s.apply(10, &part(5, 0, false, &["a"])).unwrap();
        let before = s.clone();
        let gap = s.apply(11, &part(5, 2, true, &[])).unwrap_err().to_string();
        assert!(gap.contains("part 2 arrived before part 1"), "{gap}");
        assert_eq!(s, before, "a refused part changes nothing");
        // A new attempt (the agent reconnected) starts over; the old
        // attempt's parts no longer apply, and its exports stay upserted.
        s.apply(12, &part(6, 0, false, &["b"])).unwrap();
        let stale = s.apply(13, &part(5, 1, true, &[])).unwrap_err().to_string();
        assert!(stale.contains("no longer under way"), "{stale}");
        assert_eq!(
            exported_by_west(&s),
            ["app/a", "app/api-v1-multi", "app/b", "app/only-0"]
        );
        s.apply(14, &part(6, 1, true, &["c"])).unwrap();
        assert_eq!(exported_by_west(&s), ["app/b", "app/c"]);
        // A part that continues nothing.
        let mut fresh = playground();
        assert!(fresh.apply(10, &part(1, 1, true, &[])).is_err());
    }

    #[test]
    fn deltas_and_one_message_resyncs_supersede_an_unfinished_resync() {
        let mut s = playground();
        s.apply(10, &part(5, 0, false, &["a"])).unwrap();
        // A delta older than the resync (a straggler from an old stream)
        // is ignored; a newer one applies and abandons the resync.
        let delta = |revision, name: &str| Command::SyncExports {
            cluster: "us-west-1".into(),
            revision,
            full: false,
            upserts: vec![export("us-west-1", "app", name, 1)],
            deletes: vec![],
        };
        s.apply(11, &delta(8, "old")).unwrap();
        assert!(!exported_by_west(&s).contains(&"app/old".to_string()));
        s.apply(12, &delta(10, "new")).unwrap();
        assert!(exported_by_west(&s).contains(&"app/new".to_string()));
        assert!(s.export_resyncs.is_empty());
        assert!(s.apply(13, &part(5, 1, true, &[])).is_err());
        assert!(exported_by_west(&s).contains(&"app/only-0".to_string()));
        // A one-message resync does too.
        s.apply(14, &part(7, 0, false, &["b"])).unwrap();
        let full = Command::SyncExports {
            cluster: "us-west-1".into(),
            revision: 3,
            full: true,
            upserts: vec![export("us-west-1", "app", "z", 1)],
            deletes: vec![],
        };
        s.apply(15, &full).unwrap();
        assert_eq!(exported_by_west(&s), ["app/z"]);
        assert!(s.apply(16, &part(7, 1, true, &[])).is_err());
        assert_eq!(exported_by_west(&s), ["app/z"]);
    }

    #[test]
    fn an_unfinished_resync_survives_a_snapshot() {
        let mut s = playground();
        s.apply(10, &part(5, 0, false, &["a"])).unwrap();
        let mut restored: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(restored, s);
        restored.apply(11, &part(5, 1, true, &["b"])).unwrap();
        assert_eq!(exported_by_west(&restored), ["app/a", "app/b"]);
        // A snapshot from before resyncs in parts existed reads as none.
        let mut old = serde_json::to_value(playground()).unwrap();
        old.as_object_mut().unwrap().remove("export_resyncs");
        let old: State = serde_json::from_value(old).unwrap();
        assert!(old.export_resyncs.is_empty());
    }

    #[test]
    fn exports_for_another_cluster_or_unregistered_are_rejected() {
        let mut s = playground();
        let spoof = Command::SyncExports {
            cluster: "us-west-1".into(),
            revision: 9,
            full: false,
            upserts: vec![export("us-east-1", "app", "x", 1)],
            deletes: vec![],
        };
        assert!(s
            .apply(30, &spoof)
            .unwrap_err()
            .to_string()
            .contains("on behalf of cluster us-east-1"));
        let stranger = Command::SyncExports {
            cluster: "nobody".into(),
            revision: 1,
            full: true,
            upserts: vec![],
            deletes: vec![],
        };
        assert_eq!(
            s.apply(31, &stranger).unwrap_err(),
            StateError::UnknownCluster("nobody".into())
        );
    }

    #[test]
    fn service_export_cannot_be_applied_on_the_hub() {
        let r = manifest::parse("apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: a, namespace: b}\n").unwrap();
        assert!(applied_objects(r)
            .unwrap_err()
            .to_string()
            .contains("applied in a member cluster"));
    }

    proptest! {
        /// A change to one service recomputes only that service, and the
        /// incremental result equals a recomputation of everything.
        #[test]
        fn one_service_change_recomputes_only_that_service(
            svc in 0usize..6, cluster in 0usize..3, ready in 0u8..4, delete in any::<bool>()
        ) {
            let clusters = ["us-west-1", "us-east-1", "eu-central-1"];
            let mut s = State::default();
            for c in clusters { register(&mut s, c); }
            for (i, c) in clusters.iter().enumerate() {
                let upserts = (0..6).filter(|n| (n + i) % 2 == 0 || *n == 0).map(|n| export(c, "app", &format!("s{n}"), 2)).collect();
                s.apply(2, &Command::SyncExports { cluster: c.to_string(), revision: 1, full: true, upserts, deletes: vec![] }).unwrap();
            }
            let before = s.clone();
            let key: ServiceKey = format!("app/s{svc}").parse().unwrap();
            let c = clusters[cluster];
            let cmd = if delete {
                Command::SyncExports { cluster: c.into(), revision: 2, full: false, upserts: vec![], deletes: vec![key.clone()] }
            } else {
                Command::SyncExports { cluster: c.into(), revision: 2, full: false, upserts: vec![export(c, "app", &format!("s{svc}"), ready)], deletes: vec![] }
            };
            let out = s.apply(3, &cmd).unwrap();
            prop_assert!(out.recomputed.iter().all(|k| k == &key), "{:?}", out.recomputed);
            for (k, b) in &before.backends {
                if k != &key {
                    prop_assert_eq!(Some(b), s.backends.get(k));
                }
            }
            let mut full = s.clone();
            let keys: Vec<ServiceKey> = full.exports.keys().cloned().chain(before.backends.keys().cloned()).collect();
            for k in &keys { full.recompute(k); }
            prop_assert_eq!(full.backends, s.backends);
        }
    }
}
