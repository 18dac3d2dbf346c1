//! The attribution of a stored row, flattened to names: what the store's columns, the
//! API and the metrics show. Empty strings stand for "not applicable / unknown".

use serde::Serialize;

use crate::{Attribution, Class, Name, Place, ServiceMeta, ServiceZone};

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

/// Whether `have` is what [`name`] makes of `n` (shared names by address first).
fn is_name(have: &Name, n: Option<&Name>) -> bool {
    match n {
        Some(n) => Name::ptr_eq(have, n) || **have == **n,
        None => have.is_empty(),
    }
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

    /// Whether these are [`EndLabels::of`] `p`, without building them: comparing costs
    /// no reference counts, building one each of ten names (and as many to drop).
    pub fn is_of(&self, p: &Place) -> bool {
        let (wk, w) = p
            .workload()
            .map_or((None, None), |(k, n)| (Some(k), Some(n)));
        self.kind == p.kind_str()
            && is_name(&self.namespace, p.namespace())
            && is_name(&self.name, p.name())
            && is_name(&self.workload_kind, wk)
            && is_name(&self.workload, w)
            && is_name(&self.app, p.app())
            && is_name(&self.node, p.node().map(|n| &n.name))
            && is_name(&self.zone, p.zone())
            && is_name(&self.region, p.region())
            && is_name(&self.cloud, p.cloud())
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
    /// The Service is headless: the responder is mapped to it through its
    /// EndpointSlices (no DNAT). Meaningful only with a `service_name`.
    pub service_headless: bool,
    /// The Service asked for close backends (`trafficDistribution: PreferClose`, or
    /// topology-aware hints) when the row was attributed.
    pub service_prefers_close: bool,
    /// Whether a Ready backend of the Service was in the initiator's zone when the row
    /// was attributed (`None`: no Service, or not known).
    pub service_zone_local: Option<bool>,
    /// The remote end is on another node that is observed too (it runs an agent): the same
    /// connection is also reported there, so the count-once view keeps only the
    /// initiator's row.
    pub remote_observed: bool,
}

/// `yes` / `no`, the stored spelling of a flag.
fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The Service zone of `a` and the Service its labels name: the dialled one, else the
/// headless one (see [`FlowLabels::of`]).
fn service_of(a: &Attribution) -> (Option<&ServiceZone>, Option<&ServiceMeta>) {
    let zone = a.service_zone.as_ref();
    let meta = a
        .service
        .as_ref()
        .map(|s| &*s.meta)
        .or(zone.map(|z| &*z.meta));
    (zone, meta)
}

impl FlowLabels {
    /// The labels of an attribution.
    ///
    /// The Service is the dialled one (DNAT), else a headless Service whose
    /// EndpointSlices list the responder; rows through no Service keep every Service
    /// label empty.
    pub fn of(a: &Attribution) -> FlowLabels {
        let (zone, meta) = service_of(a);
        FlowLabels {
            class: a.class,
            local: EndLabels::of(&a.local.place),
            remote: EndLabels::of(&a.remote.place),
            service_namespace: name(meta.map(|m| &m.namespace)),
            service_name: name(meta.map(|m| &m.name)),
            service_headless: zone.is_some_and(|z| z.headless),
            service_prefers_close: zone.is_some_and(|z| z.prefers_close),
            service_zone_local: zone.and_then(|z| z.local_ready),
            remote_observed: false,
        }
    }

    /// Whether these are [`FlowLabels::of`] `a` but for `remote_observed` (which the
    /// pipeline sets), without building them.
    pub fn is_of(&self, a: &Attribution) -> bool {
        let (zone, meta) = service_of(a);
        self.class == a.class
            && self.local.is_of(&a.local.place)
            && self.remote.is_of(&a.remote.place)
            && is_name(&self.service_namespace, meta.map(|m| &m.namespace))
            && is_name(&self.service_name, meta.map(|m| &m.name))
            && self.service_headless == zone.is_some_and(|z| z.headless)
            && self.service_prefers_close == zone.is_some_and(|z| z.prefers_close)
            && self.service_zone_local == zone.and_then(|z| z.local_ready)
    }

    /// `service_headless` as stored: `yes` / `no` with a Service, empty without.
    pub fn service_headless_str(&self) -> &'static str {
        if self.service_name.is_empty() {
            ""
        } else {
            yes_no(self.service_headless)
        }
    }

    /// `service_prefers_close` as stored: `yes` / `no` with a Service, empty without.
    pub fn service_prefers_close_str(&self) -> &'static str {
        if self.service_name.is_empty() {
            ""
        } else {
            yes_no(self.service_prefers_close)
        }
    }

    /// `service_zone_local` as stored: `yes`, `no`, or empty (no Service, or not known).
    pub fn service_zone_local_str(&self) -> &'static str {
        match self.service_zone_local {
            Some(b) if !self.service_name.is_empty() => yes_no(b),
            _ => "",
        }
    }

    /// Whether the row's bytes crossed zones while a Ready backend of its Service was
    /// in the initiator's zone: the avoidable cross-zone traffic.
    pub fn avoidable_cross_zone(&self) -> bool {
        self.class == Class::InterZone
            && !self.service_name.is_empty()
            && self.service_zone_local == Some(true)
    }
}

/// Parses a stored `yes` / `no` / empty flag (`None`: anything else).
pub fn parse_flag(s: &str) -> Option<Option<bool>> {
    match s {
        "" => Some(None),
        "yes" => Some(Some(true)),
        "no" => Some(Some(false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use super::*;
    use crate::{
        CloudMeta, NetworkMeta, NodeMeta, PodMeta, ServiceHit, ServiceMeta, ServiceVia,
        ServiceZone, Side,
    };

    fn n(s: &str) -> Name {
        Name::from(s)
    }

    /// Places that differ in one field each, and some that differ in none.
    fn places() -> Vec<Place> {
        let node = |zone: Option<&str>| {
            Arc::new(NodeMeta {
                name: n("node-a"),
                zone: zone.map(n),
                region: Some(n("eu-west-1")),
                cloud: Some(n("aws")),
                instance: None,
            })
        };
        let pod = |app: Option<&str>, zone: Option<&str>| {
            Place::Pod(Arc::new(PodMeta {
                namespace: n("shop"),
                name: n("web-1"),
                workload_kind: n("Deployment"),
                workload: n("web"),
                app: app.map(n),
                node: Some(node(zone)),
                ..Default::default()
            }))
        };
        vec![
            pod(None, Some("a")),
            pod(Some("web"), Some("a")),
            pod(Some(""), Some("a")),
            pod(None, Some("b")),
            pod(None, None),
            Place::Node(node(Some("a"))),
            Place::Node(node(None)),
            Place::Service(Arc::new(ServiceMeta {
                namespace: n("shop"),
                name: n("web"),
                ..Default::default()
            })),
            Place::KnownNetwork(Arc::new(NetworkMeta {
                name: n("office"),
                zone: Some(n("a")),
                ..Default::default()
            })),
            Place::CloudRange(Arc::new(CloudMeta {
                cloud: n("aws"),
                region: n("us-east-1"),
                service: n("S3"),
            })),
            Place::Internet,
            Place::Unknown,
        ]
    }

    #[test]
    fn end_labels_are_of_a_place_exactly_when_built_from_an_equal_one() {
        for a in places() {
            for b in places() {
                let built = EndLabels::of(&a);
                assert_eq!(
                    built.is_of(&b),
                    built == EndLabels::of(&b),
                    "{a:?} against {b:?}"
                );
            }
            assert!(EndLabels::of(&a).is_of(&a));
        }
    }

    #[test]
    fn flow_labels_are_of_an_attribution_exactly_when_built_from_an_equal_one() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let svc = Arc::new(ServiceMeta {
            namespace: n("shop"),
            name: n("web"),
            ..Default::default()
        });
        type Zone = Option<(bool, bool, Option<bool>)>;
        let at = |local: &Place, class: Class, service: bool, zone: Zone| Attribution {
            local: Side {
                ip,
                place: local.clone(),
            },
            remote: Side {
                ip,
                place: Place::Internet,
            },
            service: service.then(|| ServiceHit {
                meta: Arc::clone(&svc),
                ip,
                port: 80,
                via: ServiceVia::ClusterIp,
            }),
            service_zone: zone.map(|(headless, prefers_close, local_ready)| ServiceZone {
                meta: Arc::clone(&svc),
                headless,
                prefers_close,
                local_ready,
            }),
            local_initiated: true,
            responder_port: 443,
            snat: None,
            class,
            bytes_out: 0,
            bytes_in: 0,
            cost_usd: 0.0,
        };
        let mut all = Vec::new();
        for p in places().into_iter().take(3) {
            for class in [Class::PublicInternet, Class::InterZone] {
                for service in [false, true] {
                    // Each Service zone field changed alone.
                    for zone in [
                        None,
                        Some((false, false, Some(true))),
                        Some((true, false, Some(true))),
                        Some((false, true, Some(true))),
                        Some((false, false, Some(false))),
                        Some((false, false, None)),
                    ] {
                        all.push(at(&p, class, service, zone));
                    }
                }
            }
        }
        for a in &all {
            for b in &all {
                let built = FlowLabels::of(a);
                assert_eq!(
                    built.is_of(b),
                    built == FlowLabels::of(b),
                    "{a:?} against {b:?}"
                );
            }
        }
        let mut observed = FlowLabels::of(&all[0]);
        observed.remote_observed = true;
        assert!(
            observed.is_of(&all[0]),
            "remote_observed is the pipeline's to compare"
        );
    }
}
