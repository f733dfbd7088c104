//! The gateway's routing table: one immutable table per applied
//! configuration, swapped atomically, so a connection routes on the table
//! in force when it arrived and a new configuration never disturbs it.
//!
//! A configuration is checked as a whole before it is applied; anything
//! wrong in it refuses all of it (the previous table stays), with the
//! reason sent back to the hub.

use crate::backends::schedule;
use crate::model::ServiceKey;
use crate::proto;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How to reach a cluster that receives a service's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// This cluster: one of the service's local endpoints.
    Local,
    /// Another cluster: its gateway (HOST:PORT, TLS).
    Gateway(String),
}

/// A cluster in a service's route, with its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTarget {
    pub cluster: String,
    pub weight: u64,
    pub via: Via,
}

/// Everything the gateway knows about one service.
#[derive(Debug)]
pub struct Route {
    pub service: ServiceKey,
    /// Service ports (TCP only: the gateway carries TCP).
    pub ports: Vec<u16>,
    /// Every service port as the service declares it (names, for DNS SRV).
    pub service_ports: Vec<crate::model::Port>,
    /// This cluster's outbound listener address for the service.
    pub listener: Option<Ipv4Addr>,
    /// This cluster exports the service (inbound connections allowed).
    pub exported_here: bool,
    /// Ready local endpoints.
    pub local_endpoints: Vec<IpAddr>,
    /// Service port → the port the local endpoints serve it on.
    pub local_ports: HashMap<u16, u16>,
    pub clusters: Vec<ClusterTarget>,
    /// Smooth weighted round-robin over `clusters`.
    schedule: Vec<u16>,
    next_cluster: AtomicUsize,
    next_endpoint: AtomicUsize,
}

impl Route {
    /// Clusters in the order to try them for one new connection: the next
    /// in the weighted schedule first, then the others by schedule order.
    pub fn clusters_for_connection(&self) -> Vec<&ClusterTarget> {
        if self.schedule.is_empty() {
            return Vec::new();
        }
        let start = self.next_cluster.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        let mut order: Vec<&ClusterTarget> = Vec::with_capacity(self.clusters.len());
        for i in 0..self.schedule.len() {
            let c = &self.clusters[self.schedule[(start + i) % self.schedule.len()] as usize];
            if !order.iter().any(|o| o.cluster == c.cluster) {
                order.push(c);
                if order.len() == self.clusters.len() {
                    break;
                }
            }
        }
        order
    }

    /// Local endpoints (with the target port of `service_port`) in the
    /// order to try them: round robin.
    pub fn local_targets(&self, service_port: u16) -> Vec<SocketAddr> {
        let n = self.local_endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        let port = self
            .local_ports
            .get(&service_port)
            .copied()
            .unwrap_or(service_port);
        let start = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| SocketAddr::new(self.local_endpoints[(start + i) % n], port))
            .collect()
    }
}

/// An applied configuration.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub version: u64,
    routes: HashMap<ServiceKey, Arc<Route>>,
    listeners: HashMap<SocketAddr, (Arc<Route>, u16)>,
}

/// Where the gateway's outbound listeners are.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The addresses the hub allocates from (an IPv4 CIDR's hosts). In
    /// address mode the gateway binds them; in port mode they are the
    /// services' ClusterSetIPs, which the derived Services hold.
    pub addresses: std::ops::RangeInclusive<u32>,
    /// Port mode: the range of listener ports, and the address the
    /// listeners bind (a pod's, or every address).
    pub ports: Option<(std::ops::RangeInclusive<u16>, IpAddr)>,
}

impl Outbound {
    /// Address mode over `addresses`.
    pub fn addresses(addresses: std::ops::RangeInclusive<u32>) -> Self {
        Self {
            addresses,
            ports: None,
        }
    }
}

impl RouteTable {
    /// Checks and builds a table; `outbound` is where the gateway's
    /// listeners may be. Any problem refuses the whole configuration.
    pub fn build(config: &proto::GatewayConfig, outbound: &Outbound) -> Result<Self, String> {
        let mut table = RouteTable {
            version: config.version,
            ..Default::default()
        };
        for s in &config.services {
            let service = ServiceKey::new(&s.namespace, &s.name)
                .map_err(|e| format!("service {}/{}: {e}", s.namespace, s.name))?;
            let port = |p: &proto::Port| {
                u16::try_from(p.port)
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or_else(|| format!("{service}: port {} is not a port", p.port))
            };
            let tcp = |p: &&proto::Port| p.protocol.is_empty() || p.protocol == "TCP";
            let ports: Vec<u16> = s
                .ports
                .iter()
                .filter(tcp)
                .map(port)
                .collect::<Result<_, _>>()?;
            let listener = match s.listener.as_str() {
                "" => None,
                text => {
                    let ip: Ipv4Addr = text.parse().map_err(|_| {
                        format!("{service}: listener {text:?} is not an IPv4 address")
                    })?;
                    if !outbound.addresses.contains(&u32::from(ip)) {
                        return Err(format!(
                            "{service}: listener {ip} is outside this gateway's outbound range"
                        ));
                    }
                    Some(ip)
                }
            };
            let local_endpoints = s
                .local_endpoints
                .iter()
                .map(|e| {
                    e.address.parse::<IpAddr>().map_err(|_| {
                        format!("{service}: endpoint {:?} is not an IP address", e.address)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut local_ports = HashMap::new();
            for (service_port, target) in s.ports.iter().zip(&s.local_target_ports) {
                if tcp(&service_port) {
                    local_ports.insert(port(service_port)?, port(target)?);
                }
            }
            let mut clusters = Vec::with_capacity(s.clusters.len());
            for c in &s.clusters {
                let via = if c.local {
                    Via::Local
                } else {
                    Via::Gateway(crate::model::host_port(&c.gateway).map_err(|e| {
                        format!("{service}: the gateway of cluster {}: {e}", c.cluster)
                    })?)
                };
                clusters.push(ClusterTarget {
                    cluster: c.cluster.clone(),
                    weight: c.weight,
                    via,
                });
            }
            let weights: Vec<u64> = clusters.iter().map(|c| c.weight).collect();
            let service_ports = s
                .ports
                .iter()
                .map(|p| {
                    Ok(crate::model::Port {
                        name: p.name.clone(),
                        protocol: if p.protocol.is_empty() {
                            "TCP".into()
                        } else {
                            p.protocol.clone()
                        },
                        app_protocol: p.app_protocol.clone(),
                        port: port(p)?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let route = Arc::new(Route {
                service: service.clone(),
                ports: ports.clone(),
                service_ports,
                listener,
                exported_here: s.exported_here,
                local_endpoints,
                local_ports,
                schedule: schedule(&weights),
                clusters,
                next_cluster: AtomicUsize::new(0),
                next_endpoint: AtomicUsize::new(0),
            });
            let mut listen = |addr: SocketAddr, port: u16| match table
                .listeners
                .insert(addr, (route.clone(), port))
            {
                Some(_) => Err(format!("listener {addr} is given to two services")),
                None => Ok(()),
            };
            match (&outbound.ports, listener) {
                (Some((range, bind)), _) => {
                    for lp in &s.listener_ports {
                        let service_port = u16::try_from(lp.port)
                            .ok()
                            .filter(|p| ports.contains(p))
                            .ok_or_else(|| {
                                format!("{service}: listener port for {}, not a TCP port of the service", lp.port)
                            })?;
                        let on = u16::try_from(lp.listener_port)
                            .ok()
                            .filter(|p| range.contains(p))
                            .ok_or_else(|| {
                                format!(
                                    "{service}: listener port {} is outside this gateway's outbound ports",
                                    lp.listener_port
                                )
                            })?;
                        listen(SocketAddr::new(*bind, on), service_port)?;
                    }
                }
                (None, Some(ip)) => {
                    for p in &ports {
                        listen(SocketAddr::new(IpAddr::V4(ip), *p), *p)?;
                    }
                }
                (None, None) => {}
            }
            table.routes.insert(service, route);
        }
        Ok(table)
    }

    /// The route of a service.
    pub fn route(&self, service: &ServiceKey) -> Option<&Arc<Route>> {
        self.routes.get(service)
    }

    /// The route and service port an outbound listener serves.
    pub fn by_listener(&self, addr: &SocketAddr) -> Option<&(Arc<Route>, u16)> {
        self.listeners.get(addr)
    }

    /// Every outbound listener address.
    pub fn listener_addresses(&self) -> impl Iterator<Item = &SocketAddr> {
        self.listeners.keys()
    }

    /// Every route.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.values()
    }

    /// The clusters a service can send traffic to, with their weights.
    pub fn weights(&self, service: &ServiceKey) -> HashMap<String, u64> {
        self.routes
            .get(service)
            .map(|r| {
                r.clusters
                    .iter()
                    .map(|c| (c.cluster.clone(), c.weight))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> proto::GatewayConfig {
        let port = |p| proto::Port {
            name: "http".into(),
            protocol: "TCP".into(),
            app_protocol: String::new(),
            port: p,
        };
        proto::GatewayConfig {
            version: 9,
            nonce: "n".into(),
            services: vec![proto::GatewayRoute {
                namespace: "app".into(),
                name: "api".into(),
                ports: vec![port(8080)],
                listener: "127.0.2.129".into(),
                exported_here: true,
                local_endpoints: vec![
                    proto::Endpoint {
                        address: "127.0.2.1".into(),
                        ..Default::default()
                    },
                    proto::Endpoint {
                        address: "127.0.2.2".into(),
                        ..Default::default()
                    },
                ],
                local_target_ports: vec![port(9090)],
                listener_ports: vec![],
                clusters: vec![
                    proto::ClusterRoute {
                        cluster: "west".into(),
                        weight: 60,
                        local: false,
                        gateway: "127.0.1.254:15443".into(),
                    },
                    proto::ClusterRoute {
                        cluster: "east".into(),
                        weight: 40,
                        local: true,
                        gateway: String::new(),
                    },
                ],
            }],
            more: false,
        }
    }

    fn range() -> Outbound {
        Outbound::addresses(crate::hub::state::cidr_hosts("127.0.2.128/25").unwrap())
    }

    #[test]
    fn not_ready_until_a_configuration_is_in_force() {
        let (status, _) = crate::gateway::readiness(&RouteTable::default());
        assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        let t = RouteTable::build(&config(), &range()).unwrap();
        assert_eq!(crate::gateway::readiness(&t).0, axum::http::StatusCode::OK);
    }

    #[test]
    fn port_mode_listens_on_the_allocated_ports_of_its_own_address() {
        let mut c = config();
        c.services[0].listener_ports = vec![proto::ListenerPort {
            port: 8080,
            listener_port: 20007,
        }];
        let outbound = Outbound {
            ports: Some((20000..=20009, "127.0.0.1".parse().unwrap())),
            ..range()
        };
        let t = RouteTable::build(&c, &outbound).unwrap();
        let addrs: Vec<_> = t.listener_addresses().map(ToString::to_string).collect();
        assert_eq!(addrs, ["127.0.0.1:20007"], "the ClusterSetIP is not bound");
        let (route, port) = t.by_listener(&"127.0.0.1:20007".parse().unwrap()).unwrap();
        assert_eq!(
            (route.listener.unwrap().to_string(), *port),
            ("127.0.2.129".into(), 8080)
        );
        // A port outside the range, or for a port the service lacks, is
        // refused whole.
        c.services[0].listener_ports[0].listener_port = 30000;
        assert!(RouteTable::build(&c, &outbound)
            .unwrap_err()
            .contains("outside"));
        c.services[0].listener_ports[0] = proto::ListenerPort {
            port: 9999,
            listener_port: 20001,
        };
        assert!(RouteTable::build(&c, &outbound)
            .unwrap_err()
            .contains("9999"));
    }

    #[test]
    fn connections_follow_the_weights_and_endpoints_rotate() {
        let t = RouteTable::build(&config(), &range()).unwrap();
        let listener: SocketAddr = "127.0.2.129:8080".parse().unwrap();
        let (route, port) = t.by_listener(&listener).unwrap();
        assert_eq!(*port, 8080);
        let mut west = 0;
        for _ in 0..100 {
            let order = route.clusters_for_connection();
            assert_eq!(order.len(), 2, "the other cluster is the fallback");
            if order[0].cluster == "west" {
                west += 1;
            }
        }
        assert_eq!(west, 60);
        let a = route.local_targets(8080);
        let b = route.local_targets(8080);
        assert_eq!(a[0].port(), 9090, "the endpoints' target port");
        assert_ne!(a[0], b[0], "round robin");
    }

    #[test]
    fn a_bad_configuration_is_refused_whole_with_a_reason() {
        let mut c = config();
        c.services[0].listener = "10.9.9.9".into();
        assert!(RouteTable::build(&c, &range())
            .unwrap_err()
            .contains("outside"));
        let mut c = config();
        c.services[0].clusters[0].gateway = "not an address".into();
        assert!(RouteTable::build(&c, &range())
            .unwrap_err()
            .contains("gateway of cluster west"));
        let mut c = config();
        c.services[0].local_endpoints[0].address = "x".into();
        assert!(RouteTable::build(&c, &range())
            .unwrap_err()
            .contains("endpoint"));
    }
}
