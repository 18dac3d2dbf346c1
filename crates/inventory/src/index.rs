//! The IP index: who an address was at a given time.
//!
//! Built whole from an [`Inventory`] (plus tombstones of deleted pods) and never
//! mutated, so readers share it lock-free behind an `ArcSwap` ([`SharedIndex`]).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use podflow_model::{Name, NodeMeta, Place, PodMeta, ServiceHit, ServiceMeta, ServiceVia};

use crate::objects::{Inventory, Node, Pod};

/// How the index is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// How long a deleted pod stays resolvable, so late flows still land on it.
    pub grace_ns: u64,
    /// Label keys naming a pod's app, first present wins.
    pub app_labels: Vec<String>,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            grace_ns: 120 * 1_000_000_000,
            app_labels: vec![
                "app.kubernetes.io/name".into(),
                "app".into(),
                "k8s-app".into(),
            ],
        }
    }
}

/// A pod that left the inventory at `deleted_ns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// The pod as last seen.
    pub pod: Pod,
    /// When it was noticed gone, ns since the epoch.
    pub deleted_ns: u64,
}

#[derive(Clone, Debug)]
struct PodCand {
    meta: Arc<PodMeta>,
    terminal: bool,
    from_ns: u64,
    until_ns: u64,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    pods: Vec<PodCand>,
    node: Option<Arc<NodeMeta>>,
    service: Option<(Arc<ServiceMeta>, ServiceVia)>,
    /// An EndpointSlice address that is no known pod (a selector-less Service's backend).
    backend: Option<Arc<ServiceMeta>>,
}

/// Answers "who was this address at time t", built from one inventory snapshot.
#[derive(Clone, Debug, Default)]
pub struct IpIndex {
    slots: HashMap<IpAddr, Slot>,
    host_ports: HashMap<(IpAddr, u16), Arc<PodMeta>>,
    node_ports: HashMap<u16, Arc<ServiceMeta>>,
    nodes: HashMap<Name, Arc<NodeMeta>>,
    node_list: Vec<NodeInfo>,
    /// Live pods' nodes by (namespace, name): binds a service-account token that names
    /// its pod but not its node (Kubernetes before 1.30) to the pod's `spec.nodeName`.
    pod_nodes: HashMap<(String, String), String>,
    stats: IndexStats,
}

/// A node as probes see it: where to reach it and whether it is on its way out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Name.
    pub name: String,
    /// Zone, empty when unknown.
    pub zone: String,
    /// Addresses, InternalIP first.
    pub addrs: Vec<IpAddr>,
    /// Leaving the cluster (deletion timestamp, the autoscaler's taint).
    pub leaving: bool,
    /// The Ready condition.
    pub ready: Option<bool>,
    /// Known only because an agent on it reports (not in the inventory's own nodes).
    pub observed_only: bool,
}

/// The label podflow puts on a node it knows only from an agent's reports.
pub const OBSERVED_ONLY_LABEL: &str = "podflow.io/observed-only";

/// What an index holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Pods indexed (tombstones included).
    pub pods: usize,
    /// Deleted pods still resolvable.
    pub tombstones: usize,
    /// Nodes.
    pub nodes: usize,
    /// Services.
    pub services: usize,
    /// Distinct addresses.
    pub addresses: usize,
}

/// Zone, region, cloud and instance of a node from its labels and providerID.
pub fn node_meta(n: &Node) -> NodeMeta {
    let label = |a: &str, b: &str| {
        n.labels
            .get(a)
            .or_else(|| n.labels.get(b))
            .filter(|v| !v.is_empty())
            .map(|v| Name::from(v.as_str()))
    };
    let (cloud, instance) = n
        .provider_id
        .as_deref()
        .map(parse_provider_id)
        .unwrap_or((None, None));
    NodeMeta {
        name: n.name.as_str().into(),
        zone: label(
            "topology.kubernetes.io/zone",
            "failure-domain.beta.kubernetes.io/zone",
        ),
        region: label(
            "topology.kubernetes.io/region",
            "failure-domain.beta.kubernetes.io/region",
        ),
        cloud,
        instance,
    }
}

/// Cloud and instance id from a providerID (`aws:///us-east-1a/i-0abc`,
/// `gce://project/zone/name`, `azure:///subscriptions/.../virtualMachines/vm`).
pub fn parse_provider_id(p: &str) -> (Option<Name>, Option<Name>) {
    let Some((scheme, rest)) = p.split_once("://") else {
        return (None, None);
    };
    // GKE's scheme is gce; the cloud is called gcp everywhere else in podflow.
    let cloud = match scheme {
        "gce" => "gcp",
        s => s,
    };
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let instance = match parts.iter().position(|s| *s == "virtualMachineScaleSets") {
        // AKS scale sets: ".../virtualMachineScaleSets/<set>/virtualMachines/<n>".
        Some(i) if parts.len() >= i + 4 => Some(format!("{}_{}", parts[i + 1], parts[i + 3])),
        _ => parts.last().map(|s| s.to_string()),
    };
    (
        (!cloud.is_empty()).then(|| cloud.into()),
        instance.map(|i| i.as_str().into()),
    )
}

/// The top owner of a pod: (kind, name).
pub fn workload_of(
    pod: &Pod,
    controllers: &BTreeMap<(String, String, String), crate::Controller>,
) -> (String, String) {
    let Some(owner) = pod
        .owners
        .iter()
        .find(|o| o.controller)
        .or_else(|| pod.owners.first())
    else {
        return ("Pod".into(), pod.name.clone());
    };
    let key = (
        owner.kind.clone(),
        pod.namespace.clone(),
        owner.name.clone(),
    );
    let known_top = controllers.get(&key).and_then(|c| {
        c.owners
            .iter()
            .find(|o| o.controller)
            .or_else(|| c.owners.first())
            .map(|o| (o.kind.clone(), o.name.clone()))
    });
    if let Some(top) = known_top {
        return top;
    }
    let known = controllers.contains_key(&key);
    match owner.kind.as_str() {
        "ReplicaSet" if !known => {
            // An unseen ReplicaSet is almost always a Deployment's: "<deploy>-<hash>".
            let hash = pod.labels.get("pod-template-hash");
            let stripped = match hash {
                Some(h) => owner
                    .name
                    .strip_suffix(h.as_str())
                    .and_then(|s| s.strip_suffix('-')),
                None => owner.name.rsplit_once('-').map(|(d, _)| d),
            };
            match stripped {
                Some(d) if !d.is_empty() => ("Deployment".into(), d.to_string()),
                _ => (owner.kind.clone(), owner.name.clone()),
            }
        }
        "Job" if !known => {
            // CronJob jobs are "<cronjob>-<scheduled unix minutes>".
            match owner.name.rsplit_once('-') {
                Some((c, n)) if n.len() >= 8 && n.bytes().all(|b| b.is_ascii_digit()) => {
                    ("CronJob".into(), c.to_string())
                }
                _ => (owner.kind.clone(), owner.name.clone()),
            }
        }
        _ => (owner.kind.clone(), owner.name.clone()),
    }
}

impl IpIndex {
    /// Every node of the inventory, by name.
    pub fn node_list(&self) -> &[NodeInfo] {
        &self.node_list
    }

    /// Builds the index of an inventory and the still-resolvable tombstones.
    pub fn build(inv: &Inventory, tombstones: &[Tombstone], cfg: &IndexConfig) -> IpIndex {
        let mut idx = IpIndex::default();
        for n in &inv.nodes {
            let meta = Arc::new(node_meta(n));
            for (_, ip) in &n.addresses {
                idx.slots.entry(*ip).or_default().node = Some(meta.clone());
            }
            let mut addrs: Vec<(bool, IpAddr)> = n
                .addresses
                .iter()
                .map(|(kind, ip)| (kind != "InternalIP", *ip))
                .collect();
            addrs.sort();
            idx.node_list.push(NodeInfo {
                name: n.name.clone(),
                zone: meta.zone.as_deref().unwrap_or_default().to_string(),
                addrs: addrs.into_iter().map(|(_, ip)| ip).collect(),
                leaving: n.leaving,
                ready: n.ready,
                observed_only: n.labels.contains_key(OBSERVED_ONLY_LABEL),
            });
            idx.nodes.insert(meta.name.clone(), meta);
        }
        idx.node_list.sort_by(|a, b| a.name.cmp(&b.name));
        for p in &inv.pods {
            if let Some(node) = &p.node_name {
                idx.pod_nodes
                    .insert((p.namespace.clone(), p.name.clone()), node.clone());
            }
        }
        let live = inv.pods.iter().map(|p| (p, u64::MAX));
        let dead = tombstones
            .iter()
            .map(|t| (&t.pod, t.deleted_ns.saturating_add(cfg.grace_ns)));
        for (pod, mut until_ns) in live.chain(dead) {
            if let Some(d) = pod.deletion_ns {
                // Terminating: it runs until deletionTimestamp at the latest.
                until_ns = until_ns.min(d.saturating_add(cfg.grace_ns));
            }
            let meta = Arc::new(idx.pod_meta(pod, inv, cfg));
            idx.stats.pods += 1;
            let terminal = pod.phase.is_terminal();
            if pod.host_network {
                // Its addresses are the node's: only its declared ports name it.
                for ip in &pod.ips {
                    for p in &pod.ports {
                        for port in [Some(p.port), p.host_port].into_iter().flatten() {
                            let e = idx.host_ports.entry((*ip, port));
                            match e {
                                hashbrown::hash_map::Entry::Occupied(mut o) if !terminal => {
                                    o.insert(meta.clone());
                                }
                                hashbrown::hash_map::Entry::Occupied(_) => {}
                                hashbrown::hash_map::Entry::Vacant(v) => {
                                    v.insert(meta.clone());
                                }
                            }
                        }
                    }
                }
                continue;
            }
            for ip in &pod.ips {
                idx.slots.entry(*ip).or_default().pods.push(PodCand {
                    meta: meta.clone(),
                    terminal,
                    from_ns: pod.created_ns.unwrap_or(0),
                    until_ns,
                });
            }
        }
        idx.stats.tombstones = tombstones.len();
        let mut by_name: HashMap<(&str, &str), Arc<ServiceMeta>> = HashMap::new();
        for s in &inv.services {
            let meta = Arc::new(ServiceMeta {
                namespace: s.namespace.as_str().into(),
                name: s.name.as_str().into(),
                kind: s.kind.as_str().into(),
            });
            by_name.insert((&s.namespace, &s.name), meta.clone());
            let vias = [
                (&s.cluster_ips, ServiceVia::ClusterIp),
                (&s.lb_ips, ServiceVia::LoadBalancer),
                (&s.external_ips, ServiceVia::ExternalIp),
            ];
            for (ips, via) in vias {
                for ip in ips {
                    idx.slots.entry(*ip).or_default().service = Some((meta.clone(), via));
                }
            }
            for p in &s.ports {
                if let Some(np) = p.node_port {
                    idx.node_ports.insert(np, meta.clone());
                }
            }
            idx.stats.services += 1;
        }
        for sl in &inv.slices {
            let Some(meta) = sl
                .service
                .as_deref()
                .and_then(|svc| by_name.get(&(sl.namespace.as_str(), svc)))
            else {
                continue;
            };
            for e in &sl.endpoints {
                for ip in &e.addresses {
                    let slot = idx.slots.entry(*ip).or_default();
                    if slot.pods.is_empty() && slot.node.is_none() {
                        slot.backend = Some(meta.clone());
                    }
                }
            }
        }
        idx.stats.nodes = idx.nodes.len();
        idx.stats.addresses = idx.slots.len();
        idx
    }

    fn pod_meta(&mut self, pod: &Pod, inv: &Inventory, cfg: &IndexConfig) -> PodMeta {
        let (kind, workload) = workload_of(pod, &inv.controllers);
        let node = pod.node_name.as_deref().map(|n| {
            self.nodes
                .entry(Name::from(n))
                .or_insert_with(|| {
                    Arc::new(NodeMeta {
                        name: n.into(),
                        ..Default::default()
                    })
                })
                .clone()
        });
        PodMeta {
            namespace: pod.namespace.as_str().into(),
            name: pod.name.as_str().into(),
            uid: pod.uid.as_str().into(),
            workload_kind: kind.as_str().into(),
            workload: workload.as_str().into(),
            app: cfg
                .app_labels
                .iter()
                .find_map(|k| pod.labels.get(k))
                .map(|v| v.as_str().into()),
            node,
            host_network: pod.host_network,
        }
    }

    /// The pod that held `ip` at `t_ns`: a running pod over a finished one that kept the
    /// address, the newest among equals, a deleted pod only within its grace period.
    #[inline]
    pub fn pod_at(&self, ip: IpAddr, t_ns: u64) -> Option<&Arc<PodMeta>> {
        pick(&self.slots.get(&ip)?.pods, t_ns)
    }

    /// The node that owns `ip` as one of its addresses.
    #[inline]
    pub fn node_of_ip(&self, ip: IpAddr) -> Option<&Arc<NodeMeta>> {
        self.slots.get(&ip)?.node.as_ref()
    }

    /// The node a live pod is scheduled on.
    pub fn node_of_pod(&self, namespace: &str, name: &str) -> Option<&str> {
        self.pod_nodes
            .get(&(namespace.to_string(), name.to_string()))
            .map(String::as_str)
    }

    /// A node by name.
    #[inline]
    pub fn node(&self, name: &str) -> Option<&Arc<NodeMeta>> {
        self.nodes.get(name)
    }

    /// What `ip` (with `port` on it, for host-network pods) was at `t_ns`.
    #[inline]
    pub fn place(&self, ip: IpAddr, port: u16, t_ns: u64) -> Option<Place> {
        let slot = self.slots.get(&ip)?;
        if let Some(p) = pick(&slot.pods, t_ns) {
            return Some(Place::Pod(p.clone()));
        }
        if let Some(n) = &slot.node {
            if port != 0
                && let Some(p) = self.host_ports.get(&(ip, port))
            {
                return Some(Place::Pod(p.clone()));
            }
            return Some(Place::Node(n.clone()));
        }
        if let Some((s, _)) = &slot.service {
            return Some(Place::Service(s.clone()));
        }
        slot.backend.as_ref().map(|s| Place::Service(s.clone()))
    }

    /// The Service behind a dialled address: a ClusterIP, load-balancer or external IP, or
    /// a node address with a NodePort.
    #[inline]
    pub fn service(&self, ip: IpAddr, port: u16) -> Option<ServiceHit> {
        let slot = self.slots.get(&ip)?;
        if let Some((meta, via)) = &slot.service {
            return Some(ServiceHit {
                meta: meta.clone(),
                ip,
                port,
                via: *via,
            });
        }
        if slot.node.is_some()
            && let Some(meta) = self.node_ports.get(&port)
        {
            return Some(ServiceHit {
                meta: meta.clone(),
                ip,
                port,
                via: ServiceVia::NodePort,
            });
        }
        None
    }

    /// Whether `ip` is on node `node` at `t_ns`: one of its addresses or one of its pods.
    #[inline]
    pub fn is_on_node(&self, ip: IpAddr, node: &str, t_ns: u64) -> bool {
        let Some(slot) = self.slots.get(&ip) else {
            return false;
        };
        if let Some(n) = &slot.node {
            return &*n.name == node;
        }
        pick(&slot.pods, t_ns)
            .and_then(|p| p.node.as_ref())
            .is_some_and(|n| &*n.name == node)
    }

    /// What the index holds.
    pub fn stats(&self) -> IndexStats {
        self.stats
    }
}

#[inline]
fn pick(cands: &[PodCand], t_ns: u64) -> Option<&Arc<PodMeta>> {
    if let [only] = cands {
        // The common case: one pod ever had the address.
        return (t_ns < only.until_ns).then_some(&only.meta);
    }
    cands
        .iter()
        .filter(|c| t_ns < c.until_ns)
        .max_by_key(|c| (c.from_ns <= t_ns, !c.terminal, c.from_ns))
        .map(|c| &c.meta)
}

/// Keeps the inventory between updates and turns pods that disappear into tombstones.
#[derive(Clone, Debug, Default)]
pub struct InventoryTracker {
    cfg: IndexConfig,
    current: Inventory,
    tombstones: Vec<Tombstone>,
}

impl InventoryTracker {
    /// A tracker with no inventory yet.
    pub fn new(cfg: IndexConfig) -> InventoryTracker {
        InventoryTracker {
            cfg,
            ..Default::default()
        }
    }

    /// Takes a new full inventory seen at `now_ns` and builds its index.
    pub fn update(&mut self, inv: Inventory, now_ns: u64) -> IpIndex {
        let id = |p: &Pod| {
            if p.uid.is_empty() {
                format!("{}/{}", p.namespace, p.name)
            } else {
                p.uid.clone()
            }
        };
        let present: HashSet<String> = inv.pods.iter().map(id).collect();
        let old = std::mem::replace(&mut self.current, inv);
        let grace = self.cfg.grace_ns;
        self.tombstones.retain(|t| {
            t.deleted_ns.saturating_add(grace) > now_ns && !present.contains(&id(&t.pod))
        });
        for p in old.pods {
            if !present.contains(&id(&p)) {
                self.tombstones.push(Tombstone {
                    pod: p,
                    deleted_ns: now_ns,
                });
            }
        }
        self.build()
    }

    /// Rebuilds the index of the current inventory (e.g. after tombstones expired).
    pub fn build(&self) -> IpIndex {
        IpIndex::build(&self.current, &self.tombstones, &self.cfg)
    }

    /// Deleted pods still resolvable.
    pub fn tombstones(&self) -> &[Tombstone] {
        &self.tombstones
    }

    /// The current inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.current
    }
}

/// The current index, shared by readers without locks and swapped whole on change.
#[derive(Clone, Debug)]
pub struct SharedIndex(Arc<ArcSwap<IpIndex>>);

impl Default for SharedIndex {
    fn default() -> Self {
        SharedIndex::new(IpIndex::default())
    }
}

impl SharedIndex {
    /// Shares `idx`.
    pub fn new(idx: IpIndex) -> SharedIndex {
        SharedIndex(Arc::new(ArcSwap::from_pointee(idx)))
    }

    /// The current snapshot (cheap; hold it for a batch, not forever).
    pub fn load(&self) -> Arc<IpIndex> {
        self.0.load_full()
    }

    /// Replaces the snapshot.
    pub fn store(&self, idx: IpIndex) {
        self.0.store(Arc::new(idx));
    }
}
