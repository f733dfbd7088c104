//! Cluster leases, kept in the memory of the replica that leads.
//!
//! Renewals are frequent (every second per cluster) and carry no state, so
//! they are not raft writes: the leader records the time of each renewal
//! and proposes a command only when a cluster's reachability flips
//! ([`Command::SetReachable`]). A new leader starts every lease afresh, so a
//! leader change never fails a cluster whose agent is renewing.

use super::state::{Command, State};
use crate::model::ClusterId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Lease timing.
#[derive(Debug, Clone, Copy)]
pub struct LeaseConfig {
    /// A cluster not renewed for this long is unreachable.
    pub ttl: Duration,
    /// How often agents are asked to renew.
    pub renew: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3),
            renew: Duration::from_secs(1),
        }
    }
}

/// Last renewal per cluster.
pub struct Leases {
    config: LeaseConfig,
    since: Mutex<Instant>,
    renewed: Mutex<HashMap<ClusterId, Instant>>,
}

impl Leases {
    /// An empty table; every lease counts from now.
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            since: Mutex::new(Instant::now()),
            renewed: Mutex::new(HashMap::new()),
        }
    }

    /// The timing in force.
    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// Records a renewal.
    pub fn renew(&self, cluster: &str) {
        if let Ok(mut m) = self.renewed.lock() {
            m.insert(cluster.to_string(), Instant::now());
        }
    }

    /// Restarts every lease (this replica just became leader).
    pub fn reset(&self) {
        if let Ok(mut s) = self.since.lock() {
            *s = Instant::now();
        }
        if let Ok(mut m) = self.renewed.lock() {
            m.clear();
        }
    }

    /// The commands that bring the replicated reachability in line with the
    /// leases, as of `now`.
    pub fn transitions(&self, state: &State, now: Instant) -> Vec<Command> {
        let since = self.since.lock().map(|s| *s).unwrap_or(now);
        let renewed = match self.renewed.lock() {
            Ok(m) => m.clone(),
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        for (id, cluster) in &state.clusters {
            let last = renewed.get(id).copied();
            let alive = now.duration_since(last.unwrap_or(since)) < self.config.ttl;
            if cluster.reachable && !alive {
                out.push(Command::SetReachable {
                    cluster: id.clone(),
                    reachable: false,
                });
            } else if !cluster.reachable && alive && last.is_some() {
                out.push(Command::SetReachable {
                    cluster: id.clone(),
                    reachable: true,
                });
            }
        }
        out
    }
}

/// Proposes lease transitions while this replica leads, every `ttl / 6`.
pub async fn run(
    leases: Arc<Leases>,
    hub: super::api::Hub,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let period = (leases.config.ttl / 6).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leader = hub.is_leader();
        if leader && !was_leader {
            leases.reset();
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        for cmd in leases.transitions(&hub.state(), Instant::now()) {
            if let Command::SetReachable { cluster, reachable } = &cmd {
                tracing::warn!(cluster = %cluster, reachable, "cluster lease transition");
            }
            if let Err(e) = hub.propose(&cmd).await {
                tracing::warn!(error = %e, "lease transition not committed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClusterSpec;

    #[tokio::test(start_paused = true)]
    async fn silent_cluster_expires_and_returns_on_renewal() {
        let leases = Leases::new(LeaseConfig::default());
        let mut state = State::default();
        state
            .apply(
                1,
                &Command::RegisterCluster {
                    spec: ClusterSpec {
                        id: "a".into(),
                        ..Default::default()
                    },
                },
            )
            .unwrap();
        leases.renew("a");
        assert!(leases.transitions(&state, Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(3100)).await;
        let t = leases.transitions(&state, Instant::now());
        assert_eq!(
            t,
            vec![Command::SetReachable {
                cluster: "a".into(),
                reachable: false
            }]
        );
        state.apply(2, &t[0]).unwrap();
        // Still silent: nothing more to propose (no write storm).
        assert!(leases.transitions(&state, Instant::now()).is_empty());
        leases.renew("a");
        assert_eq!(
            leases.transitions(&state, Instant::now()),
            vec![Command::SetReachable {
                cluster: "a".into(),
                reachable: true
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn new_leader_grants_a_full_lease_before_failing_anyone() {
        let leases = Leases::new(LeaseConfig::default());
        let mut state = State::default();
        state
            .apply(
                1,
                &Command::RegisterCluster {
                    spec: ClusterSpec {
                        id: "a".into(),
                        ..Default::default()
                    },
                },
            )
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(leases.transitions(&state, Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(leases.transitions(&state, Instant::now()).len(), 1);
    }
}
