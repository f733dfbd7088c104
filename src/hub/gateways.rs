//! What a cluster's east-west gateway routes, as the hub streams it
//! (`GatewayService.StreamConfig`): for every service with backends, the
//! gateway's outbound listener address, whether this cluster exports it
//! (and its ready local endpoints), and every cluster that receives its
//! traffic with its weight and the way there (local endpoints, or that
//! cluster's gateway). Pure: a function of the applied state.

use super::state::State;
use crate::proto;
use crate::wire::{endpoint_to_proto, port_to_proto};

/// What routes depend on besides the backends: every gateway's inbound
/// address and the count of changes to its allocations. Cheap to compare,
/// unlike the gateway records (whose status fields change on every
/// acknowledgement and whose allocation maps grow with the services).
pub fn layout(state: &State) -> Vec<(String, String, u64)> {
    state
        .gateways
        .iter()
        .map(|(cluster, g)| (cluster.clone(), g.inbound.clone(), g.allocations))
        .collect()
}

/// The routes of `cluster`'s gateway at the state's applied index.
pub fn routes(state: &State, cluster: &str) -> Vec<proto::GatewayRoute> {
    let gateway = state.gateways.get(cluster);
    state
        .backends
        .iter()
        .map(|(key, b)| {
            let here = state.exports.get(key).and_then(|by| by.get(cluster));
            let clusters = b
                .clusters
                .iter()
                .filter(|c| c.effective_weight > 0)
                .filter_map(|c| {
                    if c.cluster == cluster {
                        Some(proto::ClusterRoute {
                            cluster: c.cluster.clone(),
                            weight: c.effective_weight,
                            local: true,
                            gateway: String::new(),
                        })
                    } else {
                        // A cluster without a gateway cannot be reached
                        // from here: its share goes to the others.
                        state.gateways.get(&c.cluster).map(|g| proto::ClusterRoute {
                            cluster: c.cluster.clone(),
                            weight: c.effective_weight,
                            local: false,
                            gateway: g.inbound.clone(),
                        })
                    }
                })
                .collect();
            proto::GatewayRoute {
                namespace: key.namespace.to_string(),
                name: key.name.to_string(),
                ports: b.ports.iter().map(port_to_proto).collect(),
                listener: gateway
                    .and_then(|g| g.listeners.get(key))
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                exported_here: here.is_some(),
                local_endpoints: here
                    .map(|e| e.ready_endpoints().map(endpoint_to_proto).collect())
                    .unwrap_or_default(),
                local_target_ports: here
                    .map(|e| {
                        b.ports
                            .iter()
                            .map(|p| {
                                let mut t = port_to_proto(p);
                                t.port = u32::from(e.target_port(p));
                                t
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                clusters,
                listener_ports: gateway
                    .and_then(|g| g.ports.get(key))
                    .map(super::imports::listener_ports)
                    .unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::state::{cidr_hosts, Command};
    use crate::model::{fixtures, ClusterSpec, Export, ServiceKey};

    fn state_with_gateways() -> State {
        let mut s = State::default();
        let mut index = 0;
        let mut apply = |s: &mut State, cmd: Command| {
            index += 1;
            s.apply(index, &cmd).unwrap();
        };
        for id in ["a", "b", "c"] {
            apply(
                &mut s,
                Command::RegisterCluster {
                    spec: ClusterSpec {
                        id: id.into(),
                        ..Default::default()
                    },
                },
            );
        }
        for (id, octet) in [("a", 1u8), ("b", 2)] {
            apply(
                &mut s,
                Command::RegisterGateway {
                    cluster: id.into(),
                    inbound: format!("127.0.{octet}.254:15443"),
                    outbound_cidr: format!("127.0.{octet}.128/30"),
                    outbound_ports: String::new(),
                },
            );
        }
        for (id, octet) in [("a", 1u8), ("b", 2), ("c", 3)] {
            let mut e = fixtures::export(
                id,
                "app/api",
                80,
                [format!("10.0.{octet}.1").parse().unwrap()],
            );
            e.endpoint_ports = vec![crate::model::Port {
                name: "http".into(),
                protocol: "TCP".into(),
                app_protocol: String::new(),
                port: 8000 + u16::from(octet),
            }];
            apply(
                &mut s,
                Command::SyncExports {
                    cluster: id.into(),
                    revision: 1,
                    full: true,
                    upserts: vec![e],
                    deletes: vec![],
                },
            );
        }
        s
    }

    /// Applies an export delta of cluster `a` at raft index and revision `index`.
    fn sync_a(s: &mut State, index: u64, upserts: Vec<Export>, deletes: Vec<ServiceKey>) {
        s.apply(
            index,
            &Command::SyncExports {
                cluster: "a".into(),
                revision: index,
                full: false,
                upserts,
                deletes,
            },
        )
        .unwrap();
    }

    #[test]
    fn routes_know_local_endpoints_remote_gateways_and_listeners() {
        let s = state_with_gateways();
        let routes = routes(&s, "a");
        let api = &routes[0];
        assert_eq!(api.listener, "127.0.1.129");
        assert!(api.exported_here);
        assert_eq!(api.local_endpoints[0].address, "10.0.1.1");
        assert_eq!(api.local_target_ports[0].port, 8001);
        let clusters: Vec<(&str, bool, &str)> = api
            .clusters
            .iter()
            .map(|c| (c.cluster.as_str(), c.local, c.gateway.as_str()))
            .collect();
        // c has no gateway: unreachable from a's gateway.
        assert_eq!(
            clusters,
            [("a", true, ""), ("b", false, "127.0.2.254:15443")]
        );
    }

    #[test]
    fn listener_addresses_stay_put_and_are_freed_with_their_service() {
        let mut s = state_with_gateways();
        let key = |n: &str| n.parse::<crate::model::ServiceKey>().unwrap();
        let add = |s: &mut State, index: u64, name: &str| {
            let e = fixtures::export("a", name, 80, ["10.0.1.9".parse().unwrap()]);
            sync_a(s, index, vec![e], vec![]);
        };
        add(&mut s, 20, "app/web");
        let first = s.gateways["a"].listeners.clone();
        assert_eq!(first[&key("app/api")].to_string(), "127.0.1.129");
        assert_eq!(first[&key("app/web")].to_string(), "127.0.1.130");
        // A /30 has two usable addresses: a third service gets none.
        add(&mut s, 21, "app/zzz");
        assert!(!s.gateways["a"].listeners.contains_key(&key("app/zzz")));
        assert_eq!(
            routes(&s, "a")
                .iter()
                .find(|r| r.name == "zzz")
                .unwrap()
                .listener,
            ""
        );
        // Withdrawing web frees its address; api keeps its own.
        sync_a(&mut s, 22, vec![], vec![key("app/web")]);
        let after = &s.gateways["a"].listeners;
        assert_eq!(after[&key("app/api")].to_string(), "127.0.1.129");
        assert_eq!(after[&key("app/zzz")].to_string(), "127.0.1.130");
    }

    #[test]
    fn ranges_and_bad_registrations_are_refused_with_reasons() {
        assert_eq!(cidr_hosts("10.0.0.0/30").unwrap().count(), 2);
        assert_eq!(cidr_hosts("10.0.0.7/32").unwrap().count(), 1);
        assert!(cidr_hosts("10.0.0.0/8").unwrap_err().contains("16 to 32"));
        assert!(cidr_hosts("nope").is_err());
        let s = state_with_gateways();
        let bad = Command::RegisterGateway {
            cluster: "a".into(),
            inbound: "x y".into(),
            outbound_cidr: "127.0.0.0/24".into(),
            outbound_ports: String::new(),
        };
        assert!(s
            .validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("inbound"));
        let unknown = Command::RegisterGateway {
            cluster: "zz".into(),
            inbound: "127.0.0.1:1".into(),
            outbound_cidr: "127.0.0.0/24".into(),
            outbound_ports: String::new(),
        };
        assert!(s.validate(&unknown).is_err());
    }

    /// Port mode: a listener port per TCP service port, stable while both
    /// exist, freed with its service or its port, none when the range is
    /// full; the import set carries them and the ClusterSetIP.
    #[test]
    fn port_mode_gives_each_tcp_service_port_a_stable_listener_port() {
        let mut s = state_with_gateways();
        let key = |n: &str| n.parse::<crate::model::ServiceKey>().unwrap();
        s.apply(
            30,
            &Command::RegisterGateway {
                cluster: "a".into(),
                inbound: "127.0.1.254:15443".into(),
                outbound_cidr: "127.0.1.128/29".into(),
                outbound_ports: "20000-20002".into(),
            },
        )
        .unwrap();
        let ports = |s: &State, name: &str| s.gateways["a"].ports.get(&key(name)).cloned();
        assert_eq!(ports(&s, "app/api").unwrap()[&80], 20000);
        let export = |ports: &[(u16, &str)]| {
            let mut e = fixtures::export("a", "app/web", 80, ["10.0.1.9".parse().unwrap()]);
            e.ports = ports
                .iter()
                .map(|(p, proto)| crate::model::Port {
                    name: format!("p{p}"),
                    protocol: (*proto).into(),
                    app_protocol: String::new(),
                    port: *p,
                })
                .collect();
            e.endpoint_ports = e.ports.clone();
            e
        };
        // Two TCP ports get one each; the UDP port none.
        sync_a(
            &mut s,
            31,
            vec![export(&[(80, "TCP"), (443, "TCP"), (53, "UDP")])],
            vec![],
        );
        let web = ports(&s, "app/web").unwrap();
        assert_eq!(web.len(), 2);
        assert_eq!((web[&80], web[&443]), (20001, 20002));
        // The range is full: a third service gets no port.
        let mut other = fixtures::export("a", "app/zzz", 80, ["10.0.1.8".parse().unwrap()]);
        other.endpoint_ports = other.ports.clone();
        sync_a(&mut s, 32, vec![other], vec![]);
        assert_eq!(ports(&s, "app/zzz"), None);
        assert!(s.gateways["a"].ports_exhausted);
        // A port dropped frees its listener port, which goes at once to
        // zzz, waiting for one; api and web:80 keep theirs.
        sync_a(&mut s, 33, vec![export(&[(80, "TCP")])], vec![]);
        assert_eq!(
            ports(&s, "app/web")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [(80, 20001)]
        );
        assert_eq!(ports(&s, "app/zzz").unwrap()[&80], 20002);
        assert!(!s.gateways["a"].ports_exhausted);
        assert_eq!(ports(&s, "app/api").unwrap()[&80], 20000);
        // What the gateway and the agent are told.
        let route = routes(&s, "a")
            .into_iter()
            .find(|r| r.name == "web")
            .unwrap();
        assert_eq!(route.listener_ports.len(), 1);
        assert_eq!(
            (
                route.listener_ports[0].port,
                route.listener_ports[0].listener_port
            ),
            (80, 20001)
        );
        let set = crate::hub::imports::import_set(&s, "a");
        let web = set.services.iter().find(|i| i.name == "web").unwrap();
        assert_eq!(web.ips, std::slice::from_ref(&route.listener));
        assert_eq!(web.gateway_ports, route.listener_ports);
        // Back to address mode: the ports are gone.
        s.apply(
            35,
            &Command::RegisterGateway {
                cluster: "a".into(),
                inbound: "127.0.1.254:15443".into(),
                outbound_cidr: "127.0.1.128/29".into(),
                outbound_ports: String::new(),
            },
        )
        .unwrap();
        assert!(s.gateways["a"].ports.is_empty());
    }

    #[test]
    fn bad_port_ranges_are_refused_by_name() {
        use crate::hub::state::port_range;
        assert_eq!(port_range("20000-20009").unwrap().count(), 10);
        assert!(port_range("80-90").unwrap_err().contains("1024"));
        assert!(port_range("3000-2000").unwrap_err().contains("above"));
        assert!(port_range("20000").unwrap_err().contains("FIRST-LAST"));
        let s = state_with_gateways();
        let bad = Command::RegisterGateway {
            cluster: "a".into(),
            inbound: "127.0.0.1:1".into(),
            outbound_cidr: "127.0.0.0/24".into(),
            outbound_ports: "x-y".into(),
        };
        assert!(s
            .validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("outbound ports"));
    }
}
