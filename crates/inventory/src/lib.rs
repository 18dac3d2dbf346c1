//! podflow's Kubernetes inventory: pods, nodes, services, EndpointSlices and the owners
//! that name workloads, read from a file in Kubernetes' List format (YAML or JSON, one or
//! many documents; `kubectl get pods,nodes,services,endpointslices,replicasets -A -o yaml`
//! works as is), and the IP index that answers "who was 10.1.2.3 at time t".
//!
//! The index is rebuilt whole on every change and shared lock-free ([`SharedIndex`]).

mod error;
mod file;
mod index;
#[cfg(feature = "kube")]
pub mod kube;
mod objects;
mod time;

pub use error::InventoryError;
pub use file::{FileInventory, now_ns};
pub use index::{
    IndexConfig, IndexStats, InventoryTracker, IpIndex, NodeInfo, OBSERVED_ONLY_LABEL,
    ServiceBackends, SharedIndex, Tombstone, node_meta, parse_provider_id, workload_of,
};
pub use objects::{
    ContainerPort, Controller, EndpointSlice, Inventory, Node, OwnerRef, Pod, PodPhase, Service,
    ServicePort, SliceEndpoint,
};
pub use time::{TimeError, days_from_civil, parse_rfc3339_ns};
