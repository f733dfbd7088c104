//! The zone: every name of the ClusterSet zone with its answers already in
//! DNS wire format. [`Zone`] is the one writer, which applies backend
//! changes; each [`ZoneSnapshot`] it hands out is immutable, and looks a
//! query up without I/O, locks or allocation.
//!
//! Names are keyed by their lower-cased wire form (`\x03api\x03app...\x00`),
//! the form a query carries them in, so a lookup hashes the query's bytes
//! directly. Each answer is a ready run of resource records whose owner is
//! a compression pointer to the question (offset 12), so the server only
//! copies bytes after the echoed question.

use super::index::FlatIndex;
use super::DnsConfig;
use crate::backends::ServiceBackends;
use crate::model::{ServiceKey, ServiceMap, ServiceType};
use hickory_proto::rr::Name;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The MCS DNS specification's schema version (KEP-1645 specification.md,
/// section 1), served as `dns-version.<zone>` TXT.
pub const SCHEMA_VERSION: &str = "1.0.0";

/// Record types and classes the zone knows (RFC 1035, 3596, 2782, 6891).
pub mod rtype {
    pub const A: u16 = 1;
    pub const SOA: u16 = 6;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const ANY: u16 = 255;
    /// Class IN.
    pub const IN: u16 = 1;
    /// Class ANY (`*`).
    pub const CLASS_ANY: u16 = 255;
}

/// A run of resource records in wire format, each owned by the question's
/// name (a compression pointer to offset 12).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Records {
    /// How many records `bytes` holds.
    pub count: u16,
    /// The records, back to back.
    pub bytes: Box<[u8]>,
}

impl Records {
    fn from_parts(parts: &[(u16, u32, Vec<u8>)]) -> Self {
        let mut bytes = Vec::with_capacity(parts.iter().map(|p| 12 + p.2.len()).sum());
        for (rtype, ttl, rdata) in parts {
            bytes.extend_from_slice(&[0xC0, 0x0C]);
            push_fixed(&mut bytes, *rtype, *ttl, rdata);
        }
        Self {
            count: parts.len() as u16,
            bytes: bytes.into_boxed_slice(),
        }
    }

    fn concat(runs: &[&Records]) -> Self {
        Self {
            count: runs.iter().map(|r| r.count).sum(),
            bytes: runs.iter().flat_map(|r| r.bytes.iter().copied()).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Type, class IN, TTL, length and data of one record (after its owner).
fn push_fixed(out: &mut Vec<u8>, rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&rtype::IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// The wire form of `name`, lower-cased: what queries are looked up by.
pub fn wire_name(name: &Name) -> Box<[u8]> {
    let mut out = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out.into_boxed_slice()
}

/// `name` as a node's key.
fn key(name: &Name) -> Key {
    wire_name(name).into()
}

/// The name one label up (`a.b.` → `b.`); the root stays the root.
fn parent(wire: &[u8]) -> &[u8] {
    match wire.first() {
        Some(&len) if len > 0 => wire.get(1 + len as usize..).unwrap_or_default(),
        _ => wire,
    }
}

/// The names between `name` and `namespace` (both excluded), which belong
/// to the service that owns `name` too (empty non-terminals).
fn push_ancestors(name: &[u8], namespace: &[u8], out: &mut Vec<Key>) {
    let mut up = parent(name);
    while up != namespace && in_zone(up, namespace) {
        out.push(up.into());
        up = parent(up);
    }
}

/// True when `name` is `zone` or below it (both lower-cased wire forms).
pub fn in_zone(name: &[u8], zone: &[u8]) -> bool {
    let mut rest = name;
    loop {
        if rest == zone {
            return true;
        }
        if rest.len() <= zone.len() || rest.first() == Some(&0) {
            return false;
        }
        rest = parent(rest);
    }
}

/// The answer a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name is outside the zone: REFUSED, not authoritative.
    Refused,
    /// No such name: NXDOMAIN with the SOA.
    NxDomain,
    /// The name exists without records of the type: NOERROR, the SOA.
    NoData,
    /// NOERROR with these records.
    Answer(&'a Records),
}

/// A cluster's records for one service.
#[derive(Debug, Default, PartialEq, Eq)]
struct ClusterRecords {
    a: Records,
    aaaa: Records,
}

/// A ClusterSetIP or headless service name.
#[derive(Debug)]
struct ServiceNode {
    service_type: ServiceType,
    clusters: Vec<ClusterRecords>,
    /// Every cluster's records together (what a headless name answers).
    all: ClusterRecords,
    /// Cluster indices in smooth weighted round-robin order, per family.
    schedule_a: Vec<u16>,
    schedule_aaaa: Vec<u16>,
    next: AtomicUsize,
}

#[derive(Debug)]
enum Node {
    Apex,
    Service(ServiceNode),
    /// A per-endpoint name of a headless service: A, AAAA and both (ANY).
    Endpoint(ClusterRecords, Records),
    Srv(Records),
    Txt(Records),
    /// An empty non-terminal: exists, but holds no records.
    Empty,
}

impl Node {
    /// The same records as `other` (a service's round-robin position
    /// aside): replacing one with the other changes no answer.
    fn same(&self, other: &Node) -> bool {
        match (self, other) {
            (Node::Apex, Node::Apex) | (Node::Empty, Node::Empty) => true,
            (Node::Service(a), Node::Service(b)) => {
                a.service_type == b.service_type
                    && a.clusters == b.clusters
                    && a.all == b.all
                    && a.schedule_a == b.schedule_a
                    && a.schedule_aaaa == b.schedule_aaaa
            }
            (Node::Endpoint(a, r), Node::Endpoint(b, s)) => a == b && r == s,
            (Node::Srv(a), Node::Srv(b)) | (Node::Txt(a), Node::Txt(b)) => a == b,
            _ => false,
        }
    }
}

/// A lower-cased wire-form name, the key of every node. Shared: the
/// overlay, a persistent map, copies keys whenever a change copies one of
/// its nodes.
type Key = Arc<[u8]>;

/// Names to nodes, as the writer keeps them. Hashed with foldhash: the keys
/// come from exported services, never from queries.
type Nodes = std::collections::HashMap<Key, Arc<Node>, foldhash::fast::RandomState>;

/// Names changed since the flat index was built: `Some` added or replaced,
/// `None` removed.
type Overlay = imbl::GenericHashMap<
    Key,
    Option<Arc<Node>>,
    foldhash::fast::RandomState,
    imbl::shared_ptr::DefaultSharedPtr,
>;

/// The overlay's size (at least) at which a publish builds a new flat
/// index: a rebuild costs O(names), so it happens once per that many
/// changed names, and the overlay stays small enough to stay in cache.
/// Tests use a tiny one, so that their publishes rebuild often.
#[cfg(not(test))]
const OVERLAY_MIN: usize = 1024;
#[cfg(test)]
const OVERLAY_MIN: usize = 4;

/// An immutable view of the zone: what lookups read. Unchanged names'
/// nodes are shared between consecutive snapshots (a flat index built now
/// and then, plus a persistent overlay of the names changed since), so a
/// publish costs O(changed names), and a service's round-robin position
/// carries over while its records stay the same.
#[derive(Debug, Clone)]
pub struct ZoneSnapshot {
    origin: Key,
    ttl: u32,
    /// The SOA as an answer at the apex (owner: the question).
    soa_answer: Records,
    /// The SOA for the authority section of negative answers (owner: the
    /// apex, spelled out), and its record count (1).
    soa_authority: Box<[u8]>,
    /// Every name as of some publish, flat ...
    index: Arc<FlatIndex<Node>>,
    /// ... and the names changed since, consulted first.
    overlay: Overlay,
}

/// The zone as its one writer (the catalog's publisher) keeps it: every
/// name and what each service put there, in plain maps only the writer
/// touches (a change costs hash-map writes, not persistent-map copies),
/// and the snapshot built from them.
#[derive(Debug)]
pub struct Zone {
    origin_name: Name,
    /// Lower-case zone without the trailing dot.
    zone: String,
    /// SOA MNAME and RNAME in wire form, to stamp a new serial on each publish.
    soa_names: (Key, Key),
    /// Every name.
    nodes: Nodes,
    /// The names each service put into `nodes`, to take them out again.
    owned: std::collections::HashMap<ServiceKey, Owned>,
    /// Services with names per `<ns>.svc.<zone>`; the namespace node (and
    /// `svc.<zone>`) exist while a count is above zero.
    namespaces: std::collections::HashMap<Key, usize>,
    /// What lookups read, as of the last change.
    served: ZoneSnapshot,
}

/// What one service contributed to the zone.
#[derive(Debug)]
struct Owned {
    names: Vec<Key>,
    namespace: Key,
}

fn name(text: &str) -> Option<Name> {
    Name::from_ascii(text).ok()
}

fn address_records(ttl: u32, addrs: impl IntoIterator<Item = IpAddr>) -> ClusterRecords {
    let (mut a, mut aaaa) = (Vec::new(), Vec::new());
    for addr in addrs {
        match addr {
            IpAddr::V4(v4) => a.push((rtype::A, ttl, v4.octets().to_vec())),
            IpAddr::V6(v6) => aaaa.push((rtype::AAAA, ttl, v6.octets().to_vec())),
        }
    }
    ClusterRecords {
        a: Records::from_parts(&a),
        aaaa: Records::from_parts(&aaaa),
    }
}

/// SOA RDATA: names uncompressed, then serial, refresh, retry, expire and
/// the negative-caching TTL.
fn soa_rdata(names: &(Key, Key), serial: u32, ttl: u32) -> Vec<u8> {
    let mut rdata = Vec::with_capacity(names.0.len() + names.1.len() + 20);
    rdata.extend_from_slice(&names.0);
    rdata.extend_from_slice(&names.1);
    for v in [serial, 3600, 600, 86400, ttl] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    rdata
}

impl ZoneSnapshot {
    /// The node of `qname`: the overlay's word, else the index's.
    fn node(&self, qname: &[u8]) -> Option<&Arc<Node>> {
        if !self.overlay.is_empty() {
            if let Some(changed) = self.overlay.get(qname) {
                return changed.as_ref();
            }
        }
        self.index.get(qname)
    }
}

impl Zone {
    /// The zone with no services: apex, SOA and `dns-version`.
    pub fn new(config: &DnsConfig, serial: u32) -> Self {
        let zone = config.zone.trim_end_matches('.').to_ascii_lowercase();
        let ttl = config.ttl;
        let origin_name = name(&format!("{zone}."))
            .unwrap_or_else(|| Name::from_ascii("clusterset.local.").unwrap_or_default());
        let soa_names = (
            key(&name(&format!("ns.{zone}.")).unwrap_or_else(|| origin_name.clone())),
            key(&name(&format!("hostmaster.{zone}.")).unwrap_or_else(|| origin_name.clone())),
        );
        let origin = key(&origin_name);
        let mut nodes = Nodes::default();
        nodes.insert(origin.clone(), Arc::new(Node::Apex));
        if let Some(n) = name(&format!("dns-version.{zone}.")) {
            let mut rdata = vec![SCHEMA_VERSION.len() as u8];
            rdata.extend_from_slice(SCHEMA_VERSION.as_bytes());
            let txt = Records::from_parts(&[(rtype::TXT, ttl, rdata)]);
            nodes.insert(key(&n), Arc::new(Node::Txt(txt)));
        }
        let mut zone = Self {
            origin_name,
            zone,
            soa_names,
            nodes,
            owned: Default::default(),
            namespaces: Default::default(),
            served: ZoneSnapshot {
                origin,
                ttl,
                soa_answer: Records::default(),
                soa_authority: Box::default(),
                index: Arc::new(FlatIndex::build(0, std::iter::empty())),
                overlay: Overlay::default(),
            },
        };
        zone.stamp(serial);
        zone.reindex();
        zone
    }

    /// Builds the zone from every service's computed backends.
    pub fn build(config: &DnsConfig, serial: u32, backends: &ServiceMap<ServiceBackends>) -> Self {
        let mut zone = Self::new(config, serial);
        zone.apply(serial, backends.iter().map(|(k, b)| (k, Some(b.as_ref()))));
        zone
    }

    /// What lookups read now (cheap: shared index and overlay).
    pub fn snapshot(&self) -> ZoneSnapshot {
        self.served.clone()
    }

    /// Sets the SOA records for `serial`.
    fn stamp(&mut self, serial: u32) {
        let ttl = self.served.ttl;
        let rdata = soa_rdata(&self.soa_names, serial, ttl);
        self.served.soa_answer = Records::from_parts(&[(rtype::SOA, ttl, rdata.clone())]);
        let mut authority = self.served.origin.to_vec();
        push_fixed(&mut authority, rtype::SOA, ttl, &rdata);
        self.served.soa_authority = authority.into_boxed_slice();
    }

    /// Applies `changes` under SOA serial `serial`: each service's changed
    /// names are replaced, the names it no longer has removed, and a
    /// removed service's names taken out (`None`).
    pub fn apply<'a>(
        &mut self,
        serial: u32,
        changes: impl IntoIterator<Item = (&'a ServiceKey, Option<&'a ServiceBackends>)>,
    ) {
        self.stamp(serial);
        for (key, backends) in changes {
            match backends {
                Some(b) => self.replace_service(key, b),
                None => self.remove_service(key),
            }
        }
        if let Ok(svc) = self.origin_name.prepend_label("svc") {
            let svc = key(&svc);
            if self.namespaces.is_empty() {
                self.unset(&svc);
            } else if !self.nodes.contains_key(&svc) {
                self.set(svc, Node::Empty);
            }
        }
        if self.served.overlay.len() >= OVERLAY_MIN.max(self.nodes.len() / 8) {
            self.reindex();
        }
    }

    /// Adds or replaces a name.
    fn set(&mut self, name: Key, node: Node) {
        let node = Arc::new(node);
        self.nodes.insert(name.clone(), node.clone());
        self.served.overlay.insert(name, Some(node));
    }

    /// Removes a name.
    fn unset(&mut self, name: &[u8]) {
        if let Some((name, _)) = self.nodes.remove_entry(name) {
            self.served.overlay.insert(name, None);
        }
    }

    /// Builds the flat index of every name and empties the overlay.
    fn reindex(&mut self) {
        let entries = self.nodes.iter().map(|(k, v)| (&k[..], v));
        self.served.index = Arc::new(FlatIndex::build(self.nodes.len(), entries));
        self.served.overlay = Overlay::default();
    }

    fn remove_service(&mut self, key: &ServiceKey) {
        let Some(owned) = self.owned.remove(key) else {
            return;
        };
        for n in &owned.names {
            self.unset(n);
        }
        let left = match self.namespaces.get_mut(&owned.namespace) {
            Some(count) => {
                *count = count.saturating_sub(1);
                *count
            }
            None => 0,
        };
        if left == 0 {
            self.namespaces.remove(&owned.namespace);
            self.unset(&owned.namespace);
        }
    }

    /// Serves `b` in place of what `key` served: only the names whose
    /// records changed are written (an endpoint change touches a few names
    /// of a service, not all of them), names it no longer has are removed.
    fn replace_service(&mut self, key: &ServiceKey, b: &ServiceBackends) {
        let Some(old) = self.owned.remove(key) else {
            self.add_service(key, b);
            return;
        };
        let new = service_nodes(&self.zone, self.served.ttl, b);
        let Some((namespace, nodes)) = new.filter(|(ns, _)| *ns == old.namespace) else {
            self.owned.insert(key.clone(), old);
            self.remove_service(key);
            self.add_service(key, b);
            return;
        };
        let had: std::collections::HashSet<&[u8]> = old.names.iter().map(|n| &n[..]).collect();
        let mut names: Vec<Key> = Vec::with_capacity(nodes.len());
        let mut kept: std::collections::HashSet<Key> = std::collections::HashSet::new();
        let mut ancestors: Vec<Key> = Vec::new();
        for (n, node) in nodes {
            push_ancestors(&n, &namespace, &mut ancestors);
            let unchanged = had.contains(&n[..])
                && self
                    .nodes
                    .get(&n)
                    .is_some_and(|current| current.same(&node));
            if !unchanged {
                self.set(n.clone(), node);
            }
            if kept.insert(n.clone()) {
                names.push(n);
            }
        }
        for a in ancestors {
            if kept.contains(&a) {
                continue;
            }
            // Still this service's, or free to take.
            if had.contains(&a[..]) || !self.nodes.contains_key(&a) {
                if !self.nodes.contains_key(&a) {
                    self.set(a.clone(), Node::Empty);
                }
                kept.insert(a.clone());
                names.push(a);
            }
        }
        for n in old.names.iter().filter(|n| !kept.contains(*n)) {
            self.unset(n);
        }
        self.owned.insert(key.clone(), Owned { names, namespace });
    }

    fn add_service(&mut self, key: &ServiceKey, b: &ServiceBackends) {
        let Some((namespace, nodes)) = service_nodes(&self.zone, self.served.ttl, b) else {
            return;
        };
        let mut names = Vec::with_capacity(nodes.len());
        let mut ancestors: Vec<Key> = Vec::new();
        for (n, node) in nodes {
            push_ancestors(&n, &namespace, &mut ancestors);
            self.set(n.clone(), node);
            names.push(n);
        }
        for a in ancestors {
            if !self.nodes.contains_key(&a) {
                self.set(a.clone(), Node::Empty);
                names.push(a);
            }
        }
        *self.namespaces.entry(namespace.clone()).or_insert(0) += 1;
        if !self.nodes.contains_key(&namespace) {
            self.set(namespace.clone(), Node::Empty);
        }
        self.owned.insert(key.clone(), Owned { names, namespace });
    }
}

impl ZoneSnapshot {
    /// The record TTL in force.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The SOA record for a negative answer's authority section (owner
    /// spelled out).
    pub fn soa_authority(&self) -> &[u8] {
        &self.soa_authority
    }

    /// Looks up `qname` (lower-cased wire form) for `qtype`. ClusterSetIP
    /// names advance their round-robin position.
    pub fn lookup(&self, qname: &[u8], qtype: u16) -> Lookup<'_> {
        if !in_zone(qname, &self.origin) {
            return Lookup::Refused;
        }
        let Some(node) = self.node(qname) else {
            return Lookup::NxDomain;
        };
        let records = match (node.as_ref(), qtype) {
            (Node::Apex, rtype::SOA) => &self.soa_answer,
            (Node::Service(s), rtype::A | rtype::ANY) => s.pick(&s.schedule_a, |c| &c.a),
            (Node::Service(s), rtype::AAAA) => s.pick(&s.schedule_aaaa, |c| &c.aaaa),
            (Node::Endpoint(r, _), rtype::A) => &r.a,
            (Node::Endpoint(r, _), rtype::AAAA) => &r.aaaa,
            (Node::Endpoint(_, any), rtype::ANY) => any,
            (Node::Srv(records), rtype::SRV | rtype::ANY) => records,
            (Node::Txt(records), rtype::TXT | rtype::ANY) => records,
            _ => return Lookup::NoData,
        };
        if records.is_empty() {
            Lookup::NoData
        } else {
            Lookup::Answer(records)
        }
    }
}

impl ServiceNode {
    /// ClusterSetIP: one cluster's records, the next in the schedule.
    /// Headless: every cluster's records.
    fn pick<'a>(
        &'a self,
        schedule: &[u16],
        family: impl Fn(&'a ClusterRecords) -> &'a Records,
    ) -> &'a Records {
        match self.service_type {
            ServiceType::Headless => family(&self.all),
            ServiceType::ClusterSetIP => {
                if schedule.is_empty() {
                    return family(&self.all);
                }
                let i = self.next.fetch_add(1, Ordering::Relaxed) % schedule.len();
                self.clusters
                    .get(schedule[i] as usize)
                    .map_or(family(&self.all), family)
            }
        }
    }
}

/// A service's names and their nodes, with its namespace's name
/// (`<ns>.svc.<zone>`); `None` when the service has no name in DNS.
fn service_nodes(zone: &str, ttl: u32, b: &ServiceBackends) -> Option<(Key, Vec<(Key, Node)>)> {
    let namespace = name(&format!("{}.svc.{zone}.", b.service.namespace));
    let svc = format!("{}.{}.svc.{zone}.", b.service.name, b.service.namespace);
    let (Some(svc_name), Some(namespace)) = (name(&svc), namespace) else {
        tracing::warn!(service = %b.service, "service name does not form a DNS name; not served");
        return None;
    };
    let mut nodes = Vec::new();
    let serving: Vec<_> = b
        .clusters
        .iter()
        .filter(|c| c.effective_weight > 0)
        .collect();
    let clusters: Vec<ClusterRecords> = serving
        .iter()
        .map(|c| address_records(ttl, c.addresses.iter().copied()))
        .collect();
    let family_schedule = |has: &dyn Fn(&ClusterRecords) -> bool| {
        let weights: Vec<u64> = serving
            .iter()
            .zip(&clusters)
            .map(|(c, r)| if has(r) { c.effective_weight } else { 0 })
            .collect();
        crate::backends::schedule(&weights)
    };
    let schedule_a = family_schedule(&|r| !r.a.is_empty());
    let schedule_aaaa = family_schedule(&|r| !r.aaaa.is_empty());
    let headless = b.service_type == ServiceType::Headless;
    let has_any = clusters
        .iter()
        .any(|c| !c.a.is_empty() || !c.aaaa.is_empty());
    if headless && !has_any {
        // A headless service with no ready endpoint does not exist in DNS.
        return None;
    }
    // A ClusterSetIP name with no cluster to answer answers nothing.
    let all = if headless {
        ClusterRecords {
            a: Records::concat(&clusters.iter().map(|c| &c.a).collect::<Vec<_>>()),
            aaaa: Records::concat(&clusters.iter().map(|c| &c.aaaa).collect::<Vec<_>>()),
        }
    } else {
        ClusterRecords::default()
    };
    nodes.push((
        key(&svc_name),
        Node::Service(ServiceNode {
            service_type: b.service_type,
            clusters,
            all,
            schedule_a,
            schedule_aaaa,
            next: AtomicUsize::new(0),
        }),
    ));

    // Per-endpoint names (headless only): <hostname>.<clusterid>.<svc>...
    let mut endpoint_targets: Vec<Key> = Vec::new();
    if headless {
        let mut per_name: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for c in &serving {
            for e in &c.endpoints {
                if let Some(h) = &e.hostname {
                    per_name
                        .entry(format!("{h}.{}.{svc}", c.cluster))
                        .or_default()
                        .push(e.address);
                }
            }
        }
        for (text, addrs) in per_name {
            if let Some(n) = name(&text) {
                let key = key(&n);
                endpoint_targets.push(key.clone());
                let records = address_records(ttl, addrs);
                let any = Records::concat(&[&records.a, &records.aaaa]);
                nodes.push((key, Node::Endpoint(records, any)));
            }
        }
    }

    // SRV for named ports: _<port>._<proto>.<svc>...
    let svc_key = key(&svc_name);
    for p in b.ports.iter().filter(|p| !p.name.is_empty()) {
        let Some(owner) = name(&format!(
            "_{}._{}.{svc}",
            p.name,
            p.protocol.to_ascii_lowercase()
        )) else {
            continue;
        };
        let srv = |weight: u16, target: &[u8]| {
            let mut rdata = Vec::with_capacity(6 + target.len());
            rdata.extend_from_slice(&0u16.to_be_bytes());
            rdata.extend_from_slice(&weight.to_be_bytes());
            rdata.extend_from_slice(&p.port.to_be_bytes());
            rdata.extend_from_slice(target);
            (rtype::SRV, ttl, rdata)
        };
        let parts: Vec<_> = if headless {
            endpoint_targets.iter().map(|t| srv(10, t)).collect()
        } else {
            vec![srv(100, &svc_key)]
        };
        if !parts.is_empty() {
            nodes.push((key(&owner), Node::Srv(Records::from_parts(&parts))));
        }
    }
    Some((key(&namespace), nodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::ClusterBackend;
    use crate::dns::wire;
    use crate::model::{Endpoint, Port, SessionAffinity};
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{RData, Record, RecordType};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn endpoint(addr: &str, hostname: Option<&str>) -> Endpoint {
        crate::model::fixtures::endpoint(addr.parse().unwrap(), hostname)
    }

    fn cluster(id: &str, weight: u64, eps: Vec<Endpoint>) -> ClusterBackend {
        ClusterBackend {
            cluster: id.into(),
            weight: Some(weight),
            effective_weight: weight,
            share: 0.0,
            healthy: weight > 0,
            reason: String::new(),
            addresses: eps.iter().map(|e| e.address).collect(),
            endpoints: eps,
        }
    }

    fn service(
        name: &str,
        t: ServiceType,
        clusters: Vec<ClusterBackend>,
    ) -> (ServiceKey, ServiceBackends) {
        service_in("app", name, t, clusters)
    }

    fn service_in(
        namespace: &str,
        name: &str,
        t: ServiceType,
        clusters: Vec<ClusterBackend>,
    ) -> (ServiceKey, ServiceBackends) {
        let key = ServiceKey::new(namespace, name).unwrap();
        let b = ServiceBackends {
            service: key.clone(),
            service_type: t,
            ports: vec![Port {
                name: "http".into(),
                protocol: "TCP".into(),
                app_protocol: String::new(),
                port: 8080,
            }],
            session_affinity: SessionAffinity::None,
            multi_cluster_service: None,
            clusters,
            conditions: vec![],
            revision: 1,
        };
        (key, b)
    }

    fn zone() -> ZoneSnapshot {
        let backends: ServiceMap<ServiceBackends> = [
            service(
                "api",
                ServiceType::ClusterSetIP,
                vec![
                    cluster(
                        "us-west-1",
                        60,
                        vec![endpoint("127.0.1.1", None), endpoint("127.0.1.2", None)],
                    ),
                    cluster("us-east-1", 40, vec![endpoint("127.0.2.1", None)]),
                    cluster("eu-central-1", 0, vec![endpoint("127.0.3.1", None)]),
                ],
            ),
            service(
                "db",
                ServiceType::Headless,
                vec![
                    cluster(
                        "us-west-1",
                        1,
                        vec![
                            endpoint("127.0.1.21", Some("db-0")),
                            endpoint("127.0.1.22", Some("db-1")),
                        ],
                    ),
                    cluster(
                        "us-east-1",
                        1,
                        vec![
                            endpoint("127.0.2.21", Some("db-0")),
                            endpoint("::1", Some("db-1")),
                        ],
                    ),
                ],
            ),
            service(
                "down",
                ServiceType::ClusterSetIP,
                vec![cluster("us-west-1", 0, vec![])],
            ),
            service(
                "gone",
                ServiceType::Headless,
                vec![cluster("us-west-1", 0, vec![])],
            ),
        ]
        .into_iter()
        .map(|(k, b)| (k, Arc::new(b)))
        .collect();
        Zone::build(&DnsConfig::default(), 7, &backends).snapshot()
    }

    /// A decoded answer, as a client sees it.
    #[derive(Debug)]
    struct Answer {
        rcode: ResponseCode,
        authoritative: bool,
        answers: Vec<Record>,
        soa: Option<Record>,
    }

    /// Asks `z` through the wire path (over TCP: no size limit) and decodes
    /// the response with hickory, so the encoding is checked too.
    fn q(z: &ZoneSnapshot, n: &str, t: RecordType) -> Answer {
        let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(Name::from_ascii(n).unwrap(), t));
        let mut out = Vec::new();
        wire::respond(z, &msg.to_vec().unwrap(), wire::Transport::Tcp, &mut out).unwrap();
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.queries.len(), 1);
        assert!(m
            .answers
            .iter()
            .all(|r| r.name == Name::from_ascii(n).unwrap()));
        Answer {
            rcode: m.metadata.response_code,
            authoritative: m.metadata.authoritative,
            soa: m.authorities.first().cloned(),
            answers: m.answers,
        }
    }

    fn cluster_of(r: &Record) -> &'static str {
        match &r.data {
            RData::A(a) if a.0.octets()[2] == 1 => "us-west-1",
            RData::A(a) if a.0.octets()[2] == 2 => "us-east-1",
            _ => "other",
        }
    }

    #[test]
    fn clustersetip_answers_hold_one_cluster_split_by_weight() {
        let z = zone();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for _ in 0..2000 {
            let a = q(&z, "api.app.svc.clusterset.local.", RecordType::A);
            assert_eq!(a.rcode, ResponseCode::NoError);
            assert!(a.authoritative);
            let clusters: std::collections::BTreeSet<_> =
                a.answers.iter().map(cluster_of).collect();
            assert_eq!(clusters.len(), 1, "{:?}", a.answers);
            if clusters.contains("us-west-1") {
                assert_eq!(a.answers.len(), 2, "all of the cluster's addresses");
            }
            *counts
                .entry(clusters.into_iter().next().unwrap())
                .or_default() += 1;
        }
        assert_eq!(counts["us-west-1"], 1200);
        assert_eq!(counts["us-east-1"], 800);
        assert_eq!(counts.get("other"), None);
    }

    #[test]
    fn headless_and_per_endpoint_names() {
        let z = zone();
        let a = q(&z, "db.app.svc.clusterset.local.", RecordType::A);
        assert_eq!(a.answers.len(), 3);
        let aaaa = q(&z, "db.app.svc.clusterset.local.", RecordType::AAAA);
        assert_eq!(aaaa.answers.len(), 1);
        let one = q(
            &z,
            "DB-0.us-east-1.db.app.svc.clusterset.local.",
            RecordType::A,
        );
        assert_eq!(one.answers.len(), 1, "case-insensitive");
        assert!(matches!(&one.answers[0].data, RData::A(a) if a.0.to_string() == "127.0.2.21"));
        // The reserved <clusterid>.<svc> name exists (it has names below) but holds nothing.
        let reserved = q(&z, "us-west-1.db.app.svc.clusterset.local.", RecordType::A);
        assert_eq!(
            (
                reserved.rcode,
                reserved.answers.len(),
                reserved.soa.is_some()
            ),
            (ResponseCode::NoError, 0, true)
        );
        let reserved = q(&z, "us-west-1.api.app.svc.clusterset.local.", RecordType::A);
        assert_eq!(reserved.rcode, ResponseCode::NXDomain);
        // A headless service with nothing ready: NXDOMAIN.
        assert_eq!(
            q(&z, "gone.app.svc.clusterset.local.", RecordType::A).rcode,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn srv_txt_soa_and_negative_answers() {
        let z = zone();
        let srv = q(
            &z,
            "_http._tcp.api.app.svc.clusterset.local.",
            RecordType::SRV,
        );
        assert_eq!(srv.answers.len(), 1);
        let RData::SRV(s) = &srv.answers[0].data else {
            panic!()
        };
        assert_eq!(
            (s.port, s.target.to_string().as_str()),
            (8080, "api.app.svc.clusterset.local.")
        );
        let srv = q(
            &z,
            "_http._tcp.db.app.svc.clusterset.local.",
            RecordType::SRV,
        );
        assert_eq!(srv.answers.len(), 4);
        let txt = q(&z, "dns-version.clusterset.local.", RecordType::TXT);
        assert!(matches!(&txt.answers[0].data, RData::TXT(t) if t.to_string().contains("1.0.0")));
        let soa = q(&z, "clusterset.local.", RecordType::SOA);
        assert!(matches!(&soa.answers[0].data, RData::SOA(s) if s.serial == 7 && s.minimum == 5));
        assert_eq!(soa.answers[0].ttl, 5);

        let nx = q(&z, "nope.app.svc.clusterset.local.", RecordType::A);
        assert_eq!(
            (nx.rcode, nx.soa.is_some(), nx.authoritative),
            (ResponseCode::NXDomain, true, true)
        );
        for ent in ["svc.clusterset.local.", "app.svc.clusterset.local."] {
            let a = q(&z, ent, RecordType::A);
            assert_eq!(
                (a.rcode, a.answers.len(), a.soa.is_some()),
                (ResponseCode::NoError, 0, true),
                "{ent}"
            );
        }
        let nodata = q(&z, "api.app.svc.clusterset.local.", RecordType::TXT);
        assert_eq!(
            (nodata.rcode, nodata.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let down = q(&z, "down.app.svc.clusterset.local.", RecordType::A);
        assert_eq!(
            (down.rcode, down.answers.len(), down.soa.is_some()),
            (ResponseCode::NoError, 0, true)
        );
        let out = q(&z, "example.com.", RecordType::A);
        assert_eq!(
            (out.rcode, out.authoritative),
            (ResponseCode::Refused, false)
        );
        let out = q(&z, "notclusterset.local.", RecordType::A);
        assert_eq!(out.rcode, ResponseCode::Refused);
    }

    /// The name a wire-form name spells, with a trailing dot.
    fn display_name(wire: &[u8]) -> String {
        let mut out = String::new();
        let mut pos = 0;
        while let Some(&len) = wire.get(pos) {
            if len == 0 {
                break;
            }
            let label = wire
                .get(pos + 1..pos + 1 + len as usize)
                .unwrap_or_default();
            out.push_str(&String::from_utf8_lossy(label));
            out.push('.');
            pos += 1 + len as usize;
        }
        if out.is_empty() {
            out.push('.');
        }
        out
    }

    /// Every name with its node, round-robin positions aside.
    fn contents(z: &Zone) -> BTreeMap<String, String> {
        z.nodes
            .iter()
            .map(|(n, node)| (display_name(n), format!("{node:?}")))
            .collect()
    }

    /// One service as a proptest draws it: namespace, name, type, and per
    /// cluster a weight and endpoints (address octet, hostname or not).
    fn arb_service() -> impl Strategy<Value = (ServiceKey, ServiceBackends)> {
        let arb_cluster = (
            0u64..3,
            prop::collection::vec((1u8..6, any::<bool>()), 0..3),
        );
        (
            prop::sample::select(vec!["app", "db"]),
            prop::sample::select(vec!["a", "b", "c", "d"]),
            any::<bool>(),
            prop::collection::vec(arb_cluster, 1..3),
        )
            .prop_map(|(ns, name, headless, clusters)| {
                let t = if headless {
                    ServiceType::Headless
                } else {
                    ServiceType::ClusterSetIP
                };
                let clusters = clusters
                    .into_iter()
                    .enumerate()
                    .map(|(i, (w, eps))| {
                        let eps = eps
                            .into_iter()
                            .map(|(o, named)| {
                                let host = format!("h{o}");
                                endpoint(&format!("127.0.{i}.{o}"), named.then_some(&*host))
                            })
                            .collect();
                        cluster(&format!("c{i}"), w, eps)
                    })
                    .collect();
                service_in(ns, name, t, clusters)
            })
    }

    proptest! {
        /// Publishing changes one batch at a time yields exactly the zone a
        /// full build of the final backends yields: no name left behind by
        /// a removed or changed service, no shared namespace node removed
        /// while another service still uses it.
        #[test]
        fn incremental_updates_match_a_full_build(
            batches in prop::collection::vec(
                prop::collection::vec((arb_service(), any::<bool>()), 1..4),
                1..8,
            )
        ) {
            let config = DnsConfig::default();
            let mut backends: ServiceMap<ServiceBackends> = ServiceMap::new();
            let mut zone = Zone::build(&config, 1, &backends);
            let mut before_names = zone.nodes.clone();
            let mut before_snapshot = zone.snapshot();
            for (serial, batch) in batches.into_iter().enumerate() {
                let before = backends.clone();
                for ((key, b), remove) in batch {
                    if remove {
                        backends.remove(&key);
                    } else {
                        backends.insert(key, Arc::new(b));
                    }
                }
                let changes = before.diff(&backends).map(|item| match item {
                    imbl::ordmap::DiffItem::Add(k, b)
                    | imbl::ordmap::DiffItem::Update { new: (k, b), .. } => (k, Some(b.as_ref())),
                    imbl::ordmap::DiffItem::Remove(k, _) => (k, None),
                });
                zone.apply(serial as u32 + 2, changes);
                let full = Zone::build(&config, serial as u32 + 2, &backends);
                prop_assert_eq!(contents(&zone), contents(&full));
                // What lookups read (index and overlay) is what `nodes` holds.
                let snapshot = zone.snapshot();
                for (name, node) in zone.nodes.iter() {
                    prop_assert!(snapshot.node(name).is_some_and(|n| Arc::ptr_eq(n, node)));
                }
                for name in before_names.keys() {
                    prop_assert_eq!(snapshot.node(name).is_some(), zone.nodes.contains_key(name));
                    // A snapshot handed out earlier still answers as it did.
                    prop_assert!(before_snapshot.node(name).is_some_and(|n| Arc::ptr_eq(n, &before_names[name])));
                }
                before_snapshot = snapshot;
                before_names = zone.nodes.clone();
            }
        }
    }

    #[test]
    fn namespace_node_lives_while_any_service_uses_it() {
        let config = DnsConfig::default();
        let (a, sa) = service(
            "api",
            ServiceType::ClusterSetIP,
            vec![cluster("x", 1, vec![endpoint("127.0.0.1", None)])],
        );
        let (b, sb) = service(
            "web",
            ServiceType::ClusterSetIP,
            vec![cluster("x", 1, vec![endpoint("127.0.0.2", None)])],
        );
        let mut zone = Zone::new(&config, 1);
        zone.apply(2, [(&a, Some(&sa)), (&b, Some(&sb))]);
        let z = zone.snapshot();
        assert_eq!(
            q(&z, "app.svc.clusterset.local.", RecordType::A).rcode,
            ResponseCode::NoError
        );
        zone.apply(3, [(&a, None)]);
        let z = zone.snapshot();
        assert_eq!(
            q(&z, "app.svc.clusterset.local.", RecordType::A).rcode,
            ResponseCode::NoError
        );
        assert_eq!(
            q(&z, "api.app.svc.clusterset.local.", RecordType::A).rcode,
            ResponseCode::NXDomain
        );
        zone.apply(4, [(&b, None)]);
        let z = zone.snapshot();
        assert_eq!(
            q(&z, "app.svc.clusterset.local.", RecordType::A).rcode,
            ResponseCode::NXDomain
        );
        assert_eq!(
            q(&z, "svc.clusterset.local.", RecordType::A).rcode,
            ResponseCode::NXDomain
        );
        let soa = q(&z, "clusterset.local.", RecordType::SOA).answers;
        assert!(
            matches!(&soa[0].data, RData::SOA(s) if s.serial == 4),
            "{soa:?}"
        );
    }
}
