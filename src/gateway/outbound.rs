//! Outbound listeners: one per imported service port, on the address the
//! hub allocated for the service in this cluster. Each accepted connection
//! goes to the cluster the weights pick (see `upstream`) and is carried
//! until either side closes, or until a drain of its cluster runs out.

use super::metrics::{DirectionLabels, RouteLabels};
use super::routes::RouteTable;
use super::Shared;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The outbound listeners open now, by address.
#[derive(Default)]
pub struct Listeners {
    open: Mutex<HashMap<SocketAddr, CancellationToken>>,
    /// The accept loops, so that stopping can wait until every listening
    /// socket is closed.
    tasks: tokio_util::task::TaskTracker,
}

impl Listeners {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, CancellationToken>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds every address `table` needs and is not open yet. All or
    /// nothing: if one cannot be bound, the new ones are closed again and
    /// the reason is returned (the configuration is then refused).
    pub async fn bind(&self, table: &RouteTable) -> Result<Vec<(SocketAddr, TcpListener)>, String> {
        let wanted: Vec<SocketAddr> = {
            let open = self.lock();
            table
                .listener_addresses()
                .filter(|a| !open.contains_key(a))
                .copied()
                .collect()
        };
        let mut bound = Vec::with_capacity(wanted.len());
        for addr in wanted {
            match TcpListener::bind(addr).await {
                Ok(l) => bound.push((addr, l)),
                Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
            }
        }
        Ok(bound)
    }

    /// Waits until every accept loop has ended (after the shutdown token
    /// was cancelled) and so every listening socket is closed.
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Serves the newly bound listeners and closes those `table` no longer
    /// has (their open connections go on).
    pub fn apply(
        &self,
        shared: &Arc<Shared>,
        table: &RouteTable,
        bound: Vec<(SocketAddr, TcpListener)>,
        shutdown: &CancellationToken,
    ) {
        let mut open = self.lock();
        let keep: std::collections::HashSet<&SocketAddr> = table.listener_addresses().collect();
        open.retain(|addr, stop| {
            let k = keep.contains(addr);
            if !k {
                tracing::info!(listener = %addr, "outbound listener closed");
                stop.cancel();
            }
            k
        });
        for (addr, listener) in bound {
            let stop = shutdown.child_token();
            open.insert(addr, stop.clone());
            tracing::info!(listener = %addr, "outbound listener open");
            self.tasks
                .spawn(accept(shared.clone(), addr, listener, stop));
        }
    }
}

async fn accept(
    shared: Arc<Shared>,
    addr: SocketAddr,
    listener: TcpListener,
    stop: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            conn = listener.accept() => conn,
        };
        match conn {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(shared.clone(), addr, stream));
            }
            Err(error) => {
                tracing::warn!(%error, listener = %addr, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, listener: SocketAddr, client: TcpStream) {
    let table = shared.table.load_full();
    let Some((route, port)) = table.by_listener(&listener).cloned() else {
        // The service went away between accept and now.
        shared.metrics.refuse("no_route");
        return;
    };
    let (upstream, cluster) = match shared.connect_outbound(&route, port).await {
        Ok(u) => u,
        Err(error) => {
            tracing::warn!(%error, "outbound connection refused");
            shared.metrics.refuse("no_upstream");
            return;
        }
    };
    let labels = RouteLabels {
        service: route.service.to_string(),
        cluster: cluster.clone(),
        direction: "outbound".into(),
    };
    shared.metrics.connections.get_or_create(&labels).inc();
    let active = shared
        .metrics
        .active
        .get_or_create(&DirectionLabels {
            direction: "outbound".into(),
        })
        .clone();
    active.inc();
    let tracking = shared.registry.track(&route.service, &cluster);
    let bytes = super::proxy::pipe(client, upstream, &tracking.cancel).await;
    active.dec();
    shared.metrics.bytes.get_or_create(&labels).inc_by(bytes);
}
