//! Flow counters at workload level for `/metrics`, bounded by construction:
//! - a label allow-list (only the chosen dimensions become labels);
//! - top-K per interval: the K largest series of each interval keep their labels, the rest
//!   are summed into series whose workload labels read `other`;
//! - a cap on live series, and series that stop moving expire.
//!
//! Source is the initiator, destination the responder. Pod names are labels only when
//! asked for (`--metrics-pod-labels`).

use std::fmt::Write as _;
use std::sync::Arc;

use hashbrown::HashMap;
use podflow_model::FlowRow;

use crate::exposition::escape;

/// Every dimension a workload series can carry, in label order.
pub const DIMENSIONS: [&str; 11] = [
    "src_namespace",
    "src_workload",
    "src_kind",
    "src_zone",
    "dst_namespace",
    "dst_workload",
    "dst_kind",
    "dst_zone",
    "class",
    "src_pod",
    "dst_pod",
];

/// The default label allow-list (pod names are opt-in).
pub const DEFAULT_DIMENSIONS: [&str; 9] = [
    "src_namespace",
    "src_workload",
    "src_kind",
    "src_zone",
    "dst_namespace",
    "dst_workload",
    "dst_kind",
    "dst_zone",
    "class",
];

/// How the workload series are bounded.
#[derive(Debug, Clone)]
pub struct WorkloadMetricsConfig {
    /// Dimensions that become labels (a subset of [`DIMENSIONS`]).
    pub dimensions: Vec<&'static str>,
    /// Series kept per interval; the rest go to `other`.
    pub top_k: usize,
    /// Series not updated for this many seconds disappear.
    pub expire_s: i64,
    /// Count each connection once: of a connection both ends' nodes observe, only the
    /// initiator's observer's row counts (the API's count-once view), so summing the
    /// series gives the bill. Off: every observer's row counts (the raw view).
    pub count_once: bool,
}

impl Default for WorkloadMetricsConfig {
    fn default() -> Self {
        WorkloadMetricsConfig {
            dimensions: DEFAULT_DIMENSIONS.to_vec(),
            top_k: 200,
            expire_s: 600,
            count_once: true,
        }
    }
}

impl WorkloadMetricsConfig {
    /// Parses a comma-separated allow-list, naming a wrong entry.
    pub fn parse_dimensions(s: &str) -> Result<Vec<&'static str>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                DIMENSIONS
                    .iter()
                    .find(|x| **x == d)
                    .copied()
                    .ok_or_else(|| {
                        format!(
                            "unknown metrics label `{d}` (known: {})",
                            DIMENSIONS.join(", ")
                        )
                    })
            })
            .collect()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Values {
    bytes: u64,
    connections: u64,
    cost_usd: f64,
    updated: i64,
}

/// Workload-level counters.
#[derive(Debug)]
pub struct WorkloadMetrics {
    cfg: WorkloadMetricsConfig,
    series: HashMap<Arc<[String]>, Values>,
    /// Series folded into `other` so far.
    pub folded: u64,
}

impl WorkloadMetrics {
    /// Empty counters.
    pub fn new(cfg: WorkloadMetricsConfig) -> WorkloadMetrics {
        WorkloadMetrics {
            cfg,
            series: HashMap::new(),
            folded: 0,
        }
    }

    /// The value of dimension `d` (an index into [`DIMENSIONS`]) for `row`.
    fn dim(row: &FlowRow, d: usize) -> &str {
        let l = &row.labels;
        let (src, dst) = if row.key.local_initiated {
            (&l.local, &l.remote)
        } else {
            (&l.remote, &l.local)
        };
        match d {
            0 => &src.namespace,
            1 => src.workload_or_name(),
            2 => src.kind,
            3 => &src.zone,
            4 => &dst.namespace,
            5 => dst.workload_or_name(),
            6 => dst.kind,
            7 => &dst.zone,
            8 => l.class.as_str(),
            9 if src.kind == "pod" => &src.name,
            10 if dst.kind == "pod" => &dst.name,
            _ => "",
        }
    }

    /// Adds one interval's rows at `now` (Unix seconds).
    pub fn add_interval<'r>(&mut self, rows: impl IntoIterator<Item = &'r FlowRow>, now: i64) {
        // Keys borrow the rows' labels (nothing allocated per row); unused slots stay "".
        let dims: Vec<usize> = self
            .cfg
            .dimensions
            .iter()
            .map(|d| DIMENSIONS.iter().position(|x| x == d).unwrap_or(usize::MAX))
            .collect();
        type Key<'r> = [&'r str; DIMENSIONS.len()];
        let mut sums: Vec<(Key, Values)> = Vec::new();
        let mut by_key: HashMap<Key, usize> = HashMap::new();
        // A row's key depends on its labels and its direction only, and rows with equal
        // labels mostly share one `Arc` (the aggregator hands them out so): each labels
        // `Arc` (by address; all are alive while `rows` is) and direction is keyed once.
        let mut by_labels: HashMap<(usize, bool), usize> = HashMap::new();
        for r in rows {
            if self.cfg.count_once && r.labels.remote_observed && !r.key.local_initiated {
                continue; // the initiator's node reports this connection
            }
            let id = (Arc::as_ptr(&r.labels) as usize, r.key.local_initiated);
            let i = *by_labels.entry(id).or_insert_with(|| {
                let mut key = [""; DIMENSIONS.len()];
                for (k, d) in key.iter_mut().zip(&dims) {
                    *k = Self::dim(r, *d);
                }
                *by_key.entry(key).or_insert_with(|| {
                    sums.push((key, Values::default()));
                    sums.len() - 1
                })
            });
            let v = &mut sums[i].1;
            v.bytes += r.totals.bytes();
            v.connections += r.totals.opened;
            v.cost_usd += r.cost_usd;
        }
        let mut items: Vec<(Vec<String>, Values)> = sums
            .into_iter()
            .map(|(k, v)| {
                (
                    k.iter().take(dims.len()).map(|s| s.to_string()).collect(),
                    v,
                )
            })
            .collect();
        items.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then_with(|| a.0.cmp(&b.0)));
        let cap = self.cfg.top_k.saturating_mul(5).max(1);
        for (i, (mut key, v)) in items.into_iter().enumerate() {
            let known = self.series.contains_key(key.as_slice());
            if i >= self.cfg.top_k || (!known && self.series.len() >= cap) {
                // Keep what is bounded anyway (class, zones, kinds); fold the names.
                for (k, d) in key.iter_mut().zip(&self.cfg.dimensions) {
                    if d.ends_with("_namespace") || d.ends_with("_workload") || d.ends_with("_pod")
                    {
                        *k = "other".into();
                    }
                }
                self.folded += 1;
            }
            let s = self.series.entry(Arc::from(key)).or_default();
            s.bytes += v.bytes;
            s.connections += v.connections;
            s.cost_usd += v.cost_usd;
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

    /// Appends the three families in Prometheus text format.
    pub fn render(&self, out: &mut String, defs: [&crate::MetricDef; 3]) {
        let mut keys: Vec<_> = self.series.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (i, def) in defs.iter().enumerate() {
            let _ = writeln!(out, "# HELP {} {}", def.name, def.help);
            let _ = writeln!(out, "# TYPE {} {}", def.name, def.kind);
            for (k, v) in &keys {
                out.push_str(def.name);
                out.push('{');
                for (j, (d, val)) in self.cfg.dimensions.iter().zip(k.iter()).enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{d}=\"{}\"", escape(val));
                }
                out.push('}');
                let _ = match i {
                    0 => writeln!(out, " {}", v.bytes),
                    1 => writeln!(out, " {}", v.connections),
                    _ => writeln!(out, " {}", v.cost_usd),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podflow_model::{Class, EndLabels, FlowKey, FlowLabels, FlowTotals, Protocol};

    fn row(src: &str, dst: &str, bytes: u64) -> FlowRow {
        let end = |w: &str| EndLabels {
            kind: "pod",
            namespace: "shop".into(),
            name: format!("{w}-0").into(),
            workload_kind: "Deployment".into(),
            workload: w.into(),
            zone: "a".into(),
            ..Default::default()
        };
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
                opened: 1,
                ..Default::default()
            },
            labels: Arc::new(FlowLabels {
                class: Class::IntraZone,
                local: end(src),
                remote: end(dst),
                ..Default::default()
            }),
            cost_usd: 0.0,
        }
    }

    fn rendered(m: &WorkloadMetrics) -> String {
        let mut text = String::new();
        let def = |name| crate::MetricDef {
            name,
            kind: "counter",
            help: "h",
            labels: &[],
        };
        let defs = [
            &def("podflow_workload_bytes_total"),
            &def("podflow_workload_connections_total"),
            &def("podflow_workload_cost_usd_total"),
        ];
        m.render(&mut text, defs);
        text
    }

    #[test]
    fn top_k_keeps_the_largest_and_folds_the_rest_with_totals_kept() {
        let mut m = WorkloadMetrics::new(WorkloadMetricsConfig {
            top_k: 2,
            ..Default::default()
        });
        let rows: Vec<_> = (0..10)
            .map(|i| row(&format!("w{i}"), "db", 100 * (i + 1)))
            .collect();
        m.add_interval(&rows, 100);
        assert_eq!(m.len(), 3, "two named series and one `other`");
        let text = rendered(&m);
        assert!(text.contains("src_workload=\"w9\""), "{text}");
        assert!(text.contains("src_workload=\"w8\""));
        assert!(!text.contains("src_workload=\"w7\""));
        let other = text
            .lines()
            .find(|l| {
                l.starts_with("podflow_workload_bytes_total{")
                    && l.contains("src_workload=\"other\"")
            })
            .expect("other series");
        assert!(other.ends_with(" 3600"), "100+..+800 folded: {other}");
    }

    #[test]
    fn rows_sharing_labels_split_by_direction_and_equal_labels_merge() {
        let mut m = WorkloadMetrics::new(WorkloadMetricsConfig::default());
        let a = row("web", "db", 1);
        let mut b = row("web", "db", 10);
        b.labels = Arc::clone(&a.labels);
        b.key.local_initiated = false;
        let mut c = row("web", "db", 100);
        c.labels = Arc::clone(&a.labels);
        let d = row("web", "db", 1000); // equal labels, its own Arc
        m.add_interval(&[a, b, c, d], 100);
        let text = rendered(&m);
        let bytes: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("podflow_workload_bytes_total{"))
            .collect();
        assert_eq!(bytes.len(), 2, "{text}");
        let of = |src: &str| {
            bytes
                .iter()
                .find(|l| l.contains(&format!("src_workload=\"{src}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .expect("series")
        };
        assert_eq!(of("web"), "1101", "initiated by web: a, c and d");
        assert_eq!(of("db"), "10", "b: the remote end initiated");
    }

    #[test]
    fn allow_list_limits_labels_and_series_expire() {
        let dims = WorkloadMetricsConfig::parse_dimensions("class,dst_workload").expect("valid");
        let mut m = WorkloadMetrics::new(WorkloadMetricsConfig {
            dimensions: dims,
            top_k: 10,
            expire_s: 60,
            count_once: true,
        });
        m.add_interval(&[row("a", "db", 10), row("b", "db", 20)], 100);
        assert_eq!(m.len(), 1, "both rows share class and destination");
        m.add_interval(&[row("a", "cache", 1)], 130);
        assert_eq!(m.len(), 2);
        m.add_interval(&[], 170);
        assert_eq!(m.len(), 1, "the db series stopped moving 70 s ago");
        assert!(
            WorkloadMetricsConfig::parse_dimensions("class,ip")
                .expect_err("bad")
                .contains("`ip`")
        );
    }

    /// A connection between two observed nodes is reported by both: once from the
    /// initiator's node (local end initiated) and once from the responder's. The series
    /// count it once; the raw view counts both.
    #[test]
    fn a_connection_both_nodes_observe_counts_once() {
        let seen_from = |initiator_side: bool| {
            let mut r = row("web", "db", 100);
            r.key.local_initiated = initiator_side;
            let mut l = (*r.labels).clone();
            l.remote_observed = true;
            if !initiator_side {
                std::mem::swap(&mut l.local, &mut l.remote);
            }
            r.labels = Arc::new(l);
            r
        };
        let rows = [seen_from(true), seen_from(false)];
        let bytes = |count_once| {
            let mut m = WorkloadMetrics::new(WorkloadMetricsConfig {
                count_once,
                ..Default::default()
            });
            m.add_interval(&rows, 10);
            m.series.values().map(|v| v.bytes).sum::<u64>()
        };
        assert_eq!(bytes(true), 100);
        assert_eq!(bytes(false), 200);
    }
}
