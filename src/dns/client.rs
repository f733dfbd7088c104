//! A small DNS client on hickory-proto: one query over UDP (falling back to
//! TCP when the answer is truncated) or TCP. Used by `switchyard resolve`
//! and the tests.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one query may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// UDP transmissions per query, evenly spread over [`TIMEOUT`].
const UDP_TRIES: u32 = 3;

/// Why a query got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    #[error("no answer from {server} within {TIMEOUT:?}")]
    Timeout { server: SocketAddr },
    #[error("cannot talk to {server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("malformed answer from {server}: {reason}")]
    Malformed { server: SocketAddr, reason: String },
}

/// Sends one query for `name`/`rtype` (with EDNS, 1232-byte payload) and
/// returns the response.
pub async fn query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    tcp: bool,
) -> Result<Message, ClientError> {
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let qname = Name::from_ascii(&fqdn).map_err(|_| ClientError::BadName(name.to_string()))?;
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(qname, rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    let bytes = msg.to_vec().map_err(|e| ClientError::Malformed {
        server,
        reason: e.to_string(),
    })?;
    let run = async {
        if !tcp {
            let reply = over_udp(server, &bytes, id).await?;
            if !reply.metadata.truncation {
                return Ok(reply);
            }
        }
        over_tcp(server, &bytes).await
    };
    tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| ClientError::Timeout { server })?
}

async fn over_udp(server: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, ClientError> {
    let io = |source| ClientError::Io { server, source };
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| ClientError::Malformed {
        server,
        reason: "bad local address".into(),
    })?;
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(server).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    // Like a resolver, retransmit when a datagram (or its answer) is lost.
    for _ in 0..UDP_TRIES {
        sock.send(bytes).await.map_err(io)?;
        let wait = async {
            loop {
                let n = sock.recv(&mut buf).await.map_err(io)?;
                let reply = Message::from_vec(&buf[..n]).map_err(|e| ClientError::Malformed {
                    server,
                    reason: e.to_string(),
                })?;
                if reply.metadata.id == id {
                    return Ok(reply);
                }
            }
        };
        if let Ok(result) = tokio::time::timeout(TIMEOUT / UDP_TRIES, wait).await {
            return result;
        }
    }
    Err(ClientError::Timeout { server })
}

async fn over_tcp(server: SocketAddr, bytes: &[u8]) -> Result<Message, ClientError> {
    let io = |source| ClientError::Io { server, source };
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    let len = u16::try_from(bytes.len()).map_err(|_| ClientError::Malformed {
        server,
        reason: "query too long".into(),
    })?;
    stream.write_all(&len.to_be_bytes()).await.map_err(io)?;
    stream.write_all(bytes).await.map_err(io)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).await.map_err(io)?;
    Message::from_vec(&buf).map_err(|e| ClientError::Malformed {
        server,
        reason: e.to_string(),
    })
}
