//! `switchyard resolve NAME`: queries the ClusterSet DNS and names the
//! cluster behind each address (from the hub's exports).

use crate::dns::client;
use anyhow::{anyhow, bail};
use hickory_proto::rr::{RData, RecordType};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Maps endpoint addresses to cluster IDs using the hub's exports; empty
/// (with a warning) when the hub cannot be reached.
async fn address_owners(hub: &super::HubTarget) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let Ok(mut c) = super::admin(hub).await else {
        return map;
    };
    let Ok(reply) = c
        .get(crate::proto::GetRequest {
            kind: "exports".into(),
            name: String::new(),
            consistent: false,
            cluster: String::new(),
        })
        .await
    else {
        return map;
    };
    let value: serde_json::Value =
        serde_json::from_str(&reply.into_inner().json).unwrap_or_default();
    for e in value.as_array().into_iter().flatten() {
        let cluster = e["cluster"].as_str().unwrap_or_default().to_string();
        for ep in e["endpoints"].as_array().into_iter().flatten() {
            if let Some(a) = ep["address"].as_str() {
                map.insert(a.to_string(), cluster.clone());
            }
        }
    }
    map
}

/// Runs the query and prints answers; `quiet` prints only the first address.
pub async fn resolve(
    dns: SocketAddr,
    hub: &super::HubTarget,
    name: &str,
    rtype: &str,
    tcp: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let rtype: RecordType = rtype
        .to_uppercase()
        .parse()
        .map_err(|_| anyhow!("unknown record type {rtype:?}"))?;
    let msg = client::query(dns, name, rtype, tcp)
        .await
        .map_err(|e| anyhow!("{name}: {e}"))?;
    let code = msg.metadata.response_code;
    if code != hickory_proto::op::ResponseCode::NoError {
        bail!("{name}: {code} from {dns}");
    }
    let answers = &msg.answers;
    if quiet {
        let first = answers.iter().find_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        });
        match first {
            Some(a) => println!("{a}"),
            None => bail!("{name}: no {rtype} records"),
        }
        return Ok(());
    }
    if answers.is_empty() {
        println!("{name}: no {rtype} records (NODATA)");
        return Ok(());
    }
    let owners = address_owners(hub).await;
    for r in answers {
        let data = r.data.to_string();
        let owner = match &r.data {
            RData::A(a) => owners.get(&a.0.to_string()),
            RData::AAAA(a) => owners.get(&a.0.to_string()),
            _ => None,
        };
        let suffix = owner
            .map(|c| format!("   ; cluster {c}"))
            .unwrap_or_default();
        println!("{} {} IN {} {data}{suffix}", r.name, r.ttl, r.record_type());
    }
    Ok(())
}
