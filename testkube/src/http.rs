//! The HTTP side: paths to resources, methods to store operations, and the
//! watch stream.

use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ApiError, Change, Event};
use crate::Inner;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

type AppState = (Arc<Inner>, CancellationToken);

pub(crate) fn router(inner: Arc<Inner>, stop: CancellationToken) -> Router {
    Router::new().fallback(handle).with_state((inner, stop))
}

/// What a path names.
struct Target {
    resource: usize,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn not_served(path: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

fn route(inner: &Inner, path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_served(path)),
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] => (Some(*ns), *plural, tail.first(), tail.get(1)),
        ["namespaces", name] => (None, "namespaces", Some(name), None),
        [plural, tail @ ..] => (None, *plural, tail.first(), tail.get(1)),
        [] => return Err(not_served(path)),
    };
    let resource = inner
        .find(group, version, plural)
        .ok_or_else(|| not_served(path))?;
    let res = inner.resource(resource);
    if namespace.is_some() && !res.namespaced {
        return Err(not_served(path));
    }
    let status = match sub {
        None => false,
        Some(&"status") if res.status_subresource => true,
        Some(_) => return Err(not_served(path)),
    };
    Ok(Target {
        resource,
        namespace: namespace.map(str::to_string),
        name: name.map(|n| n.to_string()),
        status,
    })
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding (and `+` as space) of a query component.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(err: &ApiError) -> Response {
    json_response(err.code, &err.status())
}

async fn handle(
    State((inner, stop)): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Ok(mut log) = inner.requests.lock() {
        log.push(format!("{method} {uri}"));
    }
    let target = match route(&inner, uri.path()) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let params = query(&uri);
    let result = match method {
        Method::GET => match &target.name {
            Some(_) => get(&inner, &target),
            None if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) => {
                return watch(inner, stop, target, params).await;
            }
            None => list(&inner, &target, &params),
        },
        Method::POST if target.name.is_none() => {
            parse_body(&body, "application/json").and_then(|obj| create(&inner, &target, obj))
        }
        Method::PUT if target.name.is_some() => {
            parse_body(&body, "application/json").and_then(|obj| replace(&inner, &target, obj))
        }
        Method::PATCH if target.name.is_some() => patch(&inner, &target, &headers, &body),
        Method::DELETE if target.name.is_some() => delete(&inner, &target),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {}", uri.path()),
        )),
    };
    match result {
        Ok((code, body)) => json_response(code, &body),
        Err(e) => error_response(&e),
    }
}

fn parse_body(body: &Bytes, kind: &str) -> Result<Value, ApiError> {
    let parsed = if kind.contains("yaml") {
        serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::new(400, "BadRequest", format!("the body does not decode: {e}")))
}

type Reply = Result<(u16, Value), ApiError>;

fn key_of(target: &Target) -> (usize, String, String) {
    (
        target.resource,
        target.namespace.clone().unwrap_or_default(),
        target.name.clone().unwrap_or_default(),
    )
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, crate::store::Store> {
    inner
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn get(inner: &Inner, target: &Target) -> Reply {
    let key = key_of(target);
    let store = lock(inner);
    match store.get(&key) {
        Some(obj) => Ok((200, obj.clone())),
        None => {
            let res = inner.resource(target.resource);
            Err(ApiError::new(
                404,
                "NotFound",
                format!("{} \"{}\" not found", res.plural, key.2),
            ))
        }
    }
}

fn selectors(params: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let bad = |e: String| ApiError::new(400, "BadRequest", e);
    Ok((
        LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
            .map_err(bad)?,
        FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))
            .map_err(bad)?,
    ))
}

fn list(inner: &Inner, target: &Target, params: &HashMap<String, String>) -> Reply {
    let (labels, fields) = selectors(params)?;
    let res = inner.resource(target.resource);
    let store = lock(inner);
    let items: Vec<Value> = store
        .list(target.resource, target.namespace.as_deref())
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .collect();
    Ok((
        200,
        json!({
            "apiVersion": res.api_version(),
            "kind": format!("{}List", res.kind),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        }),
    ))
}

fn create(inner: &Inner, target: &Target, obj: Value) -> Reply {
    let namespace = target.namespace.clone().unwrap_or_default();
    let (obj, event) =
        lock(inner).create(&inner.options.resources, target.resource, &namespace, obj)?;
    inner.publish([event]);
    Ok((201, obj))
}

fn replace(inner: &Inner, target: &Target, obj: Value) -> Reply {
    let key = key_of(target);
    let (obj, event) = lock(inner).replace(&inner.options.resources, &key, obj, target.status)?;
    inner.publish([event]);
    Ok((200, obj))
}

fn patch(inner: &Inner, target: &Target, headers: &HeaderMap, body: &Bytes) -> Reply {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let apply = kind.starts_with("application/apply-patch");
    if !(apply
        || kind.starts_with("application/merge-patch+json")
        || kind.starts_with("application/strategic-merge-patch+json"))
    {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("patch type {kind:?} is not supported by testkube"),
        ));
    }
    let body = parse_body(body, &kind)?;
    let key = key_of(target);
    let mut store = lock(inner);
    if apply && store.get(&key).is_none() && !target.status {
        let mut obj = body;
        obj["metadata"]["name"] = json!(key.2);
        let (obj, event) = store.create(&inner.options.resources, target.resource, &key.1, obj)?;
        drop(store);
        inner.publish([event]);
        return Ok((201, obj));
    }
    let (obj, event) = store.patch(&inner.options.resources, &key, &body, target.status)?;
    drop(store);
    inner.publish([event]);
    Ok((200, obj))
}

fn delete(inner: &Inner, target: &Target) -> Reply {
    let key = key_of(target);
    let (obj, events) = lock(inner).delete(&inner.options.resources, &key)?;
    inner.publish(events);
    Ok((200, obj))
}

/// A watch event for `target` from a change, or `None` if the watcher
/// does not see it (another resource or namespace, outside its selectors).
fn watch_event(
    event: &Event,
    target: &Target,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<Value> {
    if event.resource != target.resource
        || target
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != event.namespace)
    {
        return None;
    }
    let sees = |o: &Value| labels.matches(o) && fields.matches(o);
    let old_seen = event.old.as_ref().is_some_and(sees);
    let new_seen = sees(&event.new);
    let kind = match event.change {
        Change::Added if new_seen => "ADDED",
        Change::Modified if old_seen && new_seen => "MODIFIED",
        Change::Modified if new_seen => "ADDED",
        Change::Modified if old_seen => "DELETED",
        Change::Deleted if old_seen => "DELETED",
        _ => return None,
    };
    Some(json!({"type": kind, "object": event.new}))
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn expired(rv: &str) -> Value {
    let err = ApiError::new(410, "Expired", format!("too old resource version: {rv}"));
    json!({"type": "ERROR", "object": err.status()})
}

async fn watch(
    inner: Arc<Inner>,
    stop: CancellationToken,
    target: Target,
    params: HashMap<String, String>,
) -> Response {
    let (labels, fields) = match selectors(&params) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let from_text = params.get("resourceVersion").cloned().unwrap_or_default();
    let from: Option<u64> = match from_text.as_str() {
        "" | "0" => None,
        text => match text.parse() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return error_response(&ApiError::new(
                    400,
                    "BadRequest",
                    format!("resourceVersion {text:?} is not a number"),
                ))
            }
        },
    };
    let bookmarks = matches!(
        params.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);

    let mut live = inner.events.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut initial = Vec::new();
    let mut sent_rv;
    {
        let store = lock(&inner);
        sent_rv = store.rv;
        match from {
            Some(rv) if rv < store.compacted => {
                initial.push(line(&expired(&from_text)));
                drop(store);
                let _ = tx.try_send(initial.remove(0));
                drop(tx);
                return stream_response(rx);
            }
            Some(rv) => {
                for event in store.history.iter().filter(|e| e.rv > rv) {
                    if let Some(ev) = watch_event(event, &target, &labels, &fields) {
                        initial.push(line(&ev));
                    }
                }
            }
            None => {
                for obj in store.list(target.resource, target.namespace.as_deref()) {
                    if labels.matches(&obj) && fields.matches(&obj) {
                        initial.push(line(&json!({"type": "ADDED", "object": obj})));
                    }
                }
            }
        }
    }
    let res = inner.resource(target.resource).clone();
    let interval = inner.options.bookmark_interval;
    tokio::spawn(async move {
        for item in initial {
            if tx.send(item).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = lock(&inner).rv.max(sent_rv);
                    let mark = json!({"type": "BOOKMARK", "object": {
                        "apiVersion": res.api_version(), "kind": res.kind,
                        "metadata": {"resourceVersion": rv.to_string()},
                    }});
                    if tx.send(line(&mark)).await.is_err() {
                        return;
                    }
                }
                event = live.recv() => match event {
                    Ok(event) => {
                        if event.rv <= sent_rv {
                            continue;
                        }
                        sent_rv = event.rv;
                        if let Some(ev) = watch_event(&event, &target, &labels, &fields) {
                            if tx.send(line(&ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(line(&expired(&sent_rv.to_string()))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    stream_response(rx)
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn query_components_are_percent_decoded() {
        assert_eq!(decode("a%3Db%2Cc%21%3Dd"), "a=b,c!=d");
        assert_eq!(decode("x+y%"), "x y%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
