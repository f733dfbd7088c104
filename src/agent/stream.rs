//! The agent's session with the hub: register, renew the lease, and stream
//! exports. Every (re)connection starts with a full resync, then sends
//! deltas with increasing revisions; any failure ends the session and a new
//! one starts after a backoff.
//!
//! A full resync goes out in parts of at most [`AgentConfig::part_bytes`]
//! encoded bytes ([`resync_parts`]): the same revision on each, `more` on
//! all but the last. The hub acks the revision once the last part is
//! applied; a session that ends before that starts the resync over. A
//! delta larger than one part is sent as a full resync in parts instead.

use super::watch::Desired;
use crate::identity::tls::ClientCredentials;
use crate::model::{ClusterSpec, Export, ServiceKey};
use crate::proto::{self, agent_service_client::AgentServiceClient};
use crate::wire::{export_to_proto, field_len, TooLarge, MAX_API_MESSAGE, PART_BYTES};
use prost::Message as _;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How an agent reaches its hub.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Hub API address, `host:port` or a URL; several replicas separated
    /// by commas, tried in turn.
    pub hub: String,
    /// What the agent registers.
    pub spec: ClusterSpec,
    /// How it authenticates.
    pub auth: HubAuth,
    /// The largest part of a full resync, in encoded bytes
    /// ([`PART_BYTES`] unless a test wants many parts).
    pub part_bytes: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            hub: String::new(),
            spec: ClusterSpec::default(),
            auth: HubAuth::default(),
            part_bytes: PART_BYTES,
        }
    }
}

/// How an agent authenticates to the hub: not at all (a hub started with
/// `--insecure`), or with its cluster's certificate, which renewals
/// replace in place (new connections use the latest).
#[derive(Debug, Clone, Default)]
pub enum HubAuth {
    #[default]
    Insecure,
    Tls(watch::Receiver<ClientCredentials>),
}

impl HubAuth {
    /// The credentials to connect with now.
    pub fn current(&self) -> Option<ClientCredentials> {
        match self {
            HubAuth::Insecure => None,
            HubAuth::Tls(rx) => Some(rx.borrow().clone()),
        }
    }
}

/// Why a session with the hub ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to hub {hub}: {source}")]
    Connect {
        hub: String,
        source: tonic::transport::Error,
    },
    #[error("hub refused: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("the hub no longer knows this cluster; registering again")]
    Forgotten,
    #[error("export stream closed by the hub")]
    Closed,
    #[error("the hub did not renew the lease within {0:?}")]
    RenewTimeout(Duration),
    #[error("cannot send the exports: {0}")]
    TooLarge(#[from] TooLarge),
}

/// The hub replicas to talk to (`--hub`, comma-separated), tried in turn:
/// after a failed session the next one.
#[derive(Clone, Debug, Default)]
pub struct Hubs(Vec<String>);

impl Hubs {
    /// The addresses in `list`, blanks dropped.
    pub fn parse(list: &str) -> Self {
        Hubs(
            list.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    /// The replica for attempt `turn`, round and round ("" when the list
    /// is empty: connecting to it fails with that address named).
    pub fn at(&self, turn: usize) -> &str {
        self.0
            .get(turn % self.0.len().max(1))
            .map_or("", String::as_str)
    }

    /// Every replica, once.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// How many replicas the list names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the list names none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An agent API client on `channel`, with the API's message size limits.
pub fn agent_client(channel: Channel) -> AgentServiceClient<Channel> {
    AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_API_MESSAGE)
        .max_encoding_message_size(MAX_API_MESSAGE)
}

/// Connects to a hub's API, with TLS when `auth` has credentials.
pub async fn connect(hub: &str, auth: &HubAuth) -> Result<Channel, SessionError> {
    let endpoint =
        crate::identity::tls::endpoint(hub, auth.current().as_ref()).map_err(|source| {
            SessionError::Connect {
                hub: hub.to_string(),
                source,
            }
        })?;
    endpoint
        .connect()
        .await
        .map_err(|source| SessionError::Connect {
            hub: hub.to_string(),
            source,
        })
}

/// Runs sessions until shutdown, reconnecting with backoff (250 ms doubling
/// to 5 s). `acked` gets the exports as of each revision the hub
/// acknowledged (committed and applied).
pub async fn run(
    config: AgentConfig,
    desired: watch::Receiver<Desired>,
    acked: watch::Sender<Desired>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    let mut revision = 0u64;
    let hubs = Hubs::parse(&config.hub);
    let mut turn = 0usize;
    loop {
        let started = tokio::time::Instant::now();
        // With several replicas, move to the next one after a failed session.
        let mut one = config.clone();
        one.hub = hubs.at(turn).to_string();
        let mut registered = false;
        let result = session(
            &one,
            desired.clone(),
            &acked,
            &shutdown,
            &mut revision,
            &mut registered,
        )
        .await;
        // A session that had been working ended: try the next replica at
        // once (the lease runs on meanwhile); back off only when sessions
        // keep failing.
        let at_once = registered && hubs.len() > 1 && started.elapsed() >= Duration::from_secs(1);
        match result {
            Ok(()) => return,
            Err(e) => {
                let retry_in = if at_once { Duration::ZERO } else { backoff };
                tracing::warn!(cluster = %config.spec.id, hub = %one.hub, error = %e, ?retry_in, "hub session ended");
                turn += 1;
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(250);
        }
        if at_once {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One session; `registered` is set once the hub took the registration.
async fn session(
    config: &AgentConfig,
    mut desired: watch::Receiver<Desired>,
    acked: &watch::Sender<Desired>,
    shutdown: &CancellationToken,
    revision: &mut u64,
    registered: &mut bool,
) -> Result<(), SessionError> {
    let channel = connect(&config.hub, &config.auth).await?;
    let mut client = agent_client(channel);
    let spec = &config.spec;
    let reg = client
        .register(proto::RegisterRequest {
            cluster: spec.id.clone(),
            region: spec.region.clone(),
            zone: spec.zone.clone(),
            gateway_addresses: spec.gateway_addresses.clone(),
        })
        .await?
        .into_inner();
    tracing::info!(cluster = %spec.id, lease_ms = reg.lease_ms, "registered with hub");
    *registered = true;

    let renew_every = Duration::from_millis(reg.renew_ms.clamp(50, 60_000));
    // A failed renewal ends the session as surely as a broken stream: the
    // next session renews through another replica.
    let renewer = renew_loop(client.clone(), spec.id.clone(), renew_every);
    let streaming = stream(
        client,
        config,
        &mut desired,
        acked,
        shutdown,
        revision,
        reg.applied_revision,
    );
    tokio::select! {
        result = streaming => result,
        error = renewer => Err(error),
    }
}

/// Renews the lease every `every` until a renewal fails, which ends the
/// session (the next one starts on another replica). A renewal gets `every`
/// to succeed: across a partition the call would otherwise wait as long as
/// TCP does, while the lease runs out (three intervals by default), so the
/// agent moves on after two intervals without a renewal and renews through
/// another replica in time.
async fn renew_loop(
    mut client: AgentServiceClient<Channel>,
    cluster: String,
    every: Duration,
) -> SessionError {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let renewal = client.renew_lease(proto::LeaseRequest {
            cluster: cluster.clone(),
        });
        match tokio::time::timeout(every, renewal).await {
            Ok(Ok(r)) if !r.get_ref().known => return SessionError::Forgotten,
            Ok(Ok(_)) => {}
            Ok(Err(status)) => return SessionError::Rpc(status),
            Err(_) => return SessionError::RenewTimeout(every),
        }
    }
}

async fn stream(
    mut client: AgentServiceClient<Channel>,
    config: &AgentConfig,
    desired: &mut watch::Receiver<Desired>,
    acked: &watch::Sender<Desired>,
    shutdown: &CancellationToken,
    revision: &mut u64,
    hub_revision: u64,
) -> Result<(), SessionError> {
    let cluster = config.spec.id.clone();
    let (tx, rx) = mpsc::channel(16);
    let mut sent: Desired = desired.borrow_and_update().clone();
    *revision = (*revision).max(hub_revision) + 1;
    let parts = resync_parts(&cluster, *revision, &sent, config.part_bytes)?;
    tracing::info!(cluster = %cluster, revision = *revision, exports = sent.len(), parts = parts.len(), "sending full export resync");
    // What each revision sent so far carries, until the hub acknowledges it.
    let mut unacked: std::collections::VecDeque<(u64, Desired)> =
        std::collections::VecDeque::from([(*revision, sent.clone())]);
    // The resync's parts first, then whatever the channel brings: the
    // request stream is open before the first part waits for room.
    let outbound = tokio_stream::iter(parts).chain(ReceiverStream::new(rx));
    let mut acks = client.stream_exports(outbound).await?.into_inner();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = desired.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let next = desired.borrow_and_update().clone();
                if let Some(update) = delta(&cluster, &sent, &next, *revision + 1) {
                    *revision += 1;
                    unacked.push_back((*revision, next.clone()));
                    let messages = if update.encoded_len() > config.part_bytes {
                        // Too large for one part: the whole set, in parts.
                        let parts = resync_parts(&cluster, *revision, &next, config.part_bytes)?;
                        tracing::info!(cluster = %cluster, revision = *revision, upserts = update.upserts.len(), deletes = update.deletes.len(), parts = parts.len(), "delta too large for one message; sending a full export resync instead");
                        parts
                    } else {
                        tracing::info!(cluster = %cluster, revision = *revision, upserts = update.upserts.len(), deletes = update.deletes.len(), "sending export delta");
                        vec![update]
                    };
                    for message in messages {
                        if tx.send(message).await.is_err() {
                            return Err(SessionError::Closed);
                        }
                    }
                }
                sent = next;
            }
            ack = acks.message() => match ack? {
                Some(a) => {
                    tracing::debug!(cluster = %cluster, revision = a.revision, "exports acknowledged");
                    let mut last = None;
                    while unacked.front().is_some_and(|(r, _)| *r <= a.revision) {
                        last = unacked.pop_front();
                    }
                    if let Some((_, exports)) = last {
                        acked.send_replace(exports);
                    }
                }
                None => return Err(SessionError::Closed),
            },
        }
    }
}

/// A full resync of `exports` at `revision`, in parts of at most
/// `part_bytes` encoded bytes each (an export larger than that alone in its
/// part): `full_resync` and `revision` on every part, `part` counting from
/// 0, `more` on all but the last. Exactly one part when there is nothing to
/// export. Fails only when one export alone would be larger than
/// [`MAX_API_MESSAGE`], which the hub refuses.
pub fn resync_parts(
    cluster: &str,
    revision: u64,
    exports: &BTreeMap<ServiceKey, Export>,
    part_bytes: usize,
) -> Result<Vec<proto::ExportUpdate>, TooLarge> {
    let empty = |part: u32| proto::ExportUpdate {
        cluster: cluster.to_string(),
        revision,
        full_resync: true,
        upserts: Vec::new(),
        deletes: Vec::new(),
        more: true,
        part,
    };
    // The fields besides the exports, at their largest (`part` grows).
    let header = empty(u32::MAX).encoded_len();
    let budget = part_bytes.saturating_sub(header);
    let mut parts = vec![empty(0)];
    let mut used = 0usize;
    for e in exports.values() {
        let p = export_to_proto(e);
        let len = field_len(&p);
        if header + len > MAX_API_MESSAGE {
            return Err(TooLarge {
                what: format!("export {}", e.service),
                bytes: header + len,
                limit: MAX_API_MESSAGE,
            });
        }
        let current = parts.len() - 1;
        if !parts[current].upserts.is_empty() && used + len > budget {
            parts.push(empty(parts.len() as u32));
            used = 0;
        }
        used += len;
        let last = parts.len() - 1;
        parts[last].upserts.push(p);
    }
    if let Some(last) = parts.last_mut() {
        last.more = false;
    }
    Ok(parts)
}

/// The delta from `old` to `new`, or `None` when nothing changed.
pub fn delta(
    cluster: &str,
    old: &BTreeMap<ServiceKey, Export>,
    new: &BTreeMap<ServiceKey, Export>,
    revision: u64,
) -> Option<proto::ExportUpdate> {
    let upserts: Vec<proto::Export> = new
        .iter()
        .filter(|(k, e)| old.get(*k) != Some(*e))
        .map(|(_, e)| export_to_proto(e))
        .collect();
    let deletes: Vec<proto::ServiceRef> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|k| proto::ServiceRef {
            namespace: k.namespace.to_string(),
            name: k.name.to_string(),
        })
        .collect();
    if upserts.is_empty() && deletes.is_empty() {
        return None;
    }
    Some(proto::ExportUpdate {
        cluster: cluster.to_string(),
        revision,
        full_resync: false,
        upserts,
        deletes,
        more: false,
        part: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ClusterFile;

    #[test]
    fn hubs_are_tried_in_turn_and_blanks_ignored() {
        let hubs = Hubs::parse(" a:1, ,b:2,");
        assert_eq!(hubs.iter().collect::<Vec<_>>(), ["a:1", "b:2"]);
        assert_eq!(
            (0..5).map(|t| hubs.at(t)).collect::<Vec<_>>(),
            ["a:1", "b:2", "a:1", "b:2", "a:1"]
        );
        assert_eq!(Hubs::parse("").at(3), "");
    }

    fn exports(n: usize) -> BTreeMap<ServiceKey, Export> {
        let mut yaml = String::from("cluster: a\nservices:\n");
        for i in 0..n {
            yaml.push_str(&format!(
                "- {{namespace: app, name: s{i}, ports: [{{port: 80}}], endpoints: [{{address: 127.0.0.{}}}]}}\n",
                i % 250 + 1
            ));
        }
        ClusterFile::parse("f", &yaml).unwrap().exports().unwrap()
    }

    #[test]
    fn a_resync_goes_in_bounded_parts_that_add_up_to_the_set() {
        let set = exports(100);
        let parts = resync_parts("a", 7, &set, 600).unwrap();
        assert!(parts.len() > 10, "{} parts", parts.len());
        for (i, p) in parts.iter().enumerate() {
            assert!(
                p.encoded_len() <= 600,
                "part {i}: {} bytes",
                p.encoded_len()
            );
            assert_eq!((p.revision, p.part, p.full_resync), (7, i as u32, true));
            assert_eq!(p.more, i + 1 < parts.len());
            assert!(!p.upserts.is_empty() && p.deletes.is_empty());
        }
        let sent: Vec<proto::Export> = parts.into_iter().flat_map(|p| p.upserts).collect();
        let want: Vec<proto::Export> = set.values().map(export_to_proto).collect();
        assert_eq!(sent, want, "every export once, in order");

        // The default bound: one part for a small set, one for none.
        assert_eq!(resync_parts("a", 1, &set, PART_BYTES).unwrap().len(), 1);
        let none = resync_parts("a", 1, &BTreeMap::new(), PART_BYTES).unwrap();
        assert_eq!(none.len(), 1);
        assert!(!none[0].more && none[0].upserts.is_empty());
        // A bound below one export: one export per part.
        assert_eq!(resync_parts("a", 1, &set, 1).unwrap().len(), 100);
    }

    #[test]
    fn an_export_too_large_for_any_message_is_named() {
        let mut set = exports(1);
        let e = set.values_mut().next().unwrap();
        let mut endpoint = e.endpoints[0].clone();
        endpoint.pod = Some("p".repeat(5000));
        e.endpoints = vec![endpoint; 1000];
        let err = resync_parts("a", 1, &set, PART_BYTES).unwrap_err();
        assert_eq!(err.what, "export app/s0");
        assert!(err.bytes > MAX_API_MESSAGE);
        assert!(
            err.to_string().contains("more than the 4194304 bytes"),
            "{err}"
        );
    }

    #[test]
    fn delta_carries_only_changes() {
        let f = ClusterFile::parse(
            "f",
            "cluster: a\nservices:\n- {namespace: app, name: x, ports: [{port: 80}], endpoints: [{address: 127.0.0.2}]}\n- {namespace: app, name: y, ports: [{port: 80}]}\n",
        )
        .unwrap();
        let old = f.exports().unwrap();
        assert!(delta("a", &old, &old, 2).is_none());
        let mut new = old.clone();
        new.remove(&"app/y".parse().unwrap());
        new.get_mut(&"app/x".parse().unwrap())
            .unwrap()
            .endpoints
            .clear();
        let d = delta("a", &old, &new, 2).unwrap();
        assert_eq!(d.upserts.len(), 1);
        assert!(d.upserts[0].endpoints.is_empty());
        assert_eq!(
            d.deletes,
            vec![proto::ServiceRef {
                namespace: "app".into(),
                name: "y".into()
            }]
        );
        assert!(!d.full_resync);
    }
}
