//! Conversions between the gRPC messages of `proto/` and the model types,
//! with errors that name the field that is wrong.

use crate::model::{ClusterId, Endpoint, Export, Port, ServiceKey, ServiceType, SessionAffinity};
use crate::proto;

/// A message field the hub cannot accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("export {service}: {field} {value:?} is invalid: {reason}")]
    Field {
        service: String,
        field: &'static str,
        value: String,
        reason: String,
    },
}

fn field_err(service: &str, field: &'static str, value: &str, reason: impl ToString) -> WireError {
    WireError::Field {
        service: service.to_string(),
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Model export → wire.
pub fn export_to_proto(e: &Export) -> proto::Export {
    proto::Export {
        namespace: e.service.namespace.clone(),
        name: e.service.name.clone(),
        r#type: e.service_type.to_string(),
        session_affinity: format!("{:?}", e.session_affinity),
        ports: e.ports.iter().map(port_to_proto).collect(),
        endpoint_ports: e.endpoint_ports.iter().map(port_to_proto).collect(),
        endpoints: e.endpoints.iter().map(endpoint_to_proto).collect(),
        created_unix_ms: e.created_unix_ms,
    }
}

/// Model endpoint → wire.
pub fn endpoint_to_proto(ep: &Endpoint) -> proto::Endpoint {
    proto::Endpoint {
        address: ep.address.to_string(),
        hostname: ep.hostname.clone().unwrap_or_default(),
        pod: ep.pod.clone().unwrap_or_default(),
        ready: ep.ready,
        serving: ep.serving,
        terminating: ep.terminating,
        zone: ep.zone.clone().unwrap_or_default(),
    }
}

/// Model port → wire.
pub fn port_to_proto(p: &Port) -> proto::Port {
    proto::Port {
        name: p.name.clone(),
        protocol: p.protocol.clone(),
        app_protocol: p.app_protocol.clone(),
        port: u32::from(p.port),
    }
}

/// Wire ports → model, for the export `svc`; `field` names them in errors.
fn ports_from_proto(
    svc: &str,
    field: &'static str,
    ports: &[proto::Port],
) -> Result<Vec<Port>, WireError> {
    let mut out = Vec::with_capacity(ports.len());
    for port in ports {
        let number = u16::try_from(port.port)
            .map_err(|e| field_err(svc, field, &port.port.to_string(), e))?;
        out.push(Port {
            name: port.name.clone(),
            protocol: if port.protocol.is_empty() {
                "TCP".into()
            } else {
                port.protocol.clone()
            },
            app_protocol: port.app_protocol.clone(),
            port: number,
        });
    }
    Ok(out)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Wire export of `cluster` → model, checking every field.
pub fn export_from_proto(cluster: &ClusterId, p: &proto::Export) -> Result<Export, WireError> {
    let svc = format!("{}/{}", p.namespace, p.name);
    let service =
        ServiceKey::new(&p.namespace, &p.name).map_err(|e| field_err(&svc, "name", &svc, e))?;
    let service_type = match p.r#type.as_str() {
        "" | "ClusterSetIP" => ServiceType::ClusterSetIP,
        "Headless" => ServiceType::Headless,
        other => {
            return Err(field_err(
                &svc,
                "type",
                other,
                "use ClusterSetIP or Headless",
            ))
        }
    };
    let session_affinity = match p.session_affinity.as_str() {
        "" | "None" => SessionAffinity::None,
        "ClientIP" => SessionAffinity::ClientIP,
        other => {
            return Err(field_err(
                &svc,
                "sessionAffinity",
                other,
                "use None or ClientIP",
            ))
        }
    };
    let ports = ports_from_proto(&svc, "port", &p.ports)?;
    let endpoint_ports = ports_from_proto(&svc, "endpoint port", &p.endpoint_ports)?;
    let mut endpoints = Vec::with_capacity(p.endpoints.len());
    for ep in &p.endpoints {
        endpoints.push(Endpoint {
            address: ep
                .address
                .parse()
                .map_err(|e| field_err(&svc, "endpoint address", &ep.address, e))?,
            hostname: non_empty(&ep.hostname),
            pod: non_empty(&ep.pod),
            ready: ep.ready,
            serving: ep.serving,
            terminating: ep.terminating,
            zone: non_empty(&ep.zone),
        });
    }
    let export = Export {
        cluster: cluster.clone(),
        service,
        service_type,
        session_affinity,
        ports,
        endpoint_ports,
        endpoints,
        created_unix_ms: p.created_unix_ms,
    };
    export
        .validate()
        .map_err(|e| field_err(&svc, "export", &svc, e))?;
    Ok(export)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_round_trips_and_bad_fields_are_named() {
        let e = Export {
            cluster: "a".into(),
            service: ServiceKey::new("app", "db").unwrap(),
            service_type: ServiceType::Headless,
            session_affinity: SessionAffinity::ClientIP,
            ports: vec![Port {
                name: "pg".into(),
                protocol: "TCP".into(),
                app_protocol: String::new(),
                port: 5432,
            }],
            endpoint_ports: vec![Port {
                name: "pg".into(),
                protocol: "TCP".into(),
                app_protocol: String::new(),
                port: 15432,
            }],
            endpoints: vec![Endpoint {
                address: "127.0.1.21".parse().unwrap(),
                hostname: Some("db-0".into()),
                pod: Some("db-0".into()),
                ready: true,
                serving: true,
                terminating: false,
                zone: Some("z".into()),
            }],
            created_unix_ms: 42,
        };
        let p = export_to_proto(&e);
        assert_eq!(export_from_proto(&"a".into(), &p).unwrap(), e);
        let mut bad = p.clone();
        bad.endpoints[0].address = "not-an-ip".into();
        let err = export_from_proto(&"a".into(), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoint address \"not-an-ip\""), "{err}");
        let mut bad = p;
        bad.ports[0].port = 70000;
        assert!(export_from_proto(&"a".into(), &bad)
            .unwrap_err()
            .to_string()
            .contains("port \"70000\""));
    }
}
