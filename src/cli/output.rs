//! Tables for `switchyard get`, kubectl style: upper-case headers, columns
//! padded to their widest cell.

use serde_json::Value;

/// Renders rows as aligned columns.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn ports(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let name = p["name"].as_str().unwrap_or_default();
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    if name.is_empty() {
                        format!("{}/{proto}", s(&p["port"]))
                    } else {
                        format!("{name}:{}/{proto}", s(&p["port"]))
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

fn condition(v: &Value, type_: &str) -> Option<(String, String, String)> {
    v.as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| (s(&c["status"]), s(&c["reason"]), s(&c["message"])))
}

fn rows_of(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    }
}

/// The table for one kind.
pub fn table(kind: &str, value: &Value) -> String {
    let items = rows_of(value);
    match kind.trim_end_matches('s') {
        "gateway" => columns(
            &[
                "CLUSTER",
                "INBOUND",
                "LISTENERS",
                "APPLIED",
                "OFFERED",
                "LAG",
                "REJECTED",
            ],
            &items
                .iter()
                .map(|g| {
                    vec![
                        s(&g["cluster"]),
                        s(&g["inbound"]),
                        s(&g["listeners"]),
                        s(&g["appliedVersion"]),
                        s(&g["offeredVersion"]),
                        format!("{}s", s(&g["lag"]["seconds"])),
                        g["rejected"]["reason"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        "cluster" => columns(
            &["CLUSTER", "REGION", "ZONE", "STATE", "EXPORTS"],
            &items
                .iter()
                .map(|c| {
                    vec![
                        s(&c["id"]),
                        s(&c["region"]),
                        s(&c["zone"]),
                        s(&c["state"]),
                        s(&c["exports"]),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        "export" => columns(
            &["CLUSTER", "SERVICE", "TYPE", "PORTS", "READY"],
            &items
                .iter()
                .map(|e| {
                    let total = e["endpoints"].as_array().map(|a| a.len()).unwrap_or(0);
                    vec![
                        s(&e["cluster"]),
                        s(&e["service"]),
                        s(&e["type"]),
                        ports(&e["ports"]),
                        format!("{}/{total}", s(&e["ready"])),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        "import" | "serviceimport" => columns(
            &["SERVICE", "TYPE", "PORTS", "CLUSTERS", "READY"],
            &items
                .iter()
                .map(|i| {
                    let clusters: Vec<String> = i["status"]["clusters"]
                        .as_array()
                        .map(|a| a.iter().map(|c| s(&c["cluster"])).collect())
                        .unwrap_or_default();
                    let ready = condition(&i["status"]["conditions"], "Ready")
                        .map(|(st, r, _)| format!("{st} ({r})"))
                        .unwrap_or_default();
                    vec![
                        format!(
                            "{}/{}",
                            s(&i["metadata"]["namespace"]),
                            s(&i["metadata"]["name"])
                        ),
                        s(&i["spec"]["type"]),
                        ports(&i["spec"]["ports"]),
                        if clusters.is_empty() {
                            "-".into()
                        } else {
                            clusters.join(",")
                        },
                        ready,
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        "mc" | "multiclusterservice" => columns(
            &["NAME", "SERVICEIMPORT", "WEIGHTS", "ACCEPTED", "READY"],
            &items
                .iter()
                .map(|m| {
                    let weights: Vec<String> = m["spec"]["clusterBackends"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|b| format!("{}={}", s(&b["cluster"]), s(&b["weight"])))
                                .collect()
                        })
                        .unwrap_or_default();
                    let ns = s(&m["metadata"]["namespace"]);
                    let import_ns = m["spec"]["serviceImport"]["namespace"]
                        .as_str()
                        .filter(|n| !n.is_empty())
                        .map(String::from)
                        .unwrap_or(ns.clone());
                    let conds = &m["status"]["conditions"];
                    vec![
                        format!("{ns}/{}", s(&m["metadata"]["name"])),
                        format!("{import_ns}/{}", s(&m["spec"]["serviceImport"]["name"])),
                        weights.join(","),
                        condition(conds, "Accepted")
                            .map(|(st, _, _)| st)
                            .unwrap_or_default(),
                        condition(conds, "Ready")
                            .map(|(st, r, _)| format!("{st} ({r})"))
                            .unwrap_or_default(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        "backend" => {
            let mut rows = Vec::new();
            let mut notes = String::new();
            for b in &items {
                for c in b["clusters"].as_array().into_iter().flatten() {
                    let share = c["share"].as_f64().unwrap_or(0.0);
                    let addrs: Vec<String> = c["addresses"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect())
                        .unwrap_or_default();
                    rows.push(vec![
                        s(&b["service"]),
                        s(&c["cluster"]),
                        c["weight"]
                            .as_u64()
                            .map(|w| w.to_string())
                            .unwrap_or_else(|| "-".into()),
                        format!("{:.1}%", share * 100.0),
                        if c["healthy"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        if addrs.is_empty() {
                            "-".into()
                        } else {
                            addrs.join(",")
                        },
                        s(&c["reason"]),
                    ]);
                }
                if let Some((_, reason, msg)) = condition(&b["conditions"], "Conflict") {
                    notes.push_str(&format!(
                        "{}: Conflict ({reason}): {msg}\n",
                        s(&b["service"])
                    ));
                }
                if let Some(("False", _, msg)) = condition(&b["conditions"], "Ready")
                    .as_ref()
                    .map(|(a, b, c)| (a.as_str(), b, c))
                {
                    notes.push_str(&format!("{}: {msg}\n", s(&b["service"])));
                }
            }
            columns(
                &[
                    "SERVICE",
                    "CLUSTER",
                    "WEIGHT",
                    "SHARE",
                    "HEALTHY",
                    "ADDRESSES",
                    "REASON",
                ],
                &rows,
            ) + &notes
        }
        _ => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = columns(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A     BB\nxxx   y\n");
    }
}
