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
const GATEWAY: &str = include_str!("../../deploy/gateway.yaml");
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
    /// Hub manifests: a directory from `switchyard hub init-ca` whose CA
    /// goes into the stream as the `switchyard-hub-ca` Secret; without it
    /// the Secret must exist already (docs/operations.md).
    pub hub_ca: Option<PathBuf>,
    /// The cluster's east-west gateway, when its network is not flat.
    pub gateway: Option<GatewayInstall>,
}

/// A member cluster's east-west gateway (a Deployment in port mode).
#[derive(Debug, Clone)]
pub struct GatewayInstall {
    /// ClusterSetIPs: a range of the cluster's Service CIDR that its
    /// apiserver does not hand out (the low, static band).
    pub cidr: String,
    /// The gateway's listener ports, one per imported service port.
    pub ports: String,
    /// The ClusterIP of the gateway's DNS Service, which CoreDNS forwards
    /// the zone to: in the Service CIDR, outside `cidr`.
    pub dns_ip: String,
    /// Where other clusters' gateways reach it (a load balancer's
    /// HOST:PORT); a NodePort on each node's address when absent.
    pub advertise: Option<String>,
    pub replicas: u32,
    /// A bootstrap token of role gateway; created on the hub when absent.
    pub token: Option<String>,
}

/// The inbound NodePort when no load balancer address is given.
const INBOUND_NODE_PORT: u16 = 31543;

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
    if let Some(g) = &opts.gateway {
        check_gateway(g)?;
    }
    let token = bootstrap_token(opts.token.as_deref(), "--token", cluster, "agent", target).await?;
    let hub_dns = match &opts.gateway {
        Some(g) => format!("{}:53", g.dns_ip),
        None => hub_dns,
    };
    let mut values: BTreeMap<&str, String> = [
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
    if let Some(g) = &opts.gateway {
        let token = bootstrap_token(
            g.token.as_deref(),
            "--gateway-token",
            cluster,
            "gateway",
            target,
        )
        .await?;
        docs.extend(gateway_manifests(
            g,
            &opts.namespace,
            &mut values,
            &token,
            &labels,
        )?);
    }
    docs.extend(documents(&render(COREDNS, &values)?)?);
    stream(&docs)
}

/// A token given on the command line (checked), or a new one of `role`
/// from the hub.
async fn bootstrap_token(
    given: Option<&str>,
    flag: &str,
    cluster: &str,
    role: &str,
    target: &HubTarget,
) -> anyhow::Result<String> {
    if let Some(t) = given {
        crate::identity::token::Token::parse(t).map_err(|e| anyhow!("{flag}: {e}"))?;
        return Ok(t.to_string());
    }
    Ok(admin(target)
        .await?
        .create_token(crate::proto::CreateTokenRequest {
            cluster: cluster.to_string(),
            ttl_seconds: 3600,
            role: role.into(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .token)
}

/// Refuses a gateway that could not work, naming the flag.
fn check_gateway(g: &GatewayInstall) -> anyhow::Result<()> {
    let range =
        crate::hub::state::cidr_hosts(&g.cidr).map_err(|e| anyhow!("--gateway-cidr: {e}"))?;
    crate::hub::state::port_range(&g.ports).map_err(|e| anyhow!("--gateway-ports: {e}"))?;
    let dns: std::net::Ipv4Addr = g
        .dns_ip
        .parse()
        .map_err(|_| anyhow!("--gateway-dns-ip {:?} is not an IPv4 address", g.dns_ip))?;
    if range.contains(&u32::from(dns)) {
        bail!(
            "--gateway-dns-ip {dns} is inside --gateway-cidr {}: the hub would give it to a service too",
            g.cidr
        );
    }
    if let Some(a) = &g.advertise {
        crate::model::host_port(a).map_err(|e| anyhow!("--gateway-advertise: {e}"))?;
    }
    if g.replicas == 0 {
        bail!("--gateway-replicas must be at least 1");
    }
    Ok(())
}

/// The gateway's documents: the Deployment and its Services from the
/// template, its bootstrap token, and the inbound NodePort when no load
/// balancer address is given.
fn gateway_manifests(
    g: &GatewayInstall,
    namespace: &str,
    values: &mut BTreeMap<&str, String>,
    token: &str,
    labels: &serde_json::Value,
) -> anyhow::Result<Vec<serde_yaml::Value>> {
    let (advertise, inbound_type) = match &g.advertise {
        Some(a) => (a.clone(), "LoadBalancer"),
        // Kubernetes expands $(HOST_IP) from the pod's environment.
        None => (format!("$(HOST_IP):{INBOUND_NODE_PORT}"), "NodePort"),
    };
    values.insert("GATEWAY_REPLICAS", g.replicas.to_string());
    values.insert("GATEWAY_CIDR", g.cidr.clone());
    values.insert("GATEWAY_PORTS", g.ports.clone());
    values.insert("GATEWAY_DNS_IP", g.dns_ip.clone());
    values.insert("GATEWAY_ADVERTISE", advertise);
    values.insert("INBOUND_SERVICE_TYPE", inbound_type.into());
    let mut docs = vec![yaml(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "switchyard-gateway-bootstrap", "namespace": namespace, "labels": labels},
        "stringData": {"token": token},
    }))?];
    for mut doc in documents(&render(GATEWAY, values)?)? {
        let inbound =
            doc["kind"] == "Service" && doc["metadata"]["name"] == "switchyard-gateway-inbound";
        if inbound && g.advertise.is_none() {
            doc["spec"]["ports"][0]["nodePort"] = serde_yaml::Value::from(INBOUND_NODE_PORT);
        }
        docs.push(doc);
    }
    Ok(docs)
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
    let mut docs = Vec::new();
    if let Some(dir) = &opts.hub_ca {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read --hub-ca {}", path.display()))
        };
        let (cert, key) = (
            read(crate::hub::trust::CA_CERT_FILE)?,
            read(crate::hub::trust::CA_KEY_FILE)?,
        );
        crate::identity::Ca::from_pem(&cert, &key)
            .with_context(|| format!("--hub-ca {} is not a ClusterSet CA", dir.display()))?;
        let labels = serde_json::json!({"app.kubernetes.io/part-of": "switchyard"});
        docs.push(serde_yaml::to_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "switchyard-hub-ca", "namespace": opts.namespace, "labels": labels},
            "type": "Opaque",
            "stringData": {
                crate::hub::trust::CA_CERT_FILE: cert,
                crate::hub::trust::CA_KEY_FILE: key,
            },
        }))?);
    }
    let mut rendered = documents(&render(HUB, &values)?)?;
    // The Secret goes after the Namespace it lives in.
    let at = usize::from(!rendered.is_empty());
    for (i, doc) in docs.into_iter().enumerate() {
        rendered.insert(at + i, doc);
    }
    stream(&rendered)
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
