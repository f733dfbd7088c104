//! The zone snapshot: every name of the ClusterSet zone with its records,
//! and the answer to a query, computed without I/O or locks.

use super::DnsConfig;
use crate::backends::ServiceBackends;
use crate::model::{ServiceKey, ServiceMap, ServiceType};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The MCS DNS specification's schema version (KEP-1645 specification.md,
/// section 1), served as `dns-version.<zone>` TXT.
pub const SCHEMA_VERSION: &str = "1.0.0";

/// The answer to one query.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// False only for REFUSED (names outside the zone).
    pub authoritative: bool,
    pub answers: Vec<Record>,
    /// The zone's SOA, for the authority section of negative answers.
    pub soa: Option<Record>,
}

/// A cluster's records for one service.
#[derive(Debug, Default)]
struct ClusterRecords {
    a: Vec<Record>,
    aaaa: Vec<Record>,
}

/// A ClusterSetIP or headless service name.
#[derive(Debug)]
struct ServiceNode {
    service_type: ServiceType,
    clusters: Vec<ClusterRecords>,
    /// Cluster indices in smooth weighted round-robin order, per family.
    schedule_a: Vec<u16>,
    schedule_aaaa: Vec<u16>,
    next: AtomicUsize,
}

#[derive(Debug)]
enum Node {
    Apex,
    Service(ServiceNode),
    /// A per-endpoint name of a headless service.
    Endpoint(ClusterRecords),
    Srv(Vec<Record>),
    Txt(Record),
    /// An empty non-terminal: exists, but holds no records.
    Empty,
}

/// An immutable view of the zone. Unchanged services' nodes are shared
/// between consecutive snapshots (persistent maps of `Arc`s), so a publish
/// costs O(changed services), and a service's round-robin position carries
/// over while its records stay the same.
#[derive(Debug, Clone)]
pub struct ZoneSnapshot {
    origin: LowerName,
    origin_name: Name,
    /// Lower-case zone without the trailing dot.
    zone: String,
    ttl: u32,
    soa: Record,
    /// SOA MNAME and RNAME, to stamp a new serial on each publish.
    soa_names: (Name, Name),
    nodes: imbl::HashMap<LowerName, Arc<Node>>,
    /// The names each service put into `nodes`, to take them out again.
    owned: imbl::OrdMap<ServiceKey, Arc<Owned>>,
    /// Services with names per `<ns>.svc.<zone>`; the namespace node (and
    /// `svc.<zone>`) exist while a count is above zero.
    namespaces: imbl::OrdMap<LowerName, usize>,
}

/// What one service contributed to the zone.
#[derive(Debug)]
struct Owned {
    names: Vec<LowerName>,
    namespace: LowerName,
}

fn name(text: &str) -> Option<Name> {
    Name::from_ascii(text).ok()
}
fn address_records(
    owner: &Name,
    ttl: u32,
    addrs: impl IntoIterator<Item = IpAddr>,
) -> ClusterRecords {
    let mut r = ClusterRecords::default();
    for a in addrs {
        match a {
            IpAddr::V4(v4) => {
                r.a.push(Record::from_rdata(owner.clone(), ttl, RData::A(A(v4))))
            }
            IpAddr::V6(v6) => r.aaaa.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::AAAA(AAAA(v6)),
            )),
        }
    }
    r
}

impl ZoneSnapshot {
    /// Builds the zone from every service's computed backends.
    pub fn build(config: &DnsConfig, serial: u32, backends: &ServiceMap<ServiceBackends>) -> Self {
        Self::empty(config, serial)
            .with_changes(serial, backends.iter().map(|(k, b)| (k, Some(b.as_ref()))))
    }

    /// The zone with no services: apex, SOA and `dns-version`.
    fn empty(config: &DnsConfig, serial: u32) -> Self {
        let zone = config.zone.trim_end_matches('.').to_ascii_lowercase();
        let ttl = config.ttl;
        let origin_name = name(&format!("{zone}."))
            .unwrap_or_else(|| Name::from_ascii("clusterset.local.").unwrap_or_default());
        let soa_names = (
            name(&format!("ns.{zone}.")).unwrap_or_else(|| origin_name.clone()),
            name(&format!("hostmaster.{zone}.")).unwrap_or_else(|| origin_name.clone()),
        );
        let origin = LowerName::new(&origin_name);
        let mut nodes = imbl::HashMap::new();
        nodes.insert(origin.clone(), Arc::new(Node::Apex));
        if let Some(n) = name(&format!("dns-version.{zone}.")) {
            let txt = Record::from_rdata(
                n.clone(),
                ttl,
                RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
            );
            nodes.insert(LowerName::new(&n), Arc::new(Node::Txt(txt)));
        }
        Self {
            soa: soa_record(&origin_name, &soa_names, serial, ttl),
            origin,
            origin_name,
            zone,
            ttl,
            soa_names,
            nodes,
            owned: imbl::OrdMap::new(),
            namespaces: imbl::OrdMap::new(),
        }
    }

    /// A new snapshot with `changes` applied: each service's old names are
    /// removed and its new ones (from `Some(backends)`) added. Everything
    /// else is shared with `self`.
    pub fn with_changes<'a>(
        &self,
        serial: u32,
        changes: impl IntoIterator<Item = (&'a ServiceKey, Option<&'a ServiceBackends>)>,
    ) -> Self {
        let mut next = self.clone();
        next.soa = soa_record(&self.origin_name, &self.soa_names, serial, self.ttl);
        for (key, backends) in changes {
            next.remove_service(key);
            if let Some(b) = backends {
                next.add_service(key, b);
            }
        }
        if let Ok(svc) = self.origin_name.prepend_label("svc") {
            let svc = LowerName::new(&svc);
            if next.namespaces.is_empty() {
                next.nodes.remove(&svc);
            } else if !next.nodes.contains_key(&svc) {
                next.nodes.insert(svc, Arc::new(Node::Empty));
            }
        }
        next
    }

    fn remove_service(&mut self, key: &ServiceKey) {
        let Some(owned) = self.owned.remove(key) else {
            return;
        };
        for n in &owned.names {
            self.nodes.remove(n);
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
            self.nodes.remove(&owned.namespace);
        }
    }

    fn add_service(&mut self, key: &ServiceKey, b: &ServiceBackends) {
        let Some((namespace, nodes)) = service_nodes(&self.zone, self.ttl, b) else {
            return;
        };
        let mut names = Vec::with_capacity(nodes.len());
        let mut ancestors = Vec::new();
        for (n, node) in nodes {
            // Ancestors below the namespace belong to this service too.
            let mut parent = n.base_name();
            while parent != namespace && namespace.zone_of(&parent) {
                ancestors.push(parent.clone());
                parent = parent.base_name();
            }
            self.nodes.insert(n.clone(), Arc::new(node));
            names.push(n);
        }
        for a in ancestors {
            if !self.nodes.contains_key(&a) {
                self.nodes.insert(a.clone(), Arc::new(Node::Empty));
                names.push(a);
            }
        }
        *self.namespaces.entry(namespace.clone()).or_insert(0) += 1;
        if !self.nodes.contains_key(&namespace) {
            self.nodes.insert(namespace.clone(), Arc::new(Node::Empty));
        }
        self.owned
            .insert(key.clone(), Arc::new(Owned { names, namespace }));
    }

    /// The record TTL in force.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Answers a query for `qname`/`qtype`.
    pub fn answer(&self, qname: &LowerName, qtype: RecordType) -> Answer {
        if !self.origin.zone_of(qname) {
            return Answer {
                rcode: ResponseCode::Refused,
                authoritative: false,
                answers: vec![],
                soa: None,
            };
        }
        let Some(node) = self.nodes.get(qname) else {
            return self.negative(ResponseCode::NXDomain);
        };
        let answers: Vec<Record> = match (node.as_ref(), qtype) {
            (Node::Apex, RecordType::SOA) => vec![self.soa.clone()],
            (Node::Service(s), RecordType::A | RecordType::ANY) => s.pick(&s.schedule_a, |c| &c.a),
            (Node::Service(s), RecordType::AAAA) => s.pick(&s.schedule_aaaa, |c| &c.aaaa),
            (Node::Endpoint(r), RecordType::A) => r.a.clone(),
            (Node::Endpoint(r), RecordType::AAAA) => r.aaaa.clone(),
            (Node::Endpoint(r), RecordType::ANY) => r.a.iter().chain(&r.aaaa).cloned().collect(),
            (Node::Srv(records), RecordType::SRV | RecordType::ANY) => records.clone(),
            (Node::Txt(record), RecordType::TXT | RecordType::ANY) => vec![record.clone()],
            _ => vec![],
        };
        if answers.is_empty() {
            return self.negative(ResponseCode::NoError);
        }
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            soa: None,
        }
    }

    fn negative(&self, rcode: ResponseCode) -> Answer {
        Answer {
            rcode,
            authoritative: true,
            answers: vec![],
            soa: Some(self.soa.clone()),
        }
    }
}

impl ServiceNode {
    /// ClusterSetIP: one cluster's records, the next in the schedule.
    /// Headless: every cluster's records.
    fn pick(
        &self,
        schedule: &[u16],
        family: impl Fn(&ClusterRecords) -> &Vec<Record>,
    ) -> Vec<Record> {
        match self.service_type {
            ServiceType::Headless => self
                .clusters
                .iter()
                .flat_map(|c| family(c).iter().cloned())
                .collect(),
            ServiceType::ClusterSetIP => {
                if schedule.is_empty() {
                    return vec![];
                }
                let i = self.next.fetch_add(1, Ordering::Relaxed) % schedule.len();
                family(&self.clusters[schedule[i] as usize]).clone()
            }
        }
    }
}

fn soa_record(origin: &Name, names: &(Name, Name), serial: u32, ttl: u32) -> Record {
    let soa = SOA::new(
        names.0.clone(),
        names.1.clone(),
        serial,
        3600,
        600,
        86400,
        ttl,
    );
    Record::from_rdata(origin.clone(), ttl, RData::SOA(soa))
}

/// A service's names and their nodes, with its namespace's name
/// (`<ns>.svc.<zone>`); `None` when the service has no name in DNS.
fn service_nodes(
    zone: &str,
    ttl: u32,
    b: &ServiceBackends,
) -> Option<(LowerName, Vec<(LowerName, Node)>)> {
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
        .map(|c| address_records(&svc_name, ttl, c.addresses.iter().copied()))
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
    nodes.push((
        LowerName::new(&svc_name),
        Node::Service(ServiceNode {
            service_type: b.service_type,
            clusters,
            schedule_a,
            schedule_aaaa,
            next: AtomicUsize::new(0),
        }),
    ));

    // Per-endpoint names (headless only): <hostname>.<clusterid>.<svc>...
    let mut endpoint_names: Vec<(String, u16, Name)> = Vec::new();
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
                endpoint_names.push((text, 0, n.clone()));
                nodes.push((
                    LowerName::new(&n),
                    Node::Endpoint(address_records(&n, ttl, addrs)),
                ));
            }
        }
    }

    // SRV for named ports: _<port>._<proto>.<svc>...
    for p in b.ports.iter().filter(|p| !p.name.is_empty()) {
        let Some(owner) = name(&format!(
            "_{}._{}.{svc}",
            p.name,
            p.protocol.to_ascii_lowercase()
        )) else {
            continue;
        };
        let records: Vec<Record> = if headless {
            endpoint_names
                .iter()
                .map(|(_, _, target)| {
                    Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::SRV(SRV::new(0, 10, p.port, target.clone())),
                    )
                })
                .collect()
        } else {
            vec![Record::from_rdata(
                owner.clone(),
                ttl,
                RData::SRV(SRV::new(0, 100, p.port, svc_name.clone())),
            )]
        };
        if !records.is_empty() {
            nodes.push((LowerName::new(&owner), Node::Srv(records)));
        }
    }
    Some((LowerName::new(&namespace), nodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::ClusterBackend;
    use crate::model::{Endpoint, Port, SessionAffinity};
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
        ZoneSnapshot::build(&DnsConfig::default(), 7, &backends)
    }

    fn q(z: &ZoneSnapshot, n: &str, t: RecordType) -> Answer {
        z.answer(&LowerName::new(&Name::from_ascii(n).unwrap()), t)
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

    /// Every name with its node, round-robin positions aside.
    fn contents(z: &ZoneSnapshot) -> BTreeMap<String, String> {
        z.nodes
            .iter()
            .map(|(n, node)| (n.to_string(), format!("{node:?}")))
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
            let mut zone = ZoneSnapshot::build(&config, 1, &backends);
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
                zone = zone.with_changes(serial as u32 + 2, changes);
                let full = ZoneSnapshot::build(&config, serial as u32 + 2, &backends);
                prop_assert_eq!(contents(&zone), contents(&full));
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
        let z = ZoneSnapshot::build(&config, 1, &ServiceMap::new());
        let z = z.with_changes(2, [(&a, Some(&sa)), (&b, Some(&sb))]);
        assert_eq!(
            q(&z, "app.svc.clusterset.local.", RecordType::A).rcode,
            ResponseCode::NoError
        );
        let z = z.with_changes(3, [(&a, None)]);
        assert_eq!(
            q(&z, "app.svc.clusterset.local.", RecordType::A).rcode,
            ResponseCode::NoError
        );
        assert_eq!(
            q(&z, "api.app.svc.clusterset.local.", RecordType::A).rcode,
            ResponseCode::NXDomain
        );
        let z = z.with_changes(4, [(&b, None)]);
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
