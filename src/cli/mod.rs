//! Client subcommands: `apply`, `get`, `weights set`, `resolve`. Each talks
//! to a hub's admin API (or its DNS) and prints kubectl-style output.

pub mod drill;
pub mod install;
pub mod output;
pub mod resolve;

use crate::proto::admin_service_client::AdminServiceClient;
use anyhow::{anyhow, Context};
use std::time::Duration;
use tonic::transport::Channel;

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Where the CLI finds the hub, and the admin credentials it presents.
#[derive(Debug, Clone)]
pub struct HubTarget {
    /// One address or several replicas separated by commas.
    pub hub: String,
    /// `None`: plain HTTP/2, for a hub started with `--insecure`.
    pub credentials: Option<crate::identity::tls::ClientCredentials>,
}

/// Where `switchyard up` writes its admin credentials (the default).
pub const PLAYGROUND_CREDENTIALS: &str = ".switchyard/hub/admin";

impl HubTarget {
    /// The hub at `hub` with the credentials in `dir`; without `dir`, the
    /// playground's if they exist, else none.
    pub fn new(hub: &str, dir: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let credentials = match dir {
            Some(dir) => Some(
                crate::identity::tls::ClientCredentials::load(dir)
                    .with_context(|| format!("--credentials {}", dir.display()))?,
            ),
            None => {
                let default = std::path::Path::new(PLAYGROUND_CREDENTIALS);
                if default.join(crate::identity::tls::CA_FILE).exists() {
                    Some(crate::identity::tls::ClientCredentials::load(default)?)
                } else {
                    None
                }
            }
        };
        Ok(Self {
            hub: hub.to_string(),
            credentials,
        })
    }
}

/// Connects to a hub's admin API. The target may list several replicas;
/// the first that answers is used.
pub async fn admin(target: &HubTarget) -> anyhow::Result<AdminServiceClient<Channel>> {
    let mut last = None;
    for addr in target
        .hub
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let endpoint = crate::identity::tls::endpoint(addr, target.credentials.as_ref())
            .with_context(|| format!("invalid hub address {addr:?}"))?
            .timeout(Duration::from_secs(15));
        match endpoint.connect().await {
            Ok(channel) => return Ok(AdminServiceClient::new(channel)),
            Err(e) => last = Some(format!("{addr}: {}", error_chain(&e))),
        }
    }
    let hint = match &target.credentials {
        Some(_) => "is the hub running? set --hub or SWITCHYARD_HUB",
        None => "is the hub running, without TLS (--insecure)? otherwise pass --credentials DIR (SWITCHYARD_CREDENTIALS)",
    };
    Err(anyhow!(
        "cannot reach the hub at {}: {} ({hint})",
        target.hub,
        last.unwrap_or_else(|| "no address given".into())
    ))
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A gRPC error as one line: the hub's message, not tonic's wrapping.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    if s.message().is_empty() {
        anyhow!("{:?}", s.code())
    } else {
        anyhow!("{}", s.message())
    }
}

/// `switchyard apply -f FILE`: prints one line per object.
pub async fn apply(hub: &HubTarget, file: &str) -> anyhow::Result<()> {
    let manifest = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the manifest from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    // Parse locally first, as kubectl does: a malformed file fails without a
    // hub round trip, and the hub receives compact JSON, not YAML.
    let manifest =
        crate::model::manifest::to_json(&manifest).map_err(|e| anyhow!("{file}: {e}"))?;
    let mut client = admin(hub).await?;
    let reply = client
        .apply(crate::proto::ApplyRequest { manifest })
        .await
        .map_err(|s| anyhow!("{file}: {}", status_error(s)))?;
    for line in reply.into_inner().results {
        println!("{line}");
    }
    Ok(())
}

/// `switchyard get KIND [NAME]`.
pub async fn get(
    hub: &HubTarget,
    kind: &str,
    name: Option<&str>,
    cluster: Option<&str>,
    format: Format,
    consistent: bool,
) -> anyhow::Result<()> {
    let mut client = admin(hub).await?;
    let reply = client
        .get(crate::proto::GetRequest {
            kind: kind.to_string(),
            name: name.unwrap_or_default().to_string(),
            consistent,
            cluster: cluster.unwrap_or_default().to_string(),
        })
        .await
        .map_err(status_error)?;
    let value: serde_json::Value =
        serde_json::from_str(&reply.into_inner().json).context("the hub sent invalid JSON")?;
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&value)? + "\n",
        Format::Yaml => serde_yaml::to_string(&value)?,
        Format::Table => output::table(kind, &value),
    };
    print!("{text}");
    Ok(())
}

/// Parses `CLUSTER=WEIGHT` arguments.
pub fn parse_weights(args: &[String]) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    let mut out = std::collections::HashMap::new();
    for a in args {
        let (c, w) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("{a:?} is not CLUSTER=WEIGHT"))?;
        let w: i64 = w
            .trim()
            .parse()
            .map_err(|_| anyhow!("{a:?}: weight {w:?} is not a whole number"))?;
        if out.insert(c.trim().to_string(), w).is_some() {
            return Err(anyhow!("cluster {c} is given twice"));
        }
    }
    if out.is_empty() {
        return Err(anyhow!(
            "no weights given; write CLUSTER=WEIGHT, e.g. us-west-1=60 us-east-1=40"
        ));
    }
    Ok(out)
}

/// `switchyard weights set NS/MCS CLUSTER=WEIGHT...`.
pub async fn set_weights(hub: &HubTarget, mcs: &str, args: &[String]) -> anyhow::Result<()> {
    let key: crate::model::ServiceKey = mcs
        .parse()
        .map_err(|e| anyhow!("MultiClusterService name: {e}"))?;
    let weights = parse_weights(args)?;
    let mut client = admin(hub).await?;
    let reply = client
        .set_weights(crate::proto::SetWeightsRequest {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
            weights,
        })
        .await
        .map_err(status_error)?;
    println!("{}", reply.into_inner().result);
    Ok(())
}

/// `switchyard status`: the hub's replicas, leader and term.
pub async fn status(hub: &HubTarget, format: Format) -> anyhow::Result<()> {
    let mut client = admin(hub).await?;
    let reply = client
        .status(crate::proto::StatusRequest {})
        .await
        .map_err(status_error)?;
    let value: serde_json::Value =
        serde_json::from_str(&reply.into_inner().json).context("the hub sent invalid JSON")?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&value)?),
        Format::Table => {
            println!("leader: {}   term: {}", value["leader"], value["term"]);
            let rows: Vec<Vec<String>> = value["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let cell = |v: &serde_json::Value| match v {
                        serde_json::Value::Null => "-".to_string(),
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    vec![
                        cell(&m["id"]),
                        cell(&m["address"]),
                        cell(&m["role"]),
                        cell(&m["match"]),
                        cell(&m["applied"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::columns(&["ID", "ADDRESS", "ROLE", "MATCH", "APPLIED"], &rows)
            );
        }
    }
    Ok(())
}

/// `switchyard hub members add ID ADDR` / `remove ID`.
pub async fn change_member(hub: &HubTarget, id: u64, address: Option<&str>) -> anyhow::Result<()> {
    let mut client = admin(hub).await?;
    let reply = client
        .change_member(crate::proto::MemberChangeRequest {
            id,
            address: address.unwrap_or_default().to_string(),
            remove: address.is_none(),
        })
        .await
        .map_err(status_error)?;
    println!("{}", reply.into_inner().result);
    Ok(())
}

/// `switchyard token create`: prints a one-time bootstrap token for the
/// cluster's agent or (`role` "gateway") its gateway.
pub async fn create_token(
    hub: &HubTarget,
    cluster: &str,
    ttl: Duration,
    role: &str,
) -> anyhow::Result<()> {
    let mut client = admin(hub).await?;
    let reply = client
        .create_token(crate::proto::CreateTokenRequest {
            cluster: cluster.to_string(),
            ttl_seconds: ttl.as_secs(),
            role: role.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{}", reply.token);
    eprintln!(
        "token for the {role} of cluster {cluster}, valid until {} for one join",
        reply.expires
    );
    Ok(())
}

/// Parses `--peers 1=ADDR,2=ADDR,3=ADDR`.
pub fn parse_peers(text: &str) -> anyhow::Result<std::collections::BTreeMap<u64, String>> {
    let mut out = std::collections::BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--peers: {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| anyhow!("--peers: replica ID {id:?} is not a positive number"))?;
        if id == 0 {
            return Err(anyhow!("--peers: replica ID 0 is reserved"));
        }
        let addr =
            crate::model::host_port(addr).map_err(|e| anyhow!("--peers: replica {id}: {e}"))?;
        if out.insert(id, addr).is_some() {
            return Err(anyhow!("--peers: replica {id} is listed twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_clear_errors() {
        let p = parse_peers("1=127.0.0.1:7801, 2=127.0.0.1:7802").unwrap();
        assert_eq!(p[&2], "127.0.0.1:7802");
        assert!(parse_peers("1=x")
            .unwrap_err()
            .to_string()
            .contains("not HOST:PORT"));
        let dns = parse_peers("1=hub-0.hub.sy.svc:7800").unwrap();
        assert_eq!(dns[&1], "hub-0.hub.sy.svc:7800");
        assert!(parse_peers("1=bad_name:7800")
            .unwrap_err()
            .to_string()
            .contains("neither"));
        assert!(parse_peers("1=hub:0")
            .unwrap_err()
            .to_string()
            .contains("port"));
        assert!(parse_peers("a=127.0.0.1:1")
            .unwrap_err()
            .to_string()
            .contains("not a positive number"));
        assert!(parse_peers("1=127.0.0.1:1,1=127.0.0.1:2")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(parse_peers("0=127.0.0.1:1").is_err());
    }

    #[test]
    fn weights_parse_with_clear_errors() {
        let w = parse_weights(&["a=80".into(), "b=30".into()]).unwrap();
        assert_eq!(w["a"], 80);
        assert!(parse_weights(&["a".into()])
            .unwrap_err()
            .to_string()
            .contains("not CLUSTER=WEIGHT"));
        assert!(parse_weights(&["a=x".into()])
            .unwrap_err()
            .to_string()
            .contains("not a whole number"));
        assert_eq!(
            parse_weights(&["a=-5".into()]).unwrap()["a"],
            -5,
            "the hub rejects negatives with its message"
        );
        assert!(parse_weights(&[]).is_err());
    }
}
