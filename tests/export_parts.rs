//! Whole sets in parts, against the hub in-process on port 0: full export
//! resyncs split into many parts by a tiny bound (by a raw gRPC client that
//! controls every message, and by the real file agent), import sets and
//! gateway configurations in parts, and messages over the API's limit.

use prost::Message as _;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard::agent::stream::{agent_client, connect, resync_parts, HubAuth};
use switchyard::agent::{self, AgentConfig};
use switchyard::dns::DnsConfig;
use switchyard::hub::app::{self, HubConfig, RunningHub};
use switchyard::hub::lease::LeaseConfig;
use switchyard::hub::state::State;
use switchyard::proto::{self, agent_service_client::AgentServiceClient};
use switchyard::wire::{Assembler, MAX_API_MESSAGE};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

async fn start_hub(dir: &Path) -> RunningHub {
    let config = HubConfig {
        data_dir: dir.join("hub"),
        api: "127.0.0.1:0".parse().unwrap(),
        dns: "127.0.0.1:0".parse().unwrap(),
        dns_config: DnsConfig::default(),
        lease: LeaseConfig::default(),
        raft: None,
        tls: None,
    };
    app::start(config, CancellationToken::new()).await.unwrap()
}

/// Waits up to 10 s for the hub's state to satisfy `pred`.
async fn eventually(hub: &RunningHub, what: &str, pred: impl Fn(&Arc<State>) -> bool) {
    let mut view = hub.hub.watch_state();
    let r = tokio::time::timeout(Duration::from_secs(10), view.wait_for(|s| pred(s))).await;
    assert!(
        r.is_ok(),
        "timed out waiting for: {what}; exports: {:?}",
        exported(&hub.hub.state(), "c")
    );
}

/// The services `cluster` exports, as the hub holds them.
fn exported(state: &State, cluster: &str) -> BTreeSet<String> {
    state
        .exports
        .iter()
        .filter(|(_, by)| by.contains_key(cluster))
        .map(|(k, _)| k.name.to_string())
        .collect()
}

fn names(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("s{i}")).collect()
}

fn export(name: &str) -> proto::Export {
    proto::Export {
        namespace: "app".into(),
        name: name.into(),
        r#type: "ClusterSetIP".into(),
        ports: vec![proto::Port {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 80,
            ..Default::default()
        }],
        endpoints: vec![proto::Endpoint {
            address: "127.0.0.9".into(),
            ready: true,
            serving: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A full resync of `names` at `revision`, one export per part.
fn parts(revision: u64, names: &BTreeSet<String>) -> Vec<proto::ExportUpdate> {
    let count = names.len();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| proto::ExportUpdate {
            cluster: "c".into(),
            revision,
            full_resync: true,
            upserts: vec![export(n)],
            deletes: vec![],
            more: i + 1 < count,
            part: i as u32,
        })
        .collect()
}

async fn client(hub: &RunningHub) -> AgentServiceClient<Channel> {
    let channel = connect(&hub.api_addr.to_string(), &HubAuth::Insecure)
        .await
        .unwrap();
    let mut client = agent_client(channel);
    client
        .register(proto::RegisterRequest {
            cluster: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
}

/// How a stream ended: its status code and message.
#[derive(Debug, PartialEq)]
struct Refusal(tonic::Code, String);

impl Refusal {
    fn code(&self) -> tonic::Code {
        self.0
    }
    fn message(&self) -> &str {
        &self.1
    }
}

/// An export stream whose messages the test sends one by one.
struct Stream {
    tx: mpsc::Sender<proto::ExportUpdate>,
    acks: tonic::Streaming<proto::ExportAck>,
}

impl Stream {
    async fn open(client: &mut AgentServiceClient<Channel>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let acks = client
            .stream_exports(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, acks }
    }

    async fn send(&self, update: proto::ExportUpdate) {
        self.tx.send(update).await.unwrap();
    }

    /// Sends a whole resync of `names` at `revision` in parts and returns
    /// what comes back (see [`Stream::ack`]).
    async fn resync(
        &mut self,
        revision: u64,
        names: &BTreeSet<String>,
    ) -> Option<Result<u64, Refusal>> {
        for p in parts(revision, names) {
            self.send(p).await;
        }
        self.ack().await
    }

    /// The next ack within 10 s (see [`Stream::ack_within`]).
    async fn ack(&mut self) -> Option<Result<u64, Refusal>> {
        self.ack_within(Duration::from_secs(10)).await
    }

    /// The next ack's revision, or the status that ended the stream, or
    /// `None` if nothing comes within `wait`.
    async fn ack_within(&mut self, wait: Duration) -> Option<Result<u64, Refusal>> {
        match tokio::time::timeout(wait, self.acks.message()).await {
            Err(_) => None,
            Ok(Ok(Some(a))) => Some(Ok(a.revision)),
            Ok(Ok(None)) => Some(Err(Refusal(tonic::Code::Aborted, "closed".into()))),
            Ok(Err(status)) => Some(Err(Refusal(status.code(), status.message().into()))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_in_parts_removes_only_after_its_last_part_and_acks_then() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let mut client = client(&hub).await;

    // The first set, in 20 parts: acked once, after the last.
    let first = names(0..20);
    let mut stream = Stream::open(&mut client).await;
    assert_eq!(stream.resync(1, &first).await, Some(Ok(1)));
    assert_eq!(exported(&hub.hub.state(), "c"), first);
    assert_eq!(hub.hub.state().export_revisions["c"], 1);

    // A new complete set that drops s0..s9 and adds s20..s29.
    let second = names(10..30);
    let mut second_parts = parts(2, &second);
    let last = second_parts.pop().unwrap();
    for p in second_parts {
        stream.send(p).await;
    }
    eventually(&hub, "every part but the last applied", |s| {
        exported(s, "c").contains("s28")
    })
    .await;
    // Nothing removed, no ack, the revision not recorded yet.
    assert_eq!(exported(&hub.hub.state(), "c"), names(0..29));
    assert_eq!(stream.ack_within(Duration::from_millis(500)).await, None);
    assert_eq!(hub.hub.state().export_revisions["c"], 1);

    stream.send(last).await;
    assert_eq!(stream.ack().await, Some(Ok(2)));
    let state = hub.hub.state();
    assert_eq!(exported(&state, "c"), second, "exactly the new set");
    assert_eq!(state.export_revisions["c"], 2);
    assert!(!state.backends.keys().any(|k| &*k.name == "s0"));

    // Deltas follow on the same stream as before.
    stream
        .send(proto::ExportUpdate {
            cluster: "c".into(),
            revision: 3,
            deletes: vec![proto::ServiceRef {
                namespace: "app".into(),
                name: "s10".into(),
            }],
            ..Default::default()
        })
        .await;
    assert_eq!(stream.ack().await, Some(Ok(3)));
    assert!(!exported(&hub.hub.state(), "c").contains("s10"));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_message_resync_larger_than_a_raft_entry_goes_in_several() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let mut client = client(&hub).await;
    let mut stream = Stream::open(&mut client).await;
    // What an agent that knows nothing of parts sends: one message.
    let big = proto::ExportUpdate {
        cluster: "c".into(),
        revision: 1,
        full_resync: true,
        upserts: (0..6000).map(|i| export(&format!("s{i}"))).collect(),
        ..Default::default()
    };
    assert!(big.encoded_len() > switchyard::hub::api::RESYNC_PROPOSAL_BYTES);
    stream.send(big).await;
    assert_eq!(
        stream.ack_within(Duration::from_secs(30)).await,
        Some(Ok(1))
    );
    let state = hub.hub.state();
    assert_eq!(exported(&state, "c"), names(0..6000));
    let resync = &state.export_resyncs["c"];
    assert!(resync.complete && resync.next_part >= 2, "{resync:?}");
    // A small one is one entry, and exact as well.
    stream
        .send(proto::ExportUpdate {
            cluster: "c".into(),
            revision: 2,
            full_resync: true,
            upserts: vec![export("s1")],
            ..Default::default()
        })
        .await;
    assert_eq!(stream.ack().await, Some(Ok(2)));
    assert_eq!(exported(&hub.hub.state(), "c"), names(1..2));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_in_the_middle_of_a_resync_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let mut client = client(&hub).await;
    let mut stream = Stream::open(&mut client).await;
    assert_eq!(stream.resync(1, &names(0..10)).await, Some(Ok(1)));

    // A resync to s5..s15 breaks after 3 of its 10 parts, twice: once by
    // the agent closing its side, once by the connection going away.
    for cut in ["closed", "dropped"] {
        let mut client = agent_client(
            connect(&hub.api_addr.to_string(), &HubAuth::Insecure)
                .await
                .unwrap(),
        );
        let stream = Stream::open(&mut client).await;
        for p in parts(2, &names(5..15)).into_iter().take(3) {
            stream.send(p).await;
        }
        eventually(&hub, "the parts sent are applied", |s| {
            exported(s, "c").contains("s12")
        })
        .await;
        match cut {
            "closed" => drop(stream.tx),
            _ => drop((stream, client)),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let state = hub.hub.state();
        assert_eq!(
            exported(&state, "c"),
            names(0..13),
            "{cut}: the old exports stay, the parts applied are upserted"
        );
        assert_eq!(state.export_revisions["c"], 1);
    }

    // The agent starts over on a new stream: exactly its set.
    let mut stream = Stream::open(&mut client).await;
    assert_eq!(stream.resync(3, &names(5..15)).await, Some(Ok(3)));
    assert_eq!(exported(&hub.hub.state(), "c"), names(5..15));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_out_of_order_and_deltas_inside_a_resync_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let mut client = client(&hub).await;
    let mut stream = Stream::open(&mut client).await;
    assert_eq!(stream.resync(1, &names(0..4)).await, Some(Ok(1)));

    let next = parts(2, &names(2..6));
    // Part 2 after part 0.
    let mut stream = Stream::open(&mut client).await;
    stream.send(next[0].clone()).await;
    stream.send(next[2].clone()).await;
    let err = stream.ack().await.unwrap();
    let err = err.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("part 2 of revision 2 arrived where part 1 of revision 2 was next"),
        "{}",
        err.message()
    );
    // A delta before the last part.
    let mut stream = Stream::open(&mut client).await;
    stream.send(next[0].clone()).await;
    stream
        .send(proto::ExportUpdate {
            cluster: "c".into(),
            revision: 3,
            ..Default::default()
        })
        .await;
    let err = stream.ack().await.unwrap().unwrap_err();
    assert!(
        err.message().contains("before the last part"),
        "{}",
        err.message()
    );
    // A part without the ones before it.
    let mut stream = Stream::open(&mut client).await;
    stream.send(next[1].clone()).await;
    let err = stream.ack().await.unwrap().unwrap_err();
    assert!(
        err.message().contains("without the parts before it"),
        "{}",
        err.message()
    );
    // Nothing was removed by any of them.
    assert_eq!(exported(&hub.hub.state(), "c"), names(0..4));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    // A client without the API's limits (the agent's own refuses to send
    // it, see agent::stream::resync_parts).
    let mut raw = AgentServiceClient::new(
        connect(&hub.api_addr.to_string(), &HubAuth::Insecure)
            .await
            .unwrap(),
    );
    let mut huge = export("big");
    huge.endpoints[0].pod = "p".repeat(MAX_API_MESSAGE + 1);
    let update = proto::ExportUpdate {
        cluster: "c".into(),
        revision: 1,
        full_resync: true,
        upserts: vec![huge],
        ..Default::default()
    };
    let mut acks = raw
        .stream_exports(tokio_stream::iter(vec![update]))
        .await
        .unwrap()
        .into_inner();
    let err = acks.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("larger than the hub accepts (4194304 bytes)"),
        "{}",
        err.message()
    );
    hub.stop().await;
}

fn cluster_file(services: std::ops::Range<usize>, octet: u8) -> String {
    let mut s = String::from("cluster: c\nservices:\n");
    for i in services {
        s.push_str(&format!(
            "  - {{namespace: app, name: s{i}, ports: [{{name: http, port: 80}}], endpoints: [{{address: 127.0.{octet}.{}}}]}}\n",
            i % 250 + 1
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_agent_resyncs_in_many_parts_and_is_acked_after_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, cluster_file(0..60, 61)).unwrap();
    let token = CancellationToken::new();
    let (file, desired) =
        agent::watch::follow(path.clone(), Duration::from_millis(50), token.clone()).unwrap();
    let (acked_tx, mut acked) = tokio::sync::watch::channel(Default::default());
    let part_bytes = 200;
    let expected_parts = resync_parts("c", 1, &desired.borrow(), part_bytes)
        .unwrap()
        .len();
    assert!(expected_parts >= 30, "{expected_parts} parts");
    tokio::spawn(agent::run(
        AgentConfig {
            hub: hub.api_addr.to_string(),
            spec: file.spec(),
            part_bytes,
            ..Default::default()
        },
        desired,
        acked_tx,
        token.clone(),
    ));
    // The ack (after the last part) carries the whole set.
    tokio::time::timeout(
        Duration::from_secs(10),
        acked.wait_for(|a: &agent::watch::Desired| a.len() == 60),
    )
    .await
    .expect("the resync is acked")
    .unwrap();
    assert_eq!(exported(&hub.hub.state(), "c"), names(0..60));

    // Every endpoint moves and half the services go: the delta is larger
    // than a part, so it goes as a full resync in parts.
    std::fs::write(&path, cluster_file(30..60, 62)).unwrap();
    eventually(&hub, "exactly the new set, with the new endpoints", |s| {
        exported(s, "c") == names(30..60)
            && s.exports.iter().all(|(_, by)| {
                by.get("c")
                    .is_none_or(|e| e.endpoints[0].address.to_string().starts_with("127.0.62."))
            })
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(10),
        acked.wait_for(|a: &agent::watch::Desired| a.len() == 30),
    )
    .await
    .expect("the second resync is acked")
    .unwrap();
    token.cancel();
    hub.stop().await;
}

async fn import_parts(
    hub: &RunningHub,
    max_part_bytes: u32,
) -> (Vec<proto::ImportSet>, proto::ImportSet) {
    let mut client = client(hub).await;
    let mut stream = client
        .watch_imports(proto::WatchImportsRequest {
            cluster: "c".into(),
            max_part_bytes,
        })
        .await
        .unwrap()
        .into_inner();
    let mut parts = Vec::new();
    let mut assembler = Assembler::default();
    loop {
        let part = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an import set")
            .unwrap()
            .unwrap();
        parts.push(part.clone());
        if let Some(set) = assembler.push(part).unwrap() {
            return (parts, set);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_sets_and_gateway_configurations_come_in_parts_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let mut client = client(&hub).await;
    let mut stream = Stream::open(&mut client).await;
    assert_eq!(stream.resync(1, &names(0..40)).await, Some(Ok(1)));

    let (whole, legacy) = import_parts(&hub, 0).await;
    assert_eq!(
        whole.len(),
        1,
        "an agent that takes no parts gets one message"
    );
    assert_eq!(legacy.services.len(), 40);
    let (parts, set) = import_parts(&hub, 300).await;
    assert!(parts.len() > 10, "{} parts", parts.len());
    for p in &parts {
        assert!(
            p.encoded_len() <= 300,
            "a part of {} bytes",
            p.encoded_len()
        );
        assert_eq!(p.version, set.version);
    }
    assert_eq!(set, legacy, "the parts add up to the set");

    // The gateway's configuration, the same way.
    let channel = connect(&hub.api_addr.to_string(), &HubAuth::Insecure)
        .await
        .unwrap();
    let mut gateways = proto::gateway_service_client::GatewayServiceClient::new(channel);
    let hello = proto::GatewayRequest {
        kind: Some(proto::gateway_request::Kind::Hello(proto::GatewayHello {
            cluster: "c".into(),
            inbound: "127.0.0.1:15443".into(),
            outbound_cidr: "127.0.3.0/24".into(),
            outbound_ports: String::new(),
            max_part_bytes: 250,
        })),
    };
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello).await.unwrap();
    let mut configs = gateways
        .stream_config(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut assembler = Assembler::default();
    let mut count = 0;
    let config = loop {
        let part = configs.message().await.unwrap().unwrap();
        assert!(part.encoded_len() <= 250, "{} bytes", part.encoded_len());
        count += 1;
        if let Some(config) = assembler.push(part).unwrap() {
            break config;
        }
    };
    assert!(count > 10, "{count} parts");
    assert_eq!(config.services.len(), 40);
    let mut names: Vec<&str> = config.services.iter().map(|r| r.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 40, "each route once");
    hub.stop().await;
}
