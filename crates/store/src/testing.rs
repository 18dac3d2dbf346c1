//! Rows for the unit tests.

use std::sync::Arc;

use podflow_model::{Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, Protocol};

/// A row of node-a's pod web-1 talking to `remote` (a node in zone b) through the
/// Service shop/db, over TCP to port 443, in the interval of 10 s at `t`.
pub(crate) fn row(t: i64, remote: &str, bytes_out: u64) -> FlowRow {
    FlowRow {
        interval_start: t,
        interval_s: 10,
        observer: "node-a".into(),
        key: FlowKey {
            proto: Protocol::TCP,
            local: "10.0.0.1".parse().expect("ip"),
            remote: remote.parse().expect("ip"),
            responder_port: 443,
            local_initiated: true,
            service: Some(("fd00::10".parse().expect("ip"), 80)),
            prefixes: Default::default(),
        },
        totals: FlowTotals {
            bytes_out,
            packets_out: 1,
            bytes_in: 7,
            packets_in: 1,
            opened: 1,
            closed: 0,
        },
        labels: Arc::new(FlowLabels {
            class: Class::InterZone,
            local: EndLabels {
                kind: "pod",
                namespace: "shop".into(),
                name: "web-1".into(),
                ..Default::default()
            },
            remote: EndLabels {
                kind: "node",
                name: "node-b".into(),
                zone: "b".into(),
                ..Default::default()
            },
            service_namespace: "shop".into(),
            service_name: "db".into(),
            service_zone_local: Some(true),
            ..Default::default()
        }),
        cost_usd: 0.5,
    }
}
