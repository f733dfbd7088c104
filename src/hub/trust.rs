//! Who may use a replica's raft peer port: hub replicas of this ClusterSet,
//! over mutual TLS, each with a certificate of the ClusterSet CA for its own
//! replica ID (`spiffe://switchyard/hub/replica/<id>`).
//!
//! The peer links carry the first election, so every replica needs the CA
//! before there is any replicated state: it comes from files
//! (`--ca-cert`/`--ca-key`, made once by `switchyard hub init-ca`; in
//! Kubernetes the `switchyard-hub-ca` Secret), or, for a group of one
//! replica, from `DATA_DIR/ca/`, created on its first start. Each replica
//! issues its own certificate from the CA at start; none is written to disk.
//!
//! The listener terminates TLS itself (a handshake deadline, a connection
//! cap) and hands tonic connections that carry the caller's identity; the
//! peer service checks it on every call ([`PeerIdentity`]).

use crate::identity::tls::{mutual_server_config, write_private, TlsSetupError};
use crate::identity::{Ca, CaError, Identity, REPLICA_SERVER_NAME};
use crate::metrics::Metrics;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig};

/// The CA certificate's file name in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Lifetime of a replica's peer certificate. It is issued anew at every
/// start and lives only in memory; a replica that runs longer than this
/// must be restarted (the log says when it expires).
pub const REPLICA_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a replica cannot set up its peer links' trust.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A CA file cannot be read or written.
    #[error("{path}: {source}")]
    File { path: PathBuf, source: io::Error },
    /// The CA does not load, or a certificate cannot be issued.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The rustls settings cannot be built.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// A replicated hub was started without a CA.
    #[error(
        "a replicated hub needs the ClusterSet CA before its first election, to authenticate \
         its peers: create one with `switchyard hub init-ca --out DIR` and start every replica \
         with --ca-cert DIR/{CA_CERT_FILE} --ca-key DIR/{CA_KEY_FILE} (in Kubernetes, the \
         switchyard-hub-ca Secret; see docs/operations.md), or --insecure for a benchmark"
    )]
    NoCa,
    /// `init-ca` would overwrite a CA.
    #[error("{0} already holds a ClusterSet CA key; it is never overwritten (remove it first if you mean to replace the CA, and every certificate with it)")]
    Exists(PathBuf),
}

fn read(path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|source| TrustError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates a new ClusterSet CA in `dir` (mode 0700): `ca.pem` and
/// `ca-key.pem` (0600). Refuses to overwrite an existing key.
pub fn init_ca(dir: &Path) -> Result<Ca, TrustError> {
    let key_path = dir.join(CA_KEY_FILE);
    if key_path.exists() {
        return Err(TrustError::Exists(key_path));
    }
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrustError::File { path, source }
    };
    std::fs::create_dir_all(dir).map_err(file_err(dir))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(file_err(dir))?;
    }
    let ca = Ca::generate("switchyard ClusterSet CA")?;
    let cert_path = dir.join(CA_CERT_FILE);
    write_private(&cert_path, ca.cert_pem()).map_err(file_err(&cert_path))?;
    write_private(&key_path, ca.key_pem()).map_err(file_err(&key_path))?;
    Ok(ca)
}

/// The CA a replica authenticates its peers with: from `files` when given,
/// else from `DATA_DIR/ca/`; when neither exists and the replica is a
/// group of one (`may_create`), a new CA is made there.
pub fn replica_ca(
    files: Option<&(PathBuf, PathBuf)>,
    data_dir: &Path,
    may_create: bool,
) -> Result<Ca, TrustError> {
    if let Some((cert, key)) = files {
        return Ok(Ca::from_pem(&read(cert)?, &read(key)?)?);
    }
    let dir = data_dir.join("ca");
    let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    if key.exists() {
        return Ok(Ca::from_pem(&read(&cert)?, &read(&key)?)?);
    }
    if !may_create {
        return Err(TrustError::NoCa);
    }
    tracing::info!(dir = %dir.display(), "created the ClusterSet CA for this single-replica hub");
    init_ca(&dir)
}

/// A replica's TLS on its peer links: the listener's settings and the
/// settings it dials its peers with.
#[derive(Clone)]
pub struct PeerTls {
    acceptor: TlsAcceptor,
    client: ClientTlsConfig,
}

impl PeerTls {
    /// Issues replica `id` its peer certificate from `ca`.
    pub fn new(ca: &Ca, id: u64) -> Result<Self, TrustError> {
        let issued = ca.issue(&Identity::Replica(id), &[], REPLICA_CERT_TTL)?;
        let server = mutual_server_config(ca.cert_pem(), &issued, &[b"h2"])?;
        let client = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.cert_pem()))
            .domain_name(REPLICA_SERVER_NAME)
            .identity(tonic::transport::Identity::from_pem(
                &issued.cert_pem,
                &issued.key_pem,
            ));
        Ok(Self {
            acceptor: TlsAcceptor::from(server),
            client,
        })
    }

    /// The settings for dialling a peer.
    pub fn client(&self) -> &ClientTlsConfig {
        &self.client
    }
}

/// Bounds on the peer port, where strangers can connect too.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// Connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Who is at the other end of a peer connection, as tonic hands it to
/// every call in the request's extensions.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The caller's address.
    pub remote: SocketAddr,
    /// The identity of its certificate; `None` on an `--insecure` replica.
    pub identity: Option<Identity>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted peer connection: the stream, who is on it, and its slot
/// under the connection cap (freed when tonic drops the connection).
pub struct PeerConn {
    stream: Stream,
    info: PeerIdentity,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for PeerConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts peer connections on `listener`: at most `limits.max_connections`
/// at once, each through a TLS handshake (with `tls`) that must finish
/// within the deadline; plain TCP without `tls` (`--insecure`). Each
/// refusal is counted in `metrics`. Ends when `shutdown` fires.
pub fn incoming(
    listener: TcpListener,
    tls: Option<PeerTls>,
    limits: PeerLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<PeerConn, io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // Out of descriptors and the like: back off briefly.
                        tracing::warn!(%error, "cannot accept a raft peer connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.peer_refused("over_cap");
                tracing::warn!(%remote, max = limits.max_connections, "raft peer port: too many connections; closing a new one");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            let tls = tls.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let conn = match tls {
                    None => PeerConn {
                        stream: Stream::Plain(tcp),
                        info: PeerIdentity {
                            remote,
                            identity: None,
                        },
                        _slot: slot,
                    },
                    Some(tls) => {
                        let handshake = tokio::time::timeout(
                            limits.handshake_timeout,
                            tls.acceptor.accept(tcp),
                        );
                        let stream = match handshake.await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                metrics.peer_refused("handshake");
                                tracing::warn!(%remote, %error, "raft peer port: TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                metrics.peer_refused("handshake_timeout");
                                tracing::warn!(%remote, "raft peer port: TLS handshake timed out");
                                return;
                            }
                        };
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| Identity::of_certificate(c.as_ref()));
                        PeerConn {
                            stream: Stream::Tls(Box::new(stream)),
                            info: PeerIdentity { remote, identity },
                            _slot: slot,
                        }
                    }
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_ca_writes_private_files_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = init_ca(&ca_dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&ca_dir.join(CA_CERT_FILE)), 0o600);
        assert!(matches!(init_ca(&ca_dir), Err(TrustError::Exists(_))));
        // The files load back as the same CA.
        let files = (ca_dir.join(CA_CERT_FILE), ca_dir.join(CA_KEY_FILE));
        let loaded = replica_ca(Some(&files), dir.path(), false).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn a_replicated_hub_without_a_ca_is_refused_and_a_group_of_one_makes_its_own() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            replica_ca(None, dir.path(), false),
            Err(TrustError::NoCa)
        ));
        let made = replica_ca(None, dir.path(), true).unwrap();
        // The second start finds the same CA, created or not.
        let again = replica_ca(None, dir.path(), false).unwrap();
        assert_eq!(made.cert_pem(), again.cert_pem());
    }
}
