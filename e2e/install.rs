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

fn kinds(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn member_and_hub_manifests_validate_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let ca = switchyard::identity::Ca::generate("test").unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let token = switchyard::identity::token::Token::generate().to_string();

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
    assert_eq!(validate(dir.path(), "hub.yaml", &hub), kinds(&hub).len());

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
    assert!(member.contains("sytoken."), "a token was created");
    validate(dir.path(), "member.yaml", &member);
}
