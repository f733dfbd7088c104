//! The ClusterSet DNS server: UDP on one `SO_REUSEPORT` socket per worker
//! thread (blocking receive, answer, send: no task, no wakeup, no lock per
//! query) and TCP on tokio with pipelined queries answered in arrival order.
//! Both answer through [`wire::respond`] from the catalog's current snapshot.

use super::wire::{self, rcode, Transport};
use super::{Catalog, ZoneSnapshot};
use crate::metrics::{DnsLabels, Metrics};
use prometheus_client::metrics::counter::Counter;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
    #[error("cannot start a DNS worker thread: {0}")]
    Thread(std::io::Error),
}

/// How long a TCP connection may stay idle between requests.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once; more are closed on arrival.
const TCP_CONNECTIONS: usize = 1024;
/// How often an idle UDP worker wakes to check for shutdown and publish
/// its counts.
const UDP_POLL: Duration = Duration::from_millis(100);
/// Queries a worker counts locally before adding them to the shared metrics.
const FLUSH_EVERY: u64 = 64;
/// Most UDP worker threads, whatever the core count.
const MAX_UDP_WORKERS: usize = 8;
/// Workers reading one UDP socket. `SO_REUSEPORT` spreads clients over
/// sockets by a hash of their address and port, so a few busy clients (a
/// handful of resolvers, a load generator's 4 sockets) can leave one
/// socket idle and another saturated; workers sharing a socket take
/// whatever is queued, whoever is free. Readers of one socket contend on
/// its receive queue, so larger machines get several sockets.
const WORKERS_PER_SOCKET: usize = 4;

/// The response codes counted, with their metric labels.
const CODES: [(u16, &str); 7] = [
    (rcode::NOERROR, "NoError"),
    (rcode::FORMERR, "FormErr"),
    (rcode::SERVFAIL, "ServFail"),
    (rcode::NXDOMAIN, "NXDomain"),
    (rcode::NOTIMP, "NotImp"),
    (rcode::REFUSED, "Refused"),
    (rcode::BADVERS, "BADVERS"),
];

/// A worker's query counts, added to the shared counters in batches so
/// the workers do not contend on them per query.
struct Tally {
    counters: Vec<Counter>,
    pending: [u64; CODES.len()],
    total: u64,
    metrics: Arc<Metrics>,
}

impl Tally {
    fn new(metrics: &Arc<Metrics>, transport: &str) -> Self {
        let counters = CODES
            .iter()
            .map(|(_, label)| {
                metrics
                    .dns_queries
                    .get_or_create(&DnsLabels {
                        rcode: (*label).into(),
                        transport: transport.into(),
                    })
                    .clone()
            })
            .collect();
        Self {
            counters,
            pending: [0; CODES.len()],
            total: 0,
            metrics: metrics.clone(),
        }
    }

    /// Answers one query from `zone` into `out`, counting it; every
    /// `FLUSH_EVERY`th is timed for the latency histogram.
    fn respond(
        &mut self,
        zone: &ZoneSnapshot,
        query: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        let timed = self.total.is_multiple_of(FLUSH_EVERY);
        let started = timed.then(Instant::now);
        let Some(code) = wire::respond(zone, query, transport, out) else {
            return false;
        };
        if let Some(started) = started {
            self.metrics
                .dns_latency_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        if let Some(i) = CODES.iter().position(|(c, _)| *c == code) {
            self.pending[i] += 1;
        }
        self.total += 1;
        if self.total.is_multiple_of(FLUSH_EVERY) {
            self.flush();
        }
        true
    }

    fn flush(&mut self) {
        for (counter, pending) in self.counters.iter().zip(&mut self.pending) {
            if *pending > 0 {
                counter.inc_by(*pending);
                *pending = 0;
            }
        }
    }
}

/// Serves the catalog on `listen` over UDP and TCP until `shutdown`;
/// returns the bound address (port 0 picks a port free for both). The
/// returned task ends once every socket is closed.
pub async fn serve(
    catalog: Arc<Catalog>,
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), DnsError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_UDP_WORKERS);
    let (udp, tcp) = bind(listen, workers.div_ceil(WORKERS_PER_SOCKET))?;
    let addr = tcp.local_addr().map_err(|source| DnsError::Bind {
        transport: "TCP",
        addr: listen,
        source,
    })?;
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let socket = match udp[i % udp.len()].try_clone() {
            Ok(socket) => socket,
            Err(source) => {
                shutdown.cancel();
                return Err(DnsError::Bind {
                    transport: "UDP",
                    addr,
                    source,
                });
            }
        };
        let (catalog, metrics, stop) = (catalog.clone(), metrics.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || udp_worker(socket, &catalog, &metrics, &stop));
        match thread {
            Ok(t) => threads.push(t),
            Err(error) => {
                shutdown.cancel();
                return Err(DnsError::Thread(error));
            }
        }
    }
    let tcp_task = tokio::spawn(tcp_server(tcp, catalog, metrics, shutdown.clone()));
    let task = tokio::spawn(async move {
        let _ = tcp_task.await;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = joined.await;
    });
    tracing::info!(%addr, udp_workers = workers, "ClusterSet DNS listening on UDP and TCP");
    Ok((addr, task))
}

/// Binds `count` UDP sockets sharing one port (`SO_REUSEPORT`: the kernel
/// spreads clients over them) and a TCP listener on the same port; with
/// port 0, retries until a port is free for both.
fn bind(
    listen: SocketAddr,
    count: usize,
) -> Result<(Vec<std::net::UdpSocket>, TcpListener), DnsError> {
    let udp_error = |addr, source| DnsError::Bind {
        transport: "UDP",
        addr,
        source,
    };
    let mut attempts = 0;
    loop {
        let first = udp_socket(listen).map_err(|e| udp_error(listen, e))?;
        let addr = first.local_addr().map_err(|e| udp_error(listen, e))?;
        let tcp = std::net::TcpListener::bind(addr).and_then(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        });
        let tcp = match tcp {
            Ok(tcp) => tcp,
            Err(_) if listen.port() == 0 && attempts < 20 => {
                attempts += 1;
                continue;
            }
            Err(source) => {
                return Err(DnsError::Bind {
                    transport: "TCP",
                    addr,
                    source,
                })
            }
        };
        let mut sockets = vec![first];
        for _ in 1..count {
            sockets.push(udp_socket(addr).map_err(|e| udp_error(addr, e))?);
        }
        return Ok((sockets, tcp));
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    // Room for bursts: a full queue drops queries.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    socket.set_read_timeout(Some(UDP_POLL))?;
    Ok(socket.into())
}

/// Datagrams a UDP worker takes in before answering them together.
const UDP_BATCH: usize = 32;
/// Bytes kept of a received datagram (queries are far smaller; a longer
/// one arrives cut and is answered FORMERR or dropped).
const UDP_QUERY_MAX: usize = 4096;

/// One UDP worker until `stop`: one `recvmmsg` waits for a datagram and
/// takes whatever else is already queued (up to [`UDP_BATCH`]), the batch
/// is answered, and one `sendmmsg` sends the answers: a busy socket costs
/// two system calls and at most one sleep per batch, not per query.
fn udp_worker(
    socket: std::net::UdpSocket,
    catalog: &Catalog,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) {
    use nix::errno::Errno;
    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut tally = Tally::new(metrics, "udp");
    let mut queries = vec![[0u8; UDP_QUERY_MAX]; UDP_BATCH];
    let mut answers: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut received: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(UDP_BATCH);
    let mut peers: Vec<Option<SockaddrStorage>> = Vec::with_capacity(UDP_BATCH);
    while !stop.is_cancelled() {
        received.clear();
        {
            let mut iovs: Vec<[IoSliceMut; 1]> = queries
                .iter_mut()
                .map(|q| [IoSliceMut::new(&mut q[..])])
                .collect();
            // Blocks (up to the socket's read timeout) for the first only.
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(batch) => received.extend(batch.map(|m| (m.bytes, m.address))),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(error) => tracing::debug!(%error, "DNS receive failed"),
            }
        }
        if received.is_empty() {
            tally.flush();
            continue;
        }
        peers.clear();
        let zone = catalog.load();
        for ((len, peer), query) in received.iter().zip(&queries) {
            let Some(peer) = peer else { continue };
            let query = &query[..(*len).min(UDP_QUERY_MAX)];
            if tally.respond(&zone, query, Transport::Udp, &mut answers[peers.len()]) {
                peers.push(Some(*peer));
            }
        }
        let slices: Vec<[IoSlice; 1]> = answers[..peers.len()]
            .iter()
            .map(|a| [IoSlice::new(a)])
            .collect();
        let mut sent = 0;
        while sent < peers.len() {
            let no_control: [nix::sys::socket::ControlMessage; 0] = [];
            match sendmmsg(
                fd,
                &mut send_headers,
                slices[sent..].iter(),
                &peers[sent..],
                no_control,
                MsgFlags::empty(),
            ) {
                Ok(done) => match done.count() {
                    0 => break,
                    n => sent += n,
                },
                Err(Errno::EINTR) => {}
                Err(error) => {
                    // This answer is lost (the client retries); go on.
                    tracing::debug!(%error, "could not send a DNS response");
                    sent += 1;
                }
            }
        }
    }
    tally.flush();
}

/// Accepts TCP connections until `stop`, each served by its own task.
async fn tcp_server(
    listener: TcpListener,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::debug!(%error, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many DNS TCP connections; closing a new one");
            continue;
        };
        let (catalog, metrics, stop) = (catalog.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = stop.cancelled() => {}
                result = tcp_connection(stream, &catalog, &metrics) => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "DNS TCP connection ended");
                    }
                }
            }
        });
    }
}

/// Serves one TCP connection: length-prefixed queries answered in order as
/// they arrive; answers are flushed whenever no further query is already
/// buffered, so pipelined queries share writes and none waits on another.
async fn tcp_connection(
    stream: TcpStream,
    catalog: &Catalog,
    metrics: &Arc<Metrics>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut read = BufReader::with_capacity(16 << 10, read);
    let mut write = BufWriter::with_capacity(16 << 10, write);
    let mut tally = Tally::new(metrics, "tcp");
    let mut query = vec![0u8; usize::from(u16::MAX)];
    let mut out = Vec::with_capacity(4096);
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, read.read_u16()).await {
            Err(_) => break,
            Ok(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Ok(result) => usize::from(result?),
        };
        read.read_exact(&mut query[..len]).await?;
        if tally.respond(&catalog.load(), &query[..len], Transport::Tcp, &mut out) {
            write.write_all(&(out.len() as u16).to_be_bytes()).await?;
            write.write_all(&out).await?;
        }
        if read.buffer().is_empty() {
            write.flush().await?;
            tally.flush();
        }
    }
    write.flush().await?;
    tally.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{client, DnsConfig};
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{RData, RecordType};
    use tokio::io::AsyncWriteExt;
    use tokio::net::UdpSocket;

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
        // Workers add their counts in batches, at the latest when idle.
        let mut text = String::new();
        for _ in 0..50 {
            text = metrics.encode();
            if text.contains("switchyard_dns_queries_total{rcode=\"NoError\",transport=\"udp\"} 2")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            text.contains("switchyard_dns_queries_total{rcode=\"NoError\",transport=\"udp\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_dns_queries_total{rcode=\"NoError\",transport=\"tcp\"} 1"),
            "{text}"
        );

        // Pipelined over one TCP connection: every answer, in order.
        let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut burst = Vec::new();
        for id in 0..50u16 {
            let name = if id % 2 == 0 { "api" } else { "nope" };
            let mut m = hickory_proto::op::Message::new(
                id,
                hickory_proto::op::MessageType::Query,
                hickory_proto::op::OpCode::Query,
            );
            m.add_query(hickory_proto::op::Query::query(
                hickory_proto::rr::Name::from_ascii(format!("{name}.app.svc.clusterset.local."))
                    .unwrap(),
                RecordType::A,
            ));
            let bytes = m.to_vec().unwrap();
            burst.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            burst.extend_from_slice(&bytes);
        }
        t.write_all(&burst).await.unwrap();
        for id in 0..50u16 {
            use tokio::io::AsyncReadExt;
            let len = t.read_u16().await.unwrap();
            let mut buf = vec![0; len as usize];
            t.read_exact(&mut buf).await.unwrap();
            let m = hickory_proto::op::Message::from_vec(&buf).unwrap();
            assert_eq!(m.metadata.id, id);
            let want = if id % 2 == 0 {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            assert_eq!(m.metadata.response_code, want);
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
