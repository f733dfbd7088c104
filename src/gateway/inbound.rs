//! The inbound listener: TLS 1.3 from other clusters' gateways only (a
//! gateway certificate of the ClusterSet is required), the SNI naming the
//! service and port; the connection goes straight to a ready local endpoint
//! of a service this cluster exports. Anything else is refused and counted.

use super::metrics::{DirectionLabels, RouteLabels};
use super::{sni, Shared};
use crate::identity::Identity;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Serves the inbound listener until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            conn = listener.accept() => conn,
        };
        match conn {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(reason) = handle(&shared, stream).await {
                        tracing::info!(%peer, reason, "inbound connection refused");
                        shared.metrics.refuse(reason);
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "inbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(shared: &Arc<Shared>, stream: TcpStream) -> Result<(), &'static str> {
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls_server.load_full());
    let tls = match tokio::time::timeout(
        shared.settings.connect_timeout,
        acceptor.accept(super::proxy::wire(stream)),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        _ => {
            shared
                .metrics
                .tls_handshake_failures
                .get_or_create(&DirectionLabels {
                    direction: "inbound".into(),
                })
                .inc();
            return Err("tls_handshake");
        }
    };
    let (_, conn) = tls.get_ref();
    match super::tls::peer_identity(conn.peer_certificates()) {
        Some(Identity::Gateway(_)) => {}
        _ => return Err("not_a_gateway"),
    }
    let (service, port) = conn
        .server_name()
        .and_then(|name| sni::parse(name, &shared.zone))
        .ok_or("unknown_sni")?;
    let table = shared.table.load_full();
    let route = table.route(&service).cloned().ok_or("not_exported")?;
    if !route.exported_here || !route.ports.contains(&port) {
        return Err("not_exported");
    }
    let mut attempts = 0;
    let upstream = shared
        .connect_local(&route, port, "inbound", &mut attempts)
        .await
        .ok_or("no_endpoints")?;
    let labels = RouteLabels {
        service: service.to_string(),
        cluster: shared.cluster.clone(),
        direction: "inbound".into(),
    };
    shared.metrics.connections.get_or_create(&labels).inc();
    let active = shared
        .metrics
        .active
        .get_or_create(&DirectionLabels {
            direction: "inbound".into(),
        })
        .clone();
    active.inc();
    let tracking = shared.registry.track(&service, &shared.cluster);
    let bytes = super::proxy::pipe(tls, upstream, &tracking.cancel).await;
    active.dec();
    shared.metrics.bytes.get_or_create(&labels).inc_by(bytes);
    Ok(())
}
