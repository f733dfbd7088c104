//! The hub's gRPC services: the agent API (register, lease, export stream)
//! and the admin API (apply, get, weights). Writes become raft proposals;
//! reads come from the applied state.

use super::read;
use super::state::{applied_objects, Command};
use crate::model::{manifest, validate_cluster_id, ClusterSpec};
use crate::proto::{self, admin_service_server::AdminService, agent_service_server::AgentService};
use crate::wire::export_from_proto;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

pub use super::replica::Hub;

/// The agent API.
pub struct AgentApi(pub Hub);

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        req: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let r = req.into_inner();
        validate_cluster_id(&r.cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let spec = ClusterSpec {
            id: r.cluster.clone(),
            region: r.region,
            zone: r.zone,
            gateway_addresses: r.gateway_addresses,
        };
        let hub = &self.0;
        hub.renew_lease(&spec.id).await;
        let current = hub.state();
        let unchanged = current
            .clusters
            .get(&spec.id)
            .is_some_and(|c| c.spec == spec && c.reachable);
        if !unchanged {
            hub.propose(&Command::RegisterCluster { spec }).await?;
        }
        tracing::info!(cluster = %r.cluster, "agent registered");
        let lease = hub.leases().config();
        Ok(Response::new(proto::RegisterResponse {
            lease_ms: lease.ttl.as_millis() as u64,
            renew_ms: lease.renew.as_millis() as u64,
            applied_revision: hub
                .state()
                .export_revisions
                .get(&r.cluster)
                .copied()
                .unwrap_or(0),
        }))
    }

    async fn renew_lease(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseResponse>, Status> {
        let r = req.into_inner();
        let hub = &self.0;
        let known = hub.state().clusters.contains_key(&r.cluster);
        if known {
            hub.renew_lease(&r.cluster).await;
        }
        Ok(Response::new(proto::LeaseResponse {
            lease_ms: hub.leases().config().ttl.as_millis() as u64,
            known,
        }))
    }

    type WatchImportsStream =
        Pin<Box<dyn Stream<Item = Result<proto::ImportSet, Status>> + Send + 'static>>;

    async fn watch_imports(
        &self,
        req: Request<proto::WatchImportsRequest>,
    ) -> Result<Response<Self::WatchImportsStream>, Status> {
        let cluster = req.into_inner().cluster;
        validate_cluster_id(&cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(send_imports(self.0.clone(), cluster, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn relay_multi_cluster_services(
        &self,
        req: Request<proto::RelayRequest>,
    ) -> Result<Response<proto::RelayReply>, Status> {
        let r = req.into_inner();
        validate_cluster_id(&r.cluster).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Objects that do not parse are refused here; the rest go to the
        // state machine, which judges each one.
        let mut refused = Vec::new();
        let mut objects = Vec::new();
        for text in &r.objects {
            match manifest::parse(text).map(|mut v| v.pop()) {
                Ok(Some(manifest::Resource::MultiClusterService(m))) => objects.push(m),
                Ok(other) => refused.push(proto::RelayResult {
                    namespace: String::new(),
                    name: String::new(),
                    accepted: false,
                    reason: "Invalid".into(),
                    message: format!(
                        "not a MultiClusterService: {}",
                        other
                            .map(|o| o.describe())
                            .unwrap_or_else(|| "empty".into())
                    ),
                }),
                Err(e) => refused.push(proto::RelayResult {
                    namespace: String::new(),
                    name: String::new(),
                    accepted: false,
                    reason: "Invalid".into(),
                    message: e.to_string(),
                }),
            }
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let lines = self
            .0
            .propose(&Command::RelayMultiClusterServices {
                cluster: r.cluster,
                objects,
                now,
            })
            .await?;
        let mut results: Vec<proto::RelayResult> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<crate::hub::state::RelayResult>(l).ok())
            .map(|r| proto::RelayResult {
                namespace: r.namespace,
                name: r.name,
                accepted: r.accepted,
                reason: r.reason,
                message: r.message,
            })
            .collect();
        results.extend(refused);
        Ok(Response::new(proto::RelayReply { results }))
    }

    type StreamExportsStream =
        Pin<Box<dyn Stream<Item = Result<proto::ExportAck, Status>> + Send + 'static>>;

    async fn stream_exports(
        &self,
        req: Request<tonic::Streaming<proto::ExportUpdate>>,
    ) -> Result<Response<Self::StreamExportsStream>, Status> {
        let mut inbound = req.into_inner();
        let hub = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            hub.metrics().agents_connected.inc();
            let mut cluster = String::new();
            while let Some(msg) = inbound.next().await {
                let update = match msg {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::info!(cluster = %cluster, error = %e, "export stream ended");
                        break;
                    }
                };
                cluster = update.cluster.clone();
                let result = apply_update(&hub, update).await;
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
            hub.metrics().agents_connected.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Streams `cluster`'s import set whenever it changes, until the agent
/// goes away.
async fn send_imports(
    hub: Hub,
    cluster: String,
    tx: mpsc::Sender<Result<proto::ImportSet, Status>>,
) {
    let mut view = hub.watch_state();
    let mut last: Option<proto::ImportSet> = None;
    let mut last_backends = None;
    loop {
        let state = view.borrow_and_update().clone();
        // Backends change whenever anything a cluster imports does (exports,
        // weights, health, conflicts): skip the rest.
        let unchanged = last_backends
            .as_ref()
            .is_some_and(|b: &crate::model::ServiceMap<_>| b.ptr_eq(&state.backends));
        if !unchanged {
            let set = super::imports::import_set(&state, &cluster);
            let differs = last.as_ref().is_none_or(|l| {
                l.services != set.services || l.export_conditions != set.export_conditions
            });
            if differs {
                if tx.send(Ok(set.clone())).await.is_err() {
                    return;
                }
                last = Some(set);
            }
            last_backends = Some(state.backends.clone());
        }
        tokio::select! {
            () = tx.closed() => return,
            changed = view.changed() => if changed.is_err() { return },
        }
    }
}

async fn apply_update(hub: &Hub, u: proto::ExportUpdate) -> Result<proto::ExportAck, Status> {
    let mut upserts = Vec::with_capacity(u.upserts.len());
    for e in &u.upserts {
        upserts.push(
            export_from_proto(&u.cluster, e)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        );
    }
    let mut deletes = Vec::with_capacity(u.deletes.len());
    for d in &u.deletes {
        deletes.push(
            crate::model::ServiceKey::new(&d.namespace, &d.name)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        );
    }
    let cmd = Command::SyncExports {
        cluster: u.cluster.clone(),
        revision: u.revision,
        full: u.full_resync,
        upserts,
        deletes,
    };
    hub.propose(&cmd).await?;
    tracing::debug!(cluster = %u.cluster, revision = u.revision, full = u.full_resync, "exports applied");
    Ok(proto::ExportAck {
        revision: u.revision,
    })
}

/// The admin API.
pub struct AdminApi(pub Hub);

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn apply(
        &self,
        req: Request<proto::ApplyRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        let text = req.into_inner().manifest;
        let resources =
            manifest::parse(&text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let objects =
            applied_objects(resources).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let results = self.0.propose(&Command::Apply { objects, now }).await?;
        Ok(Response::new(proto::ApplyResponse { results }))
    }

    async fn get(
        &self,
        req: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let r = req.into_inner();
        if r.consistent {
            self.0.read_barrier().await?;
        }
        let json = read::get(&self.0.state(), &r.kind, &r.name).map_err(|e| match e {
            read::ReadError::NotFound(_) => Status::not_found(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        })?;
        Ok(Response::new(proto::GetResponse {
            json: json.to_string(),
        }))
    }

    async fn set_weights(
        &self,
        req: Request<proto::SetWeightsRequest>,
    ) -> Result<Response<proto::SetWeightsResponse>, Status> {
        let r = req.into_inner();
        let mcs = crate::model::ServiceKey::new(&r.namespace, &r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.weights.is_empty() {
            return Err(Status::invalid_argument(
                "no weights given; write CLUSTER=WEIGHT",
            ));
        }
        let weights = r.weights.into_iter().collect();
        let lines = self
            .0
            .propose(&Command::SetWeights { mcs, weights })
            .await?;
        Ok(Response::new(proto::SetWeightsResponse {
            result: lines.join("\n"),
        }))
    }

    async fn status(
        &self,
        _req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let json = self.0.cluster_status().await.to_string();
        Ok(Response::new(proto::StatusResponse { json }))
    }

    async fn change_member(
        &self,
        req: Request<proto::MemberChangeRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        let r = req.into_inner();
        let address = if r.remove {
            String::new()
        } else {
            r.address
                .parse::<std::net::SocketAddr>()
                .map_err(|_| {
                    Status::invalid_argument(format!(
                        "replica {}: raft address {:?} is not IP:PORT",
                        r.id, r.address
                    ))
                })?
                .to_string()
        };
        let result = self.0.change_member(r.id, &address).await?;
        Ok(Response::new(proto::MemberChangeResponse { result }))
    }

    async fn inject_fault(
        &self,
        req: Request<proto::FaultRequest>,
    ) -> Result<Response<proto::FaultResponse>, Status> {
        let peers = req.into_inner().isolate_from.into_iter().collect();
        self.0.isolate(peers)?;
        Ok(Response::new(proto::FaultResponse {}))
    }
}
