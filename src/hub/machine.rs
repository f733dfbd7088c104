//! Adapts [`State`] to the raft node's [`StateMachine`]: decodes commands,
//! applies them, and publishes an immutable view after each batch for DNS,
//! streams and reads.

use super::node::StateMachine;
use super::state::{Command, State};
use crate::dns::Catalog;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// What the proposer of a command gets back: the raft index it was
/// applied at (to wait for that index elsewhere) and the outcome lines.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub index: u64,
    pub lines: Vec<String>,
}

/// The hub's state machine as the raft node drives it.
pub struct Machine {
    state: State,
    view: watch::Sender<Arc<State>>,
    changed: bool,
    metrics: Arc<Metrics>,
    /// The replica's DNS zone (see [`Machine::with_dns`]).
    dns: Option<Arc<Catalog>>,
    /// The exports the `exports` gauge was last counted on, and the count:
    /// each batch counts only what changed since (a diff of persistent
    /// maps), not every service.
    counted: (ExportMap, i64),
}

type ExportMap = crate::model::ServiceMap<
    std::collections::BTreeMap<crate::model::ClusterId, crate::model::Export>,
>;

/// The number of exports in `now`, from `count` exports in `before`.
fn recount(before: &ExportMap, count: i64, now: &ExportMap) -> i64 {
    use imbl::ordmap::DiffItem;
    let len = |m: &Arc<std::collections::BTreeMap<_, _>>| m.len() as i64;
    before.diff(now).fold(count, |n, item| match item {
        DiffItem::Add(_, v) => n + len(v),
        DiffItem::Remove(_, v) => n - len(v),
        DiffItem::Update { old, new } => n - len(old.1) + len(new.1),
    })
}

impl Machine {
    /// A machine with empty state and the receiver readers subscribe to.
    pub fn new(metrics: Arc<Metrics>) -> (Self, watch::Receiver<Arc<State>>) {
        let (view, rx) = watch::channel(Arc::new(State::default()));
        (
            Self {
                state: State::default(),
                view,
                changed: false,
                metrics,
                dns: None,
                counted: (ExportMap::default(), 0),
            },
            rx,
        )
    }

    /// Publishes each applied batch to the DNS zone `catalog`, at the end
    /// of the batch and before its proposers get their replies: an
    /// acknowledged write is already in this replica's DNS answers, with no
    /// hand-off to another task on the write path.
    pub fn with_dns(mut self, catalog: Arc<Catalog>) -> Self {
        catalog.publish(&self.state.backends);
        self.dns = Some(catalog);
        self
    }
}

impl StateMachine for Machine {
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Vec<u8>, String> {
        let cmd: Command = serde_json::from_slice(command)
            .map_err(|e| format!("undecodable command at index {index}: {e}"))?;
        let started = Instant::now();
        let result = self.state.apply(index, &cmd);
        self.metrics
            .recompute_seconds
            .observe(started.elapsed().as_secs_f64());
        self.state.applied_index = index;
        self.changed = true;
        match result {
            Ok(outcome) => {
                tracing::debug!(index, recomputed = outcome.recomputed.len(), "applied");
                let reply = Reply {
                    index,
                    lines: outcome.lines,
                };
                serde_json::to_vec(&reply).map_err(|e| e.to_string())
            }
            Err(e) => {
                tracing::info!(index, error = %e, "command rejected");
                Err(e.to_string())
            }
        }
    }

    fn after_batch(&mut self) {
        if std::mem::take(&mut self.changed) {
            let (before, count) = &self.counted;
            let count = recount(before, *count, &self.state.exports);
            self.counted = (self.state.exports.clone(), count);
            self.metrics.exports.set(count);
            self.metrics.clusters.set(self.state.clusters.len() as i64);
            if let Some(catalog) = &self.dns {
                catalog.publish(&self.state.backends);
            }
            self.view.send_replace(Arc::new(self.state.clone()));
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        // Every map key serializes as a string (ServiceKey as "ns/name"), so
        // this cannot fail; the round-trip test below guards it.
        match serde_json::to_vec(&self.state) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "cannot serialize the state for a snapshot");
                Vec::new()
            }
        }
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), String> {
        let state: State = if data.is_empty() {
            State::default()
        } else {
            serde_json::from_slice(data)
                .map_err(|e| format!("snapshot at index {index} is unreadable: {e}"))?
        };
        self.state = state;
        self.state.applied_index = index;
        self.changed = true;
        self.after_batch();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClusterSpec;

    #[test]
    fn snapshot_restores_the_whole_state() {
        let metrics = Arc::new(Metrics::new());
        let (mut m, _view) = Machine::new(metrics.clone());
        let cmds = [
            Command::RegisterCluster {
                spec: ClusterSpec {
                    id: "a".into(),
                    ..Default::default()
                },
            },
            Command::SyncExports {
                cluster: "a".into(),
                revision: 1,
                full: true,
                upserts: vec![crate::model::fixtures::export(
                    "a",
                    "app/web",
                    80,
                    ["127.0.0.9".parse().unwrap()],
                )],
                deletes: vec![],
            },
        ];
        for (i, c) in cmds.iter().enumerate() {
            m.apply(i as u64 + 1, &serde_json::to_vec(c).unwrap())
                .unwrap();
        }
        let snap = m.snapshot();
        assert!(!snap.is_empty());
        let (mut restored, view) = Machine::new(metrics);
        restored.restore(2, &snap).unwrap();
        assert_eq!(restored.state, m.state);
        assert_eq!(
            view.borrow().backends.len(),
            1,
            "restore publishes the view"
        );
        assert!(restored.restore(3, b"{not json").is_err());
    }

    /// The exports gauge, counted from each batch's changes only, agrees
    /// with a full count through adds, updates, deletes and a restore.
    #[test]
    fn the_exports_gauge_counts_changes_only_and_stays_exact() {
        let metrics = Arc::new(Metrics::new());
        let (mut m, _view) = Machine::new(metrics.clone());
        let mut index = 0;
        let mut run = |m: &mut Machine, c: Command| {
            index += 1;
            m.apply(index, &serde_json::to_vec(&c).unwrap()).unwrap();
            m.after_batch();
        };
        for id in ["a", "b"] {
            let spec = ClusterSpec {
                id: id.into(),
                ..Default::default()
            };
            run(&mut m, Command::RegisterCluster { spec });
        }
        let export = |c: &str, s: &str| {
            crate::model::fixtures::export(c, s, 80, ["127.0.0.9".parse().unwrap()])
        };
        let sync = |c: &str, full, upserts, deletes: Vec<&str>| Command::SyncExports {
            cluster: c.into(),
            revision: 1,
            full,
            upserts,
            deletes: deletes.iter().map(|d| d.parse().unwrap()).collect(),
        };
        let steps = [
            sync(
                "a",
                true,
                vec![export("a", "app/x"), export("a", "app/y")],
                vec![],
            ),
            sync("b", true, vec![export("b", "app/x")], vec![]),
            sync("a", false, vec![export("a", "app/z")], vec!["app/x"]),
            sync("b", true, vec![], vec![]),
        ];
        for (step, expected) in steps.into_iter().zip([2, 3, 3, 2]) {
            run(&mut m, step);
            assert_eq!(metrics.exports.get(), expected);
            assert_eq!(m.state.export_count() as i64, expected);
        }
        let (mut restored, _) = Machine::new(metrics.clone());
        restored.restore(9, &m.snapshot()).unwrap();
        assert_eq!(metrics.exports.get(), 2);
    }
}
