//! The Kubernetes objects podflow needs, as plain records, and the parser for List files.
//!
//! Own serde structs cover just the fields used, so any kubectl output (and the API's
//! JSON) parses, unknown fields are ignored, and no k8s-openapi version feature is needed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use crate::error::InventoryError;
use crate::time::parse_rfc3339_ns;

/// A pod's lifecycle phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PodPhase {
    /// Accepted, not all containers started.
    Pending,
    /// Bound to a node, containers started.
    Running,
    /// All containers exited successfully (Completed).
    Succeeded,
    /// All containers exited, at least one failed.
    Failed,
    /// Phase missing or not recognised.
    #[default]
    Unknown,
}

impl PodPhase {
    /// Whether the pod has finished: its IP may already belong to another pod.
    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }

    fn parse(s: &str) -> PodPhase {
        match s {
            "Pending" => PodPhase::Pending,
            "Running" => PodPhase::Running,
            "Succeeded" => PodPhase::Succeeded,
            "Failed" => PodPhase::Failed,
            _ => PodPhase::Unknown,
        }
    }
}

/// An ownerReference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerRef {
    /// Owner kind (`ReplicaSet`, `Job`, `StatefulSet`, ...).
    pub kind: String,
    /// Owner name (same namespace).
    pub name: String,
    /// Whether this owner is the managing controller.
    pub controller: bool,
}

/// A declared container port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    /// containerPort.
    pub port: u16,
    /// hostPort, when set.
    pub host_port: Option<u16>,
}

/// A pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// metadata.uid.
    pub uid: String,
    /// status.phase.
    pub phase: PodPhase,
    /// status.podIPs (status.podIP when the list is missing).
    pub ips: Vec<IpAddr>,
    /// spec.hostNetwork.
    pub host_network: bool,
    /// spec.containers[].ports.
    pub ports: Vec<ContainerPort>,
    /// spec.nodeName.
    pub node_name: Option<String>,
    /// metadata.labels.
    pub labels: BTreeMap<String, String>,
    /// metadata.ownerReferences.
    pub owners: Vec<OwnerRef>,
    /// metadata.creationTimestamp, ns since the epoch.
    pub created_ns: Option<u64>,
    /// metadata.deletionTimestamp, ns since the epoch.
    pub deletion_ns: Option<u64>,
}

/// A node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// status.addresses that are IP addresses (type, address).
    pub addresses: Vec<(String, IpAddr)>,
    /// metadata.labels.
    pub labels: BTreeMap<String, String>,
    /// spec.providerID.
    pub provider_id: Option<String>,
    /// Leaving the cluster: a deletion timestamp, or the cluster autoscaler's
    /// `ToBeDeletedByClusterAutoscaler` taint (probes stop, no failure is recorded).
    pub leaving: bool,
    /// The `Ready` condition (`None`: not reported).
    pub ready: Option<bool>,
}

/// A Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// port.
    pub port: u16,
    /// nodePort, when allocated.
    pub node_port: Option<u16>,
}

/// A Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// spec.type.
    pub kind: String,
    /// spec.clusterIPs (spec.clusterIP when the list is missing); headless has none.
    pub cluster_ips: Vec<IpAddr>,
    /// spec.ports.
    pub ports: Vec<ServicePort>,
    /// status.loadBalancer.ingress[].ip.
    pub lb_ips: Vec<IpAddr>,
    /// spec.externalIPs.
    pub external_ips: Vec<IpAddr>,
    /// spec.selector.
    pub selector: BTreeMap<String, String>,
    /// spec.trafficDistribution (`PreferClose`, ...), when set.
    pub traffic_distribution: Option<String>,
    /// The `service.kubernetes.io/topology-mode` annotation (topology-aware hints, e.g.
    /// `Auto`), when set.
    pub topology_mode: Option<String>,
    /// Headless: `spec.clusterIP` is `None` (clients dial the backends' own addresses).
    pub headless: bool,
}

impl Service {
    /// Whether the Service asks kube-proxy for backends close to the client:
    /// `spec.trafficDistribution` `PreferClose` (or its successors `PreferSameZone` and
    /// `PreferSameNode`), or topology-aware hints turned on (`topology-mode` /
    /// `topology-aware-hints` set to `Auto`).
    pub fn prefers_close(&self) -> bool {
        let distribution = self.traffic_distribution.as_deref().is_some_and(|t| {
            ["PreferClose", "PreferSameZone", "PreferSameNode"]
                .iter()
                .any(|p| p.eq_ignore_ascii_case(t))
        });
        let hints = self
            .topology_mode
            .as_deref()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("auto"));
        distribution || hints
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// addresses.
    pub addresses: Vec<IpAddr>,
    /// nodeName.
    pub node_name: Option<String>,
    /// targetRef (kind, name).
    pub target: Option<(String, String)>,
    /// zone (the endpoint's topology zone), when set.
    pub zone: Option<String>,
    /// conditions.ready (absent means ready, as the API says).
    pub ready: bool,
}

/// An EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    /// endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// A controller between a pod and its workload (ReplicaSet, Job, ...) and its owners.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controller {
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// metadata.ownerReferences.
    pub owners: Vec<OwnerRef>,
}

/// Everything read from one inventory source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Pods.
    pub pods: Vec<Pod>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// ReplicaSets, Jobs and other owners, keyed by (kind, namespace, name).
    pub controllers: BTreeMap<(String, String, String), Controller>,
    /// Objects of kinds podflow does not use (counted, not fatal).
    pub skipped: usize,
}

// ---- wire format -------------------------------------------------------------------

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawObject {
    kind: String,
    #[serde(deserialize_with = "null_default")]
    metadata: RawMeta,
    #[serde(deserialize_with = "null_default")]
    spec: RawSpec,
    #[serde(deserialize_with = "null_default")]
    status: RawStatus,
    #[serde(deserialize_with = "null_default")]
    items: Vec<RawObject>,
    #[serde(deserialize_with = "null_default")]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawMeta {
    name: String,
    namespace: String,
    uid: String,
    #[serde(deserialize_with = "null_default")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_default")]
    owner_references: Vec<RawOwner>,
    creation_timestamp: Option<String>,
    deletion_timestamp: Option<String>,
    #[serde(deserialize_with = "null_default")]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawOwner {
    kind: String,
    name: String,
    controller: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawSpec {
    // Pod
    node_name: Option<String>,
    host_network: Option<bool>,
    #[serde(deserialize_with = "null_default")]
    containers: Vec<RawContainer>,
    // Node
    #[serde(rename = "providerID")]
    provider_id: Option<String>,
    #[serde(deserialize_with = "null_default")]
    taints: Vec<RawTaint>,
    // Service
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs", deserialize_with = "null_default")]
    cluster_ips: Vec<String>,
    #[serde(rename = "externalIPs", deserialize_with = "null_default")]
    external_ips: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    ports: Vec<RawServicePort>,
    // A map for Services, a LabelSelector for workloads: only the Service form is used.
    selector: Option<serde_json::Value>,
    traffic_distribution: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTaint {
    key: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCondition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawEndpointConditions {
    ready: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawContainer {
    #[serde(deserialize_with = "null_default")]
    ports: Vec<RawContainerPort>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawContainerPort {
    container_port: Option<i64>,
    host_port: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawServicePort {
    port: Option<i64>,
    node_port: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs", deserialize_with = "null_default")]
    pod_ips: Vec<RawIp>,
    #[serde(deserialize_with = "null_default")]
    addresses: Vec<RawAddress>,
    #[serde(deserialize_with = "null_default")]
    load_balancer: RawLb,
    #[serde(deserialize_with = "null_default")]
    conditions: Vec<RawCondition>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawIp {
    ip: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAddress {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLb {
    #[serde(deserialize_with = "null_default")]
    ingress: Vec<RawIp>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawEndpoint {
    #[serde(deserialize_with = "null_default")]
    addresses: Vec<String>,
    node_name: Option<String>,
    target_ref: Option<RawTarget>,
    zone: Option<String>,
    #[serde(deserialize_with = "null_default")]
    conditions: RawEndpointConditions,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTarget {
    kind: String,
    name: String,
}

// ---- conversion --------------------------------------------------------------------

struct Ctx<'a> {
    origin: &'a str,
    object: String,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> InventoryError {
        InventoryError::Field {
            origin: self.origin.to_string(),
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn ip(&self, s: &str, field: impl FnOnce() -> String) -> Result<IpAddr, InventoryError> {
        s.trim()
            .parse()
            .map_err(|_| self.err(field(), format!("{s:?} is not an IP address")))
    }

    fn port(&self, v: i64, field: impl FnOnce() -> String) -> Result<u16, InventoryError> {
        u16::try_from(v)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| self.err(field(), format!("{v} is not a port")))
    }

    fn time(&self, s: &Option<String>, field: &str) -> Result<Option<u64>, InventoryError> {
        match s {
            None => Ok(None),
            Some(s) => parse_rfc3339_ns(s)
                .map(Some)
                .map_err(|e| self.err(field, e.to_string())),
        }
    }
}

fn owners(raw: Vec<RawOwner>) -> Vec<OwnerRef> {
    raw.into_iter()
        .map(|o| OwnerRef {
            kind: o.kind,
            name: o.name,
            controller: o.controller.unwrap_or(false),
        })
        .collect()
}

/// The YAML parser's limits for a file of `len` bytes. kubectl's output of a large
/// cluster exceeds the parser's fixed defaults (a million events is a few thousand pods),
/// so what grows with the file's text — events, nodes, documents, scalar bytes — is
/// allowed in proportion to its length: without aliases YAML has at most one event per
/// byte. What does not grow with honest input keeps the parser's defaults: nesting depth,
/// anchors and aliases (kubectl writes none), and the copies an alias replays, so an alias
/// bomb is refused instead of expanding without end.
fn yaml_budget(len: usize) -> serde_saphyr::Budget {
    let mut b = serde_saphyr::Budget::default();
    let per_byte = len.saturating_add(1024);
    b.max_events = b.max_events.max(per_byte);
    b.max_nodes = b.max_nodes.max(per_byte);
    b.max_documents = b.max_documents.max(per_byte / 4);
    b.max_total_scalar_bytes = b.max_total_scalar_bytes.max(per_byte);
    b
}

impl Inventory {
    /// Parses a file's text: a Kubernetes List or single objects, YAML (one or many
    /// documents) or JSON (one or many values); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        let mut inv = Inventory::default();
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            // One JSON value or several concatenated (`kubectl get -o json` per object).
            for raw in serde_json::Deserializer::from_str(text).into_iter::<RawObject>() {
                let raw = raw.map_err(|source| InventoryError::Json {
                    origin: origin.to_string(),
                    source,
                })?;
                inv.add_raw(raw, origin)?;
            }
        } else {
            let mut opts = serde_saphyr::Options::default();
            opts.budget = Some(yaml_budget(text.len()));
            let docs: Vec<RawObject> = serde_saphyr::from_multiple_with_options(text, opts)
                .map_err(|e| InventoryError::Yaml {
                    origin: origin.to_string(),
                    source: Box::new(e),
                })?;
            for raw in docs {
                inv.add_raw(raw, origin)?;
            }
        }
        Ok(inv)
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Inventory::parse(&text, &path.display().to_string())
    }

    /// Adds one object (or List) given as JSON, as the API serves it.
    pub fn add_value(&mut self, v: serde_json::Value, origin: &str) -> Result<(), InventoryError> {
        let raw: RawObject = serde_json::from_value(v).map_err(|source| InventoryError::Json {
            origin: origin.to_string(),
            source,
        })?;
        self.add_raw(raw, origin)
    }

    fn add_raw(&mut self, mut raw: RawObject, origin: &str) -> Result<(), InventoryError> {
        let m = std::mem::take(&mut raw.metadata);
        let ctx = Ctx {
            origin,
            object: if m.namespace.is_empty() {
                format!("{} {}", raw.kind, m.name)
            } else {
                format!("{} {}/{}", raw.kind, m.namespace, m.name)
            },
        };
        match raw.kind.as_str() {
            "List" | "PodList" | "NodeList" | "ServiceList" | "EndpointSliceList"
            | "ReplicaSetList" | "JobList" => {
                for item in raw.items {
                    self.add_raw(item, origin)?;
                }
            }
            "Pod" => self.pods.push(pod(raw, m, &ctx)?),
            "Node" => self.nodes.push(node(raw, m)),
            "Service" => self.services.push(service(raw, m, &ctx)?),
            "EndpointSlice" => self.slices.push(endpoint_slice(raw, m)),
            "ReplicaSet"
            | "Job"
            | "ReplicationController"
            | "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "CronJob" => {
                let c = Controller {
                    kind: raw.kind,
                    namespace: m.namespace,
                    name: m.name,
                    owners: owners(m.owner_references),
                };
                let key = (c.kind.clone(), c.namespace.clone(), c.name.clone());
                self.controllers.insert(key, c);
            }
            _ => self.skipped += 1,
        }
        Ok(())
    }
}

/// A Pod: its addresses, declared ports, phase, node and owners.
fn pod(raw: RawObject, m: RawMeta, ctx: &Ctx<'_>) -> Result<Pod, InventoryError> {
    let s = raw.status;
    let mut ips = Vec::new();
    for (i, p) in s.pod_ips.iter().enumerate() {
        if let Some(a) = &p.ip {
            ips.push(ctx.ip(a, || format!("status.podIPs[{i}].ip"))?);
        }
    }
    if ips.is_empty()
        && let Some(a) = s.pod_ip.as_deref().filter(|a| !a.is_empty())
    {
        ips.push(ctx.ip(a, || "status.podIP".into())?);
    }
    let mut ports = Vec::new();
    for (i, c) in raw.spec.containers.iter().enumerate() {
        for (j, p) in c.ports.iter().enumerate() {
            let Some(cp) = p.container_port else { continue };
            let port = ctx.port(cp, || {
                format!("spec.containers[{i}].ports[{j}].containerPort")
            })?;
            let host_port = match p.host_port {
                None | Some(0) => None,
                Some(h) => {
                    Some(ctx.port(h, || format!("spec.containers[{i}].ports[{j}].hostPort"))?)
                }
            };
            ports.push(ContainerPort { port, host_port });
        }
    }
    Ok(Pod {
        created_ns: ctx.time(&m.creation_timestamp, "metadata.creationTimestamp")?,
        deletion_ns: ctx.time(&m.deletion_timestamp, "metadata.deletionTimestamp")?,
        namespace: m.namespace,
        name: m.name,
        uid: m.uid,
        phase: s
            .phase
            .as_deref()
            .map_or(PodPhase::Unknown, PodPhase::parse),
        ips,
        host_network: raw.spec.host_network.unwrap_or(false),
        ports,
        node_name: raw.spec.node_name.filter(|n| !n.is_empty()),
        labels: m.labels,
        owners: owners(m.owner_references),
    })
}

/// A Node: its addresses (names such as Hostname are skipped), labels and provider id.
fn node(raw: RawObject, m: RawMeta) -> Node {
    // Hostname and DNS entries are names, not addresses: skip them.
    let addresses = raw
        .status
        .addresses
        .into_iter()
        .filter_map(|a| a.address.trim().parse().ok().map(|ip| (a.kind, ip)))
        .collect();
    let leaving = m.deletion_timestamp.is_some()
        || raw
            .spec
            .taints
            .iter()
            .any(|t| t.key == "ToBeDeletedByClusterAutoscaler");
    let ready = raw
        .status
        .conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .map(|c| c.status == "True");
    Node {
        name: m.name,
        addresses,
        labels: m.labels,
        provider_id: raw.spec.provider_id.filter(|p| !p.is_empty()),
        leaving,
        ready,
    }
}

/// A Service: its cluster, load-balancer and external addresses, ports and selector.
fn service(raw: RawObject, m: RawMeta, ctx: &Ctx<'_>) -> Result<Service, InventoryError> {
    let spec = raw.spec;
    let mut cluster_ips = Vec::new();
    let listed = if spec.cluster_ips.is_empty() {
        spec.cluster_ip.into_iter().collect()
    } else {
        spec.cluster_ips
    };
    // Headless Services say "None".
    let headless = listed.iter().any(|a| a == "None");
    for (i, a) in listed.iter().enumerate() {
        if a.is_empty() || a == "None" {
            continue;
        }
        cluster_ips.push(ctx.ip(a, || format!("spec.clusterIPs[{i}]"))?);
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let Some(port) = p.port else { continue };
        let port = ctx.port(port, || format!("spec.ports[{i}].port"))?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(ctx.port(n, || format!("spec.ports[{i}].nodePort"))?),
        };
        ports.push(ServicePort { port, node_port });
    }
    let mut lb_ips = Vec::new();
    for (i, ing) in raw.status.load_balancer.ingress.iter().enumerate() {
        // Hostname-only ingress (AWS ELB) has no address to index.
        if let Some(a) = &ing.ip {
            lb_ips.push(ctx.ip(a, || format!("status.loadBalancer.ingress[{i}].ip"))?);
        }
    }
    let mut external_ips = Vec::new();
    for (i, a) in spec.external_ips.iter().enumerate() {
        external_ips.push(ctx.ip(a, || format!("spec.externalIPs[{i}]"))?);
    }
    let selector = match spec.selector {
        Some(serde_json::Value::Object(o)) => o
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(Service {
        namespace: m.namespace,
        name: m.name,
        kind: spec.kind.unwrap_or_else(|| "ClusterIP".into()),
        cluster_ips,
        ports,
        lb_ips,
        external_ips,
        selector,
        traffic_distribution: spec.traffic_distribution.filter(|t| !t.is_empty()),
        topology_mode: m
            .annotations
            .get("service.kubernetes.io/topology-mode")
            .or_else(|| {
                m.annotations
                    .get("service.kubernetes.io/topology-aware-hints")
            })
            .cloned(),
        headless,
    })
}

/// An EndpointSlice: the backends of a Service, by address.
fn endpoint_slice(raw: RawObject, m: RawMeta) -> EndpointSlice {
    let mut endpoints = Vec::new();
    for e in raw.endpoints {
        // FQDN slices carry names, not addresses: those are skipped.
        let addresses = e
            .addresses
            .iter()
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        endpoints.push(SliceEndpoint {
            addresses,
            node_name: e.node_name,
            target: e.target_ref.map(|t| (t.kind, t.name)),
            zone: e.zone.filter(|z| !z.is_empty()),
            ready: e.conditions.ready.unwrap_or(true),
        });
    }
    EndpointSlice {
        service: m.labels.get("kubernetes.io/service-name").cloned(),
        namespace: m.namespace,
        name: m.name,
        endpoints,
    }
}
