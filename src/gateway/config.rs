//! The configuration stream from the hub: a hello, then each configuration
//! checked and applied whole (routes swapped atomically, listeners opened
//! first), or refused with the reason while the previous one stays in
//! force (and tried again, with backoff, until a newer one comes); either
//! way acknowledged. The last applied configuration is kept
//! on disk, so a gateway that restarts while the hub is away routes at
//! once. A lost stream is reopened, with backoff, on the next hub replica.
//! A configuration sent in parts is assembled first: nothing of it applies
//! before its last part arrived.

use super::outbound::Listeners;
use super::routes::{RouteTable, Via};
use super::Shared;
use crate::agent::stream::{connect, HubAuth};
use crate::proto::{self, gateway_service_client::GatewayServiceClient};
use crate::wire::{Assembler, MAX_API_MESSAGE};
use prost::Message as _;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// The first retry of a refused configuration; doubled up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the gateway tells the hub and where it keeps its last configuration.
pub struct Programming {
    pub hubs: String,
    pub auth: HubAuth,
    pub hello: proto::GatewayHello,
    pub outbound: super::routes::Outbound,
    pub cache: Option<PathBuf>,
    pub dns: Option<Arc<crate::dns::Catalog>>,
}

/// Applies `config`, or says why not (nothing changes then).
pub async fn apply(
    shared: &Arc<Shared>,
    listeners: &Listeners,
    programming: &Programming,
    config: &proto::GatewayConfig,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let table = RouteTable::build(config, &programming.outbound)?;
    let bound = listeners.bind(&table).await?;
    let table = Arc::new(table);
    let old = shared.table.swap(table.clone());
    listeners.apply(shared, &table, bound, shutdown);
    drain_removed(shared, &old, &table);
    if let Some(catalog) = &programming.dns {
        catalog.publish(&super::dns::backends(&table, &shared.cluster));
    }
    shared.metrics.config_version.set(table.version);
    if let Some(path) = &programming.cache {
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, config.encode_to_vec()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(error) = written {
            tracing::warn!(%error, path = %path.display(), "cannot keep the configuration on disk");
        }
    }
    tracing::info!(
        version = table.version,
        services = table.routes().count(),
        "configuration applied"
    );
    Ok(())
}

/// Connections to clusters (or services) the new table no longer routes
/// to finish on their own, up to the drain timeout.
fn drain_removed(shared: &Arc<Shared>, old: &RouteTable, new: &RouteTable) {
    for route in old.routes() {
        let timeout = shared.settings.drain_timeout;
        let Some(next) = new.route(&route.service) else {
            shared.registry.drain(&route.service, None, timeout);
            continue;
        };
        let kept: HashSet<&str> = next.clusters.iter().map(|c| c.cluster.as_str()).collect();
        for c in &route.clusters {
            if !kept.contains(c.cluster.as_str()) {
                shared
                    .registry
                    .drain(&route.service, Some(&c.cluster), timeout);
            }
        }
        // Inbound connections of a service this cluster no longer exports.
        let local_still = next.clusters.iter().any(|c| c.via == Via::Local) || next.exported_here;
        if route.exported_here && !local_still {
            shared
                .registry
                .drain(&route.service, Some(&shared.cluster), timeout);
        }
    }
}

/// The configuration kept on disk by an earlier run, if any.
pub fn cached(path: &std::path::Path) -> Option<proto::GatewayConfig> {
    let bytes = std::fs::read(path).ok()?;
    proto::GatewayConfig::decode(bytes.as_slice()).ok()
}

/// Follows the hub's configuration stream until shutdown.
pub async fn follow(
    shared: Arc<Shared>,
    listeners: Arc<Listeners>,
    programming: Programming,
    shutdown: CancellationToken,
) {
    let hubs = crate::agent::stream::Hubs::parse(&programming.hubs);
    let mut backoff = Duration::from_millis(250);
    for turn in 0usize.. {
        let hub = hubs.at(turn);
        let session = async {
            let channel = connect(hub, &programming.auth)
                .await
                .map_err(|e| e.to_string())?;
            let (tx, rx) = mpsc::channel(8);
            let hello = proto::GatewayRequest {
                kind: Some(proto::gateway_request::Kind::Hello(
                    programming.hello.clone(),
                )),
            };
            tx.send(hello)
                .await
                .map_err(|_| "stream closed".to_string())?;
            let mut configs = GatewayServiceClient::new(channel)
                .max_decoding_message_size(MAX_API_MESSAGE)
                .max_encoding_message_size(MAX_API_MESSAGE)
                .stream_config(ReceiverStream::new(rx))
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            // A refused configuration is tried again, with backoff, until
            // it applies or a newer one comes: what refused it may pass
            // (an address still held by a closing socket).
            let mut refused: Option<proto::GatewayConfig> = None;
            let mut retry = RETRY_FIRST;
            // A configuration may come in parts: applied once complete.
            let mut parts = Assembler::default();
            loop {
                let config = tokio::select! {
                    message = configs.message() => {
                        match message.map_err(|s| s.message().to_string())? {
                            Some(part) => match parts.push(part).map_err(|e| format!("configuration: {e}"))? {
                                Some(config) => {
                                    retry = RETRY_FIRST;
                                    config
                                }
                                None => continue,
                            },
                            None => break,
                        }
                    }
                    () = tokio::time::sleep(retry), if refused.is_some() => {
                        retry = (retry * 2).min(RETRY_MAX);
                        match refused.take() {
                            Some(config) => config,
                            None => continue,
                        }
                    }
                };
                let error = match apply(&shared, &listeners, &programming, &config, &shutdown).await
                {
                    Ok(()) => String::new(),
                    Err(reason) => {
                        tracing::warn!(version = config.version, reason, retry_in = ?retry, "configuration refused; the previous one stays");
                        shared.metrics.config_rejections.inc();
                        reason
                    }
                };
                backoff = Duration::from_millis(250);
                let ack = proto::GatewayRequest {
                    kind: Some(proto::gateway_request::Kind::Ack(proto::GatewayAck {
                        version: config.version,
                        nonce: config.nonce.clone(),
                        error: error.clone(),
                    })),
                };
                if !error.is_empty() {
                    refused = Some(config);
                }
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
            Ok::<(), String>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = session => {
                let why = result.err().unwrap_or_else(|| "closed by the hub".into());
                tracing::warn!(hub, why, retry_in = ?backoff, "configuration stream ended; routing on the last configuration");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
