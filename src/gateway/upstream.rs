//! Opening the upstream side of a connection: the cluster the weights pick
//! first (a local endpoint, or that cluster's gateway over mutual TLS with
//! the service's SNI), then, when a connect fails, another endpoint or
//! another cluster, up to a bounded number of attempts. Every failure feeds
//! outlier detection; ejected upstreams are skipped.

use super::metrics::RouteLabels;
use super::outliers::Verdict;
use super::routes::{Route, Via};
use super::{sni, Shared};
use crate::identity::Identity;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An upstream connection: plain to a local endpoint, TLS to a gateway.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<super::proxy::Wire>>),
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why no upstream could be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{service}: no cluster receives its traffic")]
    NoRoute { service: String },
    #[error("{service}: every upstream tried failed or is ejected ({attempts} attempts)")]
    Exhausted { service: String, attempts: usize },
}

impl Shared {
    fn labels(&self, route: &Route, cluster: &str, direction: &str) -> RouteLabels {
        RouteLabels {
            service: route.service.to_string(),
            cluster: cluster.to_string(),
            direction: direction.to_string(),
        }
    }

    /// An attempt begun at `started` failed.
    fn failed(
        &self,
        route: &Route,
        cluster: &str,
        direction: &str,
        addr: &SocketAddr,
        started: tokio::time::Instant,
        why: &str,
    ) {
        let labels = self.labels(route, cluster, direction);
        self.metrics.connect_failures.get_or_create(&labels).inc();
        if let Verdict::Ejected(period) = self.outliers.failure(addr, started) {
            self.metrics.ejections.get_or_create(&labels).inc();
            tracing::warn!(service = %route.service, cluster, upstream = %addr, ?period, why, "upstream ejected");
        } else {
            tracing::debug!(service = %route.service, cluster, upstream = %addr, why, "upstream connect failed");
        }
    }

    async fn tcp(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Connects to one of the route's ready local endpoints (inbound
    /// connections, and outbound ones the weights keep local).
    pub async fn connect_local(
        &self,
        route: &Route,
        port: u16,
        direction: &str,
        attempts: &mut usize,
    ) -> Option<TcpStream> {
        for addr in route.local_targets(port) {
            if *attempts >= self.settings.max_attempts {
                return None;
            }
            if self.outliers.is_ejected(&addr) {
                continue;
            }
            *attempts += 1;
            let started = tokio::time::Instant::now();
            match self.tcp(addr).await {
                Ok(stream) => {
                    self.outliers.success(&addr);
                    return Some(stream);
                }
                Err(e) => self.failed(
                    route,
                    &self.cluster,
                    direction,
                    &addr,
                    started,
                    &e.to_string(),
                ),
            }
        }
        None
    }

    async fn connect_gateway(
        &self,
        route: &Route,
        port: u16,
        cluster: &str,
        gateway: &str,
    ) -> Result<(Upstream, SocketAddr), (Option<SocketAddr>, String)> {
        let addr = tokio::net::lookup_host(gateway)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or((None, format!("cannot resolve {gateway}")))?;
        if self.outliers.is_ejected(&addr) {
            return Err((None, "ejected".into()));
        }
        let tcp = self
            .tcp(addr)
            .await
            .map_err(|e| (Some(addr), e.to_string()))?;
        let name =
            rustls_pki_types::ServerName::try_from(sni::format(&route.service, port, &self.zone))
                .map_err(|e| (None, e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls_client.load_full());
        let tls = match tokio::time::timeout(
            self.settings.connect_timeout,
            connector.connect(name, super::proxy::wire(tcp)),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.metrics
                    .tls_handshake_failures
                    .get_or_create(&super::metrics::DirectionLabels {
                        direction: "outbound".into(),
                    })
                    .inc();
                return Err((Some(addr), format!("TLS: {e}")));
            }
            Err(_) => return Err((Some(addr), "TLS handshake timed out".into())),
        };
        // The chain was checked; now that the peer is the cluster meant.
        let peer = super::tls::peer_identity(tls.get_ref().1.peer_certificates());
        if peer != Some(Identity::Gateway(cluster.to_string())) {
            return Err((
                Some(addr),
                format!("the peer is {peer:?}, not the gateway of {cluster}"),
            ));
        }
        Ok((Upstream::Tls(Box::new(tls)), addr))
    }

    /// Opens the upstream for an outbound connection to `route` port
    /// `port`; returns it with the cluster it reached.
    pub async fn connect_outbound(
        &self,
        route: &Route,
        port: u16,
    ) -> Result<(Upstream, String), UpstreamError> {
        let order = route.clusters_for_connection();
        if order.is_empty() {
            return Err(UpstreamError::NoRoute {
                service: route.service.to_string(),
            });
        }
        let mut attempts = 0;
        for target in order {
            if attempts >= self.settings.max_attempts {
                break;
            }
            match &target.via {
                Via::Local => {
                    if let Some(s) = self
                        .connect_local(route, port, "outbound", &mut attempts)
                        .await
                    {
                        return Ok((Upstream::Plain(s), target.cluster.clone()));
                    }
                }
                Via::Gateway(gateway) => {
                    let started = tokio::time::Instant::now();
                    match self
                        .connect_gateway(route, port, &target.cluster, gateway)
                        .await
                    {
                        Ok((up, addr)) => {
                            self.outliers.success(&addr);
                            return Ok((up, target.cluster.clone()));
                        }
                        Err((addr, why)) => {
                            if let Some(addr) = addr {
                                attempts += 1;
                                self.failed(
                                    route,
                                    &target.cluster,
                                    "outbound",
                                    &addr,
                                    started,
                                    &why,
                                );
                            }
                        }
                    }
                }
            }
        }
        Err(UpstreamError::Exhausted {
            service: route.service.to_string(),
            attempts,
        })
    }
}
