//! Avoidable cross-zone traffic per Service (docs/attribution.md, "Avoidable cross-zone
//! traffic"): every Service's bytes and cost over a range, counted once, next to what
//! crossed zones and what crossed zones while a Ready backend of the Service was in the
//! initiator's zone — the saving topology-aware routing would have made, at most.
//!
//! One grouped query ([`service_query`], answered from the rollups where they cover the
//! range, on either store) and a pure fold of its rows ([`service_costs`]).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::query::{self, GroupQuery, GroupRow, View};

/// The dimensions [`service_query`] groups by, in key order.
pub const SERVICE_DIMS: [&str; 6] = [
    "service_namespace",
    "service_name",
    "service_headless",
    "service_prefers_close",
    "service_zone_local",
    "class",
];

/// The most groups (Service × flags × class) one answer reads; past it the answer says
/// `truncated` (the smallest groups are the ones left out).
pub const MAX_GROUPS: usize = 100_000;

/// Seconds in the 30-day month the saving is projected to.
pub const MONTH_S: f64 = 30.0 * 86_400.0;

/// The grouped query behind [`service_costs`]: count-once, over `[from, to)`, grouped by
/// [`SERVICE_DIMS`], only Services of `namespace` when given.
pub fn service_query(from: i64, to: i64, namespace: Option<&str>) -> GroupQuery {
    let dim = |n: &str| query::dim(n).unwrap_or_else(|| panic!("{n} is a query dimension"));
    GroupQuery {
        from,
        to,
        group_by: SERVICE_DIMS.iter().map(|d| dim(d)).collect(),
        filters: namespace
            .map(|ns| (dim("service_namespace"), ns.to_string()))
            .into_iter()
            .collect(),
        limit: MAX_GROUPS,
        view: View::Once,
    }
}

/// One Service's traffic over the range, counted once.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceCost {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Headless: its clients dial the backends' own addresses (mapped to it through its
    /// EndpointSlices); topology-aware routing does not apply to it.
    pub headless: bool,
    /// Some of the range's traffic was attributed while the Service asked for close
    /// backends (`trafficDistribution: PreferClose`, or topology-aware hints).
    pub prefers_close: bool,
    /// Bytes both ways.
    pub bytes: u64,
    /// Price of those bytes, USD (as stored at attribution).
    pub cost_usd: f64,
    /// Connections opened.
    pub connections: u64,
    /// Bytes that crossed zones (class `INTER_ZONE`).
    pub cross_zone_bytes: u64,
    /// Their price, USD.
    pub cross_zone_cost_usd: f64,
    /// Connections that crossed zones.
    pub cross_zone_connections: u64,
    /// Bytes that crossed zones while a Ready backend of the Service was in the
    /// initiator's zone.
    pub avoidable_bytes: u64,
    /// Their price, USD: the most topology-aware routing would have saved.
    pub avoidable_cost_usd: f64,
    /// Connections that crossed zones while a Ready backend was in the initiator's zone.
    pub avoidable_connections: u64,
    /// Cross-zone bytes for which it is not known whether a Ready backend was in the
    /// initiator's zone (an initiator or endpoint without a zone, rows from before the
    /// store recorded it): counted neither avoidable nor unavoidable.
    pub cross_zone_unknown_bytes: u64,
    /// `avoidable_bytes / bytes` (0 without bytes).
    pub avoidable_share: f64,
    /// `avoidable_bytes / cross_zone_bytes` (0 without cross-zone bytes).
    pub avoidable_cross_zone_share: f64,
    /// The avoidable cost scaled from the range to 30 days.
    pub projected_monthly_saving_usd: f64,
    /// Avoidable bytes were attributed while the Service asked for close backends: it
    /// asks and still crosses zones with a Ready backend in the client's own.
    pub prefers_close_but_crosses: bool,
}

/// Every Service's [`ServiceCost`] over a range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceCosts {
    /// Start (Unix seconds, inclusive).
    pub from: i64,
    /// End (exclusive).
    pub to: i64,
    /// The length the monthly projection scales from: `min(to, now) - from`, at least 1.
    pub range_seconds: i64,
    /// Services with a ClusterIP (or other dialled address), most cross-zone cost first.
    pub services: Vec<ServiceCost>,
    /// Headless Services, most cross-zone cost first.
    pub headless: Vec<ServiceCost>,
    /// The query reached [`MAX_GROUPS`]: the smallest groups are missing.
    pub truncated: bool,
}

fn flag(s: &str) -> bool {
    s == "yes"
}

/// Folds the rows of [`service_query`] into one [`ServiceCost`] per Service (rows with
/// no Service are left out), each list sorted by cross-zone cost, then cross-zone
/// bytes, then name, and cut at `limit`. `now` (Unix seconds) caps the range the
/// monthly saving is scaled from.
pub fn service_costs(
    rows: &[GroupRow],
    from: i64,
    to: i64,
    now: i64,
    limit: usize,
) -> ServiceCosts {
    // The saving's cost while the Service asked for close backends, per Service.
    let mut by: BTreeMap<(&str, &str), (ServiceCost, u64)> = BTreeMap::new();
    for r in rows {
        let [ns, name, headless, prefers, local, class] = match r.key.as_slice() {
            [a, b, c, d, e, f] => [a, b, c, d, e, f].map(String::as_str),
            _ => continue,
        };
        if name.is_empty() {
            continue;
        }
        let (s, close_avoidable) = by.entry((ns, name)).or_insert_with(|| {
            (
                ServiceCost {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    ..Default::default()
                },
                0,
            )
        });
        let bytes = r.bytes();
        s.headless |= flag(headless);
        s.prefers_close |= flag(prefers);
        s.bytes = s.bytes.saturating_add(bytes);
        s.cost_usd += r.cost_usd;
        s.connections = s.connections.saturating_add(r.connections);
        if class == "INTER_ZONE" {
            s.cross_zone_bytes = s.cross_zone_bytes.saturating_add(bytes);
            s.cross_zone_cost_usd += r.cost_usd;
            s.cross_zone_connections = s.cross_zone_connections.saturating_add(r.connections);
            match local {
                "yes" => {
                    s.avoidable_bytes = s.avoidable_bytes.saturating_add(bytes);
                    s.avoidable_cost_usd += r.cost_usd;
                    s.avoidable_connections = s.avoidable_connections.saturating_add(r.connections);
                    if flag(prefers) {
                        *close_avoidable = close_avoidable.saturating_add(bytes);
                    }
                }
                "no" => {}
                _ => s.cross_zone_unknown_bytes = s.cross_zone_unknown_bytes.saturating_add(bytes),
            }
        }
    }
    let range_seconds = (to.min(now) - from).max(1);
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (mut headless, mut services): (Vec<ServiceCost>, Vec<ServiceCost>) = by
        .into_values()
        .map(|(mut s, close_avoidable)| {
            s.avoidable_share = ratio(s.avoidable_bytes, s.bytes);
            s.avoidable_cross_zone_share = ratio(s.avoidable_bytes, s.cross_zone_bytes);
            s.projected_monthly_saving_usd = s.avoidable_cost_usd * MONTH_S / range_seconds as f64;
            s.prefers_close_but_crosses = close_avoidable > 0;
            s
        })
        .partition(|s| s.headless);
    for list in [&mut services, &mut headless] {
        list.sort_by(|a, b| {
            b.cross_zone_cost_usd
                .total_cmp(&a.cross_zone_cost_usd)
                .then(b.cross_zone_bytes.cmp(&a.cross_zone_bytes))
                .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
        });
        list.truncate(limit);
    }
    ServiceCosts {
        from,
        to,
        range_seconds,
        services,
        headless,
        truncated: rows.len() >= MAX_GROUPS,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use podflow_model::{Class, FlowLabels, FlowRow};

    use super::*;
    use crate::testing::row;
    use crate::{FlowStore, SqliteStore};

    /// A row of `svc` (empty: no Service) with the flags, `bytes` out and 7 back, at `t`.
    fn svc_row(
        t: i64,
        remote: &str,
        svc: &str,
        class: Class,
        (headless, prefers, local): (bool, bool, Option<bool>),
        bytes: u64,
        cost: f64,
    ) -> FlowRow {
        let mut r = row(t, remote, bytes);
        r.cost_usd = cost;
        r.labels = Arc::new(FlowLabels {
            class,
            service_namespace: if svc.is_empty() { "" } else { "shop" }.into(),
            service_name: svc.into(),
            service_headless: headless,
            service_prefers_close: prefers,
            service_zone_local: local,
            ..FlowLabels::clone(&r.labels)
        });
        r
    }

    /// Hand-computed: api crosses zones 1000+7 avoidably and 2000+7 with no local
    /// backend; cart asks for PreferClose and crosses 500+7 avoidably after it asked,
    /// 300+7 before; db is headless; a row through no Service is left out.
    #[test]
    fn services_sum_their_cross_zone_and_avoidable_bytes_on_a_real_store() {
        use Class::{InterZone, IntraNode, IntraZone};
        let (yes, no, unknown) = (Some(true), Some(false), None);
        let rows = vec![
            svc_row(
                100,
                "10.0.0.2",
                "api",
                InterZone,
                (false, false, yes),
                1000,
                0.5,
            ),
            svc_row(
                100,
                "10.0.0.3",
                "api",
                InterZone,
                (false, false, no),
                2000,
                1.0,
            ),
            svc_row(
                110,
                "10.0.0.4",
                "api",
                IntraNode,
                (false, false, yes),
                4000,
                0.0,
            ),
            svc_row(
                110,
                "10.0.0.5",
                "api",
                InterZone,
                (false, false, unknown),
                100,
                0.25,
            ),
            svc_row(
                100,
                "10.0.0.6",
                "cart",
                InterZone,
                (false, false, yes),
                300,
                0.125,
            ),
            svc_row(
                120,
                "10.0.0.6",
                "cart",
                InterZone,
                (false, true, yes),
                500,
                0.25,
            ),
            svc_row(
                120,
                "10.0.0.7",
                "cart",
                IntraZone,
                (false, true, yes),
                50,
                0.0,
            ),
            svc_row(
                100,
                "10.0.0.8",
                "db",
                InterZone,
                (true, false, yes),
                9000,
                0.0625,
            ),
            svc_row(
                100,
                "10.0.0.9",
                "",
                InterZone,
                (false, false, None),
                99_999,
                9.0,
            ),
        ];
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("open");
        s.write(&rows).expect("write");
        let q = service_query(0, 3600, None);
        let got = service_costs(&s.group(&q).expect("group"), 0, 3600, 1_000_000, 100);
        assert_eq!(got.range_seconds, 3600);
        assert!(!got.truncated);
        let names = |l: &[ServiceCost]| l.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&got.services), ["api", "cart"], "by cross-zone cost");
        assert_eq!(names(&got.headless), ["db"]);
        let api = &got.services[0];
        assert_eq!(
            (
                api.bytes,
                api.cross_zone_bytes,
                api.avoidable_bytes,
                api.cross_zone_unknown_bytes
            ),
            (1007 + 2007 + 4007 + 107, 1007 + 2007 + 107, 1007, 107)
        );
        assert_eq!(
            (
                api.cost_usd,
                api.cross_zone_cost_usd,
                api.avoidable_cost_usd
            ),
            (1.75, 1.75, 0.5)
        );
        assert_eq!(
            (
                api.connections,
                api.cross_zone_connections,
                api.avoidable_connections
            ),
            (4, 3, 1)
        );
        assert_eq!(api.avoidable_share, 1007.0 / 7128.0);
        assert_eq!(api.avoidable_cross_zone_share, 1007.0 / 3121.0);
        // 0.5 USD in an hour is 360 USD in 30 days.
        assert_eq!(api.projected_monthly_saving_usd, 360.0);
        assert!(!api.prefers_close && !api.prefers_close_but_crosses && !api.headless);
        let cart = &got.services[1];
        assert_eq!(
            (cart.avoidable_bytes, cart.avoidable_cost_usd),
            (307 + 507, 0.375)
        );
        assert!(cart.prefers_close && cart.prefers_close_but_crosses);
        let db = &got.headless[0];
        assert_eq!((db.avoidable_bytes, db.headless), (9007, true));
        // The limit cuts each list; a namespace filter; a range in the future projects
        // from its part up to now.
        let got = service_costs(&s.group(&q).expect("group"), 0, 3600, 1_000_000, 1);
        assert_eq!(
            (names(&got.services), names(&got.headless)),
            (vec!["api".to_string()], vec!["db".to_string()])
        );
        let none = service_costs(
            &s.group(&service_query(0, 3600, Some("billing")))
                .expect("group"),
            0,
            3600,
            1_000_000,
            100,
        );
        assert!(none.services.is_empty() && none.headless.is_empty());
        let early = service_costs(&s.group(&q).expect("group"), 0, 3600, 1800, 100);
        assert_eq!(early.range_seconds, 1800);
        assert_eq!(early.services[0].projected_monthly_saving_usd, 720.0);
    }

    #[test]
    fn a_service_that_changed_its_mind_keeps_both_halves() {
        // Headless in one row only (a Service recreated headless): reported headless.
        let mk = |headless| GroupRow {
            key: [
                "shop",
                "x",
                if headless { "yes" } else { "no" },
                "no",
                "",
                "INTRA_NODE",
            ]
            .map(String::from)
            .to_vec(),
            bytes_src_to_dst: 1,
            bytes_dst_to_src: 1,
            packets_src_to_dst: 1,
            packets_dst_to_src: 1,
            connections: 1,
            closed: 1,
            cost_usd: 0.0,
        };
        let got = service_costs(&[mk(false), mk(true)], 0, 10, 10, 10);
        assert!(got.services.is_empty());
        assert_eq!(
            (got.headless[0].bytes, got.headless[0].avoidable_share),
            (4, 0.0)
        );
    }
}
