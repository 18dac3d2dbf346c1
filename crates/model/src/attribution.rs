//! Who the two ends of a connection are, and what kind of connection it is.
//!
//! Plain data filled in by the enrich crate; names are `Arc<str>` so that attributing
//! millions of observations clones pointers, not strings.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A shared, immutable name (namespace, pod, node, zone, ...).
pub type Name = Arc<str>;

/// The connection class, from the places of the two ends.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Class {
    /// Both ends on the same node.
    IntraNode,
    /// Different nodes in the same zone.
    IntraZone,
    /// Different zones of the same region.
    InterZone,
    /// Another region: a node, a known network or a cloud range there.
    InterRegion,
    /// A private address outside the cluster, or a cloud service in the cluster's region.
    IntraVpc,
    /// Anything reached over the public internet (including other clouds).
    PublicInternet,
    /// Not enough is known (e.g. nodes without zone labels).
    #[default]
    Unknown,
}

impl Class {
    /// Every class, in declaration order.
    pub const ALL: [Class; 7] = [
        Class::IntraNode,
        Class::IntraZone,
        Class::InterZone,
        Class::InterRegion,
        Class::IntraVpc,
        Class::PublicInternet,
        Class::Unknown,
    ];

    /// The stored spelling (`INTRA_NODE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::IntraNode => "INTRA_NODE",
            Class::IntraZone => "INTRA_ZONE",
            Class::InterZone => "INTER_ZONE",
            Class::InterRegion => "INTER_REGION",
            Class::IntraVpc => "INTRA_VPC",
            Class::PublicInternet => "PUBLIC_INTERNET",
            Class::Unknown => "UNKNOWN",
        }
    }

    /// Parses the stored spelling (case-insensitive).
    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// kubenetmon's coarser connection classes, kept so its users' queries still work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KubenetmonClass {
    /// Inside the cluster's network (any zone).
    IntraVpc,
    /// Outside the network but in the same cloud region (e.g. S3 in-region).
    IntraRegion,
    /// Another region of the same cloud.
    InterRegion,
    /// The public internet.
    PublicInternet,
}

impl KubenetmonClass {
    /// kubenetmon's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KubenetmonClass::IntraVpc => "INTRA_VPC",
            KubenetmonClass::IntraRegion => "INTRA_REGION",
            KubenetmonClass::InterRegion => "INTER_REGION",
            KubenetmonClass::PublicInternet => "PUBLIC_INTERNET",
        }
    }
}

/// A node and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMeta {
    /// Node name.
    pub name: Name,
    /// `topology.kubernetes.io/zone` (or the failure-domain.beta label).
    pub zone: Option<Name>,
    /// `topology.kubernetes.io/region` (or the failure-domain.beta label).
    pub region: Option<Name>,
    /// Cloud from the providerID scheme (`aws`, `gce`, `azure`, ...).
    pub cloud: Option<Name>,
    /// Instance id from the providerID.
    pub instance: Option<Name>,
}

/// A pod with its workload already named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// Namespace.
    pub namespace: Name,
    /// Pod name.
    pub name: Name,
    /// metadata.uid (tells two pods of the same name apart).
    pub uid: Name,
    /// Top owner kind (`Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`, `Pod`...).
    pub workload_kind: Name,
    /// Top owner name (the pod's own name when it has no owner).
    pub workload: Name,
    /// App name from the configured label keys.
    pub app: Option<Name>,
    /// The node the pod is scheduled on.
    pub node: Option<Arc<NodeMeta>>,
    /// Whether the pod uses the node's network namespace.
    pub host_network: bool,
}

/// A Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMeta {
    /// Namespace.
    pub namespace: Name,
    /// Service name.
    pub name: Name,
    /// spec.type (`ClusterIP`, `NodePort`, `LoadBalancer`, ...).
    pub kind: Name,
}

/// Which kind of user-declared network a CIDR rule names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// The cluster's own VPC (non-cluster addresses in it).
    #[default]
    Vpc,
    /// A NAT gateway's addresses.
    NatGateway,
    /// An on-premises network (VPN, Direct Connect, ExpressRoute...).
    OnPrem,
    /// A peered VPC.
    Peering,
    /// Anything else worth a name.
    Other,
}

impl NetworkKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::Vpc => "vpc",
            NetworkKind::NatGateway => "nat_gateway",
            NetworkKind::OnPrem => "on_prem",
            NetworkKind::Peering => "peering",
            NetworkKind::Other => "other",
        }
    }
}

/// A network named by a user CIDR rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkMeta {
    /// Rule name.
    pub name: Name,
    /// What kind of network it is.
    pub kind: NetworkKind,
    /// The rule's labels, sorted by key.
    pub labels: Vec<(Name, Name)>,
    /// A class forced by the rule.
    pub class: Option<Class>,
    /// Zone of the network, when it has one.
    pub zone: Option<Name>,
    /// Region of the network, when it has one.
    pub region: Option<Name>,
}

/// A published cloud prefix: provider, region and service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloudMeta {
    /// `aws`, `gcp`, `google`, `azure`.
    pub cloud: Name,
    /// Provider region (`us-east-1`, `europe-west1`, `eastus`), `global` when none.
    pub region: Name,
    /// Service (`S3`, `AMAZON`, `Google Cloud`, `AzureStorage`...).
    pub service: Name,
}

/// What an address is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Place {
    /// A pod (hostNetwork pods too, when a declared port matched).
    Pod(Arc<PodMeta>),
    /// A node (its addresses, host-network traffic, kubelet).
    Node(Arc<NodeMeta>),
    /// A Service address that no backend was seen for.
    Service(Arc<ServiceMeta>),
    /// A user CIDR rule.
    KnownNetwork(Arc<NetworkMeta>),
    /// A cloud provider's published range.
    CloudRange(Arc<CloudMeta>),
    /// A public address nobody claimed.
    Internet,
    /// Nothing known (private addresses outside every rule too).
    #[default]
    Unknown,
}

impl Place {
    /// Short kind name: `pod`, `node`, `service`, `known_network`, `cloud_range`, `internet`, `unknown`.
    pub fn kind_str(&self) -> &'static str {
        match self {
            Place::Pod(_) => "pod",
            Place::Node(_) => "node",
            Place::Service(_) => "service",
            Place::KnownNetwork(_) => "known_network",
            Place::CloudRange(_) => "cloud_range",
            Place::Internet => "internet",
            Place::Unknown => "unknown",
        }
    }

    /// Whether the place is part of the cluster (pod or node).
    pub fn in_cluster(&self) -> bool {
        matches!(self, Place::Pod(_) | Place::Node(_))
    }

    /// The node the place runs on (pods and nodes).
    pub fn node(&self) -> Option<&Arc<NodeMeta>> {
        match self {
            Place::Pod(p) => p.node.as_ref(),
            Place::Node(n) => Some(n),
            _ => None,
        }
    }

    /// Namespace (pods and services).
    pub fn namespace(&self) -> Option<&Name> {
        match self {
            Place::Pod(p) => Some(&p.namespace),
            Place::Service(s) => Some(&s.namespace),
            _ => None,
        }
    }

    /// The display name: pod, node, service, rule or cloud service.
    pub fn name(&self) -> Option<&Name> {
        match self {
            Place::Pod(p) => Some(&p.name),
            Place::Node(n) => Some(&n.name),
            Place::Service(s) => Some(&s.name),
            Place::KnownNetwork(k) => Some(&k.name),
            Place::CloudRange(c) => Some(&c.service),
            Place::Internet | Place::Unknown => None,
        }
    }

    /// Workload kind and name (pods only).
    pub fn workload(&self) -> Option<(&Name, &Name)> {
        match self {
            Place::Pod(p) => Some((&p.workload_kind, &p.workload)),
            _ => None,
        }
    }

    /// App name (pods only).
    pub fn app(&self) -> Option<&Name> {
        match self {
            Place::Pod(p) => p.app.as_ref(),
            _ => None,
        }
    }

    /// Zone: the node's, or a known network's.
    pub fn zone(&self) -> Option<&Name> {
        match self {
            Place::KnownNetwork(k) => k.zone.as_ref(),
            _ => self.node().and_then(|n| n.zone.as_ref()),
        }
    }

    /// Region: the node's, a known network's or a cloud range's.
    pub fn region(&self) -> Option<&Name> {
        match self {
            Place::KnownNetwork(k) => k.region.as_ref(),
            Place::CloudRange(c) => Some(&c.region),
            _ => self.node().and_then(|n| n.region.as_ref()),
        }
    }

    /// Cloud: the node's providerID scheme, or a cloud range's provider.
    pub fn cloud(&self) -> Option<&Name> {
        match self {
            Place::CloudRange(c) => Some(&c.cloud),
            _ => self.node().and_then(|n| n.cloud.as_ref()),
        }
    }
}

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// The address as seen in the tuple.
    pub ip: IpAddr,
    /// What the address was at the time of the observation.
    pub place: Place,
}

/// How a Service was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceVia {
    /// One of spec.clusterIPs.
    ClusterIp,
    /// A node address and spec.ports[].nodePort.
    NodePort,
    /// status.loadBalancer.ingress[].ip.
    LoadBalancer,
    /// spec.externalIPs.
    ExternalIp,
}

/// The Service the initiator dialled, when DNAT sent it to a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHit {
    /// The Service.
    pub meta: Arc<ServiceMeta>,
    /// The dialled address.
    pub ip: IpAddr,
    /// The dialled port.
    pub port: u16,
    /// How it was reached.
    pub via: ServiceVia,
}

/// The Service a connection went to and whether a Ready backend of it was in the
/// initiator's zone when the connection was attributed: what tells avoidable cross-zone
/// traffic from unavoidable (docs/attribution.md, "Avoidable cross-zone traffic").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceZone {
    /// The Service: the one dialled (DNAT), or for a headless Service the one whose
    /// EndpointSlices list the responder.
    pub meta: Arc<ServiceMeta>,
    /// The Service is headless (no ClusterIP: clients dial the backends' addresses).
    pub headless: bool,
    /// The Service asks for backends close to the client (`spec.trafficDistribution:
    /// PreferClose`, or topology-aware hints / `topology-mode: Auto`).
    pub prefers_close: bool,
    /// Whether a Ready endpoint of the Service was in the initiator's zone: `None` when
    /// that is not known (the initiator has no zone, or a Ready endpoint has none).
    pub local_ready: Option<bool>,
}

/// Everything known about one observation's two ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribution {
    /// The end on the observer's node.
    pub local: Side,
    /// The other end (after DNAT: the backend that answered).
    pub remote: Side,
    /// The Service dialled, next to the backend in `remote` (or `local` for inbound).
    pub service: Option<ServiceHit>,
    /// The Service the connection went to (dialled, or headless) and where its Ready
    /// backends were, seen from the initiator's zone.
    pub service_zone: Option<ServiceZone>,
    /// Whether the local end started the connection.
    pub local_initiated: bool,
    /// The responder's port.
    pub responder_port: u16,
    /// The source the responder saw when SNAT rewrote it (e.g. masquerade to a node IP).
    pub snat: Option<Side>,
    /// The connection class.
    pub class: Class,
    /// Bytes local → remote.
    pub bytes_out: u64,
    /// Bytes remote → local.
    pub bytes_in: u64,
    /// Price of these bytes in USD (0 when the class is free or unpriced).
    pub cost_usd: f64,
}

impl Attribution {
    /// The initiator's end.
    pub fn initiator(&self) -> &Side {
        if self.local_initiated {
            &self.local
        } else {
            &self.remote
        }
    }

    /// The responder's end.
    pub fn responder(&self) -> &Side {
        if self.local_initiated {
            &self.remote
        } else {
            &self.local
        }
    }

    /// kubenetmon's class: everything inside the cluster's network is INTRA_VPC, a cloud
    /// range in the cluster's own region INTRA_REGION.
    pub fn kubenetmon_class(&self) -> KubenetmonClass {
        match self.class {
            Class::InterRegion => KubenetmonClass::InterRegion,
            Class::PublicInternet => KubenetmonClass::PublicInternet,
            Class::IntraVpc if matches!(self.remote.place, Place::CloudRange(_)) => {
                KubenetmonClass::IntraRegion
            }
            _ => KubenetmonClass::IntraVpc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_spellings_round_trip() {
        for c in Class::ALL {
            assert_eq!(Class::parse(c.as_str()), Some(c));
            assert_eq!(Class::parse(&c.as_str().to_lowercase()), Some(c));
        }
        assert_eq!(Class::parse("INTRA_GALAXY"), None);
        assert_eq!(Class::InterZone.to_string(), "INTER_ZONE");
    }

    #[test]
    fn place_accessors_follow_the_node() {
        let node = Arc::new(NodeMeta {
            name: "n1".into(),
            zone: Some("us-east-1a".into()),
            region: Some("us-east-1".into()),
            cloud: Some("aws".into()),
            instance: Some("i-1".into()),
        });
        let pod = Place::Pod(Arc::new(PodMeta {
            namespace: "shop".into(),
            name: "web-1".into(),
            workload_kind: "Deployment".into(),
            workload: "web".into(),
            node: Some(node),
            ..Default::default()
        }));
        assert_eq!(pod.zone().map(|z| &**z), Some("us-east-1a"));
        assert_eq!(pod.region().map(|z| &**z), Some("us-east-1"));
        assert_eq!(pod.cloud().map(|z| &**z), Some("aws"));
        assert_eq!(pod.namespace().map(|z| &**z), Some("shop"));
        assert_eq!(pod.kind_str(), "pod");
        assert!(pod.in_cluster());
        assert!(!Place::Internet.in_cluster());
    }
}
