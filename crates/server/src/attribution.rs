//! What attribution is set up from: the inventory (a List file, the Kubernetes API, or
//! nothing) plus the observing nodes themselves, the cloud ranges, the prices.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use podflow_enrich::{Attributor, Biller, CloudRanges, EnrichConfig, EnrichError, PriceTable};
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

/// What the HTTP API bills ranges with (`/api/v1/cost/*`): the same price table and
/// config as attribution.
pub fn biller(s: &EnrichSettings) -> Result<Biller, EnrichSetupError> {
    let prices = match &s.prices {
        Some(p) => PriceTable::load(p)?,
        None => PriceTable::defaults(),
    };
    Ok(Biller::new(prices, &s.config, "--config")?)
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
    /// `file_inv`'s nodes by name.
    file_nodes: HashMap<String, usize>,
    last_build_ns: u64,
    disputed: usize,
    unconfirmed: usize,
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
            file_nodes: HashMap::new(),
            last_build_ns: 0,
            disputed: 0,
            unconfirmed: 0,
        }
    }

    /// How many nodes claim each address: the inventory's nodes their own, and the
    /// observers it does not name the ones they report.
    fn claims(&self) -> HashMap<IpAddr, usize> {
        let mut claims: HashMap<IpAddr, usize> = HashMap::new();
        for n in &self.file_inv.nodes {
            let own: HashSet<IpAddr> = n.addresses.iter().map(|(_, a)| *a).collect();
            for a in own {
                *claims.entry(a).or_default() += 1;
            }
        }
        for (name, local) in &self.observers {
            if self.file_nodes.contains_key(&**name) {
                continue;
            }
            for a in local.iter().filter(|a| !a.is_loopback()) {
                *claims.entry(*a).or_default() += 1;
            }
        }
        claims
    }

    /// Addresses observers named in the inventory report that it does not give them.
    fn unconfirmed(&self) -> usize {
        self.observers
            .iter()
            .filter_map(|(name, local)| {
                let node = &self.file_inv.nodes[*self.file_nodes.get(&**name)?];
                Some(
                    local
                        .iter()
                        .filter(|a| {
                            !a.is_loopback() && !node.addresses.iter().any(|(_, b)| b == *a)
                        })
                        .count(),
                )
            })
            .sum()
    }

    /// At the last rebuild: addresses claimed by more than one node (given to none), and
    /// addresses the inventory does not confirm for the node that claims them.
    pub fn address_claims(&self) -> (usize, usize) {
        (self.disputed, self.unconfirmed)
    }

    /// Reloads the file if it changed, takes an observer's current addresses, and rebuilds
    /// the index when anything changed or every 30 s (so deleted pods' grace periods run
    /// out). A file that fails to parse keeps the previous index (the error is returned).
    /// An observer the file names as a node changes no index (the file's addresses win):
    /// its first batch costs a count, not a rebuild, so a thousand agents connecting do
    /// not rebuild a large inventory's index a thousand times.
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
            if self.file_nodes.contains_key(&**name) {
                self.unconfirmed = self.unconfirmed();
            } else {
                changed = true;
            }
        }
        let mut err = None;
        if let Some(f) = &self.file {
            let st = stamp(f);
            if st != self.stamp {
                self.stamp = st;
                match Inventory::load(f) {
                    Ok(inv) => {
                        self.file_nodes = inv
                            .nodes
                            .iter()
                            .enumerate()
                            .map(|(i, n)| (n.name.to_string(), i))
                            .collect();
                        self.file_inv = inv;
                        changed = true;
                    }
                    Err(e) => err = Some(e),
                }
            }
        }
        if changed || now_ns.saturating_sub(self.last_build_ns) > 30_000_000_000 {
            let mut inv = self.file_inv.clone();
            let claims = self.claims();
            self.disputed = claims.values().filter(|n| **n > 1).count();
            self.unconfirmed = self.unconfirmed();
            for (name, local) in &self.observers {
                if self.file_nodes.contains_key(&**name) {
                    continue;
                }
                // An address two nodes claim (or the inventory gives another node) is
                // neither's: a claim is not proof.
                let mut addrs: Vec<IpAddr> = local
                    .iter()
                    .copied()
                    .filter(|a| !a.is_loopback() && claims.get(a) == Some(&1))
                    .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(a: &[&str]) -> Arc<HashSet<IpAddr>> {
        Arc::new(a.iter().map(|a| a.parse().expect("ip")).collect())
    }

    #[test]
    fn an_address_two_nodes_claim_is_neither_s() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("inv.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: known}\n  status: {addresses: [{type: InternalIP, address: 10.0.0.9}]}\n",
        )
        .expect("inventory");
        let shared = SharedIndex::default();
        let mut inv = LocalInventory::new(Some(file), None, IndexConfig::default(), shared.clone());
        let (a, b, known): (Arc<str>, Arc<str>, Arc<str>) =
            ("a".into(), "b".into(), "known".into());
        inv.refresh(Some((&a, addrs(&["10.0.0.1", "10.0.0.7"]))), 1)
            .expect("refresh");
        inv.refresh(Some((&b, addrs(&["10.0.0.2", "10.0.0.7", "10.0.0.9"]))), 2)
            .expect("refresh");
        // The inventory's node claims more than the inventory gives it (a ClusterIP):
        // counted, and no rebuild (the file's addresses win for a node it names).
        let rebuilt = inv
            .refresh(Some((&known, addrs(&["10.0.0.9", "10.96.0.10"]))), 3)
            .expect("refresh");
        assert!(!rebuilt, "a node the file names changes no index");
        assert_eq!(inv.address_claims().1, 1, "the ClusterIP is unconfirmed");
        let idx = shared.load();
        let owner = |ip: &str| {
            idx.node_of_ip(ip.parse().expect("ip"))
                .map(|n| n.name.to_string())
        };
        assert_eq!(owner("10.0.0.1").as_deref(), Some("a"));
        assert_eq!(owner("10.0.0.2").as_deref(), Some("b"));
        assert_eq!(owner("10.0.0.7"), None, "claimed by a and b");
        assert_eq!(
            owner("10.0.0.9").as_deref(),
            Some("known"),
            "the inventory's, not b's"
        );
        assert_eq!(owner("10.96.0.10"), None, "the inventory wins over a claim");
        assert_eq!(inv.address_claims(), (2, 1));
    }
}
