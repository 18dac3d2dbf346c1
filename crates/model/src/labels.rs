//! The attribution of a stored row, flattened to names: what the store's columns, the
//! API and the metrics show. Empty strings stand for "not applicable / unknown".

use serde::Serialize;

use crate::{Attribution, Class, Name, Place};

/// One end of a row, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct EndLabels {
    /// `pod`, `node`, `service`, `known_network`, `cloud_range`, `internet`, `unknown`.
    pub kind: &'static str,
    /// Namespace (pods, services).
    pub namespace: Name,
    /// Pod, node, Service, user network or cloud service name.
    pub name: Name,
    /// Workload kind (`Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, ...).
    pub workload_kind: Name,
    /// Workload name.
    pub workload: Name,
    /// App name (from the configured labels).
    pub app: Name,
    /// Node.
    pub node: Name,
    /// Zone.
    pub zone: Name,
    /// Region.
    pub region: Name,
    /// Cloud (node's providerID scheme or the cloud range's provider).
    pub cloud: Name,
}

/// The app label both ends of the probes' own traffic carry: connections between two
/// nodes that run agents, to the agents' probe ports.
pub const PROBE_APP: &str = "podflow-probe";

/// One shared empty name: most label fields are empty, and rows are many.
fn empty() -> Name {
    static EMPTY: std::sync::LazyLock<Name> = std::sync::LazyLock::new(|| Name::from(""));
    Name::clone(&EMPTY)
}

fn name(n: Option<&Name>) -> Name {
    n.cloned().unwrap_or_else(empty)
}

impl EndLabels {
    /// The end's value in a workload dimension (queries, rollups, metrics): the
    /// workload for pods, else the place's name, else its kind (`internet`, `unknown`).
    pub fn workload_or_name(&self) -> &str {
        if !self.workload.is_empty() {
            &self.workload
        } else if !self.name.is_empty() {
            &self.name
        } else {
            self.kind
        }
    }

    /// The ten fields in their stored column order: kind, namespace, name, workload_kind,
    /// workload, app, node, zone, region, cloud.
    pub fn columns(&self) -> [&str; 10] {
        [
            self.kind,
            &self.namespace,
            &self.name,
            &self.workload_kind,
            &self.workload,
            &self.app,
            &self.node,
            &self.zone,
            &self.region,
            &self.cloud,
        ]
    }

    /// The labels of a place.
    pub fn of(p: &Place) -> EndLabels {
        let (wk, w) = p
            .workload()
            .map_or((None, None), |(k, n)| (Some(k), Some(n)));
        EndLabels {
            kind: p.kind_str(),
            namespace: name(p.namespace()),
            name: name(p.name()),
            workload_kind: name(wk),
            workload: name(w),
            app: name(p.app()),
            node: name(p.node().map(|n| &n.name)),
            zone: name(p.zone()),
            region: name(p.region()),
            cloud: name(p.cloud()),
        }
    }
}

/// Everything a row says about who talked, beyond addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct FlowLabels {
    /// Connection class.
    pub class: Class,
    /// The local end.
    pub local: EndLabels,
    /// The remote end.
    pub remote: EndLabels,
    /// Namespace of the Service dialled (DNAT), or empty.
    pub service_namespace: Name,
    /// Name of the Service dialled, or empty.
    pub service_name: Name,
    /// The remote end is on another node that is observed too (it runs an agent): the same
    /// connection is also reported there, so the count-once view keeps only the
    /// initiator's row.
    pub remote_observed: bool,
}

impl FlowLabels {
    /// The labels of an attribution.
    pub fn of(a: &Attribution) -> FlowLabels {
        FlowLabels {
            class: a.class,
            local: EndLabels::of(&a.local.place),
            remote: EndLabels::of(&a.remote.place),
            service_namespace: name(a.service.as_ref().map(|s| &s.meta.namespace)),
            service_name: name(a.service.as_ref().map(|s| &s.meta.name)),
            remote_observed: false,
        }
    }
}
