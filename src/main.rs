//! The `switchyard` binary: one subcommand per job.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use switchyard::agent::credentials::{self, CredentialStore};
use switchyard::agent::stream::HubAuth;
use switchyard::cli::{self, Format};
use switchyard::dns::DnsConfig;
use switchyard::hub::lease::LeaseConfig;
use switchyard::playground::{self, up::UpOptions};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: the hub's write path allocates per
/// request (HTTP/2 frames, JSON, raft entries), and glibc's allocator was a
/// fifth of its CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Multi-cluster global traffic manager for Kubernetes.
#[derive(Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Admin credentials for the hub API (a directory with ca.pem, cert.pem
    /// and key.pem, as the hub writes to DATA_DIR/admin); by default the
    /// playground's, .switchyard/hub/admin, when present.
    #[arg(long, global = true, env = "SWITCHYARD_CREDENTIALS")]
    credentials: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the playground: a hub, three file-backed clusters with real
    /// backends, and ClusterSet DNS, all on loopback.
    Up {
        /// Where hub state and the cluster files live.
        #[arg(long, default_value = ".switchyard")]
        data_dir: PathBuf,
        /// ClusterSet DNS address (UDP and TCP).
        #[arg(long, default_value = "127.0.0.1:5353")]
        dns: SocketAddr,
        /// Hub API address (gRPC, /metrics, /healthz).
        #[arg(long, default_value = "127.0.0.1:7700")]
        api: SocketAddr,
        /// A clusterset description (see --print-config); overwrites the
        /// cluster files in the data dir.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the clusterset description in use and exit.
        #[arg(long)]
        print_config: bool,
        /// Serve the hub API without TLS or authentication (only with
        /// --network flat).
        #[arg(long)]
        insecure: bool,
        /// How clusters reach each other: through each cluster's east-west
        /// gateway over mTLS (the default), or directly on one flat network
        /// (the default with --insecure).
        #[arg(long, value_enum)]
        network: Option<playground::up::Network>,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run a hub replica, or change the replica set (`hub members`).
    #[command(args_conflicts_with_subcommands = true)]
    Hub {
        #[command(subcommand)]
        action: Option<HubAction>,
        #[command(flatten)]
        run: Box<HubArgs>,
    },
    /// Show the hub's replicas: leader, term, and each member's role,
    /// match and applied index.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
    },
    /// Run a file-backed cluster agent against a hub.
    Agent {
        /// A cluster file instead of the Kubernetes API (the playground's
        /// source; see docs/playground.md for its format).
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
        /// The cluster ID; by default the ClusterProperty
        /// cluster.clusterset.k8s.io, else the kube-system namespace UID.
        #[arg(long, env = "SWITCHYARD_CLUSTER")]
        cluster: Option<String>,
        /// The cluster's region and zone (Kubernetes agent).
        #[arg(long, env = "SWITCHYARD_REGION", default_value = "")]
        region: String,
        #[arg(long, env = "SWITCHYARD_ZONE", default_value = "")]
        zone: String,
        /// A kubeconfig file; by default $KUBECONFIG, ~/.kube/config, or the
        /// in-cluster service account.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Where the cluster's east-west gateway pods run (by default the
        /// agent's own namespace, $POD_NAMESPACE): with the gateway in port
        /// mode, the agent derives a Service there per import.
        #[arg(long, env = "POD_NAMESPACE")]
        gateway_namespace: Option<String>,
        /// The gateway pods' labels.
        #[arg(long, default_value = "app.kubernetes.io/name=switchyard-gateway")]
        gateway_selector: String,
        #[command(flatten)]
        auth: AgentAuthArgs,
    },
    /// Run a cluster's east-west gateway: outbound listeners for the
    /// services the cluster imports, an mTLS inbound listener for the
    /// services it exports, programmed by the hub.
    Gateway(Box<GatewayArgs>),
    /// Print the Kubernetes manifests of a member cluster (CRDs, RBAC, the
    /// agent with its CA and bootstrap token, the CoreDNS forward), or with
    /// --hub-replicas those of the hub, as one stream for `kubectl apply -f -`.
    Install {
        /// The member cluster's ID.
        #[arg(long, required_unless_present = "hub_replicas")]
        cluster: Option<String>,
        /// Where the cluster's agent reaches the hub API (HOST:PORT); also
        /// the hub to ask for the CA and a token when not given.
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
        /// A bootstrap token (`switchyard token create`); one is created
        /// on the hub (valid 1 h) when absent.
        #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The ClusterSet CA certificate (PEM); asked from the hub when absent.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Where the cluster's CoreDNS forwards the zone (HOST:PORT); the
        /// hub's host, port 53, by default.
        #[arg(long)]
        hub_dns: Option<String>,
        /// The ClusterSet zone.
        #[arg(long, default_value = "clusterset.local")]
        zone: String,
        #[arg(long, default_value = "switchyard-system")]
        namespace: String,
        #[arg(long, default_value_t = cli::install::default_image())]
        image: String,
        /// The cluster's region and zone.
        #[arg(long, default_value = "")]
        region: String,
        #[arg(long = "cluster-zone", default_value = "")]
        cluster_zone: String,
        /// Print the hub's manifests (StatefulSet of this many replicas)
        /// instead of a member cluster's.
        #[arg(long, conflicts_with = "cluster")]
        hub_replicas: Option<u32>,
        /// Hub: Service type of the API and DNS.
        #[arg(long, default_value = "LoadBalancer")]
        service_type: String,
        /// Hub: volume size of each replica.
        #[arg(long, default_value = "4Gi")]
        storage: String,
        /// Hub: extra names for its certificate (the load balancer's name).
        #[arg(long, value_delimiter = ',')]
        tls_san: Vec<String>,
        /// Hub: the ClusterSet CA directory from `switchyard hub init-ca`,
        /// put in the stream as the switchyard-hub-ca Secret the replicas
        /// mount; without it, create that Secret first (docs/operations.md).
        #[arg(long, requires = "hub_replicas")]
        hub_ca: Option<PathBuf>,
        /// Run an east-west gateway (for clusters whose pods other clusters
        /// cannot reach): the ClusterSetIPs of imported services come from
        /// this range of the cluster's Service CIDR, which its apiserver
        /// must not hand out (docs/install.md).
        #[arg(long, requires = "gateway_dns_ip", conflicts_with = "hub_dns")]
        gateway_cidr: Option<String>,
        /// Gateway: the ClusterIP of its DNS Service, where CoreDNS forwards
        /// the zone (in the Service CIDR, outside --gateway-cidr).
        #[arg(long, requires = "gateway_cidr")]
        gateway_dns_ip: Option<String>,
        /// Gateway: its listener ports, one per imported service port.
        #[arg(long, default_value = "20000-29999")]
        gateway_ports: String,
        /// Gateway: where other clusters' gateways reach it (a load
        /// balancer's HOST:PORT); by default a NodePort (31543) on the
        /// address of the node of each gateway pod.
        #[arg(long)]
        gateway_advertise: Option<String>,
        #[arg(long, default_value_t = 2)]
        gateway_replicas: u32,
        /// Gateway: a bootstrap token of role gateway; one is created on the
        /// hub when absent.
        #[arg(long, env = "SWITCHYARD_GATEWAY_TOKEN", hide_env_values = true)]
        gateway_token: Option<String>,
    },
    /// Bootstrap tokens for agents.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Apply ServiceImport and MultiClusterService manifests, all or nothing.
    Apply {
        /// Multi-document YAML or JSON file, or - for stdin.
        #[arg(short = 'f', long = "filename")]
        file: String,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
    },
    /// Show clusters, exports, imports, mcs, backends or gateways.
    Get {
        /// clusters | exports | imports | mcs | backends | gateways
        kind: String,
        /// NS/NAME (or a cluster ID for clusters and gateways).
        name: Option<String>,
        /// Imports as this cluster sees them: each port with the cluster's
        /// gateway listener (gatewayListener).
        #[arg(long)]
        cluster: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Linearizable read through the raft leader (ReadIndex) instead of
        /// the contacted replica's applied state.
        #[arg(long)]
        consistent: bool,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
    },
    /// Change MultiClusterService weights.
    Weights {
        #[command(subcommand)]
        action: WeightsAction,
    },
    /// Serve `GET /` on one address with the JSON of a playground backend
    /// (`{"cluster", "service", "pod", "address"}`): a stand-in pod for
    /// end-to-end tests that run the real binary in network namespaces.
    #[command(hide = true)]
    Backend {
        /// The cluster the backend says it runs in.
        #[arg(long)]
        cluster: String,
        /// The service it belongs to, NS/NAME.
        #[arg(long)]
        service: String,
        /// Its pod name.
        #[arg(long)]
        pod: String,
        /// Where to listen (IP:PORT).
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Rehearse a failover with synthetic traffic running, and report the
    /// timeline, failures and latency against SLOs (exit status 3 when the
    /// verdict is FAIL). Every drill restores at its end and on Ctrl-C.
    Drill {
        #[command(subcommand)]
        drill: cli::drill::DrillCommand,
    },
    /// Query the ClusterSet DNS and name each address's cluster.
    Resolve {
        name: String,
        /// Record type: A, AAAA, SRV, TXT, SOA, ...
        #[arg(long = "type", short = 't', default_value = "A")]
        rtype: String,
        #[arg(long, default_value = "127.0.0.1:5353")]
        dns: SocketAddr,
        /// Query over TCP instead of UDP.
        #[arg(long)]
        tcp: bool,
        /// Print only the first address (for scripts).
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
    },
}

/// DNS and lease flags shared by `up` and `hub`.
#[derive(clap::Args)]
struct ServeArgs {
    /// The ClusterSet DNS zone.
    #[arg(long, default_value = "clusterset.local")]
    zone: String,
    /// DNS answer TTL in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Cluster lease duration, milliseconds.
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
    /// How often agents renew their lease, milliseconds.
    #[arg(long, default_value_t = 1000)]
    renew_ms: u64,
    /// How long an unreachable cluster's endpoints stay imported (not
    /// ready) in other clusters before they are removed, milliseconds.
    #[arg(long, default_value_t = 30000)]
    lease_grace_ms: u64,
}

impl ServeArgs {
    fn dns(&self) -> DnsConfig {
        DnsConfig {
            zone: self.zone.clone(),
            ttl: self.ttl,
        }
    }

    fn lease(&self) -> anyhow::Result<LeaseConfig> {
        if self.renew_ms == 0 || self.lease_ms <= self.renew_ms {
            anyhow::bail!(
                "--lease-ms ({}) must be longer than --renew-ms ({}), and both above 0",
                self.lease_ms,
                self.renew_ms
            );
        }
        Ok(LeaseConfig {
            ttl: Duration::from_millis(self.lease_ms),
            renew: Duration::from_millis(self.renew_ms),
            grace: Duration::from_millis(self.lease_grace_ms),
        })
    }
}

/// Flags of a hub replica.
#[derive(clap::Args)]
struct HubArgs {
    /// This replica's raft ID (1, 2, 3, ...).
    #[arg(long)]
    id: Option<u64>,
    #[arg(long, default_value = ".switchyard-hub")]
    data_dir: PathBuf,
    /// Where this replica listens for its peers (raft, forwarded writes).
    #[arg(long)]
    raft: Option<SocketAddr>,
    /// Agent and admin gRPC, /metrics, /healthz.
    #[arg(long, default_value = "127.0.0.1:7700")]
    api: SocketAddr,
    /// ClusterSet DNS (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:5353")]
    dns: SocketAddr,
    /// Initial members' raft addresses: 1=IP:PORT,2=IP:PORT,3=IP:PORT.
    #[arg(long, default_value = "")]
    peers: String,
    /// Join an existing hub: start without a configuration and wait for
    /// `switchyard hub members add`.
    #[arg(long)]
    join: bool,
    /// Snapshot and compact the raft log after this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    #[command(flatten)]
    serve: ServeArgs,
    /// Tests only: allow the fault hook that drops raft traffic.
    #[arg(long, hide = true)]
    enable_fault_injection: bool,
    /// Serve the API and the raft peer port without TLS or authentication:
    /// anyone who reaches them can read and change everything (benchmarks
    /// on a trusted machine only).
    #[arg(long)]
    insecure: bool,
    /// Raft peer connections served at once; more are closed on arrival.
    #[arg(long, default_value_t = 64)]
    peer_max_connections: usize,
    /// How long a peer's TLS handshake may take.
    #[arg(long, default_value = "5s")]
    peer_handshake_timeout: humantime::Duration,
    /// Names clients reach this replica by, for its certificate (IPs or DNS
    /// names, comma-separated); 127.0.0.1, localhost and the --api address
    /// are always in it.
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// The ClusterSet CA (`switchyard hub init-ca`), PEM files: replicas
    /// authenticate each other with it, and the hub's first leader records
    /// it in the state. Required for a replicated hub; a hub of one
    /// replica without it creates one in DATA_DIR/ca on first start.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Lifetime of agent certificates (renewed at two thirds of it).
    #[arg(long, default_value = "24h")]
    agent_cert_ttl: humantime::Duration,
}

/// Flags of `switchyard gateway`.
#[derive(clap::Args)]
struct GatewayArgs {
    /// The cluster this gateway serves.
    #[arg(long, env = "SWITCHYARD_CLUSTER")]
    cluster: String,
    #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
    hub: String,
    /// Where the mTLS listener for other clusters' gateways binds.
    #[arg(long, default_value = "0.0.0.0:15443")]
    inbound: SocketAddr,
    /// Where other gateways reach the inbound listener (HOST:PORT), when
    /// not the --inbound address (a load balancer, a node port).
    #[arg(long)]
    advertise: Option<String>,
    /// IPv4 CIDR the hub allocates this cluster's outbound listener
    /// addresses from (one per imported service; they must be assignable
    /// on this host). With --outbound-ports, the services' ClusterSetIPs
    /// instead: a range of the cluster's Service CIDR kept free for them.
    #[arg(long)]
    outbound_cidr: String,
    /// Port mode, for a gateway in a pod: listen on one port of this range
    /// (FIRST-LAST) per imported service port, on --outbound-bind; the
    /// agent derives a Service per import that sends its ClusterSetIP to
    /// these ports of the gateway's pods.
    #[arg(long)]
    outbound_ports: Option<String>,
    /// Port mode: the address the outbound listeners bind.
    #[arg(long, default_value = "0.0.0.0", requires = "outbound_ports")]
    outbound_bind: std::net::IpAddr,
    /// Serve the ClusterSet zone for this cluster's clients here (UDP and
    /// TCP): each name answers with this gateway's listener.
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// The ClusterSet DNS zone and TTL.
    #[arg(long, default_value = "clusterset.local")]
    zone: String,
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Serve /metrics here.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// The ClusterSet CA certificate (PEM).
    #[arg(long, env = "SWITCHYARD_CA")]
    ca: PathBuf,
    /// A one-time bootstrap token of role gateway (`switchyard token
    /// create --role gateway`), needed only when no stored certificate is
    /// usable.
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Keeps the certificate and the last configuration (default
    /// .switchyard-gateway/CLUSTER).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the certificate in this Secret (namespace $POD_NAMESPACE)
    /// instead of the data dir.
    #[arg(long)]
    identity_secret: Option<String>,
    /// Per upstream attempt: TCP connect plus TLS handshake.
    #[arg(long, default_value = "2s")]
    connect_timeout: humantime::Duration,
    /// Upstream attempts per connection, across endpoints and clusters.
    #[arg(long, default_value_t = 3)]
    max_attempts: usize,
    /// How long connections to a cluster that lost its share may go on.
    #[arg(long, default_value = "30s")]
    drain_timeout: humantime::Duration,
    /// Consecutive connect failures that eject an upstream.
    #[arg(long, default_value_t = 3)]
    eject_after: u32,
    /// The first ejection's length (doubled by each failed probe, up to
    /// --eject-max).
    #[arg(long, default_value = "5s")]
    eject_for: humantime::Duration,
    #[arg(long, default_value = "60s")]
    eject_max: humantime::Duration,
}

/// How an agent authenticates to the hub.
#[derive(clap::Args)]
struct AgentAuthArgs {
    /// The ClusterSet CA certificate (PEM) the hub's certificate must chain
    /// to (`switchyard install` puts it in the agent's ConfigMap).
    #[arg(long, env = "SWITCHYARD_CA")]
    ca: Option<PathBuf>,
    /// A one-time bootstrap token (`switchyard token create`), needed only
    /// when no stored certificate is usable.
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Keep the agent's certificate in this directory (default for --file:
    /// .switchyard-agent/CLUSTER).
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    /// Keep the agent's certificate in this Secret, in the namespace of
    /// $POD_NAMESPACE (Kubernetes agent without --identity-dir).
    #[arg(long, default_value = "switchyard-agent-identity")]
    identity_secret: String,
    /// Talk to a hub started with --insecure: no TLS, no certificate.
    #[arg(long)]
    insecure: bool,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a one-time token with which a cluster's agent joins.
    Create {
        /// The cluster ID the agent's certificate will carry.
        #[arg(long)]
        cluster: String,
        /// How long the token may be used, e.g. 1h, 30m (at most 7 days).
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        /// Who joins with it: the cluster's agent, or its east-west gateway.
        #[arg(long, value_parser = ["agent", "gateway"], default_value = "agent")]
        role: String,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
    },
}

#[derive(Subcommand)]
enum HubAction {
    /// Add or remove a replica, one at a time.
    Members {
        #[command(subcommand)]
        change: MemberChange,
    },
    /// Create the ClusterSet CA for a replicated hub, once: OUT/ca.pem and
    /// OUT/ca-key.pem (mode 0600). Every replica starts with
    /// --ca-cert OUT/ca.pem --ca-key OUT/ca-key.pem; in Kubernetes, make it
    /// the switchyard-hub-ca Secret (docs/operations.md).
    InitCa {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum MemberChange {
    /// Add replica ID listening for peers at ADDR (start it with --join first).
    Add {
        id: u64,
        address: String,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
    },
    /// Remove replica ID.
    Remove {
        id: u64,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
    },
}

#[derive(Subcommand)]
enum WeightsAction {
    /// Set CLUSTER=WEIGHT pairs on a MultiClusterService (NS/NAME).
    Set {
        mcs: String,
        #[arg(required = true)]
        weights: Vec<String>,
        #[arg(long, env = "SWITCHYARD_HUB", default_value = "127.0.0.1:7700")]
        hub: String,
    },
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels the token on Ctrl-C or SIGTERM.
fn stop_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        t.cancel();
    });
    token
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let credentials = cli.credentials.clone();
    let target = |hub: &str| cli::HubTarget::new(hub, credentials.as_deref());
    match cli.command {
        Command::Up {
            data_dir,
            dns,
            api,
            insecure,
            network,
            config,
            print_config,
            serve,
        } => {
            if print_config {
                print!(
                    "{}",
                    playground::up::load_config(config.as_deref())?.to_yaml()
                );
                return Ok(());
            }
            init_logging(cli.log_format, "warn,switchyard=warn");
            let opts = UpOptions {
                data_dir: data_dir.clone(),
                dns,
                api,
                config,
                lease: serve.lease()?,
                dns_config: serve.dns(),
                insecure,
                network: network.unwrap_or(if insecure {
                    playground::up::Network::Flat
                } else {
                    playground::up::Network::Gateway
                }),
            };
            let zone = serve.zone;
            let shutdown = stop_on_signal();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let running = tokio::spawn(playground::up(opts, shutdown.clone(), ready_tx));
            if let Ok(bound) = ready_rx.await {
                print!("{}", playground::up::banner(&bound, &data_dir, &zone));
            }
            running.await.context("the playground task failed")??;
            eprintln!("switchyard playground stopped");
            Ok(())
        }
        Command::Agent {
            file: None,
            hub,
            cluster,
            region,
            zone,
            kubeconfig,
            gateway_namespace,
            gateway_selector,
            auth,
        } => {
            let gateway_pods = gateway_namespace
                .map(|ns| switchyard::agent::k8s::derived::GatewayPods::new(&ns, &gateway_selector))
                .transpose()?;
            init_logging(cli.log_format, "info");
            let client = kube_client(kubeconfig.as_deref()).await?;
            let shutdown = stop_on_signal();
            let store = match &auth.identity_dir {
                Some(dir) => CredentialStore::Dir(dir.clone()),
                None => {
                    let namespace = std::env::var("POD_NAMESPACE")
                        .unwrap_or_else(|_| client.default_namespace().to_string());
                    CredentialStore::Secret {
                        api: Box::new(kube::Api::namespaced(client.clone(), &namespace)),
                        name: auth.identity_secret.clone(),
                    }
                }
            };
            let config = switchyard::agent::k8s::KubeAgentConfig {
                auth: agent_auth(&auth, &hub, store, &shutdown).await?,
                hub,
                cluster,
                region,
                zone,
                gateway_addresses: Vec::new(),
                gateway_pods,
            };
            switchyard::agent::k8s::run(client, config, shutdown).await?;
            Ok(())
        }
        Command::Agent {
            file: Some(file),
            hub,
            auth,
            ..
        } => {
            init_logging(cli.log_format, "info");
            let shutdown = stop_on_signal();
            let (f, desired) = switchyard::agent::watch::follow(
                file,
                Duration::from_millis(200),
                shutdown.child_token(),
            )?;
            let dir = auth
                .identity_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".switchyard-agent").join(&f.cluster));
            let config = switchyard::agent::AgentConfig {
                auth: agent_auth(&auth, &hub, CredentialStore::Dir(dir), &shutdown).await?,
                hub,
                spec: f.spec(),
                ..Default::default()
            };
            let (acked, _) = tokio::sync::watch::channel(Default::default());
            switchyard::agent::run(config, desired, acked, shutdown).await;
            Ok(())
        }
        Command::Gateway(args) => run_gateway(*args, cli.log_format).await,
        Command::Drill { drill } => {
            if !cli::drill::run(drill, credentials.as_deref()).await? {
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Apply { file, hub } => cli::apply(&target(&hub)?, &file).await,
        Command::Get {
            kind,
            name,
            cluster,
            output,
            consistent,
            hub,
        } => {
            cli::get(
                &target(&hub)?,
                &kind,
                name.as_deref(),
                cluster.as_deref(),
                output,
                consistent,
            )
            .await
        }
        Command::Status { output, hub } => cli::status(&target(&hub)?, output).await,
        Command::Hub {
            action: Some(HubAction::Members { change }),
            ..
        } => match change {
            MemberChange::Add { id, address, hub } => {
                cli::change_member(&target(&hub)?, id, Some(&address)).await
            }
            MemberChange::Remove { id, hub } => cli::change_member(&target(&hub)?, id, None).await,
        },
        Command::Hub {
            action: Some(HubAction::InitCa { out }),
            ..
        } => {
            switchyard::hub::trust::init_ca(&out)
                .with_context(|| format!("cannot create the ClusterSet CA in {}", out.display()))?;
            println!(
                "created the ClusterSet CA: {}/{} and {}/{} (keep the key secret; give both to every replica)",
                out.display(),
                switchyard::hub::trust::CA_CERT_FILE,
                out.display(),
                switchyard::hub::trust::CA_KEY_FILE
            );
            Ok(())
        }
        Command::Hub { action: None, run } => run_hub(*run, cli.log_format).await,
        Command::Token {
            action:
                TokenAction::Create {
                    cluster,
                    ttl,
                    role,
                    hub,
                },
        } => cli::create_token(&target(&hub)?, &cluster, *ttl, &role).await,
        Command::Install {
            cluster,
            hub,
            token,
            ca,
            hub_dns,
            zone,
            namespace,
            image,
            region,
            cluster_zone,
            hub_replicas,
            service_type,
            storage,
            tls_san,
            hub_ca,
            gateway_cidr,
            gateway_dns_ip,
            gateway_ports,
            gateway_advertise,
            gateway_replicas,
            gateway_token,
        } => {
            let gateway = gateway_cidr.map(|cidr| cli::install::GatewayInstall {
                cidr,
                ports: gateway_ports,
                dns_ip: gateway_dns_ip.unwrap_or_default(),
                advertise: gateway_advertise,
                replicas: gateway_replicas,
                token: gateway_token,
            });
            let opts = cli::install::InstallOptions {
                cluster,
                hub_replicas,
                hub: hub.clone(),
                token,
                ca,
                hub_dns,
                zone,
                namespace,
                image,
                region,
                zone_of_cluster: cluster_zone,
                service_type,
                storage,
                tls_sans: tls_san,
                hub_ca,
                gateway,
            };
            print!("{}", cli::install::install(&opts, &target(&hub)?).await?);
            Ok(())
        }
        Command::Weights {
            action: WeightsAction::Set { mcs, weights, hub },
        } => cli::set_weights(&target(&hub)?, &mcs, &weights).await,
        Command::Backend {
            cluster,
            service,
            pod,
            listen,
        } => run_backend(cluster, service, pod, listen, cli.log_format).await,
        Command::Resolve {
            name,
            rtype,
            dns,
            tcp,
            quiet,
            hub,
        } => cli::resolve::resolve(dns, &target(&hub)?, &name, &rtype, tcp, quiet).await,
    }
}

/// A Kubernetes client from `path`, or from the usual places (kube-rs's
/// inference: $KUBECONFIG, ~/.kube/config, the in-cluster service account).
async fn kube_client(path: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match path {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration found (pass --kubeconfig, or --file for a cluster file)",
        )?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

/// A StatefulSet pod's raft ID: its ordinal (`hub-2`) plus one.
fn id_from_hostname() -> Option<u64> {
    let host = std::env::var("HOSTNAME").ok()?;
    let ordinal: u64 = host.rsplit_once('-')?.1.parse().ok()?;
    Some(ordinal + 1)
}

/// The agent's way to authenticate: its stored certificate or a join with
/// its token, then renewals in the background.
async fn agent_auth(
    args: &AgentAuthArgs,
    hub: &str,
    store: CredentialStore,
    shutdown: &CancellationToken,
) -> anyhow::Result<HubAuth> {
    if args.insecure {
        return Ok(HubAuth::Insecure);
    }
    let ca = args.ca.as_ref().ok_or_else(|| {
        anyhow::anyhow!("--ca is required: the ClusterSet CA certificate (PEM) to trust the hub by (`switchyard install` provides it); or --insecure for a hub without TLS")
    })?;
    let ca_pem = std::fs::read_to_string(ca)
        .with_context(|| format!("cannot read --ca {}", ca.display()))?;
    let credentials = credentials::obtain(hub, &ca_pem, args.token.as_deref(), &store).await?;
    let (tx, rx) = tokio::sync::watch::channel(credentials);
    tokio::spawn(credentials::keep_renewed(
        hub.to_string(),
        store,
        tx,
        shutdown.child_token(),
    ));
    Ok(HubAuth::Tls(rx))
}

/// `switchyard backend`: one playground backend until Ctrl-C or SIGTERM.
async fn run_backend(
    cluster: String,
    service: String,
    pod: String,
    listen: SocketAddr,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    init_logging(log_format, "warn");
    switchyard::model::validate_cluster_id(&cluster)
        .map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
    let key: switchyard::model::ServiceKey = service
        .parse()
        .map_err(|e| anyhow::anyhow!("--service {service:?}: {e}"))?;
    let shutdown = stop_on_signal();
    let mut tasks = tokio::task::JoinSet::new();
    let who = playground::backend::BackendIdentity {
        cluster,
        service: key.to_string(),
        pod,
    };
    playground::backend::spawn(&mut tasks, listen, who.clone(), shutdown.clone()).await?;
    eprintln!(
        "switchyard backend {} of {} in {} on {listen}",
        who.pod, who.service, who.cluster
    );
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn run_gateway(args: GatewayArgs, log_format: LogFormat) -> anyhow::Result<()> {
    use switchyard::gateway;
    init_logging(log_format, "info");
    switchyard::model::validate_cluster_id(&args.cluster)
        .map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
    if args.max_attempts == 0 || args.eject_after == 0 {
        anyhow::bail!("--max-attempts and --eject-after must be at least 1");
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".switchyard-gateway").join(&args.cluster));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let store = match &args.identity_secret {
        Some(name) => {
            let client = kube_client(None).await?;
            let namespace = std::env::var("POD_NAMESPACE")
                .unwrap_or_else(|_| client.default_namespace().to_string());
            CredentialStore::Secret {
                api: Box::new(kube::Api::namespaced(client, &namespace)),
                name: name.clone(),
            }
        }
        None => CredentialStore::Dir(data_dir.join("identity")),
    };
    let ca_pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("cannot read --ca {}", args.ca.display()))?;
    let creds = credentials::obtain(&args.hub, &ca_pem, args.token.as_deref(), &store).await?;
    let expected = switchyard::identity::Identity::Gateway(args.cluster.clone());
    let actual = creds
        .identity
        .as_ref()
        .and_then(|i| switchyard::identity::ca::identity_of_pem(&i.cert_pem));
    if actual.as_ref() != Some(&expected) {
        anyhow::bail!(
            "the certificate obtained is for {}, not {} (create the token with `switchyard token create --cluster {} --role gateway`)",
            actual.map_or_else(|| "nobody".to_string(), |i| i.uri()),
            expected.uri(),
            args.cluster
        );
    }
    let shutdown = stop_on_signal();
    let (tx, rx) = tokio::sync::watch::channel(creds);
    tokio::spawn(credentials::keep_renewed(
        args.hub.clone(),
        store,
        tx,
        shutdown.child_token(),
    ));
    let options = gateway::GatewayOptions {
        cluster: args.cluster.clone(),
        hub: args.hub.clone(),
        credentials: rx,
        inbound: args.inbound,
        advertise: args.advertise.clone(),
        outbound_cidr: args.outbound_cidr.clone(),
        outbound_ports: args
            .outbound_ports
            .clone()
            .map(|range| (range, args.outbound_bind)),
        dns: args.dns,
        dns_config: DnsConfig {
            zone: args.zone.clone(),
            ttl: args.ttl,
        },
        metrics: args.metrics,
        settings: gateway::Settings {
            connect_timeout: *args.connect_timeout,
            max_attempts: args.max_attempts,
            drain_timeout: *args.drain_timeout,
        },
        outliers: gateway::outliers::OutlierConfig {
            threshold: args.eject_after,
            base: *args.eject_for,
            max: *args.eject_max,
        },
        cache: Some(data_dir.join("config.pb")),
    };
    let running = gateway::start(options, shutdown.clone()).await?;
    eprintln!(
        "switchyard gateway of {}: inbound {} dns {} metrics {}",
        args.cluster,
        running.inbound,
        running.dns.map_or("-".into(), |a| a.to_string()),
        running.metrics.map_or("-".into(), |a| a.to_string()),
    );
    shutdown.cancelled().await;
    running.stop().await;
    Ok(())
}

async fn run_hub(args: HubArgs, log_format: LogFormat) -> anyhow::Result<()> {
    init_logging(log_format, "info");
    let id = match args.id {
        Some(id) => id,
        None => id_from_hostname().ok_or_else(|| {
            anyhow::anyhow!("--id is required (this replica's raft ID), unless $HOSTNAME ends in a StatefulSet ordinal (hub-2 is replica 3)")
        })?,
    };
    let listen = args.raft.ok_or_else(|| {
        anyhow::anyhow!("--raft is required (where this replica listens for peers)")
    })?;
    let mut peers = cli::parse_peers(&args.peers)?;
    match peers.get(&id) {
        // An IP address must be the one listened on; a DNS name (a
        // StatefulSet pod's) is how peers reach this replica.
        Some(a)
            if a.parse::<SocketAddr>().is_ok()
                && !listen.ip().is_unspecified()
                && a != &listen.to_string() =>
        {
            anyhow::bail!("--peers says replica {id} is at {a}, but --raft is {listen}")
        }
        None if !args.join && !peers.is_empty() => {
            anyhow::bail!("--peers must include this replica ({id}={listen}), or use --join")
        }
        _ => {}
    }
    peers.entry(id).or_insert_with(|| listen.to_string());
    let config = switchyard::hub::app::HubConfig {
        lease: args.serve.lease()?,
        dns_config: args.serve.dns(),
        data_dir: args.data_dir,
        api: args.api,
        dns: args.dns,
        raft: Some(switchyard::hub::app::RaftOptions {
            id,
            listen,
            peers,
            join: args.join,
            snapshot_every: args.snapshot_every,
            fault_injection: args.enable_fault_injection,
            limits: switchyard::hub::trust::PeerLimits {
                max_connections: args.peer_max_connections,
                handshake_timeout: *args.peer_handshake_timeout,
            },
        }),
        tls: (!args.insecure).then(|| switchyard::hub::app::HubTls {
            sans: args.tls_san.clone(),
            ca_files: args.ca_cert.clone().zip(args.ca_key.clone()),
            agent_cert_ttl: *args.agent_cert_ttl,
        }),
    };
    let shutdown = stop_on_signal();
    let hub = switchyard::hub::app::start(config, shutdown.child_token()).await?;
    eprintln!(
        "switchyard hub replica {id}: api {} dns {} raft {listen}",
        hub.api_addr, hub.dns_addr
    );
    tokio::select! {
        () = shutdown.cancelled() => {
            hub.stop().await;
            Ok(())
        }
        () = hub.raft_stopped() => {
            hub.stop().await;
            anyhow::bail!(
                "replica {id}: the raft node stopped (the log above says why); exiting so that the replica is restarted"
            )
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
