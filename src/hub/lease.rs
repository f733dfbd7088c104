//! Cluster leases, kept in the memory of the replica that leads.
//!
//! Renewals are frequent (every second per cluster) and carry no state, so
//! they are not raft writes: the leader records the time of each renewal
//! and proposes a command only when a cluster's reachability flips
//! ([`Command::SetReachable`]), and once more when a cluster has been
//! unreachable for the grace period ([`Command::WithdrawCluster`]). A new
//! leader starts every lease, and every grace period, afresh, so a leader
//! change never fails a cluster whose agent is renewing. A revoked lease
//! ([`Command::RevokeLease`], replicated) counts as never renewed.

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
    /// How long an unreachable cluster's endpoints stay imported (not
    /// ready) elsewhere before they are removed.
    pub grace: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3),
            renew: Duration::from_secs(1),
            grace: Duration::from_secs(30),
        }
    }
}

/// Last renewal per cluster.
pub struct Leases {
    config: LeaseConfig,
    since: Mutex<Instant>,
    renewed: Mutex<HashMap<ClusterId, Instant>>,
    /// When this leader first saw each unreachable, not yet withdrawn
    /// cluster so.
    lost: Mutex<HashMap<ClusterId, Instant>>,
}

impl Leases {
    /// An empty table; every lease counts from now.
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            since: Mutex::new(Instant::now()),
            renewed: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashMap::new()),
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
        if let Ok(mut m) = self.lost.lock() {
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
        let Ok(mut lost) = self.lost.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (id, cluster) in &state.clusters {
            let last = renewed.get(id).copied();
            let alive = !cluster.lease_revoked
                && now.duration_since(last.unwrap_or(since)) < self.config.ttl;
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
            if cluster.reachable && alive || cluster.withdrawn {
                lost.remove(id);
            } else if now.duration_since(*lost.entry(id.clone()).or_insert(now))
                >= self.config.grace
            {
                out.push(Command::WithdrawCluster {
                    cluster: id.clone(),
                });
            }
        }
        lost.retain(|id, _| state.clusters.contains_key(id));
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
            match &cmd {
                Command::SetReachable { cluster, reachable } => {
                    tracing::warn!(cluster = %cluster, reachable, "cluster lease transition");
                }
                Command::WithdrawCluster { cluster } => {
                    tracing::warn!(cluster = %cluster, grace = ?leases.config.grace, "unreachable past the grace period: its imported endpoints are withdrawn");
                }
                _ => {}
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

    fn one_cluster(id: &str) -> State {
        let mut state = State::default();
        let spec = ClusterSpec {
            id: id.into(),
            ..Default::default()
        };
        state.apply(1, &Command::RegisterCluster { spec }).unwrap();
        state
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawn_once_after_the_grace_period_and_back_on_renewal() {
        let config = LeaseConfig {
            grace: Duration::from_secs(10),
            ..LeaseConfig::default()
        };
        let leases = Leases::new(config);
        let mut state = one_cluster("a");
        let mut index = 1;
        let mut step = |state: &mut State| {
            let cmds = leases.transitions(state, Instant::now());
            for c in &cmds {
                index += 1;
                state.apply(index, c).unwrap();
            }
            cmds
        };
        leases.renew("a");
        tokio::time::advance(Duration::from_millis(3100)).await;
        let t = step(&mut state);
        assert_eq!(t.len(), 1, "{t:?}");
        tokio::time::advance(Duration::from_millis(9000)).await;
        assert!(leases.transitions(&state, Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(1100)).await;
        let t = step(&mut state);
        assert_eq!(
            t,
            vec![Command::WithdrawCluster {
                cluster: "a".into()
            }]
        );
        assert!(state.clusters["a"].withdrawn);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(leases.transitions(&state, Instant::now()).is_empty());
        leases.renew("a");
        step(&mut state);
        assert!(state.clusters["a"].reachable && !state.clusters["a"].withdrawn);
        // A new loss gets a new, whole grace period.
        tokio::time::advance(Duration::from_millis(3100)).await;
        step(&mut state);
        assert!(!state.clusters["a"].reachable);
        tokio::time::advance(Duration::from_millis(5000)).await;
        assert!(leases.transitions(&state, Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_lease_ignores_renewals_until_restored() {
        let leases = Leases::new(LeaseConfig::default());
        let mut state = one_cluster("a");
        leases.renew("a");
        let revoke = |revoked| Command::RevokeLease {
            cluster: "a".into(),
            revoked,
        };
        state.apply(2, &revoke(true)).unwrap();
        assert_eq!(
            state.clusters["a"].state(),
            crate::model::ClusterState::Unreachable
        );
        leases.renew("a");
        // Renewing, yet not brought back.
        assert!(leases.transitions(&state, Instant::now()).is_empty());
        state.apply(3, &revoke(false)).unwrap();
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
