//! The answer path in DNS wire format: parses a query, looks it up in a
//! zone snapshot and writes the response into a reused buffer, without
//! building a message object or allocating per query.
//!
//! What it answers (RFC 1035, 6891): one question of class IN or ANY;
//! EDNS version 0 (BADVERS otherwise), our payload size advertised back;
//! NOTIMP for other opcodes, FORMERR for malformed questions or several
//! questions, REFUSED outside the zone. Responses and packets shorter than
//! a header are dropped, never answered. A UDP answer larger than the
//! client's payload size is truncated (TC, question only) so it retries
//! over TCP.

use super::zone::{rtype, Lookup, ZoneSnapshot};

/// The longest name in wire form (RFC 1035 section 3.1).
pub const MAX_NAME: usize = 255;
/// The UDP payload size we advertise in EDNS (the DNS Flag Day 2020 value).
pub const ADVERTISED_PAYLOAD: u16 = 1232;
/// Header length.
const HEADER: usize = 12;

/// Response codes, as numbers (BADVERS needs the EDNS extended bits).
pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const SERVFAIL: u16 = 2;
    pub const NXDOMAIN: u16 = 3;
    pub const NOTIMP: u16 = 4;
    pub const REFUSED: u16 = 5;
    pub const BADVERS: u16 = 16;
}

/// Which transport a query came over: it bounds the response size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A query's question, parsed.
struct Question {
    /// Lower-cased wire-form name.
    name: [u8; MAX_NAME],
    name_len: usize,
    qtype: u16,
    qclass: u16,
    /// Where the question ends in the request.
    end: usize,
}

/// A query's EDNS record.
#[derive(Clone, Copy)]
struct Edns {
    payload: u16,
    version: u8,
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// Reads the question at offset 12. `None`: malformed (compression
/// pointers, labels over 63 bytes, a name over 255, a short packet).
fn question(msg: &[u8]) -> Option<Question> {
    let mut q = Question {
        name: [0; MAX_NAME],
        name_len: 0,
        qtype: 0,
        qclass: 0,
        end: 0,
    };
    let mut pos = HEADER;
    loop {
        let len = *msg.get(pos)? as usize;
        if len > 63 || q.name_len + 1 + len > MAX_NAME {
            return None;
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        q.name[q.name_len] = len as u8;
        for (to, from) in q.name[q.name_len + 1..].iter_mut().zip(label) {
            *to = from.to_ascii_lowercase();
        }
        q.name_len += 1 + len;
        pos += 1 + len;
        if len == 0 {
            break;
        }
    }
    q.qtype = u16_at(msg, pos)?;
    q.qclass = u16_at(msg, pos + 2)?;
    q.end = pos + 4;
    Some(q)
}

/// Skips one name (labels or a compression pointer) at `pos`.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            0xC0..=0xFF => return Some(pos + 2),
            1..=63 => pos += 1 + len as usize,
            _ => return None,
        }
    }
}

/// Walks the answer, authority and additional sections after the question
/// and returns the OPT record if there is one. `Err`: malformed, or more
/// than one OPT (RFC 6891 section 6.1.1).
fn edns(msg: &[u8], from: usize) -> Result<Option<Edns>, ()> {
    let count = |at| u16_at(msg, at).map(usize::from).ok_or(());
    let before_additional = count(6)? + count(8)?;
    let total = before_additional + count(10)?;
    let mut pos = from;
    let mut found = None;
    for i in 0..total {
        let root = msg.get(pos) == Some(&0);
        pos = skip_name(msg, pos).ok_or(())?;
        let rtype = u16_at(msg, pos).ok_or(())?;
        let class = u16_at(msg, pos + 2).ok_or(())?;
        let ttl_high = *msg.get(pos + 5).ok_or(())?;
        let rdlen = u16_at(msg, pos + 8).ok_or(())? as usize;
        pos += 10 + rdlen;
        if pos > msg.len() {
            return Err(());
        }
        if i >= before_additional && rtype == rtype::OPT {
            if found.is_some() || !root {
                return Err(());
            }
            found = Some(Edns {
                payload: class,
                version: ttl_high,
            });
        }
    }
    Ok(found)
}

/// Answers `query` from `zone` into `out` (cleared first). Returns the
/// response code sent, or `None` when nothing must be sent (a response, or
/// too short to hold a header).
pub fn respond(
    zone: &ZoneSnapshot,
    query: &[u8],
    transport: Transport,
    out: &mut Vec<u8>,
) -> Option<u16> {
    out.clear();
    if query.len() < HEADER || query[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (query[2] >> 3) & 0x0F;
    let qdcount = u16_at(query, 4)?;
    // ID, then flags: QR, the opcode, RD copied; AA/TC/rcode set below.
    out.extend_from_slice(&query[..2]);
    out.push(0x80 | (query[2] & 0x79));
    out.push(0);
    out.extend_from_slice(&[0; 8]);

    let question = if qdcount == 1 { question(query) } else { None };
    if let Some(q) = &question {
        out.extend_from_slice(&query[HEADER..q.end]);
        out[5] = 1;
    }
    if opcode != 0 {
        let edns = question
            .as_ref()
            .and_then(|q| edns(query, q.end).ok().flatten());
        return Some(finish(out, rcode::NOTIMP, edns));
    }
    let Some(q) = question else {
        return Some(finish(out, rcode::FORMERR, None));
    };
    let Ok(edns) = edns(query, q.end) else {
        return Some(finish(out, rcode::FORMERR, None));
    };
    if edns.is_some_and(|e| e.version > 0) {
        return Some(finish(out, rcode::BADVERS, edns));
    }
    if !matches!(q.qclass, rtype::IN | rtype::CLASS_ANY) {
        return Some(finish(out, rcode::REFUSED, edns));
    }
    let question_end = out.len();
    let code = match zone.lookup(&q.name[..q.name_len], q.qtype) {
        Lookup::Refused => rcode::REFUSED,
        Lookup::Answer(records) => {
            out[2] |= 0x04;
            out.extend_from_slice(&records.bytes);
            out[6..8].copy_from_slice(&records.count.to_be_bytes());
            rcode::NOERROR
        }
        negative @ (Lookup::NxDomain | Lookup::NoData) => {
            out[2] |= 0x04;
            out.extend_from_slice(zone.soa_authority());
            out[9] = 1;
            if negative == Lookup::NxDomain {
                rcode::NXDOMAIN
            } else {
                rcode::NOERROR
            }
        }
    };
    let limit = match (transport, edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(e)) => usize::from(e.payload.max(512)),
        (Transport::Udp, None) => 512,
    };
    let opt_len = if edns.is_some() { 11 } else { 0 };
    if out.len() + opt_len > limit {
        // Truncated: the question only, TC set; the client retries on TCP.
        out.truncate(question_end);
        out[2] |= 0x02;
        out[6..10].fill(0);
    }
    Some(finish(out, code, edns))
}

/// Sets the response code and appends our OPT record when the query had
/// one; returns the code.
fn finish(out: &mut Vec<u8>, code: u16, edns: Option<Edns>) -> u16 {
    out[3] = (code & 0x0F) as u8;
    if edns.is_some() {
        out.push(0); // root owner
        out.extend_from_slice(&rtype::OPT.to_be_bytes());
        out.extend_from_slice(&ADVERTISED_PAYLOAD.to_be_bytes());
        out.push((code >> 4) as u8); // extended rcode
        out.extend_from_slice(&[0, 0, 0]); // version 0, no flags
        out.extend_from_slice(&[0, 0]); // no options
        out[11] = 1;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::{ClusterBackend, ServiceBackends};
    use crate::dns::DnsConfig;
    use crate::model::{ServiceKey, ServiceMap, ServiceType, SessionAffinity};
    use hickory_proto::op::{Edns as HEdns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    /// `web` (ClusterSetIP, one endpoint) and `big` (headless, 40 endpoints).
    fn zone() -> ZoneSnapshot {
        let svc = |name: &str, t, n: u8| {
            let addresses: Vec<IpAddr> = (1..=n)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 7, i)))
                .collect();
            let key = ServiceKey::new("app", name).unwrap();
            let b = ServiceBackends {
                service: key.clone(),
                service_type: t,
                ports: vec![],
                session_affinity: SessionAffinity::None,
                multi_cluster_service: None,
                clusters: vec![ClusterBackend {
                    cluster: "c".into(),
                    weight: None,
                    effective_weight: 1,
                    share: 1.0,
                    healthy: true,
                    reason: String::new(),
                    endpoints: addresses
                        .iter()
                        .map(|a| crate::model::fixtures::endpoint(*a, None))
                        .collect(),
                    addresses,
                }],
                conditions: vec![],
                revision: 1,
            };
            (key, Arc::new(b))
        };
        let backends: ServiceMap<ServiceBackends> = [
            svc("web", ServiceType::ClusterSetIP, 1),
            svc("big", ServiceType::Headless, 40),
        ]
        .into_iter()
        .collect();
        crate::dns::Zone::build(&DnsConfig::default(), 3, &backends).snapshot()
    }

    fn query(name: &str, t: RecordType, edns: Option<(u16, u8)>) -> Message {
        let mut msg = Message::new(0xBEEF, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some((payload, version)) = edns {
            let mut e = HEdns::new();
            e.set_max_payload(payload);
            e.set_version(version);
            msg.set_edns(e);
        }
        msg
    }

    fn ask(z: &ZoneSnapshot, msg: &[u8], t: Transport) -> Option<Message> {
        let mut out = Vec::new();
        respond(z, msg, t, &mut out)?;
        Some(Message::from_vec(&out).expect("our responses decode"))
    }

    #[test]
    fn echoes_the_question_as_asked_and_answers_case_insensitively() {
        let z = zone();
        let m = query(
            "WeB.App.svc.ClusterSet.local.",
            RecordType::A,
            Some((1232, 0)),
        );
        let r = ask(&z, &m.to_vec().unwrap(), Transport::Udp).unwrap();
        assert_eq!(r.metadata.id, 0xBEEF);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        assert_eq!(
            r.queries[0].name().to_ascii(),
            "WeB.App.svc.ClusterSet.local."
        );
        assert!(matches!(&r.answers[0].data, RData::A(a) if a.0 == Ipv4Addr::new(127, 0, 7, 1)));
        let edns = r.edns.expect("EDNS answered with EDNS");
        assert_eq!(edns.max_payload(), ADVERTISED_PAYLOAD);
    }

    #[test]
    fn udp_answers_over_the_payload_size_are_truncated() {
        let z = zone();
        // 40 A records (16 bytes each) exceed 512 bytes without EDNS.
        let plain = query("big.app.svc.clusterset.local.", RecordType::A, None);
        let r = ask(&z, &plain.to_vec().unwrap(), Transport::Udp).unwrap();
        assert!(r.metadata.truncation);
        assert!(r.answers.is_empty() && r.queries.len() == 1);
        // Over TCP, or with a large enough EDNS payload, all of them.
        let r = ask(&z, &plain.to_vec().unwrap(), Transport::Tcp).unwrap();
        assert_eq!((r.answers.len(), r.metadata.truncation), (40, false));
        let large = query(
            "big.app.svc.clusterset.local.",
            RecordType::A,
            Some((4096, 0)),
        );
        let r = ask(&z, &large.to_vec().unwrap(), Transport::Udp).unwrap();
        assert_eq!((r.answers.len(), r.metadata.truncation), (40, false));
        // A payload below 512 counts as 512.
        let tiny = query(
            "web.app.svc.clusterset.local.",
            RecordType::A,
            Some((100, 0)),
        );
        let r = ask(&z, &tiny.to_vec().unwrap(), Transport::Udp).unwrap();
        assert_eq!((r.answers.len(), r.metadata.truncation), (1, false));
    }

    #[test]
    fn refuses_fails_and_drops_what_it_should() {
        let z = zone();
        let name = "web.app.svc.clusterset.local.";
        let code = |bytes: &[u8]| {
            ask(&z, bytes, Transport::Udp).map(|m| (m.metadata.response_code, m.edns.is_some()))
        };
        // EDNS version 1: BADVERS (16, shared with BADSIG), carried in the OPT record.
        let v1 = query(name, RecordType::A, Some((1232, 1)));
        let (badvers, with_opt) = code(&v1.to_vec().unwrap()).unwrap();
        assert_eq!((u16::from(badvers), with_opt), (16, true));
        // Another opcode: NOTIMP.
        let mut notify = query(name, RecordType::SOA, None);
        notify.metadata.op_code = OpCode::Notify;
        assert_eq!(
            code(&notify.to_vec().unwrap()),
            Some((ResponseCode::NotImp, false))
        );
        // Two questions: FORMERR.
        let mut two = query(name, RecordType::A, None);
        two.add_query(Query::query(
            Name::from_ascii(name).unwrap(),
            RecordType::AAAA,
        ));
        assert_eq!(
            code(&two.to_vec().unwrap()),
            Some((ResponseCode::FormErr, false))
        );
        // Class CH: REFUSED.
        let mut chaos = query(name, RecordType::TXT, None);
        let mut q = Query::query(Name::from_ascii(name).unwrap(), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        chaos.queries = vec![q];
        assert_eq!(
            code(&chaos.to_vec().unwrap()),
            Some((ResponseCode::Refused, false))
        );
        // A compression pointer in the question: FORMERR.
        let mut bytes = query(name, RecordType::A, None).to_vec().unwrap();
        bytes.truncate(12);
        bytes.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        assert_eq!(code(&bytes), Some((ResponseCode::FormErr, false)));
        // Two OPT records: FORMERR.
        let mut bytes = query(name, RecordType::A, Some((1232, 0)))
            .to_vec()
            .unwrap();
        let opt = bytes[bytes.len() - 11..].to_vec();
        bytes.extend_from_slice(&opt);
        bytes[11] = 2;
        assert_eq!(code(&bytes), Some((ResponseCode::FormErr, false)));
        // A response, or less than a header: never answered.
        let mut response = query(name, RecordType::A, None);
        response.metadata.message_type = MessageType::Response;
        assert_eq!(code(&response.to_vec().unwrap()), None);
        assert_eq!(code(&[0u8; 11]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes at all: no panic, and every response decodes, carries
        /// the query's ID and is a response.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let z = zone();
            let mut out = Vec::new();
            for t in [Transport::Udp, Transport::Tcp] {
                if respond(&z, &bytes, t, &mut out).is_some() {
                    let m = Message::from_vec(&out).expect("our responses decode");
                    prop_assert_eq!(&out[..2], &bytes[..2]);
                    prop_assert_eq!(m.metadata.message_type, MessageType::Response);
                }
            }
        }

        /// Valid queries with bytes overwritten and the length cut: the
        /// damage lands in the parts the parser walks.
        #[test]
        fn damaged_queries_never_panic(
            name in prop::sample::select(vec![
                "web.app.svc.clusterset.local.",
                "big.app.svc.clusterset.local.",
                "x.clusterset.local.",
                "example.com.",
            ]),
            qtype in prop::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::ANY, RecordType::SRV]),
            edns in any::<bool>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let z = zone();
            let mut bytes = query(name, qtype, edns.then_some((1232, 0))).to_vec().unwrap();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let keep = bytes.len() - cut.index(bytes.len() / 2 + 1);
            bytes.truncate(keep);
            let mut out = Vec::new();
            for t in [Transport::Udp, Transport::Tcp] {
                if respond(&z, &bytes, t, &mut out).is_some() {
                    let m = Message::from_vec(&out).expect("our responses decode");
                    prop_assert_eq!(m.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
                    if t == Transport::Udp {
                        // The query offered 1232 bytes with EDNS, 512 without.
                        let limit = if edns { 1232 } else { 512 };
                        prop_assert!(out.len() <= limit, "{} bytes over UDP", out.len());
                    }
                }
            }
        }
    }
}
