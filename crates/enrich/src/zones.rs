//! Where the Ready backends of the Service a connection went to were, seen from the
//! initiator's zone: what tells avoidable cross-zone traffic from unavoidable
//! (docs/attribution.md, "Avoidable cross-zone traffic").

use podflow_inventory::IpIndex;
use podflow_model::{Place, ServiceHit, ServiceZone, Side};

/// The Service of a connection and whether a Ready endpoint of it was in the
/// initiator's zone: the dialled Service (`service`, from DNAT), else the headless
/// Service whose EndpointSlices list the responder pod (clients of a headless Service
/// dial its pods directly). `None` for a connection through no Service.
pub fn service_zone(
    idx: &IpIndex,
    service: Option<&ServiceHit>,
    initiator: &Side,
    responder: &Side,
) -> Option<ServiceZone> {
    let (meta, headless) = match service {
        Some(s) => (&s.meta, false),
        None if matches!(responder.place, Place::Pod(_)) => {
            (idx.headless_service(responder.ip)?, true)
        }
        None => return None,
    };
    let backends = idx.service_backends(&meta.namespace, &meta.name);
    let zone = initiator.place.zone().map(|z| &**z);
    Some(ServiceZone {
        meta: meta.clone(),
        headless,
        prefers_close: backends.is_some_and(|b| b.prefers_close),
        local_ready: backends.and_then(|b| b.local_ready(zone)),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use podflow_inventory::{IndexConfig, Inventory};
    use podflow_model::{Class, Counters, FlowLabels, Observation, Protocol, Tuple};

    use crate::{Attributor, CloudRanges, EnrichConfig, PriceTable};

    /// Two zones, one node each. `shop/api` has a Ready backend in each zone;
    /// `shop/cart` too, and asks for PreferClose; `shop/pay`'s backend in zone-a is not
    /// Ready (`READY_A` is replaced to make it so); `shop/db` is headless, its
    /// endpoints' zones known only from their nodes.
    const INVENTORY: &str = r#"
apiVersion: v1
kind: List
items:
- kind: Node
  metadata: {name: n-a, labels: {topology.kubernetes.io/zone: zone-a, topology.kubernetes.io/region: r}}
  status: {addresses: [{type: InternalIP, address: 172.16.0.1}]}
- kind: Node
  metadata: {name: n-b, labels: {topology.kubernetes.io/zone: zone-b, topology.kubernetes.io/region: r}}
  status: {addresses: [{type: InternalIP, address: 172.16.0.2}]}
- {kind: Pod, metadata: {name: web-a, namespace: shop, uid: w-a}, spec: {nodeName: n-a}, status: {phase: Running, podIP: 10.1.0.2}}
- {kind: Pod, metadata: {name: web-b, namespace: shop, uid: w-b}, spec: {nodeName: n-b}, status: {phase: Running, podIP: 10.2.0.2}}
- {kind: Pod, metadata: {name: api-a, namespace: shop, uid: a-a}, spec: {nodeName: n-a}, status: {phase: Running, podIP: 10.1.0.3}}
- {kind: Pod, metadata: {name: api-b, namespace: shop, uid: a-b}, spec: {nodeName: n-b}, status: {phase: Running, podIP: 10.2.0.3}}
- {kind: Pod, metadata: {name: cart-a, namespace: shop, uid: c-a}, spec: {nodeName: n-a}, status: {phase: Running, podIP: 10.1.0.4}}
- {kind: Pod, metadata: {name: cart-b, namespace: shop, uid: c-b}, spec: {nodeName: n-b}, status: {phase: Running, podIP: 10.2.0.4}}
- {kind: Pod, metadata: {name: pay-a, namespace: shop, uid: p-a}, spec: {nodeName: n-a}, status: {phase: Running, podIP: 10.1.0.5}}
- {kind: Pod, metadata: {name: pay-b, namespace: shop, uid: p-b}, spec: {nodeName: n-b}, status: {phase: Running, podIP: 10.2.0.5}}
- {kind: Pod, metadata: {name: db-0, namespace: shop, uid: d-0}, spec: {nodeName: n-a}, status: {phase: Running, podIP: 10.1.0.6}}
- {kind: Pod, metadata: {name: db-1, namespace: shop, uid: d-1}, spec: {nodeName: n-b}, status: {phase: Running, podIP: 10.2.0.6}}
- {kind: Service, metadata: {name: api, namespace: shop}, spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}}
- {kind: Service, metadata: {name: cart, namespace: shop}, spec: {clusterIP: 10.96.0.11, trafficDistribution: PreferClose, ports: [{port: 80}]}}
- {kind: Service, metadata: {name: pay, namespace: shop}, spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}}
- {kind: Service, metadata: {name: db, namespace: shop}, spec: {clusterIP: None, ports: [{port: 5432}]}}
- kind: EndpointSlice
  metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
  endpoints:
  - {addresses: [10.1.0.3], zone: zone-a, conditions: {ready: READY_A}}
  - {addresses: [10.2.0.3], zone: zone-b, conditions: {ready: true}}
- kind: EndpointSlice
  metadata: {name: cart-1, namespace: shop, labels: {kubernetes.io/service-name: cart}}
  endpoints:
  - {addresses: [10.1.0.4], zone: zone-a}
  - {addresses: [10.2.0.4], zone: zone-b}
- kind: EndpointSlice
  metadata: {name: pay-1, namespace: shop, labels: {kubernetes.io/service-name: pay}}
  endpoints:
  - {addresses: [10.1.0.5], zone: zone-a, conditions: {ready: false}}
  - {addresses: [10.2.0.5], zone: zone-b, conditions: {ready: true}}
- kind: EndpointSlice
  metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
  endpoints:
  - {addresses: [10.1.0.6], nodeName: n-a}
  - {addresses: [10.2.0.6], nodeName: n-b}
"#;

    fn index(api_a_ready: bool) -> podflow_inventory::IpIndex {
        let text = INVENTORY.replace("READY_A", if api_a_ready { "true" } else { "false" });
        let inv = Inventory::parse(&text, "test").expect("inventory");
        podflow_inventory::IpIndex::build(&inv, &[], &IndexConfig::default())
    }

    fn attributor() -> Attributor {
        let cfg = EnrichConfig::from_yaml("cloud: aws\nregion: r\n", "test").expect("config");
        Attributor::new(&cfg, "test", CloudRanges::default(), PriceTable::defaults())
            .expect("attributor")
    }

    /// A connection from `client` to `dialled` answered by `backend` (DNAT when they
    /// differ), `out` bytes sent and `back` received.
    fn conn(
        client: &str,
        dialled: (&str, u16),
        backend: (&str, u16),
        out: u64,
        back: u64,
    ) -> Observation {
        let ip = |s: &str| s.parse().expect("ip");
        Observation {
            proto: Protocol::TCP,
            orig: Tuple {
                src: ip(client),
                src_port: 40_000,
                dst: ip(dialled.0),
                dst_port: dialled.1,
            },
            reply: Tuple {
                src: ip(backend.0),
                src_port: backend.1,
                dst: ip(client),
                dst_port: 40_000,
            },
            delta_orig: Counters {
                bytes: out,
                packets: 1,
            },
            delta_reply: Counters {
                bytes: back,
                packets: 1,
            },
            opened: true,
            ..Default::default()
        }
    }

    #[derive(Debug, Default, PartialEq)]
    struct Sums {
        bytes: u64,
        cross_zone: u64,
        avoidable: u64,
    }

    /// A sequence of connections with known backends, some attributed after api's
    /// zone-a backend stopped being Ready: the avoidable bytes per Service are the
    /// hand-computed ones.
    #[test]
    fn avoidable_bytes_per_service_equal_the_hand_computed_ones() {
        let attr = attributor();
        let (ready, unready) = (index(true), index(false));
        let (api, cart, pay) = (("10.96.0.10", 80), ("10.96.0.11", 80), ("10.96.0.12", 80));
        let (web_a, web_b) = ("10.1.0.2", "10.2.0.2");
        #[rustfmt::skip]
        let flows = [
            // (observer, index, connection, class, zone_local)
            ("n-a", &ready, conn(web_a, api, ("10.1.0.3", 8080), 100, 1_000), Class::IntraNode, Some(true)),
            ("n-a", &ready, conn(web_a, api, ("10.2.0.3", 8080), 200, 2_000), Class::InterZone, Some(true)),
            ("n-b", &ready, conn(web_b, api, ("10.1.0.3", 8080), 300, 3_000), Class::InterZone, Some(true)),
            // PreferClose and still across: avoidable, and the flag is set.
            ("n-a", &ready, conn(web_a, cart, ("10.2.0.4", 8080), 400, 4_000), Class::InterZone, Some(true)),
            // pay's zone-a backend is not Ready: crossing was the only way.
            ("n-a", &ready, conn(web_a, pay, ("10.2.0.5", 8080), 500, 5_000), Class::InterZone, Some(false)),
            ("n-b", &ready, conn(web_b, pay, ("10.2.0.5", 8080), 600, 6_000), Class::IntraNode, Some(true)),
            // Headless: the client dials db-1's own address; db-0 is Ready in zone-a.
            ("n-a", &ready, conn(web_a, ("10.2.0.6", 5432), ("10.2.0.6", 5432), 700, 7_000), Class::InterZone, Some(true)),
            ("n-a", &ready, conn(web_a, ("10.1.0.6", 5432), ("10.1.0.6", 5432), 800, 8_000), Class::IntraNode, Some(true)),
            // After api's zone-a backend stopped being Ready: not avoidable any more.
            ("n-a", &unready, conn(web_a, api, ("10.2.0.3", 8080), 1_100, 11_000), Class::InterZone, Some(false)),
            ("n-b", &unready, conn(web_b, api, ("10.2.0.3", 8080), 1_200, 12_000), Class::IntraNode, Some(true)),
        ];
        let mut got: BTreeMap<String, Sums> = BTreeMap::new();
        for (observer, idx, obs, class, zone_local) in &flows {
            let a = attr.attribute(obs, observer, idx, 1);
            let l = FlowLabels::of(&a);
            assert_eq!(l.class, *class, "{obs:?}");
            assert_eq!(l.service_zone_local, *zone_local, "{obs:?}");
            let s = got
                .entry(format!("{}/{}", l.service_namespace, l.service_name))
                .or_default();
            let bytes = a.bytes_out + a.bytes_in;
            s.bytes += bytes;
            if l.class == Class::InterZone {
                s.cross_zone += bytes;
            }
            if l.avoidable_cross_zone() {
                s.avoidable += bytes;
            }
        }
        let want = BTreeMap::from([
            (
                "shop/api".to_string(),
                Sums {
                    bytes: 1_100 + 2_200 + 3_300 + 12_100 + 13_200,
                    cross_zone: 2_200 + 3_300 + 12_100,
                    avoidable: 2_200 + 3_300,
                },
            ),
            (
                "shop/cart".to_string(),
                Sums {
                    bytes: 4_400,
                    cross_zone: 4_400,
                    avoidable: 4_400,
                },
            ),
            (
                "shop/pay".to_string(),
                Sums {
                    bytes: 5_500 + 6_600,
                    cross_zone: 5_500,
                    avoidable: 0,
                },
            ),
            (
                "shop/db".to_string(),
                Sums {
                    bytes: 7_700 + 8_800,
                    cross_zone: 7_700,
                    avoidable: 7_700,
                },
            ),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn the_service_flags_and_rows_through_no_service() {
        let attr = attributor();
        let idx = index(true);
        let labels = |observer: &str, obs: Observation| {
            FlowLabels::of(&attr.attribute(&obs, observer, &idx, 1))
        };
        let cart = labels(
            "n-a",
            conn("10.1.0.2", ("10.96.0.11", 80), ("10.2.0.4", 8080), 1, 1),
        );
        assert_eq!(
            (
                cart.service_prefers_close_str(),
                cart.service_headless_str(),
                cart.service_zone_local_str()
            ),
            ("yes", "no", "yes")
        );
        let db = labels(
            "n-a",
            conn("10.1.0.2", ("10.2.0.6", 5432), ("10.2.0.6", 5432), 1, 1),
        );
        assert_eq!(&*db.service_name, "db");
        assert_eq!(
            (db.service_prefers_close_str(), db.service_headless_str()),
            ("no", "yes")
        );
        // Pod to pod through no Service, and the backend's node seeing the connection
        // already DNATed upstream: every Service label empty.
        for (observer, obs) in [
            (
                "n-a",
                conn("10.1.0.2", ("10.2.0.2", 80), ("10.2.0.2", 80), 1, 1),
            ),
            (
                "n-b",
                conn("10.1.0.2", ("10.2.0.3", 8080), ("10.2.0.3", 8080), 1, 1),
            ),
        ] {
            let l = labels(observer, obs);
            assert_eq!(l.class, Class::InterZone);
            assert_eq!(
                (
                    &*l.service_name,
                    l.service_headless_str(),
                    l.service_prefers_close_str(),
                    l.service_zone_local_str()
                ),
                ("", "", "", ""),
                "{obs:?}"
            );
            assert!(!l.avoidable_cross_zone());
        }
        // A client outside every zone (the internet through a NodePort would be one):
        // not known.
        let mut outside = conn("10.1.0.2", ("10.96.0.10", 80), ("10.2.0.3", 8080), 1, 1);
        outside.orig.src = "203.0.113.9".parse().expect("ip");
        outside.reply.dst = outside.orig.src;
        let l = labels("n-b", outside);
        assert_eq!((&*l.service_name, l.service_zone_local), ("api", None));
    }
}
