//! What attribution is set up from: the inventory (a List file, the Kubernetes API, or
//! nothing) plus the observing nodes themselves, the cloud ranges, the prices.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use podflow_enrich::{Attributor, CloudRanges, EnrichConfig, EnrichError, PriceTable};
use podflow_inventory::{
    IndexConfig, Inventory, InventoryError, InventoryTracker, Node, SharedIndex,
};
use podflow_role::RoleError;
use tokio_util::sync::CancellationToken;

/// Where pods, nodes and services come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventorySource {
    /// Nothing: only this node is known (its own addresses).
    None,
    /// A file in Kubernetes List format, reloaded when it changes.
    File(PathBuf),
    /// The Kubernetes API (in-cluster, or this kubeconfig).
    Kube {
        /// Kubeconfig file; `None` = in-cluster config or the default kubeconfig.
        kubeconfig: Option<PathBuf>,
    },
}

/// What attribution is configured with.
#[derive(Debug, Clone)]
pub struct EnrichSettings {
    /// Inventory source.
    pub inventory: InventorySource,
    /// Pipeline config (cloud, region, app labels, user CIDR rules).
    pub config: EnrichConfig,
    /// Directory of the providers' range files (ip-ranges.json, cloud.json, goog.json,
    /// ServiceTags_Public_*.json).
    pub cloud_ranges: Option<PathBuf>,
    /// Price table (YAML); `None` = the embedded defaults.
    pub prices: Option<PathBuf>,
}

impl Default for EnrichSettings {
    fn default() -> Self {
        EnrichSettings {
            inventory: InventorySource::None,
            config: EnrichConfig::default(),
            cloud_ranges: None,
            prices: None,
        }
    }
}

/// Why enrichment could not start.
#[derive(Debug, thiserror::Error)]
pub enum EnrichSetupError {
    /// Cloud ranges or prices.
    #[error(transparent)]
    Enrich(#[from] EnrichError),
    /// The inventory.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
}

/// Builds the attributor from the settings.
pub fn attributor(s: &EnrichSettings) -> Result<Attributor, EnrichSetupError> {
    let ranges = match &s.cloud_ranges {
        Some(dir) => {
            let (r, files) = CloudRanges::load_dir(dir)?;
            tracing::info!(dir = %dir.display(), files = files.len(), prefixes = r.len(), "loaded cloud ranges");
            r
        }
        None => CloudRanges::builder().build(),
    };
    let prices = match &s.prices {
        Some(p) => PriceTable::load(p)?,
        None => PriceTable::defaults(),
    };
    Ok(Attributor::new(&s.config, "--config", ranges, prices)?)
}

/// A fingerprint of the files in the cloud-ranges directory (names, sizes, mtimes), to
/// reload them when they change.
pub fn ranges_stamp(s: &EnrichSettings) -> Vec<(String, u64, Option<SystemTime>)> {
    let Some(dir) = &s.cloud_ranges else {
        return Vec::new();
    };
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().ok(),
            ))
        })
        .collect();
    v.sort();
    v
}

/// The index config matching the enrich config.
pub fn index_config(s: &EnrichSettings) -> IndexConfig {
    IndexConfig {
        app_labels: s.config.app_labels.clone(),
        ..IndexConfig::default()
    }
}

/// Keeps the index of a file inventory (or none) plus the observing nodes themselves up
/// to date: each observer is a node with the addresses it reports, unless the inventory
/// already names it.
#[derive(Debug)]
pub struct LocalInventory {
    file: Option<PathBuf>,
    stamp: Option<(Option<SystemTime>, u64)>,
    observers: std::collections::BTreeMap<Arc<str>, Arc<HashSet<IpAddr>>>,
    tracker: InventoryTracker,
    shared: SharedIndex,
    file_inv: Inventory,
    last_build_ns: u64,
}

fn stamp(p: &Path) -> Option<(Option<SystemTime>, u64)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

impl LocalInventory {
    /// An inventory read from `file` (if any), with `observer` (if known) as a node.
    pub fn new(
        file: Option<PathBuf>,
        observer: Option<&str>,
        cfg: IndexConfig,
        shared: SharedIndex,
    ) -> LocalInventory {
        LocalInventory {
            file,
            stamp: None,
            observers: observer
                .map(|o| (Arc::from(o), Arc::new(HashSet::new())))
                .into_iter()
                .collect(),
            tracker: InventoryTracker::new(cfg),
            shared,
            file_inv: Inventory::default(),
            last_build_ns: 0,
        }
    }

    /// Reloads the file if it changed, takes an observer's current addresses, and rebuilds
    /// the index when anything changed or every 30 s (so deleted pods' grace periods run
    /// out). A file that fails to parse keeps the previous index (the error is returned).
    pub fn refresh(
        &mut self,
        observer: Option<(&Arc<str>, Arc<HashSet<IpAddr>>)>,
        now_ns: u64,
    ) -> Result<bool, InventoryError> {
        let mut changed = false;
        if let Some((name, addrs)) = observer
            && self.observers.get(name).is_none_or(|have| **have != *addrs)
        {
            self.observers.insert(Arc::clone(name), addrs);
            changed = true;
        }
        let mut err = None;
        if let Some(f) = &self.file {
            let st = stamp(f);
            if st != self.stamp {
                self.stamp = st;
                match Inventory::load(f) {
                    Ok(inv) => {
                        self.file_inv = inv;
                        changed = true;
                    }
                    Err(e) => err = Some(e),
                }
            }
        }
        if changed || now_ns.saturating_sub(self.last_build_ns) > 30_000_000_000 {
            let mut inv = self.file_inv.clone();
            for (name, local) in &self.observers {
                if inv.nodes.iter().any(|n| *n.name == **name) {
                    continue;
                }
                let mut addrs: Vec<IpAddr> =
                    local.iter().copied().filter(|a| !a.is_loopback()).collect();
                addrs.sort();
                inv.nodes.push(Node {
                    name: name.to_string(),
                    addresses: addrs
                        .into_iter()
                        .map(|a| ("InternalIP".to_string(), a))
                        .collect(),
                    labels: [(
                        podflow_inventory::OBSERVED_ONLY_LABEL.to_string(),
                        "true".to_string(),
                    )]
                    .into(),
                    ..Default::default()
                });
            }
            self.shared.store(self.tracker.update(inv, now_ns));
            self.last_build_ns = now_ns;
        }
        match err {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }
}

/// Starts watching the Kubernetes API into `shared` and waits for the first full list.
#[cfg(feature = "kube")]
pub async fn start_kube(
    kubeconfig: Option<&std::path::Path>,
    s: &EnrichSettings,
    shared: SharedIndex,
    cancel: CancellationToken,
) -> Result<(), RoleError> {
    use podflow_inventory::kube;
    let client = kube::client(kubeconfig)
        .await
        .map_err(|e| RoleError::Attribution(e.to_string()))?;
    let source = kube::KubeSource::start(&client, &cancel);
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let cfg = index_config(s);
    tokio::spawn(async move {
        if let Err(e) = kube::run(
            source,
            cfg,
            shared,
            ready_tx,
            std::time::Duration::from_secs(1),
            cancel,
        )
        .await
        {
            tracing::error!(error = %e, "Kubernetes inventory stopped");
        }
    });
    tracing::info!("waiting for the first full list of pods, nodes, services and owners");
    let _ = ready_rx.wait_for(|r| *r).await;
    Ok(())
}

/// Without the `kube` feature there is no API source.
#[cfg(not(feature = "kube"))]
pub async fn start_kube(
    _kubeconfig: Option<&std::path::Path>,
    _s: &EnrichSettings,
    _shared: SharedIndex,
    _cancel: CancellationToken,
) -> Result<(), RoleError> {
    Err(RoleError::Task(
        "this podflow was built without the Kubernetes API source (feature `kube`)".into(),
    ))
}
