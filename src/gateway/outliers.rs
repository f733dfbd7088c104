//! Outlier detection: an upstream (a local endpoint or another cluster's
//! gateway) that fails to accept `threshold` connections in a row is
//! ejected for a backoff period, then tried again by the next connection
//! (the probe); each failed probe doubles the period (up to a cap), a
//! success resets it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Outlier detection settings.
#[derive(Debug, Clone, Copy)]
pub struct OutlierConfig {
    /// Consecutive connect failures before an upstream is ejected.
    pub threshold: u32,
    /// The first ejection's length; doubled by every failed probe.
    pub base: Duration,
    /// The longest ejection.
    pub max: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            threshold: 3,
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    ejected_until: Option<Instant>,
    backoff: Option<Duration>,
}

/// The health of every upstream the gateway has tried.
#[derive(Debug, Default)]
pub struct Outliers {
    config: OutlierConfig,
    upstreams: Mutex<HashMap<SocketAddr, Health>>,
}

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; the upstream stays in.
    Counted,
    /// The upstream is now ejected for this long.
    Ejected(Duration),
    /// The attempt began before the upstream's current ejection ended: it
    /// changes nothing.
    AlreadyEjected,
}

impl Outliers {
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            config,
            upstreams: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Health>> {
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `addr` is ejected now.
    pub fn is_ejected(&self, addr: &SocketAddr) -> bool {
        let now = Instant::now();
        self.lock()
            .get(addr)
            .and_then(|h| h.ejected_until)
            .is_some_and(|until| now < until)
    }

    /// A connection to `addr` succeeded.
    pub fn success(&self, addr: &SocketAddr) {
        let mut map = self.lock();
        if let Some(h) = map.get_mut(addr) {
            *h = Health::default();
        }
    }

    /// A connection to `addr`, attempted at `started`, failed.
    ///
    /// When an upstream dies, every connection already under way to it
    /// fails too, each a connect timeout later. Those attempts began before
    /// the upstream was ejected (or before its ejection ended): they are
    /// the same evidence that ejected it, so they neither extend nor
    /// double the ejection. Only a probe, an attempt begun once the
    /// ejection was over, ejects it again for twice as long.
    pub fn failure(&self, addr: &SocketAddr, started: Instant) -> Verdict {
        let mut map = self.lock();
        let h = map.entry(*addr).or_default();
        if h.ejected_until.is_some_and(|until| started < until) {
            return Verdict::AlreadyEjected;
        }
        h.failures += 1;
        // A failed probe (the upstream was ejected before) is ejected again
        // at once, for twice as long.
        let probing = h.backoff.is_some();
        if h.failures < self.config.threshold && !probing {
            return Verdict::Counted;
        }
        let backoff = match h.backoff {
            None => self.config.base,
            Some(b) => (b * 2).min(self.config.max),
        };
        h.backoff = Some(backoff);
        h.ejected_until = Some(Instant::now() + backoff);
        Verdict::Ejected(backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ejected_after_threshold_probed_after_backoff_and_reset_by_success() {
        let o = Outliers::new(OutlierConfig {
            threshold: 3,
            base: Duration::from_secs(5),
            max: Duration::from_secs(12),
        });
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(o.failure(&a, Instant::now()), Verdict::Counted);
        assert_eq!(o.failure(&a, Instant::now()), Verdict::Counted);
        assert!(!o.is_ejected(&a));
        assert_eq!(
            o.failure(&a, Instant::now()),
            Verdict::Ejected(Duration::from_secs(5))
        );
        assert!(o.is_ejected(&a));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!o.is_ejected(&a), "probed after the backoff");
        // The probe fails: ejected again at once, twice as long, capped.
        assert_eq!(
            o.failure(&a, Instant::now()),
            Verdict::Ejected(Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            o.failure(&a, Instant::now()),
            Verdict::Ejected(Duration::from_secs(12))
        );
        tokio::time::advance(Duration::from_secs(12)).await;
        o.success(&a);
        assert_eq!(
            o.failure(&a, Instant::now()),
            Verdict::Counted,
            "a success starts over"
        );
    }

    /// A dead upstream with many connections under way: they all fail, a
    /// connect timeout after they began. The first failures eject it once,
    /// for the base period; the rest were under way already and change
    /// nothing (they used to double the ejection each, up to the cap, so a
    /// cluster back after a short outage stayed ejected for a minute).
    #[tokio::test(start_paused = true)]
    async fn connections_under_way_when_ejected_do_not_extend_the_ejection() {
        let o = Outliers::new(OutlierConfig {
            threshold: 3,
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
        });
        let a: SocketAddr = "10.0.0.2:15443".parse().unwrap();
        // 30 connections begun over 600 ms, each failing 2 s later.
        let begun: Vec<Instant> = (0..30)
            .map(|i| Instant::now() + Duration::from_millis(20 * i))
            .collect();
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut verdicts = Vec::new();
        for started in &begun {
            verdicts.push(o.failure(&a, *started));
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        assert_eq!(verdicts[..2], [Verdict::Counted, Verdict::Counted]);
        assert_eq!(verdicts[2], Verdict::Ejected(Duration::from_secs(5)));
        assert!(
            verdicts[3..].iter().all(|v| *v == Verdict::AlreadyEjected),
            "{verdicts:?}"
        );
        // Ejected until 5 s after the third failure, not longer.
        let ejected_at = begun[2] + Duration::from_secs(2);
        tokio::time::advance(ejected_at + Duration::from_secs(5) - Instant::now()).await;
        assert!(!o.is_ejected(&a), "probed after the base period");
        // A failed probe still doubles it; probes begun together count once.
        let probe = Instant::now();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            o.failure(&a, probe),
            Verdict::Ejected(Duration::from_secs(10))
        );
        assert_eq!(o.failure(&a, probe), Verdict::AlreadyEjected);
    }
}
