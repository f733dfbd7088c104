//! The running playground's control socket, for `switchyard drill`: stop
//! and start a cluster's agent and gateway, kill and restart the hub. One
//! JSON request per connection on a Unix socket in the data dir (so only
//! users who can write there may drive it), one JSON reply. `up` also
//! writes where everything listens to `playground.json` next to it.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The socket's file name in the data dir.
pub const SOCKET: &str = "control.sock";
/// The description's file name in the data dir.
pub const INFO: &str = "playground.json";

/// Where a running playground listens, for clients that drive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    /// The hub's API.
    pub api: SocketAddr,
    /// The hub's ClusterSet DNS.
    pub dns: SocketAddr,
    /// The cluster lease in force.
    pub lease_ms: u64,
    /// Each cluster's gateway (empty on a flat network).
    pub gateways: Vec<GatewayInfo>,
    /// Every cluster's ID.
    pub clusters: Vec<String>,
}

/// A playground cluster's gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayInfo {
    /// The gateway's cluster.
    pub cluster: String,
    /// The cluster's own ClusterSet DNS, served by its gateway.
    pub dns: SocketAddr,
}

/// What a client asks the playground to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Stop the cluster's agent and gateway (its backends stay up).
    ClusterDown { cluster: String },
    /// Start them again.
    ClusterUp { cluster: String },
    /// Kill the hub abruptly: no flush, no goodbye to agents.
    HubKill,
    /// Start the hub again from its data dir.
    HubStart,
}

/// The playground's answer: done (with what), or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    /// Done, or refused.
    pub ok: bool,
    /// What was done, or why not.
    pub message: String,
}

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no playground control socket at {path}: {source} (is `switchyard up` running from that data dir?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("playground control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("playground control socket {path}: no reply within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("playground control socket {path}: unreadable reply {reply:?}")]
    BadReply { path: PathBuf, reply: String },
    #[error("the playground refused: {0}")]
    Refused(String),
}

/// A request with the channel its reply goes back on.
pub type Call = (Request, oneshot::Sender<Reply>);

/// Serves the socket at `dir/control.sock` until `shutdown`, passing each
/// request to `calls`. A stale socket file is replaced.
pub fn serve(
    dir: &Path,
    calls: mpsc::Sender<Call>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "playground control socket: accept failed");
                        continue;
                    }
                },
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, calls).await {
                    tracing::debug!(error = %e, "playground control connection ended");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn answer(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Err(e) => Reply {
            ok: false,
            message: format!("not a control request: {e}"),
        },
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            match calls.send((request, tx)).await {
                Err(_) => Reply {
                    ok: false,
                    message: "the playground is stopping".into(),
                },
                Ok(()) => rx.await.unwrap_or_else(|_| Reply {
                    ok: false,
                    message: "the playground dropped the request".into(),
                }),
            }
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// Sends `request` to the playground whose data dir is `dir`.
pub async fn call(dir: &Path, request: &Request) -> Result<String, ControlError> {
    let path = dir.join(SOCKET);
    let timeout = Duration::from_secs(30);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let exchange = async {
        let mut stream =
            UnixStream::connect(&path)
                .await
                .map_err(|source| ControlError::Connect {
                    path: path.clone(),
                    source,
                })?;
        let mut line = serde_json::to_vec(request).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(io)?;
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .await
            .map_err(io)?;
        Ok::<_, ControlError>(reply)
    };
    let reply = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ControlError::Timeout {
            path: path.clone(),
            timeout,
        })??;
    let reply: Reply = serde_json::from_str(reply.trim()).map_err(|_| ControlError::BadReply {
        path: path.clone(),
        reply: reply.clone(),
    })?;
    match reply.ok {
        true => Ok(reply.message),
        false => Err(ControlError::Refused(reply.message)),
    }
}

/// Reads the description a running playground wrote in `dir`.
pub fn info(dir: &Path) -> Option<Info> {
    let text = std::fs::read_to_string(dir.join(INFO)).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_reach_the_handler_and_refusals_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        let stop = CancellationToken::new();
        let server = serve(dir.path(), tx, stop.clone()).unwrap();
        tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                let r = match request {
                    Request::ClusterDown { cluster } if cluster == "a" => Reply {
                        ok: true,
                        message: "a stopped".into(),
                    },
                    other => Reply {
                        ok: false,
                        message: format!("cannot {other:?}"),
                    },
                };
                let _ = reply.send(r);
            }
        });
        let down = Request::ClusterDown {
            cluster: "a".into(),
        };
        assert_eq!(call(dir.path(), &down).await.unwrap(), "a stopped");
        let err = call(dir.path(), &Request::HubKill).await.unwrap_err();
        assert!(err.to_string().contains("cannot HubKill"), "{err}");
        stop.cancel();
        server.await.unwrap();
        assert!(!dir.path().join(SOCKET).exists());
        let err = call(dir.path(), &down).await.unwrap_err();
        assert!(matches!(err, ControlError::Connect { .. }), "{err}");
    }
}
