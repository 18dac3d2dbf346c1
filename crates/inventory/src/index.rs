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

use crate::objects::{Inventory, Node, Pod, SliceEndpoint};

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
    /// The headless Service whose EndpointSlices list the address (the first by
    /// namespace and name when several do).
    headless: Option<Arc<ServiceMeta>>,
}

/// What attribution needs to know about a Service's endpoints, computed once when the
/// index is built (bounded by the inventory's EndpointSlices): whether a connection that
/// crossed zones could have stayed in its own (docs/attribution.md, "Avoidable
/// cross-zone traffic").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceBackends {
    /// The Service is headless (`clusterIP: None`).
    pub headless: bool,
    /// The Service asks for close backends ([`crate::Service::prefers_close`]).
    pub prefers_close: bool,
    /// Zones with at least one Ready endpoint, sorted: the endpoint's own zone
    /// (`endpoints[].zone`), else its node's (`nodeName`, else the node of the pod
    /// holding its address).
    pub ready_zones: Vec<Name>,
    /// Ready endpoints whose zone is not known.
    pub ready_unzoned: usize,
    /// Endpoints listed, Ready or not (0: the inventory has no EndpointSlice of it).
    pub endpoints: usize,
}

impl ServiceBackends {
    /// Whether a Ready endpoint was in `zone` (the initiator's): `None` when that cannot
    /// be told (no zone, no endpoint known, or a Ready endpoint of unknown zone and none
    /// in `zone`).
    pub fn local_ready(&self, zone: Option<&str>) -> Option<bool> {
        let zone = zone.filter(|z| !z.is_empty())?;
        if self.ready_zones.iter().any(|z| &**z == zone) {
            Some(true)
        } else if self.endpoints == 0 || self.ready_unzoned > 0 {
            None
        } else {
            Some(false)
        }
    }
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
    /// Every Service's endpoints by namespace, then name.
    backends: HashMap<Name, HashMap<Name, Arc<ServiceBackends>>>,
    /// Whether any address is a headless Service's (most connections through no
    /// Service then skip the lookup).
    any_headless: bool,
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
        let mut backends: HashMap<(&str, &str), ServiceBackends> = HashMap::new();
        for s in &inv.services {
            backends.insert(
                (&s.namespace, &s.name),
                ServiceBackends {
                    headless: s.headless,
                    prefers_close: s.prefers_close(),
                    ..Default::default()
                },
            );
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
        // Zone names interned: one `Name` per zone, however many endpoints are in it.
        let mut zones: HashMap<String, Name> = HashMap::new();
        for sl in &inv.slices {
            let Some(meta) = sl
                .service
                .as_deref()
                .and_then(|svc| by_name.get(&(sl.namespace.as_str(), svc)))
            else {
                continue;
            };
            let mut none = ServiceBackends::default();
            let b = backends
                .get_mut(&(sl.namespace.as_str(), &*meta.name))
                .unwrap_or(&mut none);
            for e in &sl.endpoints {
                b.endpoints += 1;
                if e.ready {
                    match idx.endpoint_zone(e) {
                        Some(z) => {
                            if !b.ready_zones.iter().any(|k| **k == *z) {
                                let z = zones.entry(z.to_string()).or_insert(z).clone();
                                b.ready_zones.push(z);
                            }
                        }
                        None => b.ready_unzoned += 1,
                    }
                }
                for ip in &e.addresses {
                    let slot = idx.slots.entry(*ip).or_default();
                    if slot.pods.is_empty() && slot.node.is_none() {
                        slot.backend = Some(meta.clone());
                    }
                    let first = |h: &Arc<ServiceMeta>| {
                        (&*h.namespace, &*h.name) <= (&*meta.namespace, &*meta.name)
                    };
                    if b.headless && !slot.headless.as_ref().is_some_and(first) {
                        slot.headless = Some(meta.clone());
                        idx.any_headless = true;
                    }
                }
            }
        }
        for ((ns, name), mut b) in backends {
            b.ready_zones.sort();
            idx.backends
                .entry(Name::from(ns))
                .or_default()
                .insert(Name::from(name), Arc::new(b));
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

    /// The zone of an EndpointSlice endpoint: its own, else its node's (`nodeName`,
    /// else the node of a live pod holding one of its addresses).
    fn endpoint_zone(&self, e: &SliceEndpoint) -> Option<Name> {
        if let Some(z) = &e.zone {
            return Some(Name::from(z.as_str()));
        }
        let by_node = e
            .node_name
            .as_deref()
            .and_then(|n| self.nodes.get(n))
            .and_then(|n| n.zone.clone());
        by_node.or_else(|| {
            e.addresses.iter().find_map(|ip| {
                let slot = self.slots.get(ip)?;
                let live = slot
                    .pods
                    .iter()
                    .filter(|c| !c.terminal && c.until_ns == u64::MAX)
                    .max_by_key(|c| c.from_ns)?;
                live.meta.node.as_ref()?.zone.clone()
            })
        })
    }

    /// What the index knows about the endpoints of Service `namespace/name`.
    #[inline]
    pub fn service_backends(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceBackends>> {
        self.backends.get(namespace)?.get(name)
    }

    /// The headless Service whose EndpointSlices list `ip` (the first by namespace and
    /// name when several do).
    #[inline]
    pub fn headless_service(&self, ip: IpAddr) -> Option<&Arc<ServiceMeta>> {
        if !self.any_headless {
            return None;
        }
        self.slots.get(&ip)?.headless.as_ref()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two zones; `shop/api` has Ready endpoints in zone-a (its own zone field) and
    /// zone-b (from its node's label), a not-Ready one in zone-c; `shop/cache` one Ready
    /// endpoint in zone-a known only through the pod holding its address, and one of
    /// unknown zone; `shop/db` is headless with PreferClose; `shop/kafka` headless too,
    /// listing one of db's pods; `shop/empty` has no EndpointSlice.
    const INVENTORY: &str = r#"
apiVersion: v1
kind: List
items:
- kind: Node
  metadata: {name: na, labels: {topology.kubernetes.io/zone: zone-a}}
  status: {addresses: [{type: InternalIP, address: 172.16.0.1}]}
- kind: Node
  metadata: {name: nb, labels: {topology.kubernetes.io/zone: zone-b}}
  status: {addresses: [{type: InternalIP, address: 172.16.0.2}]}
- kind: Node
  metadata: {name: nx}
- kind: Pod
  metadata: {name: cache-0, namespace: shop, uid: c0}
  spec: {nodeName: na}
  status: {phase: Running, podIP: 10.1.0.7}
- kind: Pod
  metadata: {name: db-0, namespace: shop, uid: d0}
  spec: {nodeName: na}
  status: {phase: Running, podIP: 10.1.0.9}
- kind: Pod
  metadata: {name: db-1, namespace: shop, uid: d1}
  spec: {nodeName: nb}
  status: {phase: Running, podIP: 10.2.0.9}
- kind: Service
  metadata: {name: api, namespace: shop}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
- kind: Service
  metadata: {name: cache, namespace: shop, annotations: {service.kubernetes.io/topology-aware-hints: auto}}
  spec: {clusterIP: 10.96.0.2, ports: [{port: 6379}]}
- kind: Service
  metadata: {name: db, namespace: shop}
  spec: {clusterIP: None, trafficDistribution: PreferClose, ports: [{port: 5432}]}
- kind: Service
  metadata: {name: kafka, namespace: shop, annotations: {service.kubernetes.io/topology-mode: Disabled}}
  spec: {clusterIP: None, clusterIPs: [None], ports: [{port: 9092}]}
- kind: Service
  metadata: {name: empty, namespace: shop}
  spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
- kind: EndpointSlice
  metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
  endpoints:
  - {addresses: [10.1.0.5], zone: zone-a, nodeName: nb}
  - {addresses: [10.2.0.5], nodeName: nb, conditions: {ready: true}}
- kind: EndpointSlice
  metadata: {name: api-2, namespace: shop, labels: {kubernetes.io/service-name: api}}
  endpoints:
  - {addresses: [10.3.0.5], zone: zone-c, conditions: {ready: false}}
  - {addresses: [10.1.0.6], zone: zone-a}
- kind: EndpointSlice
  metadata: {name: cache-1, namespace: shop, labels: {kubernetes.io/service-name: cache}}
  endpoints:
  - {addresses: [10.1.0.7]}
  - {addresses: [10.9.0.7], nodeName: nx}
- kind: EndpointSlice
  metadata: {name: kafka-1, namespace: shop, labels: {kubernetes.io/service-name: kafka}}
  endpoints:
  - {addresses: [10.2.0.9], nodeName: nb}
- kind: EndpointSlice
  metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
  endpoints:
  - {addresses: [10.1.0.9], nodeName: na}
  - {addresses: [10.2.0.9], nodeName: nb, conditions: {ready: false}}
"#;

    fn index() -> IpIndex {
        let inv = Inventory::parse(INVENTORY, "test").expect("parses");
        IpIndex::build(&inv, &[], &IndexConfig::default())
    }

    fn names(zones: &[Name]) -> Vec<&str> {
        zones.iter().map(|z| &**z).collect()
    }

    #[test]
    fn ready_zones_come_from_the_endpoint_its_node_or_its_pod() {
        let idx = index();
        let api = idx.service_backends("shop", "api").expect("api");
        // zone-a from the endpoint's own zone (over its node's zone-b), zone-b from the
        // node of an endpoint without a zone; zone-c's endpoint is not Ready.
        assert_eq!(names(&api.ready_zones), ["zone-a", "zone-b"]);
        assert_eq!((api.ready_unzoned, api.endpoints), (0, 4));
        assert!(!api.headless && !api.prefers_close);
        let cache = idx.service_backends("shop", "cache").expect("cache");
        // 10.1.0.7 is cache-0's address, on node na; nx has no zone label.
        assert_eq!(names(&cache.ready_zones), ["zone-a"]);
        assert_eq!(cache.ready_unzoned, 1);
        assert!(cache.prefers_close, "topology-aware-hints: auto");
        let db = idx.service_backends("shop", "db").expect("db");
        assert_eq!(names(&db.ready_zones), ["zone-a"], "db-1 is not Ready");
        assert!(db.headless && db.prefers_close);
        let kafka = idx.service_backends("shop", "kafka").expect("kafka");
        assert!(
            kafka.headless && !kafka.prefers_close,
            "topology-mode Disabled"
        );
        let empty = idx.service_backends("shop", "empty").expect("empty");
        assert_eq!(empty.endpoints, 0);
        assert!(idx.service_backends("shop", "nope").is_none());
        assert!(idx.service_backends("other", "api").is_none());
    }

    #[test]
    fn local_ready_is_yes_no_or_unknown() {
        let idx = index();
        let b = |n: &str| idx.service_backends("shop", n).expect("service").clone();
        let api = b("api");
        assert_eq!(api.local_ready(Some("zone-a")), Some(true));
        assert_eq!(api.local_ready(Some("zone-b")), Some(true));
        assert_eq!(
            api.local_ready(Some("zone-c")),
            Some(false),
            "zone-c's endpoint is not Ready"
        );
        assert_eq!(
            api.local_ready(None),
            None,
            "the initiator's zone is unknown"
        );
        assert_eq!(api.local_ready(Some("")), None);
        // A Ready endpoint of unknown zone might be in zone-b.
        let cache = b("cache");
        assert_eq!(cache.local_ready(Some("zone-a")), Some(true));
        assert_eq!(cache.local_ready(Some("zone-b")), None);
        // No EndpointSlice: nothing is known about its backends.
        assert_eq!(b("empty").local_ready(Some("zone-a")), None);
        assert_eq!(b("db").local_ready(Some("zone-b")), Some(false));
    }

    #[test]
    fn backends_of_headless_services_map_to_them_and_others_do_not() {
        let idx = index();
        let svc = |ip: &str| {
            idx.headless_service(ip.parse().expect("ip"))
                .map(|m| format!("{}/{}", m.namespace, m.name))
        };
        assert_eq!(svc("10.1.0.9").as_deref(), Some("shop/db"));
        // Listed by db (not Ready) and kafka: the first by namespace and name.
        assert_eq!(svc("10.2.0.9").as_deref(), Some("shop/db"));
        assert_eq!(svc("10.1.0.5"), None, "api has a ClusterIP");
        assert_eq!(svc("10.1.0.7"), None);
        assert_eq!(svc("10.8.8.8"), None);
    }

    #[test]
    fn prefers_close_follows_traffic_distribution_and_hints() {
        let svc = |td: Option<&str>, mode: Option<&str>| crate::Service {
            traffic_distribution: td.map(String::from),
            topology_mode: mode.map(String::from),
            ..Default::default()
        };
        assert!(svc(Some("PreferClose"), None).prefers_close());
        assert!(svc(Some("PreferSameZone"), None).prefers_close());
        assert!(svc(Some("PreferSameNode"), None).prefers_close());
        assert!(svc(None, Some("Auto")).prefers_close());
        assert!(svc(None, Some("auto")).prefers_close());
        assert!(!svc(None, Some("Disabled")).prefers_close());
        assert!(!svc(Some("Unknown"), None).prefers_close());
        assert!(!svc(None, None).prefers_close());
    }
}
