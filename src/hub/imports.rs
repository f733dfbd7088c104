//! What one cluster imports, as the hub streams it to the cluster's agent
//! (`WatchImports`): every service with computed backends, the ready
//! endpoints of each cluster that receives its traffic (with that cluster's
//! target ports), and the MCS `Conflict` condition of the cluster's own
//! exports. Pure: a function of the applied state.

use super::state::State;
use crate::model::{ClusterState, Condition, ServiceKey};
use crate::proto;
use crate::wire::{endpoint_to_proto, field_len, port_to_proto};
use prost::Message as _;

fn condition(key: &ServiceKey, c: &Condition) -> proto::ExportCondition {
    proto::ExportCondition {
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
        r#type: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
    }
}

/// Whether `cluster` lost its lease but is still within the grace period:
/// the slices imported from it stay, with every endpoint not ready, until
/// the leader withdraws it (MCS: imported endpoints outlive a short loss of
/// contact, but get no traffic).
fn in_grace(state: &State, cluster: &str) -> bool {
    state
        .clusters
        .get(cluster)
        .is_some_and(|c| c.state() == ClusterState::Unreachable && !c.withdrawn)
}

/// Port mode: each service port with the gateway's listener port for it.
pub fn listener_ports(by_port: &std::collections::BTreeMap<u16, u16>) -> Vec<proto::ListenerPort> {
    by_port
        .iter()
        .map(|(port, listener)| proto::ListenerPort {
            port: u32::from(*port),
            listener_port: u32::from(*listener),
        })
        .collect()
}

/// The import set of `cluster` at the state's applied index.
pub fn import_set(state: &State, cluster: &str) -> proto::ImportSet {
    let gateway = state.gateways.get(cluster);
    let mut services = Vec::with_capacity(state.backends.len());
    let mut export_conditions = Vec::new();
    for (key, b) in state.backends.iter() {
        let exports = state.exports.get(key);
        let slices = b
            .clusters
            .iter()
            .filter_map(|c| {
                let serving = c.effective_weight > 0;
                (serving || in_grace(state, &c.cluster)).then_some((c, serving))
            })
            .map(|(c, serving)| {
                let export = exports.and_then(|by| by.get(&c.cluster));
                proto::SourceSlice {
                    cluster: c.cluster.clone(),
                    ports: b
                        .ports
                        .iter()
                        .map(|p| {
                            let mut port = port_to_proto(p);
                            port.port = u32::from(export.map_or(p.port, |e| e.target_port(p)));
                            port
                        })
                        .collect(),
                    endpoints: c
                        .endpoints
                        .iter()
                        .map(|e| {
                            let mut e = endpoint_to_proto(e);
                            // Kept through the grace period, but no
                            // longer a destination.
                            e.ready &= serving;
                            e.serving &= serving;
                            e
                        })
                        .collect(),
                }
            })
            .collect();
        services.push(proto::ImportedService {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
            r#type: b.service_type.to_string(),
            session_affinity: format!("{:?}", b.session_affinity),
            ports: b.ports.iter().map(port_to_proto).collect(),
            ips: gateway
                .and_then(|g| g.listeners.get(key))
                .map(|ip| vec![ip.to_string()])
                .unwrap_or_default(),
            gateway_ports: gateway
                .and_then(|g| g.ports.get(key))
                .map(listener_ports)
                .unwrap_or_default(),
            clusters: exports
                .map(|by| by.keys().cloned().collect())
                .unwrap_or_default(),
            slices,
            conditions: b.conditions.iter().map(|c| condition(key, c)).collect(),
        });
        if exports.is_some_and(|by| by.contains_key(cluster)) {
            let conflict = b
                .conditions
                .iter()
                .find(|c| c.type_ == "Conflict")
                .cloned()
                .unwrap_or_else(|| {
                    Condition::new(
                        "Conflict",
                        false,
                        "NoConflicts",
                        "every cluster exports the service the same way",
                    )
                });
            export_conditions.push(condition(key, &conflict));
        }
    }
    proto::ImportSet {
        version: state.applied_index,
        services,
        export_conditions,
        more: false,
    }
}

/// `set` in parts of at most `part_bytes` encoded bytes each (a service
/// larger than that alone in its part): the services, then the export
/// conditions, in order; the set's version on every part and `more` on all
/// but the last. One part when the set fits.
pub fn into_parts(set: proto::ImportSet, part_bytes: usize) -> Vec<proto::ImportSet> {
    let version = set.version;
    let empty = || proto::ImportSet {
        version,
        services: Vec::new(),
        export_conditions: Vec::new(),
        more: true,
    };
    let budget = part_bytes.saturating_sub(empty().encoded_len());
    let mut parts = vec![empty()];
    let mut used = 0usize;
    // Room for `len` more bytes in the last part, or a new part.
    let mut room = |parts: &mut Vec<proto::ImportSet>, len: usize| {
        let empty_part = parts
            .last()
            .is_none_or(|p| p.services.is_empty() && p.export_conditions.is_empty());
        if !empty_part && used + len > budget {
            parts.push(empty());
            used = 0;
        }
        used += len;
    };
    for service in set.services {
        room(&mut parts, field_len(&service));
        if let Some(p) = parts.last_mut() {
            p.services.push(service);
        }
    }
    for condition in set.export_conditions {
        room(&mut parts, field_len(&condition));
        if let Some(p) = parts.last_mut() {
            p.export_conditions.push(condition);
        }
    }
    if let Some(p) = parts.last_mut() {
        p.more = false;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::state::Command;
    use crate::model::{fixtures, ClusterSpec};

    fn register(s: &mut State, index: u64, id: &str) {
        let spec = ClusterSpec {
            id: id.into(),
            ..Default::default()
        };
        s.apply(index, &Command::RegisterCluster { spec }).unwrap();
    }

    fn sync(s: &mut State, index: u64, export: crate::model::Export) {
        let cmd = Command::SyncExports {
            cluster: export.cluster.clone(),
            revision: index,
            full: false,
            upserts: vec![export],
            deletes: vec![],
        };
        s.apply(index, &cmd).unwrap();
    }

    #[test]
    fn slices_carry_each_clusters_target_ports_and_conflicts_reach_both_exporters() {
        let mut s = State::default();
        register(&mut s, 1, "a");
        register(&mut s, 2, "b");
        let mut ea = fixtures::export("a", "app/api", 80, ["10.0.0.1".parse().unwrap()]);
        ea.created_unix_ms = 1;
        ea.endpoint_ports = vec![crate::model::Port {
            name: "http".into(),
            protocol: "TCP".into(),
            app_protocol: String::new(),
            port: 8080,
        }];
        let mut eb = fixtures::export("b", "app/api", 80, ["10.0.1.1".parse().unwrap()]);
        eb.created_unix_ms = 2;
        eb.service_type = crate::model::ServiceType::Headless;
        sync(&mut s, 3, ea);
        sync(&mut s, 4, eb);

        let set = import_set(&s, "a");
        assert_eq!(set.version, s.applied_index);
        let api = &set.services[0];
        assert_eq!((api.namespace.as_str(), api.name.as_str()), ("app", "api"));
        assert_eq!(api.clusters, ["a", "b"]);
        let ports: Vec<(String, u32)> = api
            .slices
            .iter()
            .map(|sl| (sl.cluster.clone(), sl.ports[0].port))
            .collect();
        assert_eq!(ports, [("a".into(), 8080), ("b".into(), 80)]);
        assert_eq!(api.ports[0].port, 80, "the import keeps the service port");

        // The oldest (a) wins the type; both exporters see the conflict.
        assert_eq!(api.r#type, "ClusterSetIP");
        for cluster in ["a", "b"] {
            let c = &import_set(&s, cluster).export_conditions[0];
            assert_eq!(
                (c.r#type.as_str(), c.status.as_str(), c.reason.as_str()),
                ("Conflict", "True", "TypeConflict")
            );
            assert!(c.message.contains('b'), "{}", c.message);
        }
        // A cluster that exports nothing gets no export conditions.
        register(&mut s, 5, "c");
        assert!(import_set(&s, "c").export_conditions.is_empty());
    }

    #[test]
    fn a_set_in_parts_adds_up_to_the_set() {
        let mut s = State::default();
        register(&mut s, 1, "a");
        for i in 0..40u8 {
            let e = fixtures::export("a", &format!("app/s{i}"), 80, [[10, 0, 0, i + 1].into()]);
            sync(&mut s, u64::from(i) + 2, e);
        }
        let set = import_set(&s, "a");
        assert_eq!((set.services.len(), set.export_conditions.len()), (40, 40));
        let parts = into_parts(set.clone(), 700);
        assert!(parts.len() > 5, "{} parts", parts.len());
        let mut assembler = crate::wire::Assembler::default();
        let mut whole = None;
        for (i, p) in parts.iter().enumerate() {
            assert!(
                p.encoded_len() <= 700,
                "part {i}: {} bytes",
                p.encoded_len()
            );
            assert_eq!(p.version, set.version);
            assert_eq!(p.more, i + 1 < parts.len());
            assert!(!p.services.is_empty() || !p.export_conditions.is_empty());
            whole = assembler.push(p.clone()).unwrap();
        }
        assert_eq!(whole, Some(set.clone()));
        assert_eq!(into_parts(set.clone(), crate::wire::PART_BYTES), [set]);
        let empty = import_set(&State::default(), "a");
        assert_eq!(into_parts(empty.clone(), 10), [empty]);
    }

    #[test]
    fn an_unreachable_clusters_slice_stays_not_ready_until_withdrawn() {
        let mut s = State::default();
        register(&mut s, 1, "a");
        register(&mut s, 2, "b");
        sync(
            &mut s,
            3,
            fixtures::export("a", "app/api", 80, ["10.0.0.1".parse().unwrap()]),
        );
        sync(
            &mut s,
            4,
            fixtures::export("b", "app/api", 80, ["10.0.1.1".parse().unwrap()]),
        );
        let slices = |s: &State| -> Vec<(String, bool, bool)> {
            import_set(s, "a").services[0]
                .slices
                .iter()
                .map(|sl| {
                    (
                        sl.cluster.clone(),
                        sl.endpoints[0].ready,
                        sl.endpoints[0].serving,
                    )
                })
                .collect()
        };
        let b = |ready| ("b".to_string(), ready, ready);
        let a = ("a".to_string(), true, true);
        assert_eq!(slices(&s), [a.clone(), b(true)]);
        s.apply(
            5,
            &Command::SetReachable {
                cluster: "b".into(),
                reachable: false,
            },
        )
        .unwrap();
        // In the grace period: kept, but not a destination.
        assert_eq!(slices(&s), [a.clone(), b(false)]);
        let c = &import_set(&s, "a").export_conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoConflicts")
        );
        let withdraw = Command::WithdrawCluster {
            cluster: "b".into(),
        };
        s.apply(6, &withdraw).unwrap();
        assert_eq!(slices(&s), std::slice::from_ref(&a));
        // Back: renewals resume and the slice returns, ready.
        s.apply(
            7,
            &Command::SetReachable {
                cluster: "b".into(),
                reachable: true,
            },
        )
        .unwrap();
        assert!(!s.clusters["b"].withdrawn);
        assert_eq!(slices(&s), [a.clone(), b(true)]);
        // A reachable cluster is never withdrawn.
        s.apply(8, &withdraw).unwrap();
        assert_eq!(slices(&s), [a.clone(), b(true)]);
        // A revoked lease holds through re-registration; a drained cluster
        // leaves at once.
        s.apply(
            9,
            &Command::RevokeLease {
                cluster: "b".into(),
                revoked: true,
            },
        )
        .unwrap();
        register(&mut s, 10, "b");
        assert_eq!(slices(&s), [a.clone(), b(false)]);
        s.apply(
            11,
            &Command::SetDrained {
                cluster: "b".into(),
                drained: true,
            },
        )
        .unwrap();
        assert_eq!(slices(&s), [a]);
    }
}
