//! Stand-in pods: one small HTTP server per endpoint address and port,
//! answering `GET /` with JSON that names its cluster, service and pod, so a
//! request on a DNS answer shows which cluster served it.

use anyhow::Context;
use axum::routing::get;
use axum::Json;
use serde_json::json;
use std::net::SocketAddr;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Who a backend is.
#[derive(Debug, Clone)]
pub struct BackendIdentity {
    pub cluster: String,
    pub service: String,
    pub pod: String,
}

/// Binds `addr` and serves until shutdown.
pub async fn spawn(
    tasks: &mut JoinSet<()>,
    addr: SocketAddr,
    who: BackendIdentity,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for backend {} of {} in {}",
            who.pod, who.service, who.cluster
        )
    })?;
    let body = json!({"cluster": who.cluster, "service": who.service, "pod": who.pod, "address": addr.to_string()});
    let router = axum::Router::new().route("/", get(move || async move { Json(body) }));
    tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(%addr, error = %e, "backend server failed");
        }
    });
    Ok(())
}
