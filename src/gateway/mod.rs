//! A cluster's east-west gateway: a tokio + rustls TCP proxy programmed by
//! the hub.
//!
//! - **Outbound** (`outbound`): one listener per imported service port, on
//!   the address the hub allocated in this cluster; each new connection goes
//!   to the cluster the weights pick: a ready local endpoint, or that
//!   cluster's gateway over mutual TLS with the service's SNI (`upstream`).
//! - **Inbound** (`inbound`): TLS 1.3 from other gateways only; the SNI
//!   (`sni`) names the service and port; the connection goes straight to a
//!   ready local endpoint of a service this cluster exports.
//! - **Configuration** (`config`): the hub's versioned stream, each
//!   configuration checked and applied whole or refused (`routes`);
//!   established connections are never touched by a new one; connections to
//!   a cluster that lost its share drain for up to `drain_timeout`.
//! - **Outlier detection** (`outliers`), **DNS** for the cluster (`dns`),
//!   **metrics** (`metrics`), **TLS** (`tls`), the connection registry
//!   (`proxy`).
//!
//! With the hub away the gateway routes on its last configuration (kept on
//! disk, too).

pub mod config;
pub mod copy;
pub mod dns;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod outliers;
pub mod proxy;
pub mod routes;
pub mod sni;
pub mod tls;
pub mod upstream;

use crate::agent::stream::HubAuth;
use crate::identity::tls::ClientCredentials;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Limits of connection handling.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Per attempt, TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Upstream attempts per connection (endpoints and clusters).
    pub max_attempts: usize,
    /// How long a drained cluster's connections may go on.
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            max_attempts: 3,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What every connection handler shares.
pub struct Shared {
    /// This cluster's ID.
    pub cluster: String,
    /// The ClusterSet zone (for SNI).
    pub zone: String,
    /// The routes in force.
    pub table: ArcSwap<routes::RouteTable>,
    pub outliers: outliers::Outliers,
    pub metrics: Arc<metrics::GatewayMetrics>,
    /// TLS towards other gateways, and for the inbound listener; swapped
    /// when the gateway's certificate is renewed.
    pub tls_client: ArcSwap<rustls::ClientConfig>,
    pub tls_server: ArcSwap<rustls::ServerConfig>,
    pub registry: Arc<proxy::Registry>,
    pub settings: Settings,
}

/// How to run a gateway.
#[derive(Clone)]
pub struct GatewayOptions {
    pub cluster: String,
    /// Hub API addresses, comma-separated.
    pub hub: String,
    /// The gateway's credentials (identity `.../cluster/<id>/gateway`),
    /// renewed in place.
    pub credentials: tokio::sync::watch::Receiver<ClientCredentials>,
    /// Where the inbound TLS listener binds.
    pub inbound: SocketAddr,
    /// Where other gateways reach it (HOST:PORT); `inbound` by default.
    pub advertise: Option<String>,
    /// IPv4 CIDR for outbound listener addresses (port mode: for the
    /// services' ClusterSetIPs).
    pub outbound_cidr: String,
    /// Port mode (a gateway in a pod): the range of listener ports
    /// (`FIRST-LAST`) and the address the listeners bind.
    pub outbound_ports: Option<(String, std::net::IpAddr)>,
    /// Cluster-local ClusterSet DNS.
    pub dns: Option<SocketAddr>,
    pub dns_config: crate::dns::DnsConfig,
    /// `/metrics`.
    pub metrics: Option<SocketAddr>,
    pub settings: Settings,
    pub outliers: outliers::OutlierConfig,
    /// Where to keep the last applied configuration.
    pub cache: Option<PathBuf>,
}

/// A started gateway.
pub struct RunningGateway {
    pub inbound: SocketAddr,
    pub dns: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    tasks: JoinSet<()>,
    listeners: Arc<outbound::Listeners>,
    shutdown: CancellationToken,
}

impl RunningGateway {
    /// Stops listening; open connections are dropped with the runtime.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.tasks.join_next().await.is_some() {}
            self.listeners.closed().await;
        })
        .await;
        self.tasks.abort_all();
    }
}

fn tls_configs(
    c: &ClientCredentials,
) -> anyhow::Result<(Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>)> {
    let id = c
        .identity
        .as_ref()
        .context("the gateway has no certificate")?;
    Ok((
        tls::client_config(&c.ca_pem, id)?,
        tls::server_config(&c.ca_pem, id)?,
    ))
}

/// `/readyz`: ready once a configuration is in force (from the hub or
/// the one kept on disk), so that a Service does not send clients to a
/// replica that has no listeners yet.
pub fn readiness(table: &routes::RouteTable) -> (axum::http::StatusCode, String) {
    if table.version > 0 {
        (
            axum::http::StatusCode::OK,
            format!("configuration {} in force\n", table.version),
        )
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no configuration yet\n".to_string(),
        )
    }
}

/// Starts a gateway: binds its listeners, follows the hub, serves DNS and
/// metrics.
pub async fn start(
    options: GatewayOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningGateway> {
    crate::model::validate_cluster_id(&options.cluster)
        .map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
    let outbound = routes::Outbound {
        addresses: crate::hub::state::cidr_hosts(&options.outbound_cidr)
            .map_err(|e| anyhow::anyhow!("--outbound-cidr: {e}"))?,
        ports: match &options.outbound_ports {
            Some((range, bind)) => Some((
                crate::hub::state::port_range(range)
                    .map_err(|e| anyhow::anyhow!("--outbound-ports: {e}"))?,
                *bind,
            )),
            None => None,
        },
    };
    let (tls_client, tls_server) = tls_configs(&options.credentials.borrow())?;
    let metrics = Arc::new(metrics::GatewayMetrics::new());
    let shared = Arc::new(Shared {
        cluster: options.cluster.clone(),
        zone: options.dns_config.zone.clone(),
        table: ArcSwap::from_pointee(routes::RouteTable::default()),
        outliers: outliers::Outliers::new(options.outliers),
        metrics: metrics.clone(),
        tls_client: ArcSwap::from(tls_client),
        tls_server: ArcSwap::from(tls_server),
        registry: Arc::new(proxy::Registry::default()),
        settings: options.settings,
    });
    let mut tasks = JoinSet::new();

    let inbound_listener = tokio::net::TcpListener::bind(options.inbound)
        .await
        .with_context(|| format!("cannot listen on {} (--inbound)", options.inbound))?;
    let inbound_addr = inbound_listener.local_addr()?;
    tasks.spawn(inbound::serve(
        shared.clone(),
        inbound_listener,
        shutdown.child_token(),
    ));

    // Certificates renewed: new TLS settings for new connections.
    {
        let shared = shared.clone();
        let mut creds = options.credentials.clone();
        let stop = shutdown.child_token();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = creds.changed() => if changed.is_err() { return },
                }
                match tls_configs(&creds.borrow_and_update()) {
                    Ok((client, server)) => {
                        shared.tls_client.store(client);
                        shared.tls_server.store(server);
                        tracing::info!("gateway certificate renewed");
                    }
                    Err(error) => tracing::warn!(%error, "cannot use the renewed certificate"),
                }
            }
        });
    }

    let dns_metrics = Arc::new(crate::metrics::Metrics::dns_only());
    let (catalog, dns_addr) = match options.dns {
        Some(addr) => {
            let catalog = Arc::new(crate::dns::Catalog::new(options.dns_config.clone()));
            let (bound, task) = crate::dns::serve(
                catalog.clone(),
                addr,
                dns_metrics.clone(),
                shutdown.child_token(),
            )
            .await
            .with_context(|| format!("cannot serve DNS on {addr}"))?;
            tasks.spawn(async move {
                let _ = task.await;
            });
            (Some(catalog), Some(bound))
        }
        None => (None, None),
    };

    let listeners = Arc::new(outbound::Listeners::default());
    let programming = config::Programming {
        hubs: options.hub.clone(),
        auth: HubAuth::Tls(options.credentials.clone()),
        hello: crate::proto::GatewayHello {
            cluster: options.cluster.clone(),
            inbound: options
                .advertise
                .clone()
                .unwrap_or_else(|| inbound_addr.to_string()),
            outbound_cidr: options.outbound_cidr.clone(),
            outbound_ports: options
                .outbound_ports
                .as_ref()
                .map(|(range, _)| range.clone())
                .unwrap_or_default(),
            max_part_bytes: crate::wire::PART_BYTES as u32,
        },
        outbound,
        cache: options.cache.clone(),
        dns: catalog,
    };
    // Static stability: route on the last configuration until the hub speaks.
    if let Some(cached) = options.cache.as_deref().and_then(config::cached) {
        match config::apply(&shared, &listeners, &programming, &cached, &shutdown).await {
            Ok(()) => tracing::info!(
                version = cached.version,
                "routing on the configuration kept on disk"
            ),
            Err(reason) => tracing::warn!(reason, "the configuration kept on disk is not usable"),
        }
    }
    tasks.spawn(config::follow(
        shared.clone(),
        listeners.clone(),
        programming,
        shutdown.child_token(),
    ));

    let metrics_addr = match options.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            let bound = listener.local_addr()?;
            let (gw, dns) = (metrics.clone(), dns_metrics.clone());
            let table = shared.clone();
            let router = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let (gw, dns) = (gw.clone(), dns.clone());
                        async move { gw.encode(&dns) }
                    }),
                )
                .route(
                    "/readyz",
                    axum::routing::get(move || {
                        let shared = table.clone();
                        async move { readiness(&shared.table.load()) }
                    }),
                );
            let stop = shutdown.child_token();
            tasks.spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            });
            Some(bound)
        }
        None => None,
    };
    tracing::info!(cluster = %options.cluster, inbound = %inbound_addr, dns = ?dns_addr, "gateway started");
    Ok(RunningGateway {
        inbound: inbound_addr,
        dns: dns_addr,
        metrics: metrics_addr,
        shared,
        tasks,
        listeners,
        shutdown,
    })
}
