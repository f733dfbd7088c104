//! Conversions between the gRPC messages of `proto/` and the model types,
//! with errors that name the field that is wrong; the message size limits
//! of the agent and gateway APIs, and the helpers that send a whole set
//! (a full export resync, an import set, a gateway configuration) in
//! parts within them and put it back together.

use crate::model::{ClusterId, Endpoint, Export, Port, ServiceKey, ServiceType, SessionAffinity};
use crate::proto;

/// The largest message of the agent and gateway APIs, either way: the hub's
/// servers and every client set it as their encoding and decoding limit
/// (tonic's default decoding limit, made explicit). Whole sets travel in
/// parts well below it.
pub const MAX_API_MESSAGE: usize = 4 * 1024 * 1024;

/// The default (and, on the hub, largest) size of one part of a set sent
/// in parts, in encoded bytes.
pub const PART_BYTES: usize = 1024 * 1024;

/// A message too large for the API, with what it carried.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} encodes to {bytes} bytes, more than the {limit} bytes one message may carry")]
pub struct TooLarge {
    /// What was too large (a message, an export).
    pub what: String,
    /// Its encoded size.
    pub bytes: usize,
    /// The limit it broke.
    pub limit: usize,
}

/// Checks `message` against [`MAX_API_MESSAGE`] before it is sent, for an
/// error that names it rather than the transport's.
pub fn check_size(
    what: impl FnOnce() -> String,
    message: &impl prost::Message,
) -> Result<(), TooLarge> {
    let bytes = message.encoded_len();
    if bytes > MAX_API_MESSAGE {
        return Err(TooLarge {
            what: what(),
            bytes,
            limit: MAX_API_MESSAGE,
        });
    }
    Ok(())
}

/// What `item` adds to a message as one element of a repeated field
/// (numbers below 16): the tag, the length and the item.
pub fn field_len(item: &impl prost::Message) -> usize {
    let len = item.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// Splits `items` into runs whose elements add at most `budget` bytes to a
/// message each (see [`field_len`]); an item larger than that alone makes
/// a run. Always at least one run, empty when `items` is.
pub fn split_by_size<T: prost::Message>(items: Vec<T>, budget: usize) -> Vec<Vec<T>> {
    let mut runs = vec![Vec::new()];
    let mut used = 0usize;
    for item in items {
        let len = field_len(&item);
        let run_is_empty = runs.last().is_none_or(Vec::is_empty);
        if !run_is_empty && used + len > budget {
            runs.push(Vec::new());
            used = 0;
        }
        used += len;
        if let Some(run) = runs.last_mut() {
            run.push(item);
        }
    }
    runs
}

/// The part size to use for a receiver that asked for `requested` bytes
/// (0: it takes no parts): at most [`PART_BYTES`].
pub fn part_budget(requested: u32) -> Option<usize> {
    match requested {
        0 => None,
        n => Some((n as usize).min(PART_BYTES)),
    }
}

/// A message that carries a whole set or one part of it.
pub trait InParts: Sized {
    /// What the parts of one set share (the version).
    fn set_version(&self) -> u64;
    /// More parts of the same set follow.
    fn more(&self) -> bool;
    /// Appends a later part's content to the set so far.
    fn append(&mut self, part: Self);
}

impl InParts for proto::ImportSet {
    fn set_version(&self) -> u64 {
        self.version
    }
    fn more(&self) -> bool {
        self.more
    }
    fn append(&mut self, part: Self) {
        self.services.extend(part.services);
        self.export_conditions.extend(part.export_conditions);
        self.more = part.more;
    }
}

impl InParts for proto::GatewayConfig {
    fn set_version(&self) -> u64 {
        self.version
    }
    fn more(&self) -> bool {
        self.more
    }
    fn append(&mut self, part: Self) {
        self.services.extend(part.services);
        self.more = part.more;
    }
}

/// A set's parts that do not belong together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a part of version {got} arrived in the middle of version {expected}")]
pub struct MixedParts {
    /// The version of the set being assembled.
    pub expected: u64,
    /// The version of the part that came.
    pub got: u64,
}

/// Puts a set sent in parts back together: [`Assembler::push`] each
/// message received; a complete set comes out after its last part.
#[derive(Debug)]
pub struct Assembler<T> {
    partial: Option<T>,
}

impl<T> Default for Assembler<T> {
    fn default() -> Self {
        Self { partial: None }
    }
}

impl<T: InParts> Assembler<T> {
    /// Takes the next message: the whole set when that was its last part.
    /// A part of another version than the set under way is an error (the
    /// stream is not to be trusted then; the partial set is dropped).
    pub fn push(&mut self, part: T) -> Result<Option<T>, MixedParts> {
        let set = match self.partial.take() {
            None => part,
            Some(mut set) => {
                if set.set_version() != part.set_version() {
                    return Err(MixedParts {
                        expected: set.set_version(),
                        got: part.set_version(),
                    });
                }
                set.append(part);
                set
            }
        };
        if set.more() {
            self.partial = Some(set);
            return Ok(None);
        }
        Ok(Some(set))
    }

    /// True while a set's parts are arriving.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }
}

/// A message field the hub cannot accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("export {service}: {field} {value:?} is invalid: {reason}")]
    Field {
        service: String,
        field: &'static str,
        value: String,
        reason: String,
    },
}

fn field_err(service: &str, field: &'static str, value: &str, reason: impl ToString) -> WireError {
    WireError::Field {
        service: service.to_string(),
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Model export → wire.
pub fn export_to_proto(e: &Export) -> proto::Export {
    proto::Export {
        namespace: e.service.namespace.to_string(),
        name: e.service.name.to_string(),
        r#type: e.service_type.to_string(),
        session_affinity: format!("{:?}", e.session_affinity),
        ports: e.ports.iter().map(port_to_proto).collect(),
        endpoint_ports: e.endpoint_ports.iter().map(port_to_proto).collect(),
        endpoints: e.endpoints.iter().map(endpoint_to_proto).collect(),
        created_unix_ms: e.created_unix_ms,
    }
}

/// Model endpoint → wire.
pub fn endpoint_to_proto(ep: &Endpoint) -> proto::Endpoint {
    proto::Endpoint {
        address: ep.address.to_string(),
        hostname: ep.hostname.clone().unwrap_or_default(),
        pod: ep.pod.clone().unwrap_or_default(),
        ready: ep.ready,
        serving: ep.serving,
        terminating: ep.terminating,
        zone: ep.zone.clone().unwrap_or_default(),
    }
}

/// Model port → wire.
pub fn port_to_proto(p: &Port) -> proto::Port {
    proto::Port {
        name: p.name.clone(),
        protocol: p.protocol.clone(),
        app_protocol: p.app_protocol.clone(),
        port: u32::from(p.port),
    }
}

/// Wire ports → model, for the export `svc`; `field` names them in errors.
fn ports_from_proto(
    svc: &str,
    field: &'static str,
    ports: &[proto::Port],
) -> Result<Vec<Port>, WireError> {
    let mut out = Vec::with_capacity(ports.len());
    for port in ports {
        let number = u16::try_from(port.port)
            .map_err(|e| field_err(svc, field, &port.port.to_string(), e))?;
        out.push(Port {
            name: port.name.clone(),
            protocol: if port.protocol.is_empty() {
                "TCP".into()
            } else {
                port.protocol.clone()
            },
            app_protocol: port.app_protocol.clone(),
            port: number,
        });
    }
    Ok(out)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Wire export of `cluster` → model, checking every field.
pub fn export_from_proto(cluster: &ClusterId, p: &proto::Export) -> Result<Export, WireError> {
    let svc = format!("{}/{}", p.namespace, p.name);
    let service =
        ServiceKey::new(&p.namespace, &p.name).map_err(|e| field_err(&svc, "name", &svc, e))?;
    let service_type = match p.r#type.as_str() {
        "" | "ClusterSetIP" => ServiceType::ClusterSetIP,
        "Headless" => ServiceType::Headless,
        other => {
            return Err(field_err(
                &svc,
                "type",
                other,
                "use ClusterSetIP or Headless",
            ))
        }
    };
    let session_affinity = match p.session_affinity.as_str() {
        "" | "None" => SessionAffinity::None,
        "ClientIP" => SessionAffinity::ClientIP,
        other => {
            return Err(field_err(
                &svc,
                "sessionAffinity",
                other,
                "use None or ClientIP",
            ))
        }
    };
    let ports = ports_from_proto(&svc, "port", &p.ports)?;
    let endpoint_ports = ports_from_proto(&svc, "endpoint port", &p.endpoint_ports)?;
    let mut endpoints = Vec::with_capacity(p.endpoints.len());
    for ep in &p.endpoints {
        endpoints.push(Endpoint {
            address: ep
                .address
                .parse()
                .map_err(|e| field_err(&svc, "endpoint address", &ep.address, e))?,
            hostname: non_empty(&ep.hostname),
            pod: non_empty(&ep.pod),
            ready: ep.ready,
            serving: ep.serving,
            terminating: ep.terminating,
            zone: non_empty(&ep.zone),
        });
    }
    let export = Export {
        cluster: cluster.clone(),
        service,
        service_type,
        session_affinity,
        ports,
        endpoint_ports,
        endpoints,
        created_unix_ms: p.created_unix_ms,
    };
    export
        .validate()
        .map_err(|e| field_err(&svc, "export", &svc, e))?;
    Ok(export)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(version: u64, services: &[&str], more: bool) -> proto::ImportSet {
        proto::ImportSet {
            version,
            services: services
                .iter()
                .map(|n| proto::ImportedService {
                    namespace: "app".into(),
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            export_conditions: Vec::new(),
            more,
        }
    }

    #[test]
    fn items_split_by_encoded_size() {
        let items: Vec<proto::Port> = (0..10)
            .map(|i| proto::Port {
                name: format!("p{i}"),
                port: 80,
                ..Default::default()
            })
            .collect();
        let one = field_len(&items[0]);
        let runs = split_by_size(items.clone(), one * 3);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        assert_eq!(runs.concat(), items);
        assert_eq!(
            split_by_size(items.clone(), 0).len(),
            10,
            "oversized: one each"
        );
        assert_eq!(split_by_size(Vec::<proto::Port>::new(), 10), [Vec::new()]);
        assert_eq!(part_budget(0), None);
        assert_eq!(part_budget(100), Some(100));
        assert_eq!(part_budget(u32::MAX), Some(PART_BYTES));
    }

    #[test]
    fn parts_are_assembled_and_mixed_versions_refused() {
        let mut a = Assembler::default();
        assert_eq!(a.push(set(3, &["x"], true)), Ok(None));
        assert!(a.in_progress());
        assert_eq!(a.push(set(3, &["y"], true)), Ok(None));
        let whole = a.push(set(3, &["z"], false)).unwrap().unwrap();
        assert_eq!(whole, set(3, &["x", "y", "z"], false));
        assert!(!a.in_progress());
        // A message without `more` is a whole set by itself.
        assert_eq!(
            a.push(set(4, &["x"], false)),
            Ok(Some(set(4, &["x"], false)))
        );
        a.push(set(5, &["x"], true)).unwrap();
        assert_eq!(
            a.push(set(6, &["y"], false)),
            Err(MixedParts {
                expected: 5,
                got: 6
            })
        );
        assert!(!a.in_progress(), "the partial set is dropped");
    }

    #[test]
    fn oversized_messages_are_named() {
        let big = set(1, &[&"x".repeat(MAX_API_MESSAGE)], false);
        let err = check_size(|| "the import set".into(), &big).unwrap_err();
        assert_eq!(err.what, "the import set");
        assert_eq!(err.limit, MAX_API_MESSAGE);
        assert!(check_size(|| unreachable!(), &set(1, &["x"], false)).is_ok());
    }

    #[test]
    fn export_round_trips_and_bad_fields_are_named() {
        let e = Export {
            cluster: "a".into(),
            service: ServiceKey::new("app", "db").unwrap(),
            service_type: ServiceType::Headless,
            session_affinity: SessionAffinity::ClientIP,
            ports: vec![Port {
                name: "pg".into(),
                protocol: "TCP".into(),
                app_protocol: String::new(),
                port: 5432,
            }],
            endpoint_ports: vec![Port {
                name: "pg".into(),
                protocol: "TCP".into(),
                app_protocol: String::new(),
                port: 15432,
            }],
            endpoints: vec![Endpoint {
                address: "127.0.1.21".parse().unwrap(),
                hostname: Some("db-0".into()),
                pod: Some("db-0".into()),
                ready: true,
                serving: true,
                terminating: false,
                zone: Some("z".into()),
            }],
            created_unix_ms: 42,
        };
        let p = export_to_proto(&e);
        assert_eq!(export_from_proto(&"a".into(), &p).unwrap(), e);
        let mut bad = p.clone();
        bad.endpoints[0].address = "not-an-ip".into();
        let err = export_from_proto(&"a".into(), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoint address \"not-an-ip\""), "{err}");
        let mut bad = p;
        bad.ports[0].port = 70000;
        assert!(export_from_proto(&"a".into(), &bad)
            .unwrap_err()
            .to_string()
            .contains("port \"70000\""));
    }
}
