//! `switchyard install` renders manifests that pass an offline Kubernetes
//! schema validator in strict mode (kubernetes-validate, installed by
//! e2e/setup), CRDs included: a member cluster's, offline (given the CA and
//! a token) and from a running hub (which makes the token), and the hub's.

#[path = "support/mod.rs"]
mod support;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn switchyard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the validator in strict mode on `yaml`; panics with its report.
fn validate(dir: &Path, name: &str, yaml: &str) -> usize {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&path)
        .output()
        .expect("kubernetes-validate is not installed: run `bash e2e/setup` (pip install kubernetes-validate)");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} does not validate:\n{report}");
    assert!(!report.contains("ERROR"), "{report}");
    report.matches(" passed for resource ").count()
}

/// A ClusterSet CA written to `dir` and a bootstrap token, for rendering
/// without a hub.
fn offline_credentials(dir: &Path) -> (std::path::PathBuf, String) {
    let ca = switchyard::identity::Ca::generate("test").unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    (
        ca_file,
        switchyard::identity::token::Token::generate().to_string(),
    )
}

fn kinds(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn member_and_hub_manifests_validate_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, token) = offline_credentials(dir.path());

    let (ok, member, err) = switchyard(&[
        "install",
        "--cluster",
        "us-east-1",
        "--hub",
        "hub.example.com:7700",
        "--ca",
        ca_file.to_str().unwrap(),
        "--token",
        &token,
        "--region",
        "us-east",
    ]);
    assert!(ok, "{err}");
    let k = kinds(&member);
    for want in [
        "CustomResourceDefinition",
        "ClusterRole",
        "Role",
        "Deployment",
        "Secret",
        "ConfigMap",
    ] {
        assert!(k.iter().any(|x| x == want), "no {want} in {k:?}");
    }
    assert_eq!(
        k.iter()
            .filter(|x| *x == "CustomResourceDefinition")
            .count(),
        3
    );
    assert!(member.contains(&token) && member.contains("BEGIN CERTIFICATE"));
    assert!(
        member.contains("forward . hub.example.com:53"),
        "CoreDNS forwards to the hub"
    );
    assert_eq!(validate(dir.path(), "member.yaml", &member), k.len());

    let (ok, hub, err) = switchyard(&[
        "install",
        "--hub-replicas",
        "3",
        "--tls-san",
        "hub.example.com",
    ]);
    assert!(ok, "{err}");
    assert!(hub.contains("3=switchyard-hub-2.switchyard-hub-peers.switchyard-system.svc:7800"));
    // Replicas authenticate each other with the CA from the Secret.
    assert!(hub.contains("--ca-key=/etc/switchyard/ca/ca-key.pem"));
    assert!(hub.contains("secretName: switchyard-hub-ca"));
    assert!(
        !hub.contains("kind: Secret"),
        "no CA given, no Secret rendered"
    );
    assert_eq!(validate(dir.path(), "hub.yaml", &hub), kinds(&hub).len());

    // With --hub-ca, the CA from `hub init-ca` travels as that Secret.
    let ca_dir = dir.path().join("hub-ca");
    let (ok, _, err) = switchyard(&["hub", "init-ca", "--out", ca_dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, again, err) = switchyard(&["hub", "init-ca", "--out", ca_dir.to_str().unwrap()]);
    assert!(
        !ok && again.is_empty() && err.contains("never overwritten"),
        "{err}"
    );
    let (ok, with_ca, err) = switchyard(&[
        "install",
        "--hub-replicas",
        "3",
        "--hub-ca",
        ca_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(with_ca.contains("name: switchyard-hub-ca") && with_ca.contains("BEGIN PRIVATE KEY"));
    assert_eq!(
        validate(dir.path(), "hub-ca.yaml", &with_ca),
        kinds(&with_ca).len()
    );

    // Bad input: one line, non-zero exit, nothing printed.
    for (args, why) in [
        (
            vec![
                "install",
                "--cluster",
                "Not_Valid",
                "--ca",
                ca_file.to_str().unwrap(),
                "--token",
                &token,
            ],
            "--cluster",
        ),
        (vec!["install", "--hub-replicas", "2"], "odd number"),
        (
            vec![
                "install",
                "--cluster",
                "c1",
                "--ca",
                ca_file.to_str().unwrap(),
                "--token",
                "nope",
            ],
            "not a bootstrap token",
        ),
        (
            vec![
                "install",
                "--cluster",
                "c1",
                "--hub",
                "bad host:1",
                "--ca",
                ca_file.to_str().unwrap(),
                "--token",
                &token,
            ],
            "--hub",
        ),
    ] {
        let (ok, out, err) = switchyard(&args);
        assert!(
            !ok && out.is_empty() && err.contains(why),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn install_asks_a_running_hub_for_the_ca_and_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let raft = format!("127.0.0.1:{}", free_port());
    let mut hub = Command::new(BIN)
        .args(["hub", "--id", "1", "--raft", &raft, "--api", &api])
        .args(["--dns", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path().join("hub"))
        .args(["--peers", &format!("1={raft}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let creds = dir.path().join("hub/admin");
    let deadline = Instant::now() + Duration::from_secs(20);
    let member = loop {
        let (ok, out, err) = switchyard(&[
            "install",
            "--cluster",
            "c1",
            "--hub",
            &api,
            "--credentials",
            creds.to_str().unwrap(),
            "--gateway-cidr",
            "10.96.0.128/25",
            "--gateway-dns-ip",
            "10.96.0.53",
        ]);
        if ok {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "install against the hub failed: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = hub.kill();
    let _ = hub.wait();
    let ca = std::fs::read_to_string(creds.join("ca.pem")).unwrap();
    assert!(
        member.contains(ca.lines().nth(1).unwrap()),
        "the hub's CA is in the ConfigMap"
    );
    let tokens: std::collections::BTreeSet<&str> = member
        .lines()
        .filter_map(|l| l.trim().strip_prefix("token: "))
        .collect();
    assert_eq!(
        tokens.len(),
        2,
        "an agent and a gateway token were created: {tokens:?}"
    );
    assert!(tokens.iter().all(|t| t.starts_with("sytoken.")));
    validate(dir.path(), "member.yaml", &member);
}

/// The value of `key` in the Kubernetes object of `kind` named `name` in a
/// YAML stream.
fn object(yaml: &str, kind: &str, name: &str) -> serde_yaml::Value {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn a_member_with_a_gateway_validates_and_routes_dns_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, token) = offline_credentials(dir.path());
    let gateway_token = switchyard::identity::token::Token::generate().to_string();
    let base = [
        "install",
        "--cluster",
        "eu-1",
        "--hub",
        "hub.example.com:7700",
        "--ca",
        ca_file.to_str().unwrap(),
        "--token",
        &token,
        "--gateway-token",
        &gateway_token,
        "--gateway-cidr",
        "10.96.0.128/25",
        "--gateway-dns-ip",
        "10.96.0.53",
    ];
    // A NodePort by default, advertised on each pod's node address.
    let (ok, member, err) = switchyard(&base);
    assert!(ok, "{err}");
    assert_eq!(
        validate(dir.path(), "gateway.yaml", &member),
        kinds(&member).len()
    );
    let deployment = object(&member, "Deployment", "switchyard-gateway");
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for want in [
        "--outbound-cidr=10.96.0.128/25",
        "--outbound-ports=20000-29999",
        "--advertise=$(HOST_IP):31543",
        "--cluster=eu-1",
    ] {
        assert!(args.contains(&want), "{want} not in {args:?}");
    }
    let inbound = object(&member, "Service", "switchyard-gateway-inbound");
    assert_eq!(inbound["spec"]["type"], "NodePort");
    assert_eq!(inbound["spec"]["ports"][0]["nodePort"], 31543);
    assert_eq!(
        object(&member, "Service", "switchyard-gateway-dns")["spec"]["clusterIP"],
        "10.96.0.53"
    );
    object(&member, "PodDisruptionBudget", "switchyard-gateway");
    assert!(member.contains(&gateway_token) && member.contains(&token));
    assert!(
        member.contains("forward . 10.96.0.53:53"),
        "CoreDNS asks the gateway"
    );
    // The agent may write the derived Services in its namespace.
    let role = object(&member, "Role", "switchyard-agent");
    assert!(role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|r| r["resources"][0] == "services"
            && r["verbs"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|v| v == "create")));

    // A load balancer's address, when given.
    let mut lb = base.to_vec();
    lb.extend(["--gateway-advertise", "gw.eu-1.example.com:15443"]);
    let (ok, member, err) = switchyard(&lb);
    assert!(ok, "{err}");
    let inbound = object(&member, "Service", "switchyard-gateway-inbound");
    assert_eq!(inbound["spec"]["type"], "LoadBalancer");
    assert!(inbound["spec"]["ports"][0].get("nodePort").is_none());
    assert!(member.contains("--advertise=gw.eu-1.example.com:15443"));
    validate(dir.path(), "gateway-lb.yaml", &member);

    // Bad input: named, nothing printed.
    for (change, why) in [
        (("--gateway-dns-ip", "10.96.0.130"), "inside --gateway-cidr"),
        (("--gateway-cidr", "10.96.0.0/8"), "--gateway-cidr"),
        (("--gateway-ports", "80-90"), "--gateway-ports"),
        (("--gateway-advertise", "no port"), "--gateway-advertise"),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        match args.iter().position(|a| *a == change.0) {
            Some(i) => args[i + 1] = change.1,
            None => args.extend([change.0, change.1]),
        }
        let (ok, out, err) = switchyard(&args);
        assert!(
            !ok && out.is_empty() && err.contains(why),
            "{args:?}: {err}"
        );
    }
    let without_dns: Vec<&str> = base[..base.len() - 2].to_vec();
    let (ok, _, err) = switchyard(&without_dns);
    assert!(!ok && err.contains("--gateway-dns-ip"), "{err}");
}
