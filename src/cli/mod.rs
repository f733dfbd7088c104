//! Client subcommands: `apply`, `get`, `weights set`, `resolve`. Each talks
//! to a hub's admin API (or its DNS) and prints kubectl-style output.

pub mod output;
pub mod resolve;

use crate::agent::stream::hub_url;
use crate::proto::admin_service_client::AdminServiceClient;
use anyhow::{anyhow, Context};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Connects to a hub's admin API. `hub` may list several replicas
/// separated by commas; the first that answers is used.
pub async fn admin(hub: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
    let mut last = None;
    for addr in hub.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let endpoint = Endpoint::from_shared(hub_url(addr))
            .with_context(|| format!("invalid hub address {addr:?}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15));
        match endpoint.connect().await {
            Ok(channel) => return Ok(AdminServiceClient::new(channel)),
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(anyhow!(
        "cannot reach the hub at {hub}: {} (is `switchyard up` running? set --hub or SWITCHYARD_HUB)",
        last.unwrap_or_else(|| "no address given".into())
    ))
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
pub async fn apply(hub: &str, file: &str) -> anyhow::Result<()> {
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
    hub: &str,
    kind: &str,
    name: Option<&str>,
    format: Format,
    consistent: bool,
) -> anyhow::Result<()> {
    let mut client = admin(hub).await?;
    let reply = client
        .get(crate::proto::GetRequest {
            kind: kind.to_string(),
            name: name.unwrap_or_default().to_string(),
            consistent,
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
pub async fn set_weights(hub: &str, mcs: &str, args: &[String]) -> anyhow::Result<()> {
    let key: crate::model::ServiceKey = mcs
        .parse()
        .map_err(|e| anyhow!("MultiClusterService name: {e}"))?;
    let weights = parse_weights(args)?;
    let mut client = admin(hub).await?;
    let reply = client
        .set_weights(crate::proto::SetWeightsRequest {
            namespace: key.namespace,
            name: key.name,
            weights,
        })
        .await
        .map_err(status_error)?;
    println!("{}", reply.into_inner().result);
    Ok(())
}

/// `switchyard status`: the hub's replicas, leader and term.
pub async fn status(hub: &str, format: Format) -> anyhow::Result<()> {
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
pub async fn change_member(hub: &str, id: u64, address: Option<&str>) -> anyhow::Result<()> {
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

/// Parses `--peers 1=ADDR,2=ADDR,3=ADDR`.
pub fn parse_peers(text: &str) -> anyhow::Result<std::collections::BTreeMap<u64, String>> {
    let mut out = std::collections::BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--peers: {part:?} is not ID=IP:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| anyhow!("--peers: replica ID {id:?} is not a positive number"))?;
        if id == 0 {
            return Err(anyhow!("--peers: replica ID 0 is reserved"));
        }
        let addr: std::net::SocketAddr = addr
            .trim()
            .parse()
            .map_err(|_| anyhow!("--peers: {addr:?} (replica {id}) is not IP:PORT"))?;
        if out.insert(id, addr.to_string()).is_some() {
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
            .contains("not IP:PORT"));
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
