//! East-west gateways in-process, against a real hub (TLS) with real
//! file-backed agents, and test-owned backends that can be killed: weighted
//! routing across gateways over mTLS, established connections across
//! configuration changes, drains, outlier ejection, the hub going away,
//! refusals at the inbound listener, and a configuration refused (NACK).
//!
//! Clusters: `west` on 127.B.1.x and `east` on 127.B.2.x, B a block per
//! test so the tests run in parallel. Backends greet with their name on
//! connect, then echo lines.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard::agent::{self, stream::HubAuth, AgentConfig};
use switchyard::cli::HubTarget;
use switchyard::dns::DnsConfig;
use switchyard::gateway::metrics::{DirectionLabels, RefusalLabels, RouteLabels};
use switchyard::gateway::{self, outliers::OutlierConfig, RunningGateway, Settings};
use switchyard::hub::app::{self, HubConfig, HubTls, RunningHub};
use switchyard::identity::ca::Ca;
use switchyard::identity::tls::ClientCredentials;
use switchyard::identity::{Identity, Issued, GATEWAY_SERVER_NAME};
use switchyard::model::ServiceKey;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const DRAIN: Duration = Duration::from_secs(1);
const EJECTION: Duration = Duration::from_secs(60);

/// A stand-in pod: greets with its name, then echoes lines.
struct Backend {
    accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

async fn backend(addr: SocketAddr, name: String) -> Backend {
    let listener = TcpListener::bind(addr).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (count, halt) = (accepted.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = halt.cancelled() => return,
                c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
            };
            count.fetch_add(1, Ordering::SeqCst);
            let (name, halt) = (name.clone(), halt.clone());
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                if w.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(r).lines();
                loop {
                    let line = tokio::select! {
                        () = halt.cancelled() => return,
                        l = lines.next_line() => l,
                    };
                    match line {
                        Ok(Some(l)) => {
                            if w.write_all(format!("{l}\n").as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    Backend { accepted, stop }
}

/// A client connection through a gateway, after the backend's greeting.
struct Conn {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    w: tokio::net::tcp::OwnedWriteHalf,
    /// The backend that answered: `cluster/ip`.
    backend: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Option<Conn> {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (r, w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let greeting = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .ok()?
            .ok()??;
        Some(Conn {
            lines,
            w,
            backend: greeting,
        })
    }

    fn cluster(&self) -> &str {
        self.backend.split('/').next().unwrap_or_default()
    }

    /// Sends a line; true if it came back.
    async fn echo(&mut self, text: &str) -> bool {
        if self
            .w
            .write_all(format!("{text}\n").as_bytes())
            .await
            .is_err()
        {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.lines.next_line()).await,
            Ok(Ok(Some(l))) if l == text
        )
    }
}

/// One exported service of one cluster: name, port, endpoint host octets.
struct Export {
    cluster: &'static str,
    service: &'static str,
    port: u16,
    hosts: &'static [u8],
}

/// app/web: two endpoints in west, one in east.
const WEB_EXPORTS: &[Export] = &[
    Export {
        cluster: "west",
        service: "web",
        port: 8080,
        hosts: &[1, 2],
    },
    Export {
        cluster: "east",
        service: "web",
        port: 8080,
        hosts: &[1],
    },
];

fn octet(cluster: &str) -> u8 {
    match cluster {
        "west" => 1,
        "east" => 2,
        other => panic!("no cluster {other}"),
    }
}

struct World {
    dir: tempfile::TempDir,
    block: u8,
    hub: Option<RunningHub>,
    admin: HubTarget,
    ca_pem: String,
    /// Issued while the hub was up, for restarts and test clients.
    issued: HashMap<Identity, Issued>,
    gateways: HashMap<&'static str, RunningGateway>,
    backends: HashMap<SocketAddr, Backend>,
    _agents: Vec<CancellationToken>,
}

impl World {
    async fn start(block: u8, exports: &[Export]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let hub = app::start(
            HubConfig {
                data_dir: dir.path().join("hub"),
                api: "127.0.0.1:0".parse().unwrap(),
                dns: "127.0.0.1:0".parse().unwrap(),
                dns_config: DnsConfig::default(),
                lease: Default::default(),
                raft: None,
                tls: Some(HubTls::default()),
            },
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let authority = hub.hub.authority().unwrap();
        let ca_pem = authority.ca_pem().to_string();
        let mut issued = HashMap::new();
        for c in ["west", "east"] {
            for id in [Identity::Cluster(c.into()), Identity::Gateway(c.into())] {
                let cert = authority.ca().issue(&id, &[], YEAR).unwrap();
                issued.insert(id, cert);
            }
        }
        let admin = HubTarget::new(
            &hub.api_addr.to_string(),
            Some(&dir.path().join("hub/admin")),
        )
        .unwrap();
        let mut world = World {
            dir,
            block,
            hub: Some(hub),
            admin,
            ca_pem,
            issued,
            gateways: HashMap::new(),
            backends: HashMap::new(),
            _agents: Vec::new(),
        };
        for e in exports {
            for h in e.hosts {
                let addr = world.addr(e.cluster, *h, e.port);
                let name = format!("{}/{}", e.cluster, addr.ip());
                world.backends.insert(addr, backend(addr, name).await);
            }
        }
        for cluster in ["west", "east"] {
            world.write_cluster_file(cluster, exports);
            world.start_agent(cluster);
        }
        // Both clusters are members before anything is applied.
        wait_for(&world, |s| {
            s.clusters.contains_key("west") && s.clusters.contains_key("east")
        })
        .await;
        for cluster in ["west", "east"] {
            let g = world.start_gateway(cluster).await;
            world.gateways.insert(cluster, g);
        }
        world
    }

    fn addr(&self, cluster: &str, host: u8, port: u16) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, self.block, octet(cluster), host)),
            port,
        )
    }

    fn hub(&self) -> &RunningHub {
        self.hub.as_ref().expect("the hub is up")
    }

    fn credentials(&self, id: Identity) -> ClientCredentials {
        ClientCredentials {
            ca_pem: self.ca_pem.clone(),
            identity: Some(self.issued[&id].clone()),
        }
    }

    fn write_cluster_file(&self, cluster: &str, exports: &[Export]) {
        let mut s = format!("cluster: {cluster}\nservices:\n");
        for e in exports.iter().filter(|e| e.cluster == cluster) {
            let endpoints: Vec<String> = e
                .hosts
                .iter()
                .map(|h| format!("{{address: {}}}", self.addr(cluster, *h, 0).ip()))
                .collect();
            s.push_str(&format!(
                "  - namespace: app\n    name: {}\n    ports: [{{name: tcp, port: {}}}]\n    endpoints: [{}]\n",
                e.service,
                e.port,
                endpoints.join(", ")
            ));
        }
        std::fs::write(self.dir.path().join(format!("{cluster}.yaml")), s).unwrap();
    }

    fn start_agent(&mut self, cluster: &str) {
        let token = CancellationToken::new();
        let path = self.dir.path().join(format!("{cluster}.yaml"));
        let (file, desired) =
            agent::watch::follow(path, Duration::from_millis(50), token.clone()).unwrap();
        let auth = HubAuth::Tls(
            tokio::sync::watch::channel(self.credentials(Identity::Cluster(cluster.into()))).1,
        );
        tokio::spawn(agent::run(
            AgentConfig {
                hub: self.hub().api_addr.to_string(),
                spec: file.spec(),
                auth,
                ..Default::default()
            },
            desired,
            tokio::sync::watch::channel(Default::default()).0,
            token.clone(),
        ));
        self._agents.push(token);
    }

    fn hub_address(&self) -> String {
        match &self.hub {
            Some(h) => h.api_addr.to_string(),
            // Gone: an address nothing listens on.
            None => "127.0.0.1:1".into(),
        }
    }

    async fn start_gateway(&self, cluster: &'static str) -> RunningGateway {
        self.start_gateway_with(cluster, None).await
    }

    /// A gateway; in port mode when `ports` (range, bind address) is given.
    async fn start_gateway_with(
        &self,
        cluster: &'static str,
        ports: Option<(String, IpAddr)>,
    ) -> RunningGateway {
        let o = octet(cluster);
        let b = self.block;
        let options = gateway::GatewayOptions {
            cluster: cluster.into(),
            hub: self.hub_address(),
            credentials: tokio::sync::watch::channel(
                self.credentials(Identity::Gateway(cluster.into())),
            )
            .1,
            inbound: format!("127.{b}.{o}.250:0").parse().unwrap(),
            advertise: None,
            outbound_cidr: format!("127.{b}.{o}.128/26"),
            outbound_ports: ports,
            dns: Some(format!("127.{b}.{o}.250:0").parse().unwrap()),
            dns_config: DnsConfig::default(),
            metrics: Some(format!("127.{b}.{o}.250:0").parse().unwrap()),
            settings: Settings {
                drain_timeout: DRAIN,
                ..Default::default()
            },
            outliers: OutlierConfig {
                threshold: 3,
                base: EJECTION,
                max: EJECTION,
            },
            cache: Some(self.dir.path().join(format!("{cluster}-gateway.pb"))),
        };
        gateway::start(options, CancellationToken::new())
            .await
            .unwrap()
    }

    /// `cluster`'s outbound listener for `service` once its routes satisfy
    /// `ready` (cluster → weight).
    async fn listener(
        &self,
        cluster: &str,
        service: &str,
        port: u16,
        ready: impl Fn(&HashMap<String, u64>) -> bool,
    ) -> SocketAddr {
        let key: ServiceKey = service.parse().unwrap();
        let g = &self.gateways[cluster];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let table = g.shared.table.load_full();
            if let Some(ip) = table.route(&key).and_then(|r| r.listener) {
                if ready(&table.weights(&key)) {
                    return SocketAddr::new(IpAddr::V4(ip), port);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{cluster}'s gateway: no listener with the routes wanted for {service}: {:?}",
                table.weights(&key)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn apply(&self, manifest: &str) -> impl std::future::Future<Output = ()> + '_ {
        let path = self.dir.path().join("manifest.yaml");
        std::fs::write(&path, manifest).unwrap();
        async move {
            switchyard::cli::apply(&self.admin, path.to_str().unwrap())
                .await
                .unwrap();
        }
    }

    async fn weights(&self, west: i64, east: i64) {
        switchyard::cli::set_weights(
            &self.admin,
            "app/web-global",
            &[format!("west={west}"), format!("east={east}")],
        )
        .await
        .unwrap();
    }
}

const WEB_MCS: &str = "apiVersion: gateway.networking.k8s.io/v1beta1
kind: ServiceImport
metadata: {name: web, namespace: app}
spec: {type: ClusterSetIP, ports: [{port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: MultiClusterService
metadata: {name: web-global, namespace: app}
spec:
  serviceImport: {name: web, namespace: app}
  clusterBackends: [{cluster: west, weight: 75}, {cluster: east, weight: 25}]
";

/// West's part of the weights, when both clusters have one.
fn west_part(ws: &HashMap<String, u64>) -> Option<f64> {
    let (w, e) = (*ws.get("west")? as f64, *ws.get("east")? as f64);
    Some(w / (w + e))
}

/// What the gateway's DNS answers for app/web (A).
async fn web_addresses(g: &RunningGateway) -> Vec<String> {
    let answer = switchyard::dns::client::query(
        g.dns.unwrap(),
        "web.app.svc.clusterset.local",
        hickory_proto::rr::RecordType::A,
        false,
    )
    .await
    .unwrap();
    answer.answers.iter().map(|r| r.data.to_string()).collect()
}

/// Opens `n` connections to `addr`; counts them by the cluster that answered.
async fn spread(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let c = Conn::open(addr)
            .await
            .expect("a connection through the gateway");
        *counts.entry(c.cluster().to_string()).or_default() += 1;
    }
    counts
}

fn share(counts: &HashMap<String, usize>, cluster: &str) -> f64 {
    let total: usize = counts.values().sum();
    *counts.get(cluster).unwrap_or(&0) as f64 / total as f64
}

fn route_labels(service: &str, cluster: &str, direction: &str) -> RouteLabels {
    RouteLabels {
        service: service.into(),
        cluster: cluster.into(),
        direction: direction.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_pick_the_cluster_per_connection_and_open_connections_outlive_changes() {
    let w = World::start(61, WEB_EXPORTS).await;
    w.apply(WEB_MCS).await;
    let listener = w
        .listener("east", "app/web", 8080, |ws| west_part(ws) == Some(0.75))
        .await;

    // The cluster-local DNS names the listener.
    let east = &w.gateways["east"];
    assert_eq!(web_addresses(east).await, [listener.ip().to_string()]);

    // 75/25 by connection; the west share went through west's gateway.
    let counts = spread(listener, 400).await;
    assert!((share(&counts, "west") - 0.75).abs() <= 0.02, "{counts:?}");
    let inbound_west = w.gateways["west"]
        .shared
        .metrics
        .connections
        .get_or_create(&route_labels("app/web", "west", "inbound"))
        .get();
    assert_eq!(inbound_west as usize, counts["west"], "{counts:?}");
    let outbound = |cluster: &str| {
        east.shared
            .metrics
            .connections
            .get_or_create(&route_labels("app/web", cluster, "outbound"))
            .get() as usize
    };
    assert_eq!(outbound("west"), counts["west"]);
    assert_eq!(outbound("east"), counts["east"]);

    // A long-lived connection to west survives a weight change; new
    // connections follow the new weights.
    let mut long = loop {
        let c = Conn::open(listener).await.unwrap();
        if c.cluster() == "west" {
            break c;
        }
    };
    assert!(long.echo("before").await);
    w.weights(25, 75).await;
    w.listener("east", "app/web", 8080, |ws| west_part(ws) == Some(0.25))
        .await;
    assert!(long.echo("after the change").await);
    let counts = spread(listener, 400).await;
    assert!((share(&counts, "west") - 0.25).abs() <= 0.02, "{counts:?}");
    assert!(long.echo("still here").await);

    // West drained: the open connection goes on, then ends at the drain
    // timeout; new connections all go east.
    w.weights(0, 100).await;
    w.listener("east", "app/web", 8080, |ws| !ws.contains_key("west"))
        .await;
    let drained_at = tokio::time::Instant::now();
    assert!(long.echo("draining").await);
    let counts = spread(listener, 50).await;
    assert_eq!(counts.get("east"), Some(&50), "{counts:?}");
    tokio::time::sleep(DRAIN.saturating_sub(drained_at.elapsed()) + Duration::from_millis(500))
        .await;
    assert!(
        !long.echo("after the drain").await,
        "the drain timeout ends connections still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_ejected_and_traffic_flows_without_the_hub() {
    let mut w = World::start(
        62,
        &[Export {
            cluster: "west",
            service: "web",
            port: 8080,
            hosts: &[1, 2],
        }],
    )
    .await;
    let listener = w
        .listener("east", "app/web", 8080, |ws| ws.contains_key("west"))
        .await;
    let counts = spread(listener, 10).await;
    assert_eq!(counts.get("west"), Some(&10));

    // Endpoint .1 dies without its export changing (a crashed pod still
    // listed ready): west's gateway retries .2, ejects .1 after 3 failures.
    let dead = w.addr("west", 1, 8080);
    w.backends.remove(&dead).unwrap().stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        let c = Conn::open(listener)
            .await
            .expect("retried on the other endpoint");
        assert_eq!(c.backend, format!("west/{}", w.addr("west", 2, 0).ip()));
    }
    let west = &w.gateways["west"].shared.metrics;
    let labels = route_labels("app/web", "west", "inbound");
    assert_eq!(west.connect_failures.get_or_create(&labels).get(), 3);
    assert_eq!(west.ejections.get_or_create(&labels).get(), 1);
    // Back up, but still ejected: no new connection goes to it.
    let revived = backend(dead, "west/revived".into()).await;
    let counts = spread(listener, 20).await;
    assert_eq!(counts.get("west"), Some(&20));
    assert_eq!(revived.accepted.load(Ordering::SeqCst), 0);

    // The hub goes away: the gateways route on what they have.
    w.hub.take().unwrap().stop().await;
    let counts = spread(listener, 20).await;
    assert_eq!(counts.get("west"), Some(&20));
    // And a gateway restarted without a hub routes on its last
    // configuration, kept on disk.
    w.gateways.remove("east").unwrap().stop().await;
    let restarted = w.start_gateway("east").await;
    assert!(restarted
        .shared
        .table
        .load()
        .route(&"app/web".parse().unwrap())
        .is_some());
    let mut tries = 0;
    let conn = loop {
        // The listener opens as the cached configuration is applied.
        if let Some(c) = Conn::open(listener).await {
            break c;
        }
        tries += 1;
        assert!(tries < 100, "the restarted gateway does not route");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(conn.cluster(), "west");
    revived.stop.cancel();
}

/// A TLS client to a gateway's inbound listener, with `identity` (none:
/// no client certificate) and `sni`; the greeting if a backend answered.
async fn tls_hello(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Issued>,
    sni: &str,
) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let config = match identity {
        Some(issued) => (*switchyard::gateway::tls::client_config(ca_pem, issued).unwrap()).clone(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
        }
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    let mut lines = BufReader::new(tls).lines();
    match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
        Ok(Ok(Some(l))) => Some(l),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_listener_takes_only_gateways_of_the_clusterset_for_exported_services() {
    let w = World::start(
        63,
        &[
            Export {
                cluster: "west",
                service: "web",
                port: 8080,
                hosts: &[1],
            },
            Export {
                cluster: "east",
                service: "east-only",
                port: 7070,
                hosts: &[1],
            },
        ],
    )
    .await;
    // West's gateway knows both services (it imports east-only).
    w.listener("west", "app/east-only", 7070, |ws| ws.contains_key("east"))
        .await;
    let west = &w.gateways["west"];
    let inbound = west.inbound;
    let east_gw = &w.issued[&Identity::Gateway("east".into())];
    let web_sni = "8080.web.app.svc.clusterset.local";
    let web = format!("west/{}", w.addr("west", 1, 0).ip());

    // A peer gateway with the service's SNI, in either form, gets through.
    assert_eq!(
        tls_hello(inbound, &w.ca_pem, Some(east_gw), web_sni).await,
        Some(web.clone())
    );
    let istio = "outbound_.8080_._.web.app.svc.cluster.local";
    assert_eq!(
        tls_hello(inbound, &w.ca_pem, Some(east_gw), istio).await,
        Some(web)
    );

    let refused = |reason: &str| {
        west.shared
            .metrics
            .refused
            .get_or_create(&RefusalLabels {
                reason: reason.into(),
            })
            .get()
    };
    let handshakes = || {
        west.shared
            .metrics
            .tls_handshake_failures
            .get_or_create(&DirectionLabels {
                direction: "inbound".into(),
            })
            .get()
    };
    // No client certificate.
    assert_eq!(
        tls_hello(inbound, &w.ca_pem, None, GATEWAY_SERVER_NAME).await,
        None
    );
    assert_eq!(handshakes(), 1);
    // A certificate of another CA, for the right identity.
    let other = Ca::generate("not the clusterset").unwrap();
    let forged = other
        .issue(&Identity::Gateway("east".into()), &[], YEAR)
        .unwrap();
    let other_creds = other.cert_pem().to_string() + &w.ca_pem;
    assert_eq!(
        tls_hello(inbound, &other_creds, Some(&forged), web_sni).await,
        None
    );
    assert_eq!(handshakes(), 2);
    // A ClusterSet certificate that is not a gateway's (an agent's).
    let agent = &w.issued[&Identity::Cluster("east".into())];
    assert_eq!(
        tls_hello(inbound, &w.ca_pem, Some(agent), web_sni).await,
        None
    );
    assert_eq!(refused("not_a_gateway"), 1);
    // A service west imports but does not export, and a name that is no
    // service at all.
    let east_only = "7070.east-only.app.svc.clusterset.local";
    assert_eq!(
        tls_hello(inbound, &w.ca_pem, Some(east_gw), east_only).await,
        None
    );
    assert_eq!(refused("not_exported"), 1);
    assert_eq!(
        tls_hello(inbound, &w.ca_pem, Some(east_gw), "example.com").await,
        None
    );
    assert_eq!(refused("unknown_sni"), 1);
    // A port the service does not have.
    let wrong_port = "9999.web.app.svc.clusterset.local";
    assert_eq!(
        tls_hello(inbound, &w.ca_pem, Some(east_gw), wrong_port).await,
        None
    );
    assert_eq!(refused("not_exported"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_cannot_be_applied_is_refused_whole_and_reported() {
    let w = World::start(
        64,
        &[Export {
            cluster: "west",
            service: "web",
            port: 8080,
            hosts: &[1],
        }],
    )
    .await;
    let web = w
        .listener("east", "app/web", 8080, |ws| ws.contains_key("west"))
        .await;
    let east = &w.gateways["east"];
    let before = east.shared.table.load().version;

    // West exports a second service; the address east's gateway will get
    // for it (the next free one of its range) is taken on that port.
    let next = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 64, 2, 129)) + 1);
    assert_ne!(web.ip(), IpAddr::V4(next));
    let squatter = TcpListener::bind(SocketAddr::new(IpAddr::V4(next), 9000))
        .await
        .unwrap();
    w.write_cluster_file(
        "west",
        &[
            Export {
                cluster: "west",
                service: "web",
                port: 8080,
                hosts: &[1],
            },
            Export {
                cluster: "west",
                service: "zzz",
                port: 9000,
                hosts: &[2],
            },
        ],
    );
    let state = wait_for(&w, |s| {
        s.gateways
            .get("east")
            .and_then(|g| g.rejected.clone())
            .is_some()
    })
    .await;
    let g = &state.gateways["east"];
    let (version, reason) = g.rejected.clone().unwrap();
    assert!(
        reason.contains(&format!("cannot listen on {next}:9000")),
        "{reason}"
    );
    assert!(version > before && g.applied_version < version, "{g:?}");
    // Nothing of it was applied: the old table is in force, web still flows.
    let table = east.shared.table.load_full();
    assert_eq!(table.version, before);
    assert!(table.route(&"app/zzz".parse().unwrap()).is_none());
    assert!(Conn::open(web).await.is_some());
    assert_eq!(east.shared.metrics.config_rejections.get(), 1);

    // The address freed, the refused configuration applies on a retry.
    drop(squatter);
    let state = wait_for(&w, |s| {
        s.gateways
            .get("east")
            .is_some_and(|g| g.rejected.is_none() && g.applied_version == g.offered_version)
    })
    .await;
    assert_eq!(state.gateways["east"].applied_version, version);
    assert!(east
        .shared
        .table
        .load()
        .route(&"app/zzz".parse().unwrap())
        .is_some());
}

async fn wait_for(
    w: &World,
    pred: impl Fn(&switchyard::hub::state::State) -> bool,
) -> Arc<switchyard::hub::state::State> {
    let mut view = w.hub().hub.watch_state();
    let r = tokio::time::timeout(Duration::from_secs(10), view.wait_for(|s| pred(s))).await;
    match r {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("timed out; gateways: {:?}", w.hub().hub.state().gateways),
    }
}

/// A gateway in port mode (as in a pod): it listens on the port the hub
/// allocated for the service port, on its own address, not on the
/// ClusterSetIP (which the derived Service holds, and which its DNS names),
/// and routes by the weights as in address mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_in_port_mode_listens_on_its_ports_and_routes_by_the_weights() {
    let mut w = World::start(65, WEB_EXPORTS).await;
    w.apply(WEB_MCS).await;
    let address_mode = w.gateways.remove("east").unwrap();
    address_mode.stop().await;
    let bind = IpAddr::V4(Ipv4Addr::new(127, 65, 2, 251));
    let g = w
        .start_gateway_with("east", Some(("21000-21009".into(), bind)))
        .await;
    w.gateways.insert("east", g);
    let cluster_set_ip = w
        .listener("east", "app/web", 8080, |ws| west_part(ws) == Some(0.75))
        .await
        .ip();
    let key: ServiceKey = "app/web".parse().unwrap();
    let listeners = loop {
        let table = w.gateways["east"].shared.table.load_full();
        let l: Vec<SocketAddr> = table.listener_addresses().copied().collect();
        if !l.is_empty() && table.route(&key).is_some() {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listeners, [SocketAddr::new(bind, 21000)]);
    assert!(
        TcpStream::connect(SocketAddr::new(cluster_set_ip, 8080))
            .await
            .is_err(),
        "the ClusterSetIP is not the gateway's to bind"
    );
    assert_eq!(
        web_addresses(&w.gateways["east"]).await,
        [cluster_set_ip.to_string()]
    );
    let counts = spread(listeners[0], 200).await;
    assert!((share(&counts, "west") - 0.75).abs() <= 0.02, "{counts:?}");

    // Ready (for the pod's readiness probe) with a configuration in force.
    let mut conn = TcpStream::connect(w.gateways["east"].metrics.unwrap())
        .await
        .unwrap();
    conn.write_all(b"GET /readyz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut reply)
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("in force"), "{reply}");
}
