//! Watches a cluster file by polling: editors replace files in many ways
//! (rename, truncate, in place), and a content comparison every
//! `interval` catches all of them. A file that stops parsing keeps the last
//! good exports in force and logs why.

use super::source::ClusterFile;
use crate::model::{Export, ServiceKey};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The desired exports of a cluster, as last read.
pub type Desired = Arc<BTreeMap<ServiceKey, Export>>;

/// Loads the file once (failing if it is bad) and then follows it.
pub fn follow(
    path: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(ClusterFile, watch::Receiver<Desired>), super::SourceError> {
    let file = ClusterFile::load(&path)?;
    let exports = file
        .exports()
        .map_err(|reason| super::SourceError::Invalid {
            path: path.display().to_string(),
            reason,
        })?;
    let (tx, rx) = watch::channel(Arc::new(exports));
    let cluster = file.cluster.clone();
    tokio::spawn(async move {
        let mut last_text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(text) = tokio::fs::read_to_string(&path).await else {
                continue;
            };
            if text == last_text {
                continue;
            }
            last_text = text.clone();
            match ClusterFile::parse(&path.display().to_string(), &text) {
                Ok(f) if f.cluster != cluster => {
                    tracing::warn!(file = %path.display(), was = %cluster, now = %f.cluster, "cluster file changed its cluster ID; ignored (restart the agent to change it)");
                }
                Ok(f) => {
                    if let Ok(exports) = f.exports() {
                        tracing::info!(file = %path.display(), services = exports.len(), "cluster file changed");
                        tx.send_replace(Arc::new(exports));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster file is invalid; keeping the last good exports")
                }
            }
        }
    });
    Ok((file, rx))
}
