//! Parses multi-document YAML (or JSON) manifests into typed resources,
//! dispatching on `apiVersion` and `kind`, with errors that name the
//! document and the problem.

use super::key::{is_dns_label, ServiceKey};
use super::resources::*;
use serde::Deserialize;
use serde_json::Value;

/// A resource switchyard understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    ServiceImport(ServiceImport),
    MultiClusterService(MultiClusterService),
    ServiceExport(ServiceExport),
}

impl Resource {
    /// `kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        let (kind, m) = match self {
            Resource::ServiceImport(r) => ("serviceimport", &r.metadata),
            Resource::MultiClusterService(r) => ("multiclusterservice", &r.metadata),
            Resource::ServiceExport(r) => ("serviceexport", &r.metadata),
        };
        format!("{kind} {}/{}", m.namespace, m.name)
    }
}

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("document {doc}: malformed {format}: {reason}")]
    Syntax {
        doc: usize,
        format: &'static str,
        reason: String,
    },
    #[error("document {doc}: {reason}")]
    Invalid { doc: usize, reason: String },
    #[error("document {doc}: missing {field}")]
    Missing { doc: usize, field: &'static str },
    #[error("document {doc}: unsupported kind {kind:?} (supported: ServiceImport, MultiClusterService, ServiceExport)")]
    UnknownKind { doc: usize, kind: String },
    #[error("document {doc}: {kind} does not support apiVersion {api_version:?} (supported: {supported})")]
    UnknownVersion {
        doc: usize,
        kind: String,
        api_version: String,
        supported: String,
    },
    #[error("document {doc}: {kind} {field} {value:?} is not a DNS-1123 label")]
    BadName {
        doc: usize,
        kind: String,
        field: &'static str,
        value: String,
    },
    #[error("the manifest has no documents")]
    Empty,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

/// Parses every document; fails on the first bad one (nothing is applied
/// from a manifest with any bad document). Empty documents are skipped.
///
/// Text that starts with `{` is read as a stream of JSON objects (what
/// `switchyard apply` sends, like kubectl); anything else as multi-document
/// YAML. Both become JSON values first, so the typed decoding is the same.
pub fn parse(text: &str) -> Result<Vec<Resource>, ManifestError> {
    documents(text)?
        .into_iter()
        .map(|(doc, value)| parse_value(doc, value))
        .collect()
}

/// Validates a manifest like [`parse`] and returns it as newline-separated
/// compact JSON documents: the form the CLI sends to the hub, which then
/// skips YAML parsing on its write path.
pub fn to_json(text: &str) -> Result<String, ManifestError> {
    let docs = documents(text)?;
    let mut out = String::with_capacity(text.len());
    for (doc, value) in docs {
        out.push_str(&value.to_string());
        out.push('\n');
        parse_value(doc, value)?;
    }
    Ok(out)
}

/// The non-empty documents of a manifest, numbered from 1 in file order.
fn documents(text: &str) -> Result<Vec<(usize, Value)>, ManifestError> {
    let mut out = Vec::new();
    if text.trim_start().starts_with('{') {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (i, value) in stream.enumerate() {
            let doc = i + 1;
            let value = value.map_err(|e| ManifestError::Syntax {
                doc,
                format: "JSON",
                reason: e.to_string(),
            })?;
            out.push((doc, value));
        }
    } else {
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc = i + 1;
            let value = Value::deserialize(de).map_err(|e| ManifestError::Syntax {
                doc,
                format: "YAML",
                reason: e.to_string(),
            })?;
            if !value.is_null() {
                out.push((doc, value));
            }
        }
    }
    if out.is_empty() {
        return Err(ManifestError::Empty);
    }
    Ok(out)
}

fn parse_value(doc: usize, value: Value) -> Result<Resource, ManifestError> {
    if !value.is_object() {
        return Err(ManifestError::Invalid {
            doc,
            reason: "not a mapping of fields (apiVersion, kind, metadata, spec)".into(),
        });
    }
    let tm = TypeMeta::deserialize(&value).map_err(|e| ManifestError::Invalid {
        doc,
        reason: e.to_string(),
    })?;
    let kind = tm
        .kind
        .ok_or(ManifestError::Missing { doc, field: "kind" })?;
    let api_version = tm.api_version.ok_or(ManifestError::Missing {
        doc,
        field: "apiVersion",
    })?;
    let supported = match kind.as_str() {
        "ServiceImport" => SERVICE_IMPORT_VERSIONS,
        "MultiClusterService" => MCS_VERSIONS,
        "ServiceExport" => SERVICE_EXPORT_VERSIONS,
        _ => return Err(ManifestError::UnknownKind { doc, kind }),
    };
    if !supported.contains(&api_version.as_str()) {
        return Err(ManifestError::UnknownVersion {
            doc,
            kind,
            api_version,
            supported: supported.join(", "),
        });
    }
    let typed = |e: serde_json::Error| ManifestError::Invalid {
        doc,
        reason: format!("{kind}: {e}"),
    };
    let res = match kind.as_str() {
        "ServiceImport" => Resource::ServiceImport(Deserialize::deserialize(value).map_err(typed)?),
        "MultiClusterService" => {
            Resource::MultiClusterService(Deserialize::deserialize(value).map_err(typed)?)
        }
        _ => Resource::ServiceExport(Deserialize::deserialize(value).map_err(typed)?),
    };
    let meta = match &res {
        Resource::ServiceImport(r) => &r.metadata,
        Resource::MultiClusterService(r) => &r.metadata,
        Resource::ServiceExport(r) => &r.metadata,
    };
    for (field, value) in [
        ("metadata.name", &meta.name),
        ("metadata.namespace", &meta.namespace),
    ] {
        if value.is_empty() {
            return Err(ManifestError::Missing {
                doc,
                field: if field == "metadata.name" {
                    "metadata.name"
                } else {
                    "metadata.namespace"
                },
            });
        }
        if !is_dns_label(value) {
            return Err(ManifestError::BadName {
                doc,
                kind: kind.clone(),
                field,
                value: value.clone(),
            });
        }
    }
    Ok(res)
}

/// The ServiceImport key a MultiClusterService refers to.
pub fn mcs_import_key(mcs: &MultiClusterService) -> ServiceKey {
    ServiceKey {
        namespace: mcs.import_namespace().into(),
        name: mcs.spec.service_import.name.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Gateway API guide's step 5, verbatim.
    pub const SEED: &str = include_str!("../../docs/examples/seed-mcs.yaml");

    #[test]
    fn parses_the_seed_guide_as_written() {
        let docs = parse(SEED).unwrap();
        assert_eq!(docs.len(), 2);
        let Resource::ServiceImport(si) = &docs[0] else {
            panic!("not an import")
        };
        assert_eq!(si.spec.ports[0].port, 8080);
        assert_eq!(si.spec.ports[0].protocol, "TCP");
        assert_eq!(si.spec.resolution.as_deref(), Some("DNS"));
        let Resource::MultiClusterService(m) = &docs[1] else {
            panic!("not an mcs")
        };
        assert_eq!(m.spec.cluster_backends.len(), 2);
        assert_eq!(m.spec.cluster_backends[0].weight, 60);
        assert_eq!(mcs_import_key(m).to_string(), "app/api-v1-multi");
    }

    #[test]
    fn accepts_mcs_api_group_versions() {
        for v in [
            "multicluster.x-k8s.io/v1alpha1",
            "multicluster.x-k8s.io/v1beta1",
        ] {
            let y = format!("apiVersion: {v}\nkind: ServiceImport\nmetadata: {{name: a, namespace: b}}\nspec: {{type: Headless}}\n");
            assert!(matches!(&parse(&y).unwrap()[0], Resource::ServiceImport(_)));
            let y = format!(
                "apiVersion: {v}\nkind: ServiceExport\nmetadata: {{name: a, namespace: b}}\n"
            );
            assert!(matches!(&parse(&y).unwrap()[0], Resource::ServiceExport(_)));
        }
    }

    #[test]
    fn json_documents_parse_too() {
        let j = r#"{"apiVersion":"switchyard.io/v1alpha1","kind":"MultiClusterService","metadata":{"name":"m","namespace":"app"},"spec":{"serviceImport":{"name":"x"},"clusterBackends":[{"cluster":"a","weight":3}]}}"#;
        let Resource::MultiClusterService(m) = &parse(j).unwrap()[0] else {
            panic!()
        };
        assert_eq!(mcs_import_key(m).to_string(), "app/x");
    }

    #[test]
    fn to_json_round_trips_every_document() {
        let json = to_json(SEED).unwrap();
        assert_eq!(json.lines().count(), 2);
        assert!(json.starts_with('{'), "{json}");
        assert_eq!(parse(&json).unwrap(), parse(SEED).unwrap());
        let e = to_json(&SEED.replace("weight: 40", "wieght: 40")).unwrap_err();
        assert!(e.to_string().contains("document 2"), "{e}");
    }

    #[test]
    fn json_errors_name_the_document_and_problem() {
        let e = parse("{\"kind\": \"ServiceImport\"}\n{\"kind\": ")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("document 2") && e.contains("malformed JSON"),
            "{e}"
        );
        let e = parse("- a\n- b\n").unwrap_err().to_string();
        assert!(
            e.contains("document 1") && e.contains("not a mapping"),
            "{e}"
        );
        let e = parse("kind: 5\n").unwrap_err().to_string();
        assert!(
            e.contains("document 1") && e.contains("invalid type"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_document_and_problem() {
        let e = parse("kind: Foo\napiVersion: v1\nmetadata: {name: a}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("document 1") && e.contains("unsupported kind \"Foo\""),
            "{e}"
        );
        let bad = SEED.replace("weight: 40", "wieght: 40");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("document 2") && e.contains("wieght"), "{e}");
        let e = parse("a: [b\n").unwrap_err().to_string();
        assert!(e.contains("malformed YAML"), "{e}");
        let e = parse(&SEED.replace("v1beta1\nkind: Multi", "v9\nkind: Multi"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not support apiVersion"), "{e}");
        assert_eq!(parse("---\n").unwrap_err(), ManifestError::Empty);
        let e = parse(&SEED.replace("name: api-v1-global", "name: Api_Global"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metadata.name") && e.contains("Api_Global"),
            "{e}"
        );
    }
}
