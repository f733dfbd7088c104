//! A drill's report: the timeline (action, detection, DNS shift, gateway
//! shift, restore), the traffic's failures and latency, and a verdict
//! against the SLO flags. Computed from the recorded samples alone.

use super::traffic::{DnsSample, HttpSample, Samples};
use serde::Serialize;
use std::time::Duration;

/// The limits a drill is judged by; `None` is not checked.
#[derive(Debug, Clone, Default)]
pub struct Slo {
    /// Most ms from the action to the hub's detection.
    pub detect_ms: Option<u64>,
    /// Most ms from the action until DNS and the gateways stop sending to
    /// the cluster.
    pub shift_ms: Option<u64>,
    /// Most failed HTTP requests.
    pub failed: Option<u64>,
    /// Highest p99 HTTP latency, ms.
    pub p99_ms: Option<f64>,
}

/// When things happened, in ms since the drill's action (the restore is
/// measured from the restore action).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// When the action was taken, ms since traffic began.
    pub action_at_ms: u64,
    /// How long the action itself took.
    pub action_ms: u64,
    /// When the hub showed the fault.
    pub detect_ms: Option<u64>,
    /// When DNS answers stopped naming the cluster, for good.
    pub dns_shift_ms: Option<u64>,
    /// When requests through the gateways stopped reaching (or failing
    /// on) the cluster, for good.
    pub gateway_shift_ms: Option<u64>,
    /// When the restore was taken, ms since the action.
    pub restore_at_ms: Option<u64>,
    /// From the restore until the cluster got traffic again (or the hub
    /// answered again, for `hub-leader`).
    pub restore_ms: Option<u64>,
}

/// One SLO check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was checked ("detect", "gateway shift", ...).
    pub name: String,
    pub pass: bool,
    /// The measured value against its limit.
    pub detail: String,
}

/// The whole report, as `-o json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `drain`, `cluster-down` or `hub-leader`.
    pub drill: String,
    /// The cluster drained or lost (none for `hub-leader`).
    pub cluster: Option<String>,
    /// The service the traffic went to, NS/NAME.
    pub service: String,
    /// How the fault was made (playground control, hub admin API, command).
    pub method: String,
    /// Every step's time.
    pub timeline: Timeline,
    /// The timeline's detection, shifts: repeated at the top level.
    pub detect_ms: Option<u64>,
    pub dns_shift_ms: Option<u64>,
    pub gateway_shift_ms: Option<u64>,
    /// HTTP requests that failed, of all sent over the whole drill.
    pub failed_requests: u64,
    pub total_requests: u64,
    /// p99 HTTP latency, failures included.
    pub p99_ms: Option<f64>,
    /// DNS queries sent, and those unanswered or without an address.
    pub dns_queries: u64,
    pub dns_failures: u64,
    /// Requests answered by each cluster, over the whole drill.
    pub answered_by: std::collections::BTreeMap<String, u64>,
    /// The restore worked and traffic came back (for `hub-leader`: a
    /// leader, and nothing lost).
    pub restored: bool,
    /// Ctrl-C cut the drill short (it restored all the same).
    pub interrupted: bool,
    /// What the reader should know (a failed action, a DNS down by design).
    pub notes: Vec<String>,
    /// Each SLO check, and whether all passed (the verdict).
    pub checks: Vec<Check>,
    pub pass: bool,
}

/// What the drill did and saw, besides the traffic.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// As in [`Report`].
    pub drill: String,
    pub cluster: Option<String>,
    pub service: String,
    pub method: String,
    /// When the action was taken, since traffic began, and how long it took.
    pub action_at: Duration,
    pub action_took: Duration,
    /// Since the action: when the hub showed the fault, when the restore
    /// was taken.
    pub detected: Option<Duration>,
    pub restore_at: Option<Duration>,
    /// Since the restore: when traffic came back.
    pub restored_at: Option<Duration>,
    /// As in [`Report`].
    pub restored: bool,
    pub interrupted: bool,
    pub notes: Vec<String>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The shortest run of samples clear of the cluster, up to the restore,
/// that counts as a shift. DNS answers hold one cluster per answer and
/// requests are spread by weight, so a few clear samples in a row happen
/// by chance; ten in a row over half a second do not (at a one-third share,
/// (2/3)^10 < 2%, and the run lasts as long as the fault).
const MIN_CLEAR_SAMPLES: usize = 10;
const MIN_CLEAR: Duration = Duration::from_millis(500);

/// When traffic left `cluster` for good after `action` (and before
/// `until`): the send time of the first sample after the last one that
/// still `hit` it, or of the first sample after the action when none did.
/// `None` when the window ends without a clear run long enough to tell a
/// shift from chance (see [`MIN_CLEAR_SAMPLES`]), or no sample was sent in
/// it.
fn shift<T>(
    samples: &[T],
    sent: impl Fn(&T) -> Duration,
    hit: impl Fn(&T) -> bool,
    action: Duration,
    until: Duration,
) -> Option<Duration> {
    let window: Vec<&T> = samples
        .iter()
        .filter(|s| sent(s) >= action && sent(s) < until)
        .collect();
    let clear_from = window.iter().rposition(|s| hit(s)).map_or(0, |i| i + 1);
    let first_clear = sent(window.get(clear_from)?);
    let run = window.len() - clear_from;
    let lasted = match until {
        Duration::MAX => window.last().map_or(Duration::ZERO, |s| sent(s)) - first_clear,
        until => until - first_clear,
    };
    (run >= MIN_CLEAR_SAMPLES && lasted >= MIN_CLEAR).then(|| first_clear.saturating_sub(action))
}

fn dns_hits(d: &DnsSample, cluster: &str) -> bool {
    d.clusters
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c == cluster))
}

/// A request "still went" to the cluster if the cluster answered it or it
/// failed (a failure after the shift would be the gateway still trying).
fn http_hits(h: &HttpSample, cluster: &str) -> bool {
    match &h.outcome {
        Ok(c) => c == cluster,
        Err(_) => true,
    }
}

/// The p-th percentile (0..=100) of `values`, nearest rank.
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// Builds the report and judges it.
pub fn build(observed: Observed, samples: &Samples, slo: &Slo) -> Report {
    let action = observed.action_at;
    let until = observed.restore_at.map_or(Duration::MAX, |r| action + r);
    let (dns_shift, gateway_shift) = match &observed.cluster {
        Some(cluster) if observed.drill != "hub-leader" => (
            shift(
                &samples.dns,
                |d| d.sent,
                |d| dns_hits(d, cluster),
                action,
                until,
            ),
            shift(
                &samples.http,
                |h| h.sent,
                |h| http_hits(h, cluster),
                action,
                until,
            ),
        ),
        _ => (None, None),
    };
    let failed = samples.http.iter().filter(|h| h.outcome.is_err()).count() as u64;
    let mut latencies: Vec<f64> = samples
        .http
        .iter()
        .map(|h| h.latency.as_secs_f64() * 1000.0)
        .collect();
    let p99 = percentile(&mut latencies, 99.0).map(|v| (v * 1000.0).round() / 1000.0);
    let mut answered_by = std::collections::BTreeMap::new();
    for h in &samples.http {
        if let Ok(c) = &h.outcome {
            *answered_by.entry(c.clone()).or_insert(0) += 1;
        }
    }
    let timeline = Timeline {
        action_at_ms: ms(action),
        action_ms: ms(observed.action_took),
        detect_ms: observed.detected.map(ms),
        dns_shift_ms: dns_shift.map(ms),
        gateway_shift_ms: gateway_shift.map(ms),
        restore_at_ms: observed.restore_at.map(ms),
        restore_ms: observed.restored_at.map(ms),
    };

    let mut checks = Vec::new();
    let mut check = |name: &str, pass: bool, detail: String| {
        checks.push(Check {
            name: name.to_string(),
            pass,
            detail,
        })
    };
    let within = |got: Option<u64>, limit: u64| got.is_some_and(|g| g <= limit);
    let show = |v: Option<u64>| v.map_or("never".to_string(), |v| format!("{v} ms"));
    if let Some(limit) = slo.detect_ms {
        check(
            "detect",
            within(timeline.detect_ms, limit),
            format!("{} (limit {limit} ms)", show(timeline.detect_ms)),
        );
    }
    if let (Some(limit), Some(_)) = (slo.shift_ms, &observed.cluster) {
        if observed.drill != "hub-leader" {
            check(
                "dns shift",
                within(timeline.dns_shift_ms, limit),
                format!("{} (limit {limit} ms)", show(timeline.dns_shift_ms)),
            );
            check(
                "gateway shift",
                within(timeline.gateway_shift_ms, limit),
                format!("{} (limit {limit} ms)", show(timeline.gateway_shift_ms)),
            );
        }
    }
    if let Some(limit) = slo.failed {
        check(
            "failed requests",
            failed <= limit,
            format!("{failed} of {} (limit {limit})", samples.http.len()),
        );
    }
    if let Some(limit) = slo.p99_ms {
        check(
            "p99 latency",
            p99.is_some_and(|p| p <= limit),
            format!(
                "{} (limit {limit} ms)",
                p99.map_or("no requests".into(), |p| format!("{p:.1} ms"))
            ),
        );
    }
    check(
        "restored",
        observed.restored,
        match observed.restored {
            true => show(timeline.restore_ms),
            false => "not restored: run `switchyard drill restore`".into(),
        },
    );
    if samples.http.is_empty() {
        check("traffic", false, "no HTTP request was sent".into());
    }
    let pass = checks.iter().all(|c| c.pass);
    Report {
        drill: observed.drill,
        cluster: observed.cluster,
        service: observed.service,
        method: observed.method,
        detect_ms: timeline.detect_ms,
        dns_shift_ms: timeline.dns_shift_ms,
        gateway_shift_ms: timeline.gateway_shift_ms,
        timeline,
        failed_requests: failed,
        total_requests: samples.http.len() as u64,
        p99_ms: p99,
        dns_queries: samples.dns.len() as u64,
        dns_failures: samples.dns.iter().filter(|d| d.clusters.is_none()).count() as u64,
        answered_by,
        restored: observed.restored,
        interrupted: observed.interrupted,
        notes: observed.notes,
        checks,
        pass,
    }
}

/// The report for a terminal.
pub fn render(r: &Report) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    let mut s = String::new();
    let target = r.cluster.as_deref().unwrap_or("hub");
    s += &format!(
        "drill {} on {target} ({}), traffic to {}\n",
        r.drill, r.method, r.service
    );
    s += "timeline (from the action):\n";
    s += &format!(
        "  action      at +{} ms of traffic, took {} ms\n",
        r.timeline.action_at_ms, r.timeline.action_ms
    );
    s += &format!("  detection   {}\n", opt(r.detect_ms));
    s += &format!("  DNS shift   {}\n", opt(r.dns_shift_ms));
    s += &format!("  gateway     {}\n", opt(r.gateway_shift_ms));
    s += &format!(
        "  restore     at {}, back after {}\n",
        opt(r.timeline.restore_at_ms),
        opt(r.timeline.restore_ms)
    );
    let answered: Vec<String> = r
        .answered_by
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    s += &format!(
        "requests: {} failed of {}, p99 {}; answered by {}\n",
        r.failed_requests,
        r.total_requests,
        r.p99_ms.map_or("-".into(), |p| format!("{p:.1} ms")),
        answered.join(", ")
    );
    s += &format!(
        "DNS: {} failed of {} queries\n",
        r.dns_failures, r.dns_queries
    );
    for n in &r.notes {
        s += &format!("note: {n}\n");
    }
    for c in &r.checks {
        s += &format!(
            "{} {:<16} {}\n",
            if c.pass { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    s += &format!("verdict: {}\n", if r.pass { "PASS" } else { "FAIL" });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(sent_ms: u64, outcome: Result<&str, &str>) -> HttpSample {
        HttpSample {
            sent: Duration::from_millis(sent_ms),
            latency: Duration::from_millis(sent_ms % 7 + 1),
            outcome: outcome.map(str::to_string).map_err(str::to_string),
        }
    }

    fn dns(sent_ms: u64, clusters: Option<&[&str]>) -> DnsSample {
        DnsSample {
            sent: Duration::from_millis(sent_ms),
            clusters: clusters.map(|c| c.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn observed(drill: &str) -> Observed {
        Observed {
            drill: drill.into(),
            cluster: Some("b".into()),
            service: "app/api".into(),
            method: "test".into(),
            action_at: Duration::from_millis(1000),
            detected: Some(Duration::from_millis(3100)),
            restore_at: Some(Duration::from_millis(6000)),
            restored_at: Some(Duration::from_millis(400)),
            restored: true,
            ..Default::default()
        }
    }

    #[test]
    fn shifts_are_measured_from_the_action_to_the_first_clear_sample() {
        let mut dns_samples = vec![
            dns(900, Some(&["b"])),
            dns(1500, Some(&["b"])),
            // One clear answer by chance: not the shift.
            dns(1600, Some(&["a"])),
            dns(4000, Some(&["b"])),
            dns(4100, None),
        ];
        // Clear from 4100 to the restore (6000).
        dns_samples.extend((42..60).map(|t| dns(t * 100, Some(&["a"]))));
        // After the restore: not part of the shift.
        dns_samples.push(dns(7500, Some(&["b"])));
        let mut http_samples = vec![
            http(800, Ok("b")),
            http(1200, Ok("a")),
            http(2000, Err("connect refused")),
            http(3900, Ok("b")),
        ];
        http_samples.extend((0..19).map(|i| http(4050 + i * 100, Ok("a"))));
        http_samples.push(http(7200, Ok("b")));
        let samples = Samples {
            dns: dns_samples,
            http: http_samples,
        };
        let slo = Slo {
            detect_ms: Some(4000),
            shift_ms: Some(4000),
            failed: Some(0),
            p99_ms: None,
        };
        let r = build(observed("cluster-down"), &samples, &slo);
        // The failed query at 4100 counts as clear of b: it held no b address.
        assert_eq!(r.dns_shift_ms, Some(3100));
        assert_eq!(r.gateway_shift_ms, Some(3050));
        assert_eq!((r.failed_requests, r.total_requests), (1, 24));
        assert_eq!((r.dns_failures, r.dns_queries), (1, 24));
        assert_eq!(r.answered_by["b"], 3);
        let failed: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, ["failed requests"]);
        assert!(!r.pass);
        let text = render(&r);
        assert!(text.contains("FAIL failed requests"), "{text}");
        assert!(text.contains("verdict: FAIL"), "{text}");
    }

    #[test]
    fn a_short_clear_run_before_the_restore_is_no_shift() {
        // Interrupted early: the last few answers happen to be clear.
        let mut samples = Samples::default();
        for t in 0..40 {
            let c = if t % 3 == 0 { "b" } else { "a" };
            samples.dns.push(dns(1000 + t * 20, Some(&[c])));
            samples.http.push(http(1000 + t * 20, Ok(c)));
        }
        for t in 0..5 {
            samples.dns.push(dns(1800 + t * 20, Some(&["a"])));
            samples.http.push(http(1800 + t * 20, Ok("a")));
        }
        let mut o = observed("cluster-down");
        o.restore_at = Some(Duration::from_millis(900));
        let r = build(o, &samples, &Slo::default());
        assert_eq!((r.dns_shift_ms, r.gateway_shift_ms), (None, None));
    }

    #[test]
    fn traffic_that_never_leaves_fails_the_shift() {
        let samples = Samples {
            dns: vec![dns(1500, Some(&["b"])), dns(5000, Some(&["b"]))],
            http: vec![http(1500, Ok("b")), http(5000, Ok("b"))],
        };
        let slo = Slo {
            shift_ms: Some(10_000),
            ..Default::default()
        };
        let r = build(observed("drain"), &samples, &slo);
        assert_eq!((r.dns_shift_ms, r.gateway_shift_ms), (None, None));
        assert!(!r.pass);
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "detect_ms",
            "dns_shift_ms",
            "gateway_shift_ms",
            "failed_requests",
            "total_requests",
            "restored",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["restored"], true);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 99.0), Some(99.0));
        assert_eq!(percentile(&mut v, 100.0), Some(100.0));
        assert_eq!(percentile(&mut [], 50.0), None);
    }
}
