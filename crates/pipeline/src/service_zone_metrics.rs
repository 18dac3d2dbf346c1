//! Cross-zone traffic per Service for `/metrics` (docs/attribution.md, "Avoidable
//! cross-zone traffic"): the bytes that crossed zones, those of them that crossed while
//! a Ready backend of the Service was in the client's zone, and what those cost. Bounded
//! as the workload series are ([`crate::workload_metrics`]):
//! - top-K per interval: the K Services with the most cross-zone bytes in the interval
//!   keep their names, the rest are summed under `namespace="other",service="other"`;
//! - a cap on live series (5 K), and series that stop moving expire.
//!
//! Only rows through a Service that crossed zones (class `INTER_ZONE`) count; each
//! connection once when both ends' nodes observe it (the initiator's row).

use std::fmt::Write as _;

use hashbrown::HashMap;
use podflow_model::{Class, FlowRow};

use crate::exposition::escape;

/// How the series are bounded.
#[derive(Debug, Clone)]
pub struct ServiceZoneMetricsConfig {
    /// Services kept per interval; the rest go to `other`.
    pub top_k: usize,
    /// Series not updated for this many seconds disappear.
    pub expire_s: i64,
    /// Count each connection once (the initiator's row), as the API's count-once view.
    pub count_once: bool,
}

impl Default for ServiceZoneMetricsConfig {
    fn default() -> Self {
        ServiceZoneMetricsConfig {
            top_k: 200,
            expire_s: 600,
            count_once: true,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Values {
    cross_zone_bytes: u64,
    avoidable_bytes: u64,
    avoidable_cost_usd: f64,
    updated: i64,
}

impl Values {
    fn add(&mut self, v: &Values) {
        self.cross_zone_bytes = self.cross_zone_bytes.saturating_add(v.cross_zone_bytes);
        self.avoidable_bytes = self.avoidable_bytes.saturating_add(v.avoidable_bytes);
        self.avoidable_cost_usd += v.avoidable_cost_usd;
    }
}

/// The label value every folded Service is summed under.
pub const OTHER: &str = "other";

/// Cross-zone counters per Service.
#[derive(Debug)]
pub struct ServiceZoneMetrics {
    cfg: ServiceZoneMetricsConfig,
    /// (namespace, service) → counters.
    series: HashMap<(String, String), Values>,
    /// Interval series folded into `other` so far.
    pub folded: u64,
}

impl ServiceZoneMetrics {
    /// Empty counters.
    pub fn new(cfg: ServiceZoneMetricsConfig) -> ServiceZoneMetrics {
        ServiceZoneMetrics {
            cfg,
            series: HashMap::new(),
            folded: 0,
        }
    }

    /// Adds one interval's rows at `now` (Unix seconds).
    pub fn add_interval<'r>(&mut self, rows: impl IntoIterator<Item = &'r FlowRow>, now: i64) {
        let mut sums: HashMap<(&str, &str), Values> = HashMap::new();
        for r in rows {
            let l = &r.labels;
            if l.class != Class::InterZone || l.service_name.is_empty() {
                continue;
            }
            if self.cfg.count_once && l.remote_observed && !r.key.local_initiated {
                continue; // the initiator's node reports this connection
            }
            let bytes = r.totals.bytes();
            let avoidable = l.avoidable_cross_zone();
            sums.entry((&l.service_namespace, &l.service_name))
                .or_default()
                .add(&Values {
                    cross_zone_bytes: bytes,
                    avoidable_bytes: if avoidable { bytes } else { 0 },
                    avoidable_cost_usd: if avoidable { r.cost_usd } else { 0.0 },
                    updated: 0,
                });
        }
        let mut items: Vec<((&str, &str), Values)> = sums.into_iter().collect();
        items.sort_by(|a, b| {
            b.1.cross_zone_bytes
                .cmp(&a.1.cross_zone_bytes)
                .then_with(|| a.0.cmp(&b.0))
        });
        let cap = self.cfg.top_k.saturating_mul(5).max(1);
        for (i, ((ns, name), v)) in items.into_iter().enumerate() {
            let mut key = (ns.to_string(), name.to_string());
            let known = self.series.contains_key(&key);
            if i >= self.cfg.top_k || (!known && self.series.len() >= cap) {
                key = (OTHER.into(), OTHER.into());
                self.folded += 1;
            }
            let s = self.series.entry(key).or_default();
            s.add(&v);
            s.updated = now;
        }
        let expire = self.cfg.expire_s;
        self.series.retain(|_, v| now - v.updated < expire);
    }

    /// Live series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Appends the three families (cross-zone bytes, avoidable bytes, avoidable cost) in
    /// Prometheus text format, labelled `namespace` and `service`.
    pub fn render(&self, out: &mut String, defs: [&crate::MetricDef; 3]) {
        let mut keys: Vec<_> = self.series.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (i, def) in defs.iter().enumerate() {
            let _ = writeln!(out, "# HELP {} {}", def.name, def.help);
            let _ = writeln!(out, "# TYPE {} {}", def.name, def.kind);
            for ((ns, name), v) in &keys {
                let _ = write!(
                    out,
                    "{}{{namespace=\"{}\",service=\"{}\"}} ",
                    def.name,
                    escape(ns),
                    escape(name)
                );
                let _ = match i {
                    0 => writeln!(out, "{}", v.cross_zone_bytes),
                    1 => writeln!(out, "{}", v.avoidable_bytes),
                    _ => writeln!(out, "{}", v.avoidable_cost_usd),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use podflow_model::{FlowKey, FlowLabels, FlowTotals, Protocol};

    use super::*;

    fn row(svc: &str, class: Class, local: Option<bool>, bytes: u64, cost: f64) -> FlowRow {
        FlowRow {
            interval_start: 0,
            interval_s: 10,
            observer: "n".into(),
            key: FlowKey {
                proto: Protocol::TCP,
                local: "10.0.0.1".parse().expect("ip"),
                remote: "10.0.0.2".parse().expect("ip"),
                responder_port: 80,
                local_initiated: true,
                service: None,
                prefixes: Default::default(),
            },
            totals: FlowTotals {
                bytes_out: bytes,
                bytes_in: 1,
                ..Default::default()
            },
            labels: Arc::new(FlowLabels {
                class,
                service_namespace: if svc.is_empty() { "" } else { "shop" }.into(),
                service_name: svc.into(),
                service_zone_local: local,
                ..Default::default()
            }),
            cost_usd: cost,
        }
    }

    fn rendered(m: &ServiceZoneMetrics) -> String {
        let def = |name| crate::MetricDef {
            name,
            kind: "counter",
            help: "h",
            labels: &[],
        };
        let mut text = String::new();
        m.render(
            &mut text,
            [
                &def("cross_total"),
                &def("avoidable_total"),
                &def("cost_total"),
            ],
        );
        text
    }

    fn value<'a>(text: &'a str, family: &str, svc: &str) -> Option<&'a str> {
        let ns = if svc == OTHER { OTHER } else { "shop" };
        let head = format!("{family}{{namespace=\"{ns}\",service=\"{svc}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(head.as_str()))
    }

    #[test]
    fn cross_zone_and_avoidable_bytes_per_service() {
        let mut m = ServiceZoneMetrics::new(ServiceZoneMetricsConfig::default());
        m.add_interval(
            &[
                row("api", Class::InterZone, Some(true), 99, 0.5),
                row("api", Class::InterZone, Some(false), 9, 0.25),
                row("api", Class::IntraNode, Some(true), 999, 0.0),
                row("pay", Class::InterZone, None, 49, 0.125),
                // Through no Service: not a series.
                row("", Class::InterZone, None, 9999, 1.0),
            ],
            100,
        );
        let text = rendered(&m);
        assert_eq!(m.len(), 2, "{text}");
        assert_eq!(value(&text, "cross_total", "api"), Some("110"));
        assert_eq!(value(&text, "avoidable_total", "api"), Some("100"));
        assert_eq!(value(&text, "cost_total", "api"), Some("0.5"));
        assert_eq!(value(&text, "cross_total", "pay"), Some("50"));
        assert_eq!(value(&text, "avoidable_total", "pay"), Some("0"));
        // Counters add up over intervals.
        m.add_interval(&[row("api", Class::InterZone, Some(true), 9, 0.25)], 110);
        assert_eq!(value(&rendered(&m), "avoidable_total", "api"), Some("110"));
    }

    #[test]
    fn top_k_keeps_the_largest_folds_the_rest_and_idle_series_expire() {
        let mut m = ServiceZoneMetrics::new(ServiceZoneMetricsConfig {
            top_k: 2,
            expire_s: 60,
            count_once: true,
        });
        let rows: Vec<_> = (0..6)
            .map(|i| {
                row(
                    &format!("s{i}"),
                    Class::InterZone,
                    Some(true),
                    100 * (i + 1) - 1,
                    0.0,
                )
            })
            .collect();
        m.add_interval(&rows, 100);
        let text = rendered(&m);
        assert_eq!(m.len(), 3, "two named series and `other`: {text}");
        assert_eq!(value(&text, "cross_total", "s5"), Some("600"));
        assert_eq!(value(&text, "cross_total", "s4"), Some("500"));
        assert_eq!(
            value(&text, "cross_total", OTHER),
            Some("1000"),
            "100+..+400"
        );
        assert_eq!(m.folded, 4);
        m.add_interval(&[row("s5", Class::InterZone, None, 0, 0.0)], 150);
        m.add_interval(&[], 170);
        assert_eq!(m.len(), 1, "only s5 moved in the last 60 s");
    }

    #[test]
    fn the_responders_copy_of_an_observed_connection_counts_once() {
        let mut m = ServiceZoneMetrics::new(ServiceZoneMetricsConfig::default());
        let mut copy = row("api", Class::InterZone, Some(true), 99, 0.5);
        copy.key.local_initiated = false;
        Arc::make_mut(&mut copy.labels).remote_observed = true;
        m.add_interval(
            &[row("api", Class::InterZone, Some(true), 99, 0.5), copy],
            1,
        );
        assert_eq!(value(&rendered(&m), "cross_total", "api"), Some("100"));
    }
}
