//! The hickory-server wiring: a request handler that answers from the
//! current zone snapshot, on UDP and TCP at one address.

use super::Catalog;
use crate::metrics::{DnsLabels, Metrics};
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::DNSClass;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind DNS {transport} on {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How long a TCP connection may stay idle between requests.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answers queries from the catalog's current snapshot.
pub struct Handler {
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
}

impl Handler {
    /// A handler over `catalog`, counting into `metrics`.
    pub fn new(catalog: Arc<Catalog>, metrics: Arc<Metrics>) -> Self {
        Self { catalog, metrics }
    }
}

fn rcode_label(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NoError".into(),
        ResponseCode::NXDomain => "NXDomain".into(),
        ResponseCode::Refused => "Refused".into(),
        ResponseCode::FormErr => "FormErr".into(),
        ResponseCode::NotImp => "NotImp".into(),
        ResponseCode::ServFail => "ServFail".into(),
        other => format!("{}", u16::from(other)),
    }
}

#[tonic::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let transport = match request.protocol() {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            _ => "other",
        };
        let response_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &response_edns {
            builder.edns(e);
        }
        let mut meta = Metadata::response_from_request(&request.metadata);
        let queries = request.queries.queries();

        let zone = self.catalog.snapshot();
        let answer = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            meta.response_code = ResponseCode::BADVERS;
            None
        } else if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            meta.response_code = ResponseCode::NotImp;
            None
        } else if queries.len() != 1 {
            meta.response_code = ResponseCode::FormErr;
            None
        } else if !matches!(queries[0].query_class(), DNSClass::IN | DNSClass::ANY) {
            meta.response_code = ResponseCode::Refused;
            None
        } else {
            let a = zone.answer(queries[0].name(), queries[0].query_type());
            meta.response_code = a.rcode;
            meta.authoritative = a.authoritative;
            Some(a)
        };
        let (answers, soa) = match &answer {
            Some(a) => (a.answers.as_slice(), a.soa.as_slice()),
            None => (&[][..], &[][..]),
        };
        let msg = builder.build(
            meta,
            answers.iter(),
            std::iter::empty(),
            soa.iter(),
            std::iter::empty(),
        );
        let info = match response.send_response(msg).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, src = %request.src(), "could not send a DNS response");
                meta.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: meta,
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.metrics
            .dns_queries
            .get_or_create(&DnsLabels {
                rcode: rcode_label(meta.response_code),
                transport: transport.into(),
            })
            .inc();
        self.metrics
            .dns_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        info
    }
}

/// Serves the catalog on `listen` over UDP and TCP until `shutdown`;
/// returns the bound address (port 0 picks a port free for both).
pub async fn serve(
    catalog: Arc<Catalog>,
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), DnsError> {
    let (udp, tcp) = bind_both(listen).await?;
    let addr = udp.local_addr().map_err(|source| DnsError::Bind {
        transport: "UDP",
        addr: listen,
        source,
    })?;
    let mut server = Server::new(Handler::new(catalog, metrics));
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 64);
    let token = server.shutdown_token().clone();
    let task = tokio::spawn(async move {
        let stop = tokio::spawn(async move {
            shutdown.cancelled().await;
            token.cancel();
        });
        if let Err(error) = server.block_until_done().await {
            tracing::warn!(%error, "DNS server stopped with an error");
        }
        stop.abort();
    });
    tracing::info!(%addr, "ClusterSet DNS listening on UDP and TCP");
    Ok((addr, task))
}

/// Binds UDP and TCP on the same address; with port 0, retries until a
/// port is free for both.
async fn bind_both(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| DnsError::Bind {
                transport: "UDP",
                addr: listen,
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| DnsError::Bind {
            transport: "UDP",
            addr: listen,
            source,
        })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if listen.port() == 0 && attempts < 20 => attempts += 1,
            Err(source) => {
                return Err(DnsError::Bind {
                    transport: "TCP",
                    addr,
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{client, DnsConfig};
    use hickory_proto::rr::{RData, RecordType};
    use tokio::io::AsyncWriteExt;

    fn backends() -> crate::model::ServiceMap<crate::backends::ServiceBackends> {
        let y = "service: app/api\ntype: ClusterSetIP\nports: [{name: http, port: 8080, protocol: TCP}]\nsessionAffinity: None\nmultiClusterService: null\nconditions: []\nrevision: 1\nclusters:\n- {cluster: a, weight: null, effectiveWeight: 1, share: 1.0, healthy: true, reason: Ready, addresses: [127.0.9.1], endpoints: []}\n";
        let b: crate::backends::ServiceBackends = serde_yaml::from_str(y).unwrap();
        [(b.service.clone(), Arc::new(b))].into_iter().collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_over_udp_and_tcp_and_survives_garbage() {
        let catalog = Arc::new(Catalog::new(DnsConfig::default()));
        catalog.publish(&backends());
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let (addr, task) = serve(
            catalog,
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        for tcp in [false, true] {
            let m = client::query(addr, "api.app.svc.clusterset.local", RecordType::A, tcp)
                .await
                .unwrap();
            assert!(m.metadata.authoritative);
            assert!(matches!(&m.answers[0].data, RData::A(a) if a.0.to_string() == "127.0.9.1"));
            assert!(m.edns.is_some(), "EDNS is echoed");
        }
        let nx = client::query(addr, "x.app.svc.clusterset.local", RecordType::A, false)
            .await
            .unwrap();
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(
            nx.authorities.first().map(|r| &r.data),
            Some(RData::SOA(_))
        ));
        let refused = client::query(addr, "example.com", RecordType::A, false)
            .await
            .unwrap();
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);

        // Garbage of every length over UDP and TCP, from a seeded generator.
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut x: u32 = 12345;
        for len in 0..512usize {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            udp.send_to(&junk, addr).await.unwrap();
            if len % 16 == 0 {
                let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
                let _ = t.write_all(&(len as u16).to_be_bytes()).await;
                let _ = t.write_all(&junk).await;
            }
        }
        let m = client::query(addr, "api.app.svc.clusterset.local", RecordType::A, false)
            .await
            .unwrap();
        assert_eq!(m.answers.len(), 1, "still answering after garbage");
        let text = metrics.encode();
        assert!(
            text.contains("switchyard_dns_queries_total{rcode=\"NoError\",transport=\"udp\"}"),
            "{text}"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
