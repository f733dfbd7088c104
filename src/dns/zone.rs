//! The zone snapshot: every name of the ClusterSet zone with its records,
//! and the answer to a query, computed without I/O or locks.

use super::DnsConfig;
use crate::backends::ServiceBackends;
use crate::model::{ServiceKey, ServiceType};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The MCS DNS specification's schema version (KEP-1645 specification.md,
/// section 1), served as `dns-version.<zone>` TXT.
pub const SCHEMA_VERSION: &str = "1.0.0";

/// The longest weighted schedule kept per service; larger weight sums are
/// scaled down proportionally.
const MAX_SCHEDULE: u64 = 1000;

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

/// An immutable view of the zone.
#[derive(Debug)]
pub struct ZoneSnapshot {
    origin: LowerName,
    ttl: u32,
    soa: Record,
    nodes: HashMap<LowerName, Node>,
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

impl ZoneSnapshot {
    /// Builds the zone from every service's computed backends.
    pub fn build(
        config: &DnsConfig,
        serial: u32,
        backends: &BTreeMap<ServiceKey, ServiceBackends>,
    ) -> Self {
        let zone = config.zone.trim_end_matches('.').to_ascii_lowercase();
        let ttl = config.ttl;
        let origin_name = name(&format!("{zone}."))
            .unwrap_or_else(|| Name::from_ascii("clusterset.local.").unwrap_or_default());
        let soa_rdata = SOA::new(
            name(&format!("ns.{zone}.")).unwrap_or_else(|| origin_name.clone()),
            name(&format!("hostmaster.{zone}.")).unwrap_or_else(|| origin_name.clone()),
            serial,
            3600,
            600,
            86400,
            ttl,
        );
        let soa = Record::from_rdata(origin_name.clone(), ttl, RData::SOA(soa_rdata));
        let origin = LowerName::new(&origin_name);
        let mut nodes: HashMap<LowerName, Node> = HashMap::new();
        nodes.insert(origin.clone(), Node::Apex);
        if let Some(n) = name(&format!("dns-version.{zone}.")) {
            let txt = Record::from_rdata(
                n.clone(),
                ttl,
                RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
            );
            nodes.insert(LowerName::new(&n), Node::Txt(txt));
        }
        for b in backends.values() {
            add_service(&mut nodes, &zone, ttl, b);
        }
        // Every ancestor of a name, up to the apex, exists too.
        let names: Vec<LowerName> = nodes.keys().cloned().collect();
        for n in names {
            let mut parent = n.base_name();
            while origin.zone_of(&parent) && parent != origin {
                nodes.entry(parent.clone()).or_insert(Node::Empty);
                parent = parent.base_name();
            }
        }
        Self {
            origin,
            ttl,
            soa,
            nodes,
        }
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
        let answers: Vec<Record> = match (node, qtype) {
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

fn add_service(nodes: &mut HashMap<LowerName, Node>, zone: &str, ttl: u32, b: &ServiceBackends) {
    let svc = format!("{}.{}.svc.{zone}.", b.service.name, b.service.namespace);
    let Some(svc_name) = name(&svc) else {
        tracing::warn!(service = %b.service, "service name does not form a DNS name; not served");
        return;
    };
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
        schedule(&weights)
    };
    let schedule_a = family_schedule(&|r| !r.a.is_empty());
    let schedule_aaaa = family_schedule(&|r| !r.aaaa.is_empty());
    let headless = b.service_type == ServiceType::Headless;
    let has_any = clusters
        .iter()
        .any(|c| !c.a.is_empty() || !c.aaaa.is_empty());
    if headless && !has_any {
        // A headless service with no ready endpoint does not exist in DNS.
        return;
    }
    nodes.insert(
        LowerName::new(&svc_name),
        Node::Service(ServiceNode {
            service_type: b.service_type,
            clusters,
            schedule_a,
            schedule_aaaa,
            next: AtomicUsize::new(0),
        }),
    );

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
                nodes.insert(
                    LowerName::new(&n),
                    Node::Endpoint(address_records(&n, ttl, addrs)),
                );
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
            nodes.insert(LowerName::new(&owner), Node::Srv(records));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::ClusterBackend;
    use crate::model::{Endpoint, Port, SessionAffinity};

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
        let key = ServiceKey::new("app", name).unwrap();
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
        let backends: BTreeMap<_, _> = [
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
}
