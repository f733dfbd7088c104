//! `switchyard install`: the Kubernetes manifests of a member cluster (CRDs,
//! RBAC, the agent, its CA and bootstrap token, the CoreDNS forward) or of
//! the hub (StatefulSet, Services, PodDisruptionBudget), as one YAML stream
//! for `kubectl apply -f -`. The templates are the files in `deploy/`.

use super::{admin, status_error, HubTarget};
use anyhow::{anyhow, bail, Context};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

const SERVICE_EXPORTS: &str = include_str!("../../deploy/crds/serviceexports.yaml");
const SERVICE_IMPORTS: &str = include_str!("../../deploy/crds/serviceimports.yaml");
const MULTI_CLUSTER_SERVICES: &str = include_str!("../../deploy/crds/multiclusterservices.yaml");
const AGENT: &str = include_str!("../../deploy/agent.yaml");
const COREDNS: &str = include_str!("../../deploy/coredns.yaml");
const HUB: &str = include_str!("../../deploy/hub.yaml");

/// The image the manifests run by default.
pub fn default_image() -> String {
    format!(
        "ghcr.io/switchyard-io/switchyard:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// What to render.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// A member cluster's manifests, for this cluster ID.
    pub cluster: Option<String>,
    /// The hub's manifests, with this many replicas (instead of a cluster's).
    pub hub_replicas: Option<u32>,
    /// Where agents reach the hub API (host:port).
    pub hub: String,
    /// A bootstrap token; created on the hub when absent.
    pub token: Option<String>,
    /// The ClusterSet CA certificate; fetched from the hub when absent.
    pub ca: Option<PathBuf>,
    /// Where CoreDNS forwards the ClusterSet zone (host:port); the hub's
    /// host on port 53 by default.
    pub hub_dns: Option<String>,
    pub zone: String,
    pub namespace: String,
    pub image: String,
    pub region: String,
    pub zone_of_cluster: String,
    /// Hub manifests: Service type of the hub API and DNS.
    pub service_type: String,
    /// Hub manifests: volume size per replica.
    pub storage: String,
    /// Hub manifests: extra names for the hub's certificate.
    pub tls_sans: Vec<String>,
}

/// Replaces every `${NAME}` in `template`; a name without a value is a bug.
fn render(template: &str, values: &BTreeMap<&str, String>) -> anyhow::Result<String> {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    if let Some(at) = out.find("${") {
        let rest = &out[at..];
        let end = rest.find('}').unwrap_or(rest.len());
        bail!(
            "internal error: template value {} is not set",
            &rest[..=end.min(rest.len() - 1)]
        );
    }
    Ok(out)
}

/// The documents of a YAML stream, parsed (anchors resolved, comments
/// dropped) so that the output is plain and every template is checked.
fn documents(text: &str) -> anyhow::Result<Vec<serde_yaml::Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).context("a template does not parse")?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn stream(docs: &[serde_yaml::Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(doc)?);
    }
    Ok(out)
}

fn yaml(value: serde_json::Value) -> anyhow::Result<serde_yaml::Value> {
    Ok(serde_yaml::to_value(value)?)
}

fn check_label(what: &str, value: &str) -> anyhow::Result<()> {
    crate::model::ServiceKey::new(value, "x")
        .map(|_| ())
        .map_err(|_| anyhow!("{what} {value:?} is not a DNS-1123 label"))
}

/// Renders the manifests; contacts the hub (admin credentials) only for
/// what was not given: the CA and a token.
pub async fn install(opts: &InstallOptions, target: &HubTarget) -> anyhow::Result<String> {
    check_label("--namespace", &opts.namespace)?;
    if let Some(replicas) = opts.hub_replicas {
        return hub_manifests(opts, replicas);
    }
    let cluster = opts.cluster.as_deref().ok_or_else(|| {
        anyhow!("--cluster is required (or --hub-replicas for the hub's manifests)")
    })?;
    crate::model::validate_cluster_id(cluster).map_err(|e| anyhow!("--cluster: {e}"))?;
    let hub = crate::model::host_port(&opts.hub).map_err(|e| anyhow!("--hub: {e}"))?;
    let hub_dns = match &opts.hub_dns {
        Some(d) => crate::model::host_port(d).map_err(|e| anyhow!("--hub-dns: {e}"))?,
        None => format!("{}:53", crate::identity::tls::host_of(&hub)),
    };
    let ca_pem = match &opts.ca {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --ca {}", path.display()))?,
        None => {
            admin(target)
                .await?
                .get_ca(crate::proto::GetCaRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .ca_pem
        }
    };
    if crate::identity::ca::not_after_unix(&ca_pem).is_none() {
        bail!("the ClusterSet CA is not a PEM certificate");
    }
    let token = match &opts.token {
        Some(t) => {
            crate::identity::token::Token::parse(t).map_err(|e| anyhow!("--token: {e}"))?;
            t.clone()
        }
        None => {
            admin(target)
                .await?
                .create_token(crate::proto::CreateTokenRequest {
                    cluster: cluster.to_string(),
                    ttl_seconds: 3600,
                    role: "agent".into(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .token
        }
    };
    let values: BTreeMap<&str, String> = [
        ("NAMESPACE", opts.namespace.clone()),
        ("CLUSTER", cluster.to_string()),
        ("HUB", hub.clone()),
        ("IMAGE", opts.image.clone()),
        ("REGION", opts.region.clone()),
        ("ZONE", opts.zone_of_cluster.clone()),
        ("ZONE_NAME", opts.zone.trim_end_matches('.').to_string()),
        ("HUB_DNS", hub_dns),
    ]
    .into();
    let mut docs = Vec::new();
    for crd in [SERVICE_EXPORTS, SERVICE_IMPORTS, MULTI_CLUSTER_SERVICES] {
        docs.extend(documents(crd)?);
    }
    let labels = json!({"app.kubernetes.io/part-of": "switchyard"});
    let mut agent = documents(&render(AGENT, &values)?)?;
    // The CA and the token go right after the Namespace.
    agent.insert(
        1,
        yaml(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "switchyard-ca", "namespace": opts.namespace, "labels": labels},
            "data": {"ca.pem": ca_pem},
        }))?,
    );
    agent.insert(
        2,
        yaml(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "switchyard-bootstrap", "namespace": opts.namespace, "labels": labels},
            "stringData": {"token": token},
        }))?,
    );
    docs.extend(agent);
    docs.extend(documents(&render(COREDNS, &values)?)?);
    stream(&docs)
}

fn hub_manifests(opts: &InstallOptions, replicas: u32) -> anyhow::Result<String> {
    if replicas == 0 || replicas.is_multiple_of(2) {
        bail!("--hub-replicas {replicas}: use an odd number (1, 3, 5): raft needs a majority");
    }
    let peers: Vec<String> = (0..replicas)
        .map(|i| {
            format!(
                "{}=switchyard-hub-{i}.switchyard-hub-peers.{}.svc:7800",
                i + 1,
                opts.namespace
            )
        })
        .collect();
    let mut sans = vec![
        "switchyard-hub".to_string(),
        format!("switchyard-hub.{}", opts.namespace),
        format!("switchyard-hub.{}.svc", opts.namespace),
    ];
    sans.extend(opts.tls_sans.iter().cloned());
    let values: BTreeMap<&str, String> = [
        ("NAMESPACE", opts.namespace.clone()),
        ("REPLICAS", replicas.to_string()),
        ("IMAGE", opts.image.clone()),
        ("PEERS", peers.join(",")),
        ("TLS_SANS", sans.join(",")),
        ("SERVICE_TYPE", opts.service_type.clone()),
        ("STORAGE", opts.storage.clone()),
    ]
    .into();
    stream(&documents(&render(HUB, &values)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_fully_and_parse() {
        let values: BTreeMap<&str, String> = [("X", "1".to_string())].into();
        assert_eq!(render("a ${X} b", &values).unwrap(), "a 1 b");
        assert!(render("a ${Y}", &values)
            .unwrap_err()
            .to_string()
            .contains("${Y}"));
        for crd in [SERVICE_EXPORTS, SERVICE_IMPORTS, MULTI_CLUSTER_SERVICES] {
            let docs = documents(crd).unwrap();
            assert_eq!(docs.len(), 1);
            assert_eq!(docs[0]["kind"], "CustomResourceDefinition");
        }
        // The aliases resolve: both versions carry the full schema.
        let imports = &documents(SERVICE_IMPORTS).unwrap()[0];
        let versions = imports["spec"]["versions"].as_sequence().unwrap();
        assert_eq!(versions[0]["schema"], versions[1]["schema"]);
        assert_eq!(
            versions.iter().filter(|v| v["storage"] == true).count(),
            1,
            "exactly one storage version"
        );
    }
}
