//! The real binaries end to end over TLS: a hub, `switchyard token create`,
//! and `switchyard agent` on a kubeconfig pointing at testkube (the
//! project's Kubernetes API server for tests). The agent joins with the
//! token, keeps its certificate in a Secret, exports what a ServiceExport
//! names, writes the ServiceImport back, and after a restart without the
//! token (spent) goes on with the stored certificate. `switchyard gateway`
//! in port mode (as in a pod) gets a listener port for the import, the agent
//! derives the Service that sends the ClusterSetIP there, and a connection to
//! that port reaches the service's endpoint.

#[path = "support/mod.rs"]
mod support;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::free_port;
use testkube::{ApiServer, Options, Resource};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn resources() -> Vec<Resource> {
    vec![
        Resource::namespaces(),
        Resource::services(),
        Resource::endpoint_slices(),
        Resource::new("", "v1", "secrets", "Secret", true),
        Resource::new(
            "multicluster.x-k8s.io",
            "v1beta1",
            "serviceexports",
            "ServiceExport",
            true,
        )
        .with_status(),
        Resource::new(
            "multicluster.x-k8s.io",
            "v1beta1",
            "serviceimports",
            "ServiceImport",
            true,
        )
        .with_status(),
    ]
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_joins_exports_imports_and_restarts_on_its_stored_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(Options::new(resources())).await.unwrap();
    for ns in ["kube-system", "switchyard-system", "app"] {
        server
            .create(&Resource::namespaces(), json!({"metadata": {"name": ns}}))
            .unwrap();
    }
    server
        .create(
            &Resource::services(),
            json!({"metadata": {"name": "api", "namespace": "app"},
            "spec": {"ports": [{"name": "http", "port": 80}]}}),
        )
        .unwrap();
    server
        .create(&Resource::endpoint_slices(), json!({
            "metadata": {"name": "api-1", "namespace": "app", "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["127.0.44.1"], "conditions": {"ready": true}}]}))
        .unwrap();
    let export = Resource::new(
        "multicluster.x-k8s.io",
        "v1beta1",
        "serviceexports",
        "ServiceExport",
        true,
    )
    .with_status();
    server
        .create(
            &export,
            json!({"metadata": {"name": "api", "namespace": "app"}}),
        )
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();

    let api = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let _hub = Killed(
        Command::new(BIN)
            .args(["hub", "--id", "1", "--raft", &raft, "--api", &api])
            .args(["--dns", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(dir.path().join("hub"))
            .args(["--peers", &format!("1={raft}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let creds = dir.path().join("hub/admin");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--hub", &api])
            .arg("--credentials")
            .arg(&creds)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let token = loop {
        let (ok, out, err) = cli(&["token", "create", "--cluster", "c1", "--ttl", "10m"]);
        if ok {
            break out;
        }
        assert!(Instant::now() < deadline, "token create: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let agent = |token: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "--hub", &api, "--cluster", "c1"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--ca")
            .arg(creds.join("ca.pem"))
            .env("POD_NAMESPACE", "switchyard-system")
            .env_remove("SWITCHYARD_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        Killed(cmd.spawn().unwrap())
    };

    let first = agent(Some(&token));
    let exported = || {
        let (ok, out, _) = cli(&["get", "exports", "-o", "json"]);
        ok && out.contains("\"cluster\": \"c1\"") && out.contains("127.0.44.1")
    };
    eventually("the hub has c1's export", exported).await;
    let import = Resource::new(
        "multicluster.x-k8s.io",
        "v1beta1",
        "serviceimports",
        "ServiceImport",
        true,
    )
    .with_status();
    eventually("the ServiceImport is written back", || {
        server.get(&import, "app", "api").is_some()
    })
    .await;
    let secret = Resource::new("", "v1", "secrets", "Secret", true);
    assert!(server
        .get(&secret, "switchyard-system", "switchyard-agent-identity")
        .is_some());

    // The gateway binary in port mode, as deploy/gateway.yaml runs it: the
    // hub gives it a listener port for api:80 and a ClusterSetIP, the agent
    // derives the Service that sends one to the other, and a connection to
    // the listener port reaches the service's endpoint.
    let backend = tokio::net::TcpListener::bind("127.0.44.1:8080")
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = backend.accept().await {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, b"api in c1\n").await;
        }
    });
    let (ok, gateway_token, err) = cli(&[
        "token",
        "create",
        "--cluster",
        "c1",
        "--role",
        "gateway",
        "--ttl",
        "10m",
    ]);
    assert!(ok, "gateway token: {err}");
    let _gateway = Killed(
        Command::new(BIN)
            .args(["gateway", "--cluster", "c1", "--hub", &api])
            .args(["--token", &gateway_token])
            .args(["--inbound", &format!("127.0.0.1:{}", free_port())])
            .args(["--outbound-cidr", "10.96.0.128/28"])
            .args([
                "--outbound-ports",
                "20000-20099",
                "--outbound-bind",
                "127.0.44.2",
            ])
            .arg("--ca")
            .arg(creds.join("ca.pem"))
            .arg("--data-dir")
            .arg(dir.path().join("gateway"))
            .env_remove("SWITCHYARD_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the agent derives a Service for the import", || {
        server.list(&Resource::services()).iter().any(|s| {
            s["metadata"]["namespace"] == "switchyard-system"
                && s["spec"]["clusterIP"] == "10.96.0.129"
                && s["spec"]["ports"][0]["port"] == 80
                && s["spec"]["ports"][0]["targetPort"] == 20000
                && s["spec"]["selector"]["app.kubernetes.io/name"] == "switchyard-gateway"
        })
    })
    .await;
    assert_eq!(
        server.get(&import, "app", "api").unwrap()["spec"]["ips"],
        json!(["10.96.0.129"])
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let greeting = async {
            let mut conn = tokio::net::TcpStream::connect("127.0.44.2:20000")
                .await
                .ok()?;
            let mut line = String::new();
            tokio::io::AsyncBufReadExt::read_line(
                &mut tokio::io::BufReader::new(&mut conn),
                &mut line,
            )
            .await
            .ok()?;
            Some(line)
        };
        if greeting.await.as_deref() == Some("api in c1\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer through the gateway's listener port"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(first);

    // Restart without a token (it was spent): the Secret carries on. A
    // deleted import proves the new agent is at work.
    server.delete(&import, "app", "api").unwrap();
    let second = agent(None);
    eventually("the restarted agent writes the import again", || {
        server.get(&import, "app", "api").is_some()
    })
    .await;
    drop(second);

    // The spent token is refused to a fresh agent (no stored certificate).
    server
        .delete(&secret, "switchyard-system", "switchyard-agent-identity")
        .unwrap();
    let out = Command::new(BIN)
        .args(["agent", "--hub", &api, "--cluster", "c1", "--token", &token])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--ca")
        .arg(creds.join("ca.pem"))
        .env("POD_NAMESPACE", "switchyard-system")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already used"),
        "{err}"
    );
}
