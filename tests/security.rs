//! The hub with TLS, in-process: admin credentials, bootstrap tokens traded
//! once for a cluster certificate, renewal, and every rejection: an export
//! that claims another cluster's ID, an admin call without admin
//! credentials, an expired, reused, unknown or forged token, and a client
//! certificate from another CA.

use serde_json::json;
use std::time::Duration;
use switchyard::agent::credentials::{self, CredentialError, CredentialStore};
use switchyard::dns::DnsConfig;
use switchyard::hub::app::{self, HubConfig, HubTls, RunningHub};
use switchyard::hub::lease::LeaseConfig;
use switchyard::identity::tls::{endpoint, ClientCredentials};
use switchyard::identity::{Ca, Identity};
use switchyard::proto::admin_service_client::AdminServiceClient;
use switchyard::proto::agent_service_client::AgentServiceClient;
use switchyard::proto::{self, CreateTokenRequest, GetRequest};
use tokio_util::sync::CancellationToken;

async fn start_hub(dir: &std::path::Path) -> RunningHub {
    let config = HubConfig {
        data_dir: dir.join("hub"),
        api: "127.0.0.1:0".parse().unwrap(),
        dns: "127.0.0.1:0".parse().unwrap(),
        dns_config: DnsConfig::default(),
        lease: LeaseConfig::default(),
        raft: None,
        tls: Some(HubTls::default()),
    };
    app::start(config, CancellationToken::new()).await.unwrap()
}

fn admin_credentials(dir: &std::path::Path) -> ClientCredentials {
    ClientCredentials::load(&dir.join("hub/admin")).unwrap()
}

async fn admin(
    hub: &RunningHub,
    creds: &ClientCredentials,
) -> AdminServiceClient<tonic::transport::Channel> {
    let ch = endpoint(&hub.api_addr.to_string(), Some(creds))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AdminServiceClient::new(ch)
}

async fn agent(
    hub: &RunningHub,
    creds: &ClientCredentials,
) -> AgentServiceClient<tonic::transport::Channel> {
    let ch = endpoint(&hub.api_addr.to_string(), Some(creds))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AgentServiceClient::new(ch)
}

async fn token(hub: &RunningHub, creds: &ClientCredentials, cluster: &str, ttl: u64) -> String {
    admin(hub, creds)
        .await
        .create_token(CreateTokenRequest {
            cluster: cluster.into(),
            ttl_seconds: ttl,
            role: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

fn get() -> GetRequest {
    GetRequest {
        kind: "clusters".into(),
        name: String::new(),
        consistent: false,
        cluster: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_joins_once_and_the_certificate_speaks_only_for_its_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let admin_creds = admin_credentials(dir.path());
    let ca_pem = admin_creds.ca_pem.clone();
    let addr = hub.api_addr.to_string();

    // Join with a token: the certificate carries the token's cluster.
    let t = token(&hub, &admin_creds, "c1", 3600).await;
    let store = CredentialStore::Dir(dir.path().join("agent-c1"));
    let c1 = credentials::obtain(&addr, &ca_pem, Some(&t), &store)
        .await
        .unwrap();
    let cert = &c1.identity.as_ref().unwrap().cert_pem;
    assert_eq!(
        switchyard::identity::ca::identity_of_pem(cert),
        Some(Identity::Cluster("c1".into()))
    );
    // Stored: the next start needs no token.
    let again = credentials::obtain(&addr, &ca_pem, None, &store)
        .await
        .unwrap();
    assert_eq!(again, c1);

    // The same token a second time: refused.
    let fresh = CredentialStore::Dir(dir.path().join("agent-c1-again"));
    let err = credentials::obtain(&addr, &ca_pem, Some(&t), &fresh)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CredentialError::Join(ref m) if m.contains("already used")),
        "{err}"
    );
    // No token, nothing stored.
    let err = credentials::obtain(&addr, &ca_pem, None, &fresh)
        .await
        .unwrap_err();
    assert!(matches!(err, CredentialError::NoToken), "{err}");

    // A cluster's certificate registers its own cluster and exports for it...
    let mut c1_client = agent(&hub, &c1).await;
    c1_client
        .register(proto::RegisterRequest {
            cluster: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // ...and nothing for another cluster.
    let err = c1_client
        .register(proto::RegisterRequest {
            cluster: "c2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("not for cluster c2"),
        "{}",
        err.message()
    );
    let forged = proto::ExportUpdate {
        cluster: "c2".into(),
        revision: 1,
        full_resync: true,
        upserts: vec![],
        deletes: vec![],
        ..Default::default()
    };
    let mut acks = c1_client
        .stream_exports(tokio_stream::iter(vec![forged]))
        .await
        .unwrap()
        .into_inner();
    let err = acks.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(!hub.hub.state().clusters.contains_key("c2"));

    // An agent certificate is not an admin credential, nor is none at all.
    let err = admin(&hub, &c1).await.get(get()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let anonymous = ClientCredentials {
        ca_pem: ca_pem.clone(),
        identity: None,
    };
    let err = admin(&hub, &anonymous).await.get(get()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("admin credentials"),
        "{}",
        err.message()
    );
    admin(&hub, &admin_creds).await.get(get()).await.unwrap();
    // Nor may an agent drain a cluster or revoke a lease (its own or not).
    let drain = || proto::DrainRequest {
        cluster: "c1".into(),
        service: String::new(),
        restore: false,
    };
    let err = admin(&hub, &c1).await.drain(drain()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let revoke = proto::RevokeLeaseRequest {
        cluster: "c1".into(),
        restore: false,
    };
    let err = admin(&hub, &anonymous)
        .await
        .revoke_lease(revoke)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(!hub.hub.state().clusters["c1"].drained);
    assert!(!hub.hub.state().clusters["c1"].lease_revoked);
    // An administrator may, with input checked: a service the cluster does
    // not export and an unknown cluster are refused by name.
    let mut root = admin(&hub, &admin_creds).await;
    let err = root
        .drain(proto::DrainRequest {
            service: "app/nothing".into(),
            ..drain()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("c1 does not export app/nothing"),
        "{}",
        err.message()
    );
    let err = root
        .revoke_lease(proto::RevokeLeaseRequest {
            cluster: "c9".into(),
            restore: false,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("c9"), "{}", err.message());
    root.drain(drain()).await.unwrap();
    assert!(hub.hub.state().clusters["c1"].drained);

    // Renewal: a new certificate for the caller's own cluster, only with
    // the current one.
    let (csr, _key) = switchyard::identity::ca::request().unwrap();
    let renewed = c1_client
        .renew(proto::RenewRequest {
            csr_pem: csr.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.cluster, "c1");
    assert_eq!(
        switchyard::identity::ca::identity_of_pem(&renewed.cert_pem),
        Some(Identity::Cluster("c1".into()))
    );
    let err = agent(&hub, &anonymous)
        .await
        .renew(proto::RenewRequest { csr_pem: csr })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_unknown_and_forged_tokens_and_foreign_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let admin_creds = admin_credentials(dir.path());
    let ca_pem = admin_creds.ca_pem.clone();
    let addr = hub.api_addr.to_string();
    let join = |t: String, name: &str| {
        let store = CredentialStore::Dir(dir.path().join(name));
        let (addr, ca_pem) = (addr.clone(), ca_pem.clone());
        async move { credentials::obtain(&addr, &ca_pem, Some(&t), &store).await }
    };

    let short = token(&hub, &admin_creds, "c3", 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = join(short, "a").await.unwrap_err();
    assert!(
        matches!(err, CredentialError::Join(ref m) if m.contains("expired")),
        "{err}"
    );

    let unknown = switchyard::identity::token::Token::generate().to_string();
    let err = join(unknown, "b").await.unwrap_err();
    assert!(
        matches!(err, CredentialError::Join(ref m) if m.contains("unknown")),
        "{err}"
    );

    // The right ID with a made-up secret.
    let real = token(&hub, &admin_creds, "c3", 3600).await;
    let id = real.split('.').nth(1).unwrap();
    let forged = format!("sytoken.{id}.{}", "0".repeat(32));
    let err = join(forged, "c").await.unwrap_err();
    assert!(
        matches!(err, CredentialError::Join(ref m) if m.contains("wrong secret")),
        "{err}"
    );
    // The real one still works after the forgery attempt.
    join(real, "d").await.unwrap();

    let err = join("not a token".into(), "e").await.unwrap_err();
    assert!(
        matches!(err, CredentialError::Join(ref m) if m.contains("not a bootstrap token")),
        "{err}"
    );

    // A token's TTL is bounded.
    let err = admin(&hub, &admin_creds)
        .await
        .create_token(CreateTokenRequest {
            cluster: "c3".into(),
            ttl_seconds: 30 * 24 * 3600,
            role: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A certificate from another CA: refused at the TLS handshake.
    let other = Ca::generate("someone else").unwrap();
    let stranger = ClientCredentials {
        ca_pem: ca_pem.clone(),
        identity: Some(
            other
                .issue(&Identity::Admin, &[], Duration::from_secs(600))
                .unwrap(),
        ),
    };
    let result = async {
        let ch = endpoint(&addr, Some(&stranger)).unwrap().connect().await?;
        AdminServiceClient::new(ch)
            .get(get())
            .await
            .map_err(|s| -> Box<dyn std::error::Error> { s.into() })?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(result.is_err(), "a foreign certificate got through");

    // A client that does not trust the ClusterSet CA does not trust the hub.
    let wrong_ca = ClientCredentials {
        ca_pem: other.cert_pem().to_string(),
        identity: None,
    };
    assert!(endpoint(&addr, Some(&wrong_ca))
        .unwrap()
        .connect()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_agent_keeps_its_certificate_in_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let admin_creds = admin_credentials(dir.path());
    let server = testkube::ApiServer::start(testkube::Options::new(vec![
        testkube::Resource::namespaces(),
        testkube::Resource::new("", "v1", "secrets", "Secret", true),
    ]))
    .await
    .unwrap();
    server
        .create(
            &testkube::Resource::namespaces(),
            json!({"metadata": {"name": "switchyard-system"}}),
        )
        .unwrap();
    let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let store = CredentialStore::Secret {
        api: Box::new(kube::Api::namespaced(client, "switchyard-system")),
        name: "switchyard-agent-identity".into(),
    };
    let t = token(&hub, &admin_creds, "c9", 3600).await;
    let addr = hub.api_addr.to_string();
    let first = credentials::obtain(&addr, &admin_creds.ca_pem, Some(&t), &store)
        .await
        .unwrap();
    let secret = server
        .get(
            &testkube::Resource::new("", "v1", "secrets", "Secret", true),
            "switchyard-system",
            "switchyard-agent-identity",
        )
        .unwrap();
    assert!(secret["data"]["cert.pem"].is_string());
    // A restarted agent (same Secret) needs no token.
    let restarted = credentials::obtain(&addr, &admin_creds.ca_pem, None, &store)
        .await
        .unwrap();
    assert_eq!(restarted, first);
}
