//! JSON merge patch (RFC 7386), what `merge-patch+json` means and what this
//! server also uses for strategic-merge and apply patches (see the crate
//! docs for how that differs from a real API server).

use serde_json::{Map, Value};

/// Applies `patch` to `target`: objects merge key by key, `null` removes a
/// key, anything else (arrays included) replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(
            &mut doc,
            &json!({"a": "z", "c": {"f": null, "h": 1}, "l": [3]}),
        );
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e", "h": 1}, "l": [3]}));
        let mut scalar = json!(1);
        merge(&mut scalar, &json!({"x": {"y": null}}));
        assert_eq!(scalar, json!({"x": {}}));
    }
}
