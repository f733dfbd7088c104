//! testkube: a small Kubernetes API server for switchyard's tests.
//!
//! It speaks the parts of the API that controllers built on kube-rs use,
//! over plain HTTP on loopback, so that the agent's real `kube::Client`,
//! watchers and reflectors run against it:
//!
//! - list (with a list `resourceVersion`) and watch (`watch=1`) for every
//!   served resource, in one namespace or all, with label and field
//!   (`metadata.name`, `metadata.namespace`) selectors;
//! - watches resume from a `resourceVersion` out of a bounded history, send
//!   `BOOKMARK` events when asked (`allowWatchBookmarks`), end after
//!   `timeoutSeconds`, and answer `410 Gone` (an `ERROR` event with an
//!   `Expired` status) for a resourceVersion older than the history;
//! - create (with `generateName`), get, replace (optimistic concurrency on
//!   `resourceVersion`), patch, delete, and the `status` subresource;
//! - namespaced objects need their namespace to exist (when `namespaces`
//!   is served); deleting an object deletes the objects that name it in
//!   `ownerReferences`, as the garbage collector does.
//!
//! Simplifications, on purpose: strategic-merge and server-side-apply
//! patches are applied as JSON merge patches (an apply patch creates a
//! missing object; field ownership is not tracked, so applying an object
//! without a field another manager set keeps that field), JSON patches are
//! refused with 415, lists are never paginated, and there is no
//! authentication or admission.
//!
//! Tests can also change objects directly ([`ApiServer::create`] and
//! friends, also while the server is stopped), forget the history
//! ([`ApiServer::compact`]) and stop and resume the server on the same
//! port ([`ApiServer::stop`], [`ApiServer::resume`]).

mod http;
mod patch;
mod selector;
mod store;

pub use selector::{FieldSelector, LabelSelector};
pub use store::ApiError;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A resource the server serves: `group/version` and `plural`, the object
/// `kind`, whether it is namespaced and has a `status` subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group, empty for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural name used in paths.
    pub plural: String,
    /// Object kind.
    pub kind: String,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
    /// Whether `status` is a subresource (writes to the object ignore it).
    pub status_subresource: bool,
}

impl Resource {
    /// A resource of `group/version`.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced,
            status_subresource: false,
        }
    }

    /// The same resource with a `status` subresource.
    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn group_or_core(&self) -> &str {
        if self.group.is_empty() {
            "core"
        } else {
            &self.group
        }
    }

    fn is_namespaces(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }

    /// Core `v1` Namespaces.
    pub fn namespaces() -> Self {
        Self::new("", "v1", "namespaces", "Namespace", false)
    }

    /// Core `v1` Services.
    pub fn services() -> Self {
        Self::new("", "v1", "services", "Service", true).with_status()
    }

    /// `discovery.k8s.io/v1` EndpointSlices.
    pub fn endpoint_slices() -> Self {
        Self::new(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
        )
    }
}

/// How a server behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The resources served; requests for anything else get 404.
    pub resources: Vec<Resource>,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Events kept for watches to resume from; older ones are compacted
    /// (a watch from before them gets 410 Gone).
    pub history: usize,
}

impl Options {
    /// Serves `resources`, bookmarks every second, 10,000 events of history.
    pub fn new(resources: Vec<Resource>) -> Self {
        Self {
            resources,
            bookmark_interval: Duration::from_secs(1),
            history: 10_000,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) options: Options,
    pub(crate) store: Mutex<store::Store>,
    pub(crate) events: broadcast::Sender<Arc<store::Event>>,
    pub(crate) requests: Mutex<Vec<String>>,
}

impl Inner {
    pub(crate) fn publish(&self, events: impl IntoIterator<Item = Arc<store::Event>>) {
        for event in events {
            let _ = self.events.send(event);
        }
    }

    pub(crate) fn resource(&self, index: usize) -> &Resource {
        &self.options.resources[index]
    }

    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.options
            .resources
            .iter()
            .position(|r| r.group == group && r.version == version && r.plural == plural)
    }
}

/// A running server on 127.0.0.1.
pub struct ApiServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a server on a free loopback port.
    pub async fn start(options: Options) -> std::io::Result<Self> {
        let history = options.history;
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            options,
            store: Mutex::new(store::Store {
                history_limit: history,
                ..Default::default()
            }),
            events,
            requests: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut server = Self {
            addr,
            inner,
            stop: CancellationToken::new(),
            task: None,
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        self.stop = CancellationToken::new();
        let router = http::router(self.inner.clone(), self.stop.clone());
        let stop = self.stop.clone();
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }));
    }

    /// The server's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig that points at this server, for processes under test.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testkube\n  cluster:\n    server: {url}\ncontexts:\n- name: testkube\n  context:\n    cluster: testkube\n    user: testkube\n    namespace: default\ncurrent-context: testkube\nusers:\n- name: testkube\n  user: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Stops serving: open watches end, connections close.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut Box::pin(task))
                .await
                .is_err()
            {
                tracing::warn!("testkube did not stop within 2 s");
            }
        }
    }

    /// Serves again on the same port after [`Self::stop`], with every
    /// object kept (as an API server restart with etcd behind it).
    pub async fn resume(&mut self) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// [`Self::stop`] then [`Self::resume`].
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        self.resume().await
    }

    /// Forgets the event history: a watch resuming from any earlier
    /// resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.lock().compact();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, store::Store> {
        self.inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn index(&self, resource: &Resource) -> usize {
        self.inner
            .options
            .resources
            .iter()
            .position(|r| r == resource)
            .unwrap_or_else(|| panic!("testkube does not serve {resource:?}"))
    }

    /// Creates an object (as a client's POST would).
    pub fn create(&self, resource: &Resource, object: Value) -> Result<Value, ApiError> {
        let index = self.index(resource);
        let namespace = namespace_of(resource, &object);
        let (obj, event) =
            self.lock()
                .create(&self.inner.options.resources, index, &namespace, object)?;
        self.inner.publish([event]);
        Ok(obj)
    }

    /// Replaces an object (its resourceVersion, if set, must match).
    pub fn replace(&self, resource: &Resource, object: Value) -> Result<Value, ApiError> {
        let key = self.key(resource, &object)?;
        let (obj, event) =
            self.lock()
                .replace(&self.inner.options.resources, &key, object, false)?;
        self.inner.publish([event]);
        Ok(obj)
    }

    /// Applies a merge patch to the object `namespace/name`.
    pub fn patch(
        &self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let key = (
            self.index(resource),
            namespace.to_string(),
            name.to_string(),
        );
        let (obj, event) = self
            .lock()
            .patch(&self.inner.options.resources, &key, &patch, false)?;
        self.inner.publish([event]);
        Ok(obj)
    }

    /// Deletes the object `namespace/name` (and what it owns).
    pub fn delete(&self, resource: &Resource, namespace: &str, name: &str) -> Result<(), ApiError> {
        let key = (
            self.index(resource),
            namespace.to_string(),
            name.to_string(),
        );
        let (_, events) = self.lock().delete(&self.inner.options.resources, &key)?;
        self.inner.publish(events);
        Ok(())
    }

    /// The object `namespace/name`, if it exists.
    pub fn get(&self, resource: &Resource, namespace: &str, name: &str) -> Option<Value> {
        let key = (
            self.index(resource),
            namespace.to_string(),
            name.to_string(),
        );
        self.lock().get(&key).cloned()
    }

    /// Every object of `resource`, in all namespaces.
    pub fn list(&self, resource: &Resource) -> Vec<Value> {
        let index = self.index(resource);
        self.lock().list(index, None)
    }

    /// The requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    fn key(&self, resource: &Resource, object: &Value) -> Result<store::Key, ApiError> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::new(422, "Invalid", "metadata.name: Required value"))?;
        Ok((
            self.index(resource),
            namespace_of(resource, object),
            name.to_string(),
        ))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn namespace_of(resource: &Resource, object: &Value) -> String {
    if !resource.namespaced {
        return String::new();
    }
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string()
}
