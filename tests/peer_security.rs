//! The raft peer port as a stranger meets it: three replicas in-process
//! over mutual TLS with the ClusterSet CA from `hub init-ca`. Replication
//! works; a plaintext HTTP/2 client, a TLS client without a certificate,
//! one with another CA's replica certificate, an agent's certificate and a
//! replica certificate of a non-member all get nothing, and none of them can
//! add a member; a member cannot send raft messages in another's name; a
//! replica of one makes its own CA; idle handshakes and connections past the
//! cap are cut and counted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard::dns::DnsConfig;
use switchyard::hub::app::{self, HubConfig, HubTls, RaftOptions, RunningHub};
use switchyard::hub::lease::LeaseConfig;
use switchyard::hub::state::{Command, TokenRole};
use switchyard::hub::trust::{self, PeerLimits};
use switchyard::identity::{Ca, Identity, REPLICA_SERVER_NAME};
use switchyard::proto::peer_service_client::PeerServiceClient;
use switchyard::proto::{self, ForwardRequest, MemberChange};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config(
    dir: &Path,
    id: u64,
    peers: &BTreeMap<u64, String>,
    ca_files: Option<(PathBuf, PathBuf)>,
    limits: PeerLimits,
) -> HubConfig {
    HubConfig {
        data_dir: dir.join(format!("hub{id}")),
        api: "127.0.0.1:0".parse().unwrap(),
        dns: "127.0.0.1:0".parse().unwrap(),
        dns_config: DnsConfig::default(),
        lease: LeaseConfig::default(),
        raft: Some(RaftOptions {
            id,
            listen: peers[&id].parse().unwrap(),
            peers: peers.clone(),
            join: false,
            snapshot_every: 10_000,
            fault_injection: false,
            limits,
        }),
        tls: Some(HubTls {
            ca_files,
            ..HubTls::default()
        }),
    }
}

struct Group {
    _dir: tempfile::TempDir,
    files: (PathBuf, PathBuf),
    ca: Ca,
    peers: BTreeMap<u64, String>,
    hubs: Vec<RunningHub>,
}

/// Three replicas sharing a CA made by `init_ca`, started together (each
/// waits for the CA a leader records, which needs a majority).
async fn three_replicas() -> Group {
    let dir = tempfile::tempdir().unwrap();
    let ca = trust::init_ca(&dir.path().join("ca")).unwrap();
    let files = (
        dir.path().join("ca").join(trust::CA_CERT_FILE),
        dir.path().join("ca").join(trust::CA_KEY_FILE),
    );
    let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, free_port().to_string())).collect();
    let starts = (1..=3).map(|id| {
        app::start(
            config(
                dir.path(),
                id,
                &peers,
                Some(files.clone()),
                PeerLimits::default(),
            ),
            CancellationToken::new(),
        )
    });
    let hubs = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(starts))
        .await
        .expect("three replicas start within 30 s")
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    Group {
        _dir: dir,
        files,
        ca,
        peers,
        hubs,
    }
}

/// A client of `address`'s peer port over TLS, presenting `identity`
/// (issued by `ca`) if any, trusting `trusted`.
fn tls_client(
    address: &str,
    trusted: &Ca,
    identity: Option<(&Ca, Identity)>,
) -> PeerServiceClient<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trusted.cert_pem()))
        .domain_name(REPLICA_SERVER_NAME);
    if let Some((ca, identity)) = identity {
        let issued = ca.issue(&identity, &[], Duration::from_secs(3600)).unwrap();
        tls = tls.identity(tonic::transport::Identity::from_pem(
            issued.cert_pem,
            issued.key_pem,
        ));
    }
    let endpoint = Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    PeerServiceClient::new(endpoint.connect_lazy())
}

fn add_member_66() -> ForwardRequest {
    ForwardRequest {
        member_change: Some(MemberChange {
            id: 66,
            address: "127.0.0.1:1".into(),
        }),
    }
}

fn refusals(hub: &RunningHub, reason: &str) -> u64 {
    let text = hub.metrics.encode();
    let wanted = format!("switchyard_peer_refusals_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_nothing_from_the_peer_port_and_replication_works() {
    let g = three_replicas().await;
    let raft1 = g.peers[&1].clone();

    // Replication works over mutual TLS: a write on one replica reaches all.
    g.hubs[0]
        .hub
        .propose(&Command::CreateToken {
            id: "tok1".into(),
            cluster: "c1".into(),
            secret_sha256: "00".repeat(32),
            expires_unix_ms: i64::MAX / 2,
            now_unix_ms: 0,
            role: TokenRole::Agent,
        })
        .await
        .unwrap();
    for h in &g.hubs {
        eventually("the write reaches every replica", || {
            h.hub.state().tokens.contains_key("tok1")
        })
        .await;
    }

    // A plaintext HTTP/2 client: the port speaks only TLS.
    let mut plain = PeerServiceClient::new(
        Endpoint::from_shared(format!("http://{raft1}"))
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    );
    let err = plain.forward(add_member_66()).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    let err = plain
        .local_status(proto::LocalStatusRequest {})
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);

    // TLS without a client certificate: refused at the handshake.
    let mut anonymous = tls_client(&raft1, &g.ca, None);
    assert!(anonymous.forward(add_member_66()).await.is_err());
    assert!(anonymous
        .local_status(proto::LocalStatusRequest {})
        .await
        .is_err());

    // A replica certificate from another CA: refused at the handshake.
    let other = Ca::generate("another ClusterSet").unwrap();
    let mut foreign = tls_client(&raft1, &g.ca, Some((&other, Identity::Replica(2))));
    assert!(foreign.forward(add_member_66()).await.is_err());

    // The ClusterSet's own agent certificate: not a replica.
    let mut agent = tls_client(&raft1, &g.ca, Some((&g.ca, Identity::Cluster("c1".into()))));
    let err = agent.forward(add_member_66()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("not one"), "{err}");
    let err = agent
        .renew_lease(proto::LeaseRequest {
            cluster: "c1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

    // A replica certificate of the right CA for a replica that is no member.
    let mut stranger = tls_client(&raft1, &g.ca, Some((&g.ca, Identity::Replica(66))));
    let err = stranger.forward(add_member_66()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("not a member"), "{err}");

    // Nobody became a member.
    for h in &g.hubs {
        let status = h.hub.raft_status();
        assert!(!status.voters.contains(&66) && !status.learners.contains(&66));
        assert!(!h.hub.state().members.contains_key(&66));
    }
    assert!(refusals(&g.hubs[0], "not_a_replica") >= 2);
    assert!(refusals(&g.hubs[0], "not_a_member") >= 1);
    assert!(refusals(&g.hubs[0], "handshake") >= 2);

    // A member speaks only for itself: a raft message from replica 3's
    // connection claiming to come from replica 2 is dropped and counted.
    let mut three = tls_client(&raft1, &g.ca, Some((&g.ca, Identity::Replica(3))));
    let mut forged = raft::eraftpb::Message::default();
    forged.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    forged.from = 2;
    forged.to = 1;
    forged.term = 1_000_000;
    let bytes = protobuf::Message::write_to_bytes(&forged).unwrap();
    let before = g.hubs[0].hub.raft_status().term;
    three
        .raft(futures::stream::iter([proto::RaftMessages {
            messages: vec![bytes],
        }]))
        .await
        .unwrap();
    assert_eq!(refusals(&g.hubs[0], "forged_sender"), 1);
    assert!(g.hubs[0].hub.raft_status().term < 1_000_000);
    assert!(g.hubs[0].hub.raft_status().term >= before);

    // A replica an administrator adds (`hub members add`) joins over the
    // same mutual TLS and catches up.
    let raft4 = free_port().to_string();
    let mut all = g.peers.clone();
    all.insert(4, raft4.clone());
    let mut joiner = config(
        g._dir.path(),
        4,
        &all,
        Some(g.files.clone()),
        PeerLimits::default(),
    );
    if let Some(r) = joiner.raft.as_mut() {
        r.join = true;
    }
    let joining = tokio::spawn(app::start(joiner, CancellationToken::new()));
    let line = g.hubs[1].hub.change_member(4, &raft4).await.unwrap();
    assert!(line.contains('4'), "{line}");
    let fourth = tokio::time::timeout(Duration::from_secs(20), joining)
        .await
        .expect("the joiner starts once added")
        .unwrap()
        .unwrap();
    eventually("the joiner has the state", || {
        fourth.hub.state().tokens.contains_key("tok1")
    })
    .await;
    for h in &g.hubs {
        eventually("every replica counts the joiner a voter", || {
            h.hub.raft_status().voters.contains(&4)
        })
        .await;
    }

    fourth.stop().await;
    for h in g.hubs {
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_one_makes_its_ca_and_cuts_idle_handshakes_and_excess_connections() {
    let dir = tempfile::tempdir().unwrap();
    let peers = BTreeMap::from([(1, free_port().to_string())]);
    let limits = PeerLimits {
        max_connections: 2,
        handshake_timeout: Duration::from_millis(300),
    };
    let hub = app::start(
        config(dir.path(), 1, &peers, None, limits),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    // Its own CA, private, in DATA_DIR/ca; the state records the same CA.
    let ca_dir = dir.path().join("hub1").join("ca");
    let ca_pem = std::fs::read_to_string(ca_dir.join(trust::CA_CERT_FILE)).unwrap();
    assert_eq!(
        hub.hub.state().ca.as_ref().map(|c| c.cert_pem.clone()),
        Some(ca_pem)
    );

    // Two connections that never say anything hold both slots ...
    let raft = peers[&1].clone();
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(&raft).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... so a third is closed on arrival ...
    let mut third = tokio::net::TcpStream::connect(&raft).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("the connection past the cap is closed at once");
    assert!(matches!(n, Ok(0) | Err(_)));
    // ... and the idle two are cut when their handshake deadline passes.
    for mut conn in idle {
        let n = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf))
            .await
            .expect("an idle handshake is cut after its deadline");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
    assert!(refusals(&hub, "over_cap") >= 1);
    assert_eq!(refusals(&hub, "handshake_timeout"), 2);
    hub.stop().await;
}
