//! The server's objects, their resourceVersions and the event history that
//! watches resume from.

use crate::patch;
use crate::Resource;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `BadRequest`, `Expired`, ...
    pub reason: &'static str,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The `Status` object a real API server sends.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

/// One change, kept for watches that resume from an older resourceVersion.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub resource: usize,
    pub namespace: String,
    pub change: Change,
    /// The object before the change (`None` when added).
    pub old: Option<Value>,
    /// The object after the change (for a deletion: as deleted, with the
    /// deletion's resourceVersion).
    pub new: Value,
}

/// Key of a stored object: resource index, namespace ("" if cluster-scoped), name.
pub type Key = (usize, String, String);

/// All objects and the recent history.
#[derive(Default)]
pub struct Store {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: VecDeque<Arc<Event>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    pub compacted: u64,
    /// Events kept for resuming watches; older ones are compacted away.
    pub history_limit: usize,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn new_uid() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = value;
}

impl Store {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, event: Event) -> Arc<Event> {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit.max(1) {
            if let Some(old) = self.history.pop_front() {
                self.compacted = self.compacted.max(old.rv);
            }
        }
        event
    }

    /// Forgets the history: watches from any resourceVersion before now get
    /// 410 Gone (what etcd compaction does to a real API server).
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    /// Objects of `resource` in `namespace` (all namespaces if `None`).
    pub fn list(&self, resource: usize, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Creates an object; fills in uid, resourceVersion, creationTimestamp,
    /// generation and (from `generateName`) the name.
    pub fn create(
        &mut self,
        resources: &[Resource],
        resource: usize,
        namespace: &str,
        mut obj: Value,
    ) -> Result<(Value, Arc<Event>), ApiError> {
        let res = &resources[resource];
        if !obj.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not an object",
            ));
        }
        let mut name = meta_str(&obj, "name").unwrap_or("").to_string();
        if name.is_empty() {
            match meta_str(&obj, "generateName") {
                Some(prefix) => {
                    let suffix: String = (0..5)
                        .map(|_| (b'a' + rand::random::<u8>() % 26) as char)
                        .collect();
                    name = format!("{prefix}{suffix}");
                }
                None => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("{} is invalid: metadata.name: Required value", res.kind),
                    ))
                }
            }
        }
        if let Some(body_ns) = meta_str(&obj, "namespace") {
            if res.namespaced && !namespace.is_empty() && body_ns != namespace {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        if res.namespaced {
            self.require_namespace(resources, namespace)?;
        }
        let key = (resource, namespace.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", res.plural),
            ));
        }
        let rv = self.bump();
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        set_meta(&mut obj, "name", json!(name));
        if res.namespaced {
            set_meta(&mut obj, "namespace", json!(namespace));
        }
        set_meta(&mut obj, "uid", json!(new_uid()));
        set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
        set_meta(&mut obj, "creationTimestamp", json!(now_rfc3339()));
        set_meta(&mut obj, "generation", json!(1));
        if res.status_subresource {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        self.objects.insert(key, obj.clone());
        let event = self.record(Event {
            rv,
            resource,
            namespace: namespace.to_string(),
            change: Change::Added,
            old: None,
            new: obj.clone(),
        });
        Ok((obj, event))
    }

    fn require_namespace(&self, resources: &[Resource], namespace: &str) -> Result<(), ApiError> {
        let Some(ns_index) = resources.iter().position(|r| r.is_namespaces()) else {
            return Ok(());
        };
        if self
            .objects
            .contains_key(&(ns_index, String::new(), namespace.to_string()))
        {
            Ok(())
        } else {
            Err(ApiError::new(
                404,
                "NotFound",
                format!("namespaces \"{namespace}\" not found"),
            ))
        }
    }

    /// Replaces an object (or only its status). A resourceVersion in the
    /// body must match the stored one.
    pub fn replace(
        &mut self,
        resources: &[Resource],
        key: &Key,
        body: Value,
        status_only: bool,
    ) -> Result<(Value, Arc<Event>), ApiError> {
        let res = &resources[key.0];
        let old = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(res, key))?;
        if let Some(rv) = meta_str(&body, "resourceVersion") {
            if !rv.is_empty() && Some(rv) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                        res.plural, key.2
                    ),
                ));
            }
        }
        let mut new = old.clone();
        if status_only {
            new["status"] = body.get("status").cloned().unwrap_or(Value::Null);
        } else {
            new = body;
            // Identity and bookkeeping stay the server's.
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
            ] {
                match old.get("metadata").and_then(|m| m.get(field)) {
                    Some(v) => set_meta(&mut new, field, v.clone()),
                    None => {
                        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.remove(field);
                        }
                    }
                }
            }
            if res.status_subresource {
                new["status"] = old.get("status").cloned().unwrap_or(Value::Null);
            }
        }
        self.store_update(resources, key, old, new)
    }

    /// Applies a merge patch to an object (or its status).
    pub fn patch(
        &mut self,
        resources: &[Resource],
        key: &Key,
        patch_body: &Value,
        status_only: bool,
    ) -> Result<(Value, Arc<Event>), ApiError> {
        let res = &resources[key.0];
        let old = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(res, key))?;
        let mut new = old.clone();
        if status_only {
            if let Some(status) = patch_body.get("status") {
                patch::merge(
                    new.as_object_mut()
                        .map(|o| o.entry("status").or_insert(Value::Null))
                        .ok_or_else(|| {
                            ApiError::new(500, "InternalError", "stored object is not an object")
                        })?,
                    status,
                );
            }
        } else {
            let mut p = patch_body.clone();
            if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
                for field in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "resourceVersion",
                ] {
                    m.remove(field);
                }
            }
            if res.status_subresource {
                if let Some(o) = p.as_object_mut() {
                    o.remove("status");
                }
            }
            patch::merge(&mut new, &p);
        }
        self.store_update(resources, key, old, new)
    }

    fn store_update(
        &mut self,
        resources: &[Resource],
        key: &Key,
        old: Value,
        mut new: Value,
    ) -> Result<(Value, Arc<Event>), ApiError> {
        let res = &resources[key.0];
        if let Some(o) = new.as_object_mut() {
            if o.get("status").is_some_and(Value::is_null) {
                o.remove("status");
            }
        }
        new["apiVersion"] = json!(res.api_version());
        new["kind"] = json!(res.kind);
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
                m.remove("managedFields");
            }
            v
        };
        if strip(&old) == strip(&new) {
            // No change: no new resourceVersion, no event (as the real server).
            let event = Arc::new(Event {
                rv: self.rv,
                resource: key.0,
                namespace: key.1.clone(),
                change: Change::Modified,
                old: Some(old.clone()),
                new: old.clone(),
            });
            return Ok((old, event));
        }
        if old.get("spec") != new.get("spec") {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            set_meta(&mut new, "generation", json!(generation + 1));
        }
        let rv = self.bump();
        set_meta(&mut new, "resourceVersion", json!(rv.to_string()));
        self.objects.insert(key.clone(), new.clone());
        let event = self.record(Event {
            rv,
            resource: key.0,
            namespace: key.1.clone(),
            change: Change::Modified,
            old: Some(old),
            new: new.clone(),
        });
        Ok((new, event))
    }

    /// Deletes an object and, like the garbage collector, every object that
    /// names it in `ownerReferences` (recursively).
    pub fn delete(
        &mut self,
        resources: &[Resource],
        key: &Key,
    ) -> Result<(Value, Vec<Arc<Event>>), ApiError> {
        let res = &resources[key.0];
        let old = self
            .objects
            .remove(key)
            .ok_or_else(|| not_found(res, key))?;
        let mut events = Vec::new();
        let rv = self.bump();
        let mut gone = old.clone();
        set_meta(&mut gone, "resourceVersion", json!(rv.to_string()));
        events.push(self.record(Event {
            rv,
            resource: key.0,
            namespace: key.1.clone(),
            change: Change::Deleted,
            old: Some(old.clone()),
            new: gone.clone(),
        }));
        if let Some(uid) = meta_str(&old, "uid").map(str::to_string) {
            let dependents: Vec<Key> = self
                .objects
                .iter()
                .filter(|(_, v)| {
                    v.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            refs.iter()
                                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
                        })
                })
                .map(|(k, _)| k.clone())
                .collect();
            for dependent in dependents {
                if let Ok((_, more)) = self.delete(resources, &dependent) {
                    events.extend(more);
                }
            }
        }
        Ok((gone, events))
    }
}

fn not_found(res: &Resource, key: &Key) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!(
            "{}.{} \"{}\" not found",
            res.plural,
            res.group_or_core(),
            key.2
        ),
    )
}
