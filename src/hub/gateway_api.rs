//! The hub's side of `GatewayService.StreamConfig`: registers a gateway
//! from its hello, streams its routes whenever they change (a new version,
//! the hub's applied index, each time, with a fresh nonce), and records
//! what was offered and what the gateway applied or refused, at most twice
//! a second per gateway (a raft write each).

use super::api::Hub;
use super::gateways;
use super::state::Command;
use crate::identity::tls::peer_identity;
use crate::model::validate_cluster_id;
use crate::proto::{self, gateway_service_server::GatewayService};
use crate::wire::{check_size, part_budget, split_by_size};
use prost::Message as _;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

/// The gateway API.
pub struct GatewayApi(pub Hub);

/// Acknowledgements are recorded at most this often per gateway.
const ACK_INTERVAL: Duration = Duration::from_millis(500);

/// `config` in parts of at most `part_bytes` encoded bytes each (a route
/// larger than that alone in its part), its version and nonce on every
/// part and `more` on all but the last. One part when it fits.
pub fn into_parts(config: proto::GatewayConfig, part_bytes: usize) -> Vec<proto::GatewayConfig> {
    let proto::GatewayConfig {
        version,
        nonce,
        services,
        ..
    } = config;
    let header = proto::GatewayConfig {
        version,
        nonce: nonce.clone(),
        services: Vec::new(),
        more: true,
    }
    .encoded_len();
    let runs = split_by_size(services, part_bytes.saturating_sub(header));
    let count = runs.len();
    runs.into_iter()
        .enumerate()
        .map(|(i, services)| proto::GatewayConfig {
            version,
            nonce: nonce.clone(),
            services,
            more: i + 1 < count,
        })
        .collect()
}

#[tonic::async_trait]
impl GatewayService for GatewayApi {
    type StreamConfigStream =
        Pin<Box<dyn Stream<Item = Result<proto::GatewayConfig, Status>> + Send + 'static>>;

    async fn stream_config(
        &self,
        req: Request<tonic::Streaming<proto::GatewayRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let caller = peer_identity(&req);
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(proto::GatewayRequest {
                kind: Some(proto::gateway_request::Kind::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the stream must open with a hello",
                ))
            }
        };
        validate_cluster_id(&hello.cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let hub = self.0.clone();
        hub.authorize_gateway(caller.as_ref(), &hello.cluster)?;
        let known = hub.state().gateways.get(&hello.cluster).cloned();
        if known.as_ref().is_none_or(|g| {
            g.inbound != hello.inbound
                || g.outbound_cidr != hello.outbound_cidr
                || g.outbound_ports != hello.outbound_ports
        }) {
            hub.propose(&Command::RegisterGateway {
                cluster: hello.cluster.clone(),
                inbound: hello.inbound.clone(),
                outbound_cidr: hello.outbound_cidr.clone(),
                outbound_ports: hello.outbound_ports.clone(),
            })
            .await?;
        }
        tracing::info!(cluster = %hello.cluster, inbound = %hello.inbound, "gateway connected");
        let (tx, rx) = mpsc::channel(4);
        let part_bytes = part_budget(hello.max_part_bytes);
        tokio::spawn(serve(hub, hello.cluster, part_bytes, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn serve(
    hub: Hub,
    cluster: String,
    part_bytes: Option<usize>,
    mut inbound: tonic::Streaming<proto::GatewayRequest>,
    tx: mpsc::Sender<Result<proto::GatewayConfig, Status>>,
) {
    let mut view = hub.watch_state();
    let mut last: Option<Vec<proto::GatewayRoute>> = None;
    let mut last_backends: Option<crate::model::ServiceMap<crate::backends::ServiceBackends>> =
        None;
    let mut last_gateways = None;
    // Where the gateway stands, as this stream knows it, and whether that
    // has changed since it was last recorded in the state.
    let known = hub.state().gateways.get(&cluster).cloned();
    let mut offered = known.as_ref().map_or(0, |g| g.offered_version);
    let mut applied = known.as_ref().map_or(0, |g| g.applied_version);
    let mut rejected = known.and_then(|g| g.rejected);
    let mut dirty = false;
    let mut recorded = tokio::time::Instant::now() - ACK_INTERVAL;
    loop {
        let state = view.borrow_and_update().clone();
        let unchanged = last_backends
            .as_ref()
            .is_some_and(|b| b.ptr_eq(&state.backends))
            && last_gateways.as_ref() == Some(&gateways::layout(&state));
        if !unchanged {
            let routes = gateways::routes(&state, &cluster);
            if last.as_ref() != Some(&routes) {
                let config = proto::GatewayConfig {
                    version: state.applied_index,
                    nonce: crate::identity::hex(&rand::random::<[u8; 8]>()),
                    services: routes.clone(),
                    more: false,
                };
                let messages = match part_bytes {
                    Some(budget) => into_parts(config, budget),
                    None => {
                        if let Err(e) = check_size(|| "the gateway configuration".into(), &config) {
                            tracing::warn!(%cluster, bytes = e.bytes, limit = e.limit, "configuration too large for a gateway that takes no parts; ending its stream");
                            let _ = tx
                                .send(Err(Status::resource_exhausted(format!(
                                    "{e}; upgrade the gateway: gateways that ask for parts (GatewayHello.max_part_bytes) get any size"
                                ))))
                                .await;
                            return;
                        }
                        vec![config]
                    }
                };
                for message in messages {
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                offered = state.applied_index;
                dirty = true;
                last = Some(routes);
            }
            last_backends = Some(state.backends.clone());
            last_gateways = Some(gateways::layout(&state));
        }
        let flush_at = recorded + ACK_INTERVAL;
        tokio::select! {
            () = tx.closed() => return,
            changed = view.changed() => if changed.is_err() { return },
            msg = inbound.message() => match msg {
                Ok(Some(proto::GatewayRequest { kind: Some(proto::gateway_request::Kind::Ack(ack)) })) => {
                    if ack.error.is_empty() {
                        applied = applied.max(ack.version);
                        if rejected.as_ref().is_some_and(|(v, _)| *v <= ack.version) {
                            rejected = None;
                        }
                    } else {
                        tracing::warn!(%cluster, version = ack.version, error = %ack.error, "gateway refused a configuration");
                        rejected = Some((ack.version, ack.error));
                    }
                    dirty = true;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    tracing::info!(%cluster, "gateway disconnected");
                    return;
                }
            },
            () = tokio::time::sleep_until(flush_at), if dirty => {
                dirty = false;
                recorded = tokio::time::Instant::now();
                let now_unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let cmd = Command::GatewayStatus {
                    cluster: cluster.clone(),
                    offered_version: offered,
                    applied_version: applied,
                    rejected: rejected.clone(),
                    now_unix_ms,
                };
                if let Err(status) = hub.propose(&cmd).await {
                    tracing::debug!(%status, "cannot record a gateway's status; retrying");
                    dirty = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_in_parts_keeps_version_and_nonce_and_adds_up() {
        let config = proto::GatewayConfig {
            version: 12,
            nonce: "abc".into(),
            services: (0..30)
                .map(|i| proto::GatewayRoute {
                    namespace: "app".into(),
                    name: format!("s{i}"),
                    listener: format!("127.0.1.{i}"),
                    ..Default::default()
                })
                .collect(),
            more: false,
        };
        let parts = into_parts(config.clone(), 120);
        assert!(parts.len() > 5, "{} parts", parts.len());
        let mut assembler = crate::wire::Assembler::default();
        let mut whole = None;
        for (i, p) in parts.iter().enumerate() {
            assert!(
                p.encoded_len() <= 120,
                "part {i}: {} bytes",
                p.encoded_len()
            );
            assert_eq!((p.version, p.nonce.as_str()), (12, "abc"));
            assert_eq!(p.more, i + 1 < parts.len());
            whole = assembler.push(p.clone()).unwrap();
        }
        assert_eq!(whole, Some(config.clone()));
        assert_eq!(
            into_parts(config.clone(), crate::wire::PART_BYTES),
            [config]
        );
    }
}
