//! The Kubernetes API source: list + watch through kube-rs reflectors.
//!
//! One watcher per kind (pods, nodes, services, EndpointSlices, ReplicaSets, Jobs), each
//! with managedFields stripped before caching, the default exponential backoff on
//! errors, and a relist when a watch answers 410 Gone (as a watch event or as the HTTP
//! answer to the watch request). The index is rebuilt
//! from the reflector stores (debounced) and is ready only after every kind's first
//! full list.
//!
//! Read-only RBAC the server needs: `get`, `list`, `watch` on `pods`, `nodes`,
//! `services` (core), `endpointslices` (discovery.k8s.io), `replicasets` (apps) and
//! `jobs` (batch).

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::InventoryError;
use crate::file::now_ns;
use crate::index::{IndexConfig, InventoryTracker, SharedIndex};
use crate::objects::Inventory;

/// A client from a kubeconfig file, or in-cluster / `$KUBECONFIG` / `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, InventoryError> {
    let kube_err = |what: &str, e: &dyn std::fmt::Display| InventoryError::Kube {
        message: format!("{what}: {e}"),
    };
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| kube_err(&p.display().to_string(), &e))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| kube_err(&p.display().to_string(), &e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| kube_err("no in-cluster config or kubeconfig", &e))?,
    };
    Client::try_from(config).map_err(|e| kube_err("client", &e))
}

/// The reflector stores of every watched kind.
#[derive(Clone)]
pub struct KubeSource {
    /// Pods.
    pub pods: Store<Pod>,
    /// Nodes.
    pub nodes: Store<Node>,
    /// Services.
    pub services: Store<Service>,
    /// EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// ReplicaSets (to name Deployments).
    pub replicasets: Store<ReplicaSet>,
    /// Jobs (to name CronJobs).
    pub jobs: Store<Job>,
    changed: Arc<Notify>,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("pods", &self.pods.len())
            .field("nodes", &self.nodes.len())
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

fn spawn_watch<K>(client: &Client, changed: Arc<Notify>, cancel: CancellationToken) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let (reader, mut writer) = reflector::store();
    let kind = K::kind(&());
    tokio::spawn(async move {
        // A fresh watcher starts with a full list. kube's watcher relists when a watch
        // *event* says 410 Gone, but when the watch *request* is answered HTTP 410 it
        // retries the same stale resourceVersion forever (kube-rs/kube#1042): the store
        // would never change again. So such a watcher is replaced by a new one.
        let mut fresh = true;
        loop {
            if !std::mem::take(&mut fresh) {
                // Not in a tight loop should the API answer 410 to every watch.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            let stream = watcher(api.clone(), watcher::Config::default())
                // Managed fields are most of an object's size and podflow never reads them.
                .modify(|o: &mut K| o.meta_mut().managed_fields = None)
                .default_backoff();
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = stream.next() => match ev {
                        Some(Ok(ev)) => {
                            writer.apply_watcher_event(&ev);
                            changed.notify_one();
                        }
                        Some(Err(watcher::Error::WatchStartFailed(kube::Error::Api(s))))
                            if s.code == 410 =>
                        {
                            tracing::warn!(kind = %kind, message = %s.message, "watch refused with 410 Gone; listing again");
                            break;
                        }
                        // The backoff already spaces retries; a 410 watch event makes the
                        // watcher relist by itself.
                        Some(Err(e)) => tracing::warn!(kind = %kind, error = %e, "watch error; retrying"),
                        None => return,
                    },
                }
            }
        }
    });
    reader
}

impl KubeSource {
    /// Starts one watcher per kind on the current runtime, until `cancel`.
    pub fn start(client: &Client, cancel: &CancellationToken) -> KubeSource {
        let changed = Arc::new(Notify::new());
        KubeSource {
            pods: spawn_watch(client, changed.clone(), cancel.clone()),
            nodes: spawn_watch(client, changed.clone(), cancel.clone()),
            services: spawn_watch(client, changed.clone(), cancel.clone()),
            slices: spawn_watch(client, changed.clone(), cancel.clone()),
            replicasets: spawn_watch(client, changed.clone(), cancel.clone()),
            jobs: spawn_watch(client, changed.clone(), cancel.clone()),
            changed,
        }
    }

    /// Waits until every kind has had its first full list.
    pub async fn wait_ready(&self) -> Result<(), InventoryError> {
        let dropped = |_| InventoryError::Kube {
            message: "a watcher stopped before its first list".into(),
        };
        self.pods.wait_until_ready().await.map_err(dropped)?;
        self.nodes.wait_until_ready().await.map_err(dropped)?;
        self.services.wait_until_ready().await.map_err(dropped)?;
        self.slices.wait_until_ready().await.map_err(dropped)?;
        self.replicasets.wait_until_ready().await.map_err(dropped)?;
        self.jobs.wait_until_ready().await.map_err(dropped)?;
        Ok(())
    }

    /// The stores' contents as an inventory; objects that do not convert are skipped
    /// and counted in `skipped`.
    pub fn inventory(&self) -> Inventory {
        let mut inv = Inventory::default();
        add_all(&mut inv, &self.nodes);
        add_all(&mut inv, &self.pods);
        add_all(&mut inv, &self.services);
        add_all(&mut inv, &self.slices);
        add_all(&mut inv, &self.replicasets);
        add_all(&mut inv, &self.jobs);
        inv
    }
}

fn add_all<K>(inv: &mut Inventory, store: &Store<K>)
where
    K: Resource<DynamicType = ()> + Clone + Serialize + 'static,
{
    for obj in store.state() {
        // The stores hold k8s-openapi objects; the List-file parser reads their JSON, so
        // both sources go through one conversion.
        let res = serde_json::to_value(&*obj)
            .map_err(|e| e.to_string())
            .and_then(|v| inv.add_value(v, "kube").map_err(|e| e.to_string()));
        if let Err(e) = res {
            inv.skipped += 1;
            tracing::warn!(kind = %K::kind(&()), error = %e, "object skipped");
        }
    }
}

/// Keeps `shared` up to date from the API: waits for the first full list, publishes
/// the index, sets `ready`, then rebuilds at most once per `debounce` while objects change.
pub async fn run(
    source: KubeSource,
    cfg: IndexConfig,
    shared: SharedIndex,
    ready: tokio::sync::watch::Sender<bool>,
    debounce: Duration,
    cancel: CancellationToken,
) -> Result<(), InventoryError> {
    tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = source.wait_ready() => r?,
    }
    let mut tracker = InventoryTracker::new(cfg);
    loop {
        let idx = tracker.update(source.inventory(), now_ns());
        let s = idx.stats();
        tracing::debug!(
            pods = s.pods,
            nodes = s.nodes,
            services = s.services,
            "index rebuilt"
        );
        shared.store(idx);
        ready.send_replace(true);
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = source.changed.notified() => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(debounce) => {}
        }
    }
}

/// What the API server said of a token ([`TokenReviewer::review`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reviewed {
    /// Whether the token is valid for the audience.
    pub authenticated: bool,
    /// The user it names (`system:serviceaccount:<namespace>:<name>`).
    pub username: String,
    /// The node of the pod it was issued to (the token's node claim, Kubernetes 1.30+).
    pub node: Option<String>,
    /// The pod it was issued to, `(namespace, name)`, when the token says.
    pub pod: Option<(String, String)>,
    /// Why it was refused, as the API server said.
    pub error: Option<String>,
}

/// Checks service-account tokens with the TokenReview API (RBAC: `create` on
/// `tokenreviews.authentication.k8s.io`, the one non-read verb the server needs).
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
}

impl Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer using `client`.
    pub fn new(client: Client) -> TokenReviewer {
        TokenReviewer { client }
    }

    /// Asks the API server whether `token` is valid for `audience`, and whom it names.
    pub async fn review(&self, token: &str, audience: &str) -> Result<Reviewed, InventoryError> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![audience.to_string()]),
            },
            ..Default::default()
        };
        let done = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| InventoryError::Kube {
                message: format!("TokenReview: {e}"),
            })?;
        let status = done.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        let extra = user.extra.unwrap_or_default();
        let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let username = user.username.unwrap_or_default();
        let namespace = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split(':').next())
            .map(str::to_string);
        Ok(Reviewed {
            authenticated: status.authenticated.unwrap_or(false)
                && status
                    .audiences
                    .as_ref()
                    .is_none_or(|a| a.iter().any(|x| x == audience)),
            node: one("authentication.kubernetes.io/node-name"),
            pod: namespace.zip(one("authentication.kubernetes.io/pod-name")),
            username,
            error: status.error,
        })
    }
}
