//! Status conditions in the Kubernetes form (`metav1.Condition`): merging
//! the conditions the agent computed into those an object already has, so
//! that `lastTransitionTime` moves only when a condition's status does and
//! an unchanged status is never written again.

use crate::model::Condition;
use serde_json::{json, Value};

/// The new `status.conditions` of an object, or `None` when `desired` is
/// already what `existing` says (same types, statuses, reasons, messages
/// and observed generation). Conditions of types the agent does not manage
/// (not in `desired`) are kept as they are.
pub fn merge(
    existing: &[Value],
    desired: &[Condition],
    generation: Option<i64>,
    now: &str,
) -> Option<Vec<Value>> {
    let field = |c: &Value, f: &str| c.get(f).and_then(Value::as_str).map(str::to_string);
    let mut out: Vec<Value> = Vec::with_capacity(existing.len().max(desired.len()));
    let mut changed = false;
    for want in desired {
        let old = existing
            .iter()
            .find(|c| field(c, "type").as_deref() == Some(want.type_.as_str()));
        let same_status =
            old.is_some_and(|c| field(c, "status").as_deref() == Some(want.status.as_str()));
        let same = same_status
            && old.is_some_and(|c| {
                field(c, "reason").as_deref() == Some(want.reason.as_str())
                    && field(c, "message").as_deref() == Some(want.message.as_str())
                    && c.get("observedGeneration").and_then(Value::as_i64) == generation
            });
        if same {
            if let Some(c) = old {
                out.push(c.clone());
            }
            continue;
        }
        changed = true;
        let since = match old {
            Some(c) if same_status => {
                field(c, "lastTransitionTime").unwrap_or_else(|| now.to_string())
            }
            _ => now.to_string(),
        };
        let mut c = json!({
            "type": want.type_,
            "status": want.status,
            // The CRD schema requires a non-empty reason.
            "reason": if want.reason.is_empty() { "Unknown" } else { want.reason.as_str() },
            "message": want.message,
            "lastTransitionTime": since,
        });
        if let Some(g) = generation {
            c["observedGeneration"] = json!(g);
        }
        out.push(c);
    }
    for c in existing {
        let t = field(c, "type");
        if !desired
            .iter()
            .any(|d| Some(d.type_.as_str()) == t.as_deref())
        {
            out.push(c.clone());
        }
    }
    changed.then_some(out)
}

/// Now, as a Kubernetes timestamp (RFC 3339, seconds).
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_conditions_are_not_written_and_transition_times_stay() {
        let valid = Condition::new("Valid", true, "Valid", "ok");
        let first = merge(
            &[],
            std::slice::from_ref(&valid),
            Some(1),
            "2026-01-01T00:00:00Z",
        )
        .unwrap();
        assert_eq!(first[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(first[0]["observedGeneration"], 1);
        assert!(merge(
            &first,
            std::slice::from_ref(&valid),
            Some(1),
            "2026-01-02T00:00:00Z"
        )
        .is_none());

        // Same status, new message: written, but the transition time stays.
        let reworded = Condition::new("Valid", true, "Valid", "still ok");
        let second = merge(&first, &[reworded], Some(1), "2026-01-02T00:00:00Z").unwrap();
        assert_eq!(second[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(second[0]["message"], "still ok");

        // A status change moves it.
        let gone = Condition::new("Valid", false, "NoService", "no service");
        let third = merge(&second, &[gone], Some(2), "2026-01-03T00:00:00Z").unwrap();
        assert_eq!(third[0]["lastTransitionTime"], "2026-01-03T00:00:00Z");
        assert_eq!(third[0]["observedGeneration"], 2);
    }

    #[test]
    fn conditions_of_other_types_are_kept() {
        let theirs = json!({"type": "Other", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "t"});
        let out = merge(
            std::slice::from_ref(&theirs),
            &[Condition::new("Valid", true, "Valid", "")],
            None,
            "n",
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], theirs);
    }
}
