//! Carrying a connection's bytes both ways, and the registry of open
//! connections that lets a drained cluster's connections finish on their
//! own, up to a timeout.

use crate::model::ServiceKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

struct Tracked {
    service: ServiceKey,
    cluster: String,
    cancel: CancellationToken,
}

/// Every open proxied connection, by service and cluster.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Tracked>>,
}

/// Removes its connection from the registry when dropped.
pub struct Tracking {
    registry: Arc<Registry>,
    id: u64,
    /// Cancelled when the connection must end (a drain ran out).
    pub cancel: CancellationToken,
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection of `service` to `cluster`.
    pub fn track(self: &Arc<Self>, service: &ServiceKey, cluster: &str) -> Tracking {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        self.lock().insert(
            id,
            Tracked {
                service: service.clone(),
                cluster: cluster.to_string(),
                cancel: cancel.clone(),
            },
        );
        Tracking {
            registry: self.clone(),
            id,
            cancel,
        }
    }

    /// How many connections of `service` to `cluster` (any cluster with
    /// `None`) are open.
    pub fn count(&self, service: &ServiceKey, cluster: Option<&str>) -> usize {
        self.lock()
            .values()
            .filter(|t| &t.service == service && cluster.is_none_or(|c| t.cluster == c))
            .count()
    }

    /// Lets the open connections of `service` to `cluster` (every cluster
    /// with `None`) finish on their own for `timeout`, then ends those
    /// still open. New connections are not affected: they follow the
    /// routes in force.
    pub fn drain(self: &Arc<Self>, service: &ServiceKey, cluster: Option<&str>, timeout: Duration) {
        let ids: Vec<u64> = self
            .lock()
            .iter()
            .filter(|(_, t)| &t.service == service && cluster.is_none_or(|c| t.cluster == c))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        tracing::info!(service = %service, cluster = cluster.unwrap_or("*"), open = ids.len(), ?timeout, "draining connections");
        let registry = self.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let map = registry.lock();
            let mut ended = 0;
            for id in ids {
                if let Some(t) = map.get(&id) {
                    t.cancel.cancel();
                    ended += 1;
                }
            }
            if ended > 0 {
                tracing::info!(ended, "drain timeout: ended connections still open");
            }
        });
    }
}

/// The TCP side of a TLS connection: rustls reads at most 4 KiB per call,
/// so a full 16 KiB record would cost four system calls without a buffer
/// underneath it.
pub type Wire = tokio::io::BufReader<tokio::net::TcpStream>;

/// Wraps an established TCP connection for TLS (see [`Wire`]).
pub fn wire(tcp: tokio::net::TcpStream) -> Wire {
    tokio::io::BufReader::with_capacity(super::copy::BUFFER, tcp)
}

/// Copies both ways until both sides have closed, either fails, or
/// `cancel`; returns the bytes carried either way.
pub async fn pipe<A, B>(mut client: A, mut upstream: B, cancel: &CancellationToken) -> u64
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut copy = super::copy::Copy::new(&mut client, &mut upstream);
    tokio::select! {
        r = &mut copy => {
            if let Err(error) = r {
                tracing::debug!(%error, "proxied connection ended with an error");
            }
        }
        () = cancel.cancelled() => {}
    }
    copy.carried()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_only_what_is_still_open_after_the_timeout() {
        let registry = Arc::new(Registry::default());
        let svc: ServiceKey = "app/api".parse().unwrap();
        let a = registry.track(&svc, "west");
        let b = registry.track(&svc, "west");
        let other = registry.track(&svc, "east");
        registry.drain(&svc, Some("west"), Duration::from_secs(30));
        drop(a); // finished on its own
        tokio::time::advance(Duration::from_secs(29)).await;
        tokio::task::yield_now().await;
        assert!(!b.cancel.is_cancelled());
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(b.cancel.is_cancelled());
        assert!(!other.cancel.is_cancelled());
        assert_eq!(registry.count(&svc, None), 2);
    }
}
