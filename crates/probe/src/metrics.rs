//! Prometheus text rendering of probe results (pure): cumulative, bounded, with
//! HELP/TYPE lines. [`METRICS`] (and [`KCONMON_METRICS`]) list every family for the
//! project's one metric registry and its docs.
//!
//! Labels: `src_zone`/`dst_zone` always; `src_node`/`dst_node` only while the number of
//! node pairs seen is at most [`MetricsConfig::node_label_max_pairs`] — beyond it every
//! family is summed per zone pair, so the series count stops growing with N². Zone
//! sums are kept apart from the node rows (they never go backwards when a node
//! leaves). A departed peer's node rows go with [`Metrics::retain_nodes`].
//!
//! The kconmon compatibility mode renders kconmon's own families (with its prefix,
//! node-labelled, milliseconds) next to ours, so its README alert works unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::responder::ResponderStats;
use crate::result::{Outcome, ProbeKind, ProbeResult};
use crate::stats::{PairKey, PairStats, RTT_BUCKETS_S};

/// One metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricDef {
    /// Full name (kconmon families: without the prefix and its `_`).
    pub name: &'static str,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// The HELP text.
    pub help: &'static str,
    /// Label names; `src_node`/`dst_node` only below the pair limit.
    pub labels: &'static [&'static str],
}

const PAIR: &[&str] = &["src_zone", "dst_zone", "src_node", "dst_node", "type"];
const PAIR_RESULT: &[&str] = &[
    "src_zone", "dst_zone", "src_node", "dst_node", "type", "result",
];
const DNS: &[&str] = &["src_zone", "src_node", "resolver", "name"];
const DNS_RESULT: &[&str] = &["src_zone", "src_node", "resolver", "name", "result"];

/// Every `podflow_probe_*` family.
pub const METRICS: &[MetricDef] = &[
    MetricDef {
        name: "podflow_probe_results_total",
        kind: "counter",
        help: "Probes by outcome (ok, fail, unavailable). Per peer, udp runs every round, tcp and http every http_every-th (2 by default), icmp every icmp_every-th (4) and after any udp burst that lost packets, udp_mtu every mtu_every-th (12).",
        labels: PAIR_RESULT,
    },
    MetricDef {
        name: "podflow_probe_rtt_seconds",
        kind: "histogram",
        help: "Round-trip times of probes: per packet for udp, udp_mtu and icmp (kernel timestamps, responder delay removed), connect time for tcp, whole request for http. The tcp and http samples come from every http_every-th round (2 by default: half the rate of udp); icmp from every icmp_every-th round (4) plus the rounds whose udp burst lost packets, so icmp is sampled more while udp loses.",
        labels: PAIR,
    },
    MetricDef {
        name: "podflow_probe_packets_sent_total",
        kind: "counter",
        help: "Probe packets (or attempts) sent.",
        labels: PAIR,
    },
    MetricDef {
        name: "podflow_probe_packets_lost_total",
        kind: "counter",
        help: "Probe packets (or attempts) not answered in time.",
        labels: PAIR,
    },
    MetricDef {
        name: "podflow_probe_packets_duplicate_total",
        kind: "counter",
        help: "Extra replies to probe packets already answered.",
        labels: PAIR,
    },
    MetricDef {
        name: "podflow_probe_packets_late_total",
        kind: "counter",
        help: "Replies that came after their timeout (counted as lost too).",
        labels: PAIR,
    },
    MetricDef {
        name: "podflow_probe_timestamp_fallbacks_total",
        kind: "counter",
        help: "Probe times taken from the user-space clock because the kernel gave no timestamp.",
        labels: &["type"],
    },
    MetricDef {
        name: "podflow_probe_dns_seconds",
        kind: "histogram",
        help: "DNS lookup time per resolver and name.",
        labels: DNS,
    },
    MetricDef {
        name: "podflow_probe_dns_results_total",
        kind: "counter",
        help: "DNS lookups by outcome.",
        labels: DNS_RESULT,
    },
    MetricDef {
        name: "podflow_probe_node_labels",
        kind: "gauge",
        help: "1 while probe series carry src_node/dst_node, 0 once the pair count passed the limit and they are summed per zone pair.",
        labels: &[],
    },
    MetricDef {
        name: "podflow_probe_series_dropped_total",
        kind: "counter",
        help: "Probe results not kept in metrics because the series cap was reached.",
        labels: &[],
    },
    MetricDef {
        name: "podflow_probe_responder_received_total",
        kind: "counter",
        help: "Probe datagrams or connections the responder received.",
        labels: &["kind"],
    },
    MetricDef {
        name: "podflow_probe_responder_answered_total",
        kind: "counter",
        help: "Probes the responder answered.",
        labels: &["kind"],
    },
    MetricDef {
        name: "podflow_probe_responder_malformed_total",
        kind: "counter",
        help: "Datagrams or requests the responder ignored as malformed.",
        labels: &["kind"],
    },
    MetricDef {
        name: "podflow_probe_responder_dropped_total",
        kind: "counter",
        help: "Probes the responder received but could not answer (send failed, HTTP over its connection cap).",
        labels: &["kind"],
    },
    MetricDef {
        name: "podflow_probe_peers",
        kind: "gauge",
        help: "Peers this node probes now.",
        labels: &[],
    },
    MetricDef {
        name: "podflow_probe_results_dropped_total",
        kind: "counter",
        help: "Probe results dropped because the results channel was full.",
        labels: &[],
    },
    MetricDef {
        name: "podflow_probe_rounds_overrun_total",
        kind: "counter",
        help: "Probe rounds skipped because the previous round of the pair was still running.",
        labels: &[],
    },
];

const K_PAIR: &[&str] = &["source", "destination", "source_zone", "destination_zone"];
const K_PAIR_RESULT: &[&str] = &[
    "source",
    "destination",
    "source_zone",
    "destination_zone",
    "result",
];

/// kconmon's families (Stono/kconmon lib/apps/agent/metrics.ts), named without the
/// configurable prefix: rendered as `<prefix>_<name>`.
pub const KCONMON_METRICS: &[MetricDef] = &[
    MetricDef {
        name: "tcp_connect_milliseconds",
        kind: "gauge",
        help: "Time taken to establish the TCP socket",
        labels: K_PAIR,
    },
    MetricDef {
        name: "tcp_duration_milliseconds",
        kind: "gauge",
        help: "Total time taken to complete the TCP test",
        labels: K_PAIR,
    },
    MetricDef {
        name: "tcp_results_total",
        kind: "counter",
        help: "TCP Test Results",
        labels: K_PAIR_RESULT,
    },
    MetricDef {
        name: "udp_duration_milliseconds",
        kind: "gauge",
        help: "Average duration per packet",
        labels: K_PAIR,
    },
    MetricDef {
        name: "udp_duration_variance_milliseconds",
        kind: "gauge",
        help: "UDP variance between the slowest and fastest packet",
        labels: K_PAIR,
    },
    MetricDef {
        name: "udp_loss",
        kind: "gauge",
        help: "UDP packet loss",
        labels: K_PAIR,
    },
    MetricDef {
        name: "udp_results_total",
        kind: "counter",
        help: "UDP Test Results",
        labels: K_PAIR_RESULT,
    },
    MetricDef {
        name: "dns_results_total",
        kind: "counter",
        help: "DNS Test Results",
        labels: &["source", "source_zone", "host", "result"],
    },
    MetricDef {
        name: "dns_duration_milliseconds",
        kind: "gauge",
        help: "Total time taken to complete the DNS test",
        labels: &["source", "source_zone", "host"],
    },
];

/// Series per ordered node pair in kconmon mode: 2 results counters x (pass, fail) +
/// 5 gauges.
pub const KCONMON_SERIES_PER_PAIR: usize = 9;

/// Metric settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Node labels while the node pairs seen are at most this many.
    pub node_label_max_pairs: usize,
    /// Hard cap on node rows kept (results beyond it are counted, not kept).
    pub max_rows: usize,
    /// kconmon compatibility: its families with this prefix (kconmon's default is
    /// `kconmon`); none: off.
    pub kconmon_prefix: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            node_label_max_pairs: 2500,
            max_rows: 50_000,
            kconmon_prefix: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct KconPair {
    zones: (String, String),
    tcp: [u64; 2],
    udp: [u64; 2],
    tcp_connect_ms: Option<f64>,
    tcp_duration_ms: Option<f64>,
    udp_last: Option<(f64, f64, f64)>,
}

#[derive(Clone, Debug, Default)]
struct KconDns {
    zone: String,
    results: [u64; 2],
    duration_ms: Option<f64>,
}

/// Runner counters rendered with the probe families.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnerStats {
    /// Peers probed now.
    pub peers: u64,
    /// Results dropped on a full channel.
    pub results_dropped: u64,
    /// Rounds skipped for overrun.
    pub rounds_overrun: u64,
}

/// Cumulative probe metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    cfg: MetricsConfig,
    nodes: BTreeMap<PairKey, PairStats>,
    zones: BTreeMap<PairKey, PairStats>,
    fallbacks: BTreeMap<ProbeKind, u64>,
    dropped: u64,
    kcon: BTreeMap<(String, String), KconPair>,
    kcon_dns: BTreeMap<(String, String), KconDns>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Metrics {
    /// Empty metrics.
    pub fn new(cfg: MetricsConfig) -> Metrics {
        Metrics {
            cfg,
            ..Metrics::default()
        }
    }

    /// Adds one result.
    pub fn observe(&mut self, r: &ProbeResult) {
        *self.fallbacks.entry(r.kind).or_default() += u64::from(r.timestamp_fallbacks);
        let key = PairKey::of(r);
        let zone_key = PairKey {
            src_node: String::new(),
            dst_node: if r.kind == ProbeKind::Dns {
                r.dst_node.clone()
            } else {
                String::new()
            },
            ..key.clone()
        };
        self.zones.entry(zone_key).or_default().observe(r);
        if self.nodes.contains_key(&key) || self.nodes.len() < self.cfg.max_rows {
            self.nodes.entry(key).or_default().observe(r);
        } else {
            self.dropped += 1;
        }
        if self.cfg.kconmon_prefix.is_some() {
            self.observe_kconmon(r);
        }
    }

    fn observe_kconmon(&mut self, r: &ProbeResult) {
        let fail = usize::from(r.outcome != Outcome::Ok);
        if r.outcome == Outcome::Unavailable {
            return;
        }
        if r.kind == ProbeKind::Dns {
            let d = self
                .kcon_dns
                .entry((r.src_node.clone(), r.dns_name.clone()))
                .or_default();
            d.zone = r.src_zone.clone();
            d.results[fail] += 1;
            d.duration_ms = r.rtt_ns.first().map(|&t| ms(t));
            return;
        }
        if !matches!(r.kind, ProbeKind::Udp | ProbeKind::Tcp | ProbeKind::Http) {
            return;
        }
        if self.kcon.len() >= self.cfg.max_rows
            && !self
                .kcon
                .contains_key(&(r.src_node.clone(), r.dst_node.clone()))
        {
            return;
        }
        let p = self
            .kcon
            .entry((r.src_node.clone(), r.dst_node.clone()))
            .or_default();
        p.zones = (r.src_zone.clone(), r.dst_zone.clone());
        match r.kind {
            // kconmon's "TCP test" is an HTTP GET; its connect gauge is our TCP probe.
            ProbeKind::Http => {
                p.tcp[fail] += 1;
                p.tcp_duration_ms = r.rtt_ns.first().map(|&t| ms(t));
            }
            ProbeKind::Tcp => p.tcp_connect_ms = r.rtt_ns.first().map(|&t| ms(t)),
            _ => {
                p.udp[fail] += 1;
                p.udp_last = r
                    .rtt_min_avg_max()
                    .map(|(mn, avg, mx)| (ms(avg), ms(mx - mn), r.loss_ratio() * 100.0));
                if p.udp_last.is_none() && r.sent > 0 {
                    p.udp_last = Some((0.0, 0.0, 100.0));
                }
            }
        }
    }

    /// Forgets the node rows of nodes not in `nodes` (peers removed); zone sums stay.
    pub fn retain_nodes(&mut self, nodes: &BTreeSet<String>) {
        self.nodes.retain(|k, _| {
            nodes.contains(&k.src_node) && (k.kind == ProbeKind::Dns || nodes.contains(&k.dst_node))
        });
        self.kcon
            .retain(|(s, d), _| nodes.contains(s) && nodes.contains(d));
        self.kcon_dns.retain(|(s, _), _| nodes.contains(s));
    }

    /// Distinct (source, destination) node pairs with rows now.
    pub fn node_pairs(&self) -> usize {
        let mut pairs = BTreeSet::new();
        for k in self.nodes.keys().filter(|k| k.kind != ProbeKind::Dns) {
            pairs.insert((&k.src_node, &k.dst_node));
        }
        pairs.len()
    }

    /// Whether series carry node labels now.
    pub fn node_labels(&self) -> bool {
        self.node_pairs() <= self.cfg.node_label_max_pairs
    }

    /// Renders every family (HELP and TYPE included) into `out`.
    pub fn render(
        &self,
        out: &mut String,
        responder: Option<&ResponderStats>,
        runner: Option<&RunnerStats>,
    ) {
        let nodes = self.node_labels();
        let rows = if nodes { &self.nodes } else { &self.zones };
        let def = |name: &str| METRICS.iter().find(|d| d.name == name).copied();
        let head = |out: &mut String, name: &str| {
            if let Some(d) = def(name) {
                let _ = writeln!(
                    out,
                    "# HELP {} {}\n# TYPE {} {}",
                    d.name, d.help, d.name, d.kind
                );
            }
        };
        let peer_rows = || rows.iter().filter(|(k, _)| k.kind != ProbeKind::Dns);
        let dns_rows = || rows.iter().filter(|(k, _)| k.kind == ProbeKind::Dns);
        let pair_labels = |k: &PairKey| {
            let mut l = format!(
                "src_zone=\"{}\",dst_zone=\"{}\"",
                esc(&k.src_zone),
                esc(&k.dst_zone)
            );
            if nodes {
                let _ = write!(
                    l,
                    ",src_node=\"{}\",dst_node=\"{}\"",
                    esc(&k.src_node),
                    esc(&k.dst_node)
                );
            }
            let _ = write!(l, ",type=\"{}\"", k.kind.label());
            l
        };
        let dns_labels = |k: &PairKey| {
            let mut l = format!("src_zone=\"{}\"", esc(&k.src_zone));
            if nodes {
                let _ = write!(l, ",src_node=\"{}\"", esc(&k.src_node));
            }
            let _ = write!(
                l,
                ",resolver=\"{}\",name=\"{}\"",
                esc(&k.dst_node),
                esc(&k.dns_name)
            );
            l
        };

        head(out, "podflow_probe_results_total");
        for (k, s) in peer_rows() {
            let l = pair_labels(k);
            for (res, v) in [
                ("ok", s.ok()),
                ("fail", s.failures),
                ("unavailable", s.unavailable),
            ] {
                let _ = writeln!(
                    out,
                    "podflow_probe_results_total{{{l},result=\"{res}\"}} {v}"
                );
            }
        }
        head(out, "podflow_probe_rtt_seconds");
        for (k, s) in peer_rows() {
            histogram(out, "podflow_probe_rtt_seconds", &pair_labels(k), s);
        }
        for (name, f) in [
            (
                "podflow_probe_packets_sent_total",
                (|s: &PairStats| s.sent) as fn(&PairStats) -> u64,
            ),
            ("podflow_probe_packets_lost_total", |s| s.lost),
            ("podflow_probe_packets_duplicate_total", |s| s.duplicates),
            ("podflow_probe_packets_late_total", |s| s.late),
        ] {
            head(out, name);
            for (k, s) in peer_rows() {
                let _ = writeln!(out, "{name}{{{}}} {}", pair_labels(k), f(s));
            }
        }
        head(out, "podflow_probe_timestamp_fallbacks_total");
        for (k, v) in &self.fallbacks {
            let _ = writeln!(
                out,
                "podflow_probe_timestamp_fallbacks_total{{type=\"{}\"}} {v}",
                k.label()
            );
        }
        head(out, "podflow_probe_dns_seconds");
        for (k, s) in dns_rows() {
            histogram(out, "podflow_probe_dns_seconds", &dns_labels(k), s);
        }
        head(out, "podflow_probe_dns_results_total");
        for (k, s) in dns_rows() {
            let l = dns_labels(k);
            for (res, v) in [("ok", s.ok()), ("fail", s.failures)] {
                let _ = writeln!(
                    out,
                    "podflow_probe_dns_results_total{{{l},result=\"{res}\"}} {v}"
                );
            }
        }
        head(out, "podflow_probe_node_labels");
        let _ = writeln!(out, "podflow_probe_node_labels {}", u8::from(nodes));
        head(out, "podflow_probe_series_dropped_total");
        let _ = writeln!(out, "podflow_probe_series_dropped_total {}", self.dropped);
        if let Some(r) = responder {
            for (name, f) in [
                (
                    "podflow_probe_responder_received_total",
                    (|k: &crate::responder::KindStats| k.received)
                        as fn(&crate::responder::KindStats) -> u64,
                ),
                ("podflow_probe_responder_answered_total", |k| k.answered),
                ("podflow_probe_responder_malformed_total", |k| k.malformed),
                ("podflow_probe_responder_dropped_total", |k| k.dropped),
            ] {
                head(out, name);
                for (kind, k) in [("udp", &r.udp), ("tcp", &r.tcp), ("http", &r.http)] {
                    let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", f(k));
                }
            }
        }
        if let Some(m) = runner {
            for (name, v) in [
                ("podflow_probe_peers", m.peers),
                ("podflow_probe_results_dropped_total", m.results_dropped),
                ("podflow_probe_rounds_overrun_total", m.rounds_overrun),
            ] {
                head(out, name);
                let _ = writeln!(out, "{name} {v}");
            }
        }
        if let Some(prefix) = &self.cfg.kconmon_prefix {
            self.render_kconmon(out, prefix);
        }
    }

    fn render_kconmon(&self, out: &mut String, prefix: &str) {
        let head = |out: &mut String, name: &str| {
            if let Some(d) = KCONMON_METRICS.iter().find(|d| d.name == name) {
                let _ = writeln!(
                    out,
                    "# HELP {prefix}_{name} {}\n# TYPE {prefix}_{name} {}",
                    d.help, d.kind
                );
            }
        };
        let labels = |(s, d): &(String, String), p: &KconPair| {
            format!(
                "source=\"{}\",destination=\"{}\",source_zone=\"{}\",destination_zone=\"{}\"",
                esc(s),
                esc(d),
                esc(&p.zones.0),
                esc(&p.zones.1)
            )
        };
        // Both results are rendered from the first probe on, so `increase(...{result="fail"})`
        // sees the first failure (a series born at 1 shows no increase).
        for (name, pick) in [
            (
                "tcp_results_total",
                (|p: &KconPair| p.tcp) as fn(&KconPair) -> [u64; 2],
            ),
            ("udp_results_total", |p| p.udp),
        ] {
            head(out, name);
            for (k, p) in &self.kcon {
                let v = pick(p);
                if v == [0, 0] {
                    continue;
                }
                let l = labels(k, p);
                let _ = writeln!(out, "{prefix}_{name}{{{l},result=\"pass\"}} {}", v[0]);
                let _ = writeln!(out, "{prefix}_{name}{{{l},result=\"fail\"}} {}", v[1]);
            }
        }
        for (name, pick) in [
            (
                "tcp_connect_milliseconds",
                (|p: &KconPair| p.tcp_connect_ms) as fn(&KconPair) -> Option<f64>,
            ),
            ("tcp_duration_milliseconds", |p| p.tcp_duration_ms),
            ("udp_duration_milliseconds", |p| p.udp_last.map(|u| u.0)),
            ("udp_duration_variance_milliseconds", |p| {
                p.udp_last.map(|u| u.1)
            }),
            ("udp_loss", |p| p.udp_last.map(|u| u.2)),
        ] {
            head(out, name);
            for (k, p) in &self.kcon {
                if let Some(v) = pick(p) {
                    let _ = writeln!(out, "{prefix}_{name}{{{}}} {v}", labels(k, p));
                }
            }
        }
        head(out, "dns_results_total");
        for ((s, host), d) in &self.kcon_dns {
            let l = format!(
                "source=\"{}\",source_zone=\"{}\",host=\"{}\"",
                esc(s),
                esc(&d.zone),
                esc(host)
            );
            let _ = writeln!(
                out,
                "{prefix}_dns_results_total{{{l},result=\"pass\"}} {}",
                d.results[0]
            );
            let _ = writeln!(
                out,
                "{prefix}_dns_results_total{{{l},result=\"fail\"}} {}",
                d.results[1]
            );
        }
        head(out, "dns_duration_milliseconds");
        for ((s, host), d) in &self.kcon_dns {
            if let Some(v) = d.duration_ms {
                let l = format!(
                    "source=\"{}\",source_zone=\"{}\",host=\"{}\"",
                    esc(s),
                    esc(&d.zone),
                    esc(host)
                );
                let _ = writeln!(out, "{prefix}_dns_duration_milliseconds{{{l}}} {v}");
            }
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, s: &PairStats) {
    let mut cum = 0;
    for (i, le) in RTT_BUCKETS_S.iter().enumerate() {
        cum += s.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", s.rtt_count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", s.rtt_sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", s.rtt_count);
}

/// Escapes a label value (backslash, quote, newline).
fn esc(v: &str) -> String {
    if !v.contains(['\\', '"', '\n']) {
        return v.to_string();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(src: &str, dst: &str, kind: ProbeKind, ok: bool, rtts: &[u64]) -> ProbeResult {
        let mut r = ProbeResult::new(kind, (src, "z1"), (dst, "z2"), 0);
        r.outcome = if ok { Outcome::Ok } else { Outcome::Fail };
        r.sent = if kind.is_burst() { 5 } else { 1 };
        r.lost = r.sent - rtts.len() as u32;
        r.rtt_ns = rtts.to_vec();
        r
    }

    #[test]
    fn node_labels_then_zone_sums_past_the_limit() {
        let mut m = Metrics::new(MetricsConfig {
            node_label_max_pairs: 2,
            ..MetricsConfig::default()
        });
        m.observe(&res("a", "b", ProbeKind::Udp, true, &[1_000_000; 5]));
        m.observe(&res("a", "c", ProbeKind::Udp, false, &[2_000_000; 4]));
        let mut out = String::new();
        m.render(&mut out, None, None);
        assert!(out.contains(
            "podflow_probe_results_total{src_zone=\"z1\",dst_zone=\"z2\",src_node=\"a\",dst_node=\"b\",type=\"udp\",result=\"ok\"} 1"
        ));
        assert!(out.contains("podflow_probe_rtt_seconds_bucket{src_zone=\"z1\",dst_zone=\"z2\",src_node=\"a\",dst_node=\"c\",type=\"udp\",le=\"0.0025\"} 4"));
        assert!(out.contains("# TYPE podflow_probe_rtt_seconds histogram"));
        m.observe(&res("b", "c", ProbeKind::Udp, true, &[1_000_000; 5]));
        let mut out = String::new();
        m.render(&mut out, None, None);
        assert!(
            !out.contains("src_node="),
            "past the limit: zone pairs only"
        );
        assert!(out.contains(
            "podflow_probe_packets_lost_total{src_zone=\"z1\",dst_zone=\"z2\",type=\"udp\"} 1"
        ));
        assert!(out.contains("podflow_probe_node_labels 0"));
        // A peer leaves: its node rows go, the zone sums stay as they were.
        m.retain_nodes(&["a".to_string(), "b".to_string()].into());
        assert_eq!(m.node_pairs(), 1);
        let mut out = String::new();
        m.render(&mut out, None, None);
        assert!(out.contains("src_node=\"a\",dst_node=\"b\""));
        assert!(!out.contains("dst_node=\"c\""));
    }

    #[test]
    fn every_rendered_family_is_declared() {
        let mut m = Metrics::new(MetricsConfig {
            kconmon_prefix: Some("kconmon".into()),
            ..MetricsConfig::default()
        });
        for k in [
            ProbeKind::Udp,
            ProbeKind::Tcp,
            ProbeKind::Http,
            ProbeKind::Icmp,
        ] {
            m.observe(&res("a", "b", k, true, &[1_000]));
        }
        let mut d = res("a", "10.96.0.10:53", ProbeKind::Dns, true, &[3_000_000]);
        d.dns_name = "kubernetes.default".into();
        m.observe(&d);
        let mut out = String::new();
        m.render(
            &mut out,
            Some(&ResponderStats::default()),
            Some(&RunnerStats::default()),
        );
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            let known = METRICS.iter().any(|d| d.name == name || d.name == base)
                || KCONMON_METRICS
                    .iter()
                    .any(|d| format!("kconmon_{}", d.name) == name);
            assert!(known, "undeclared family in: {line}");
        }
        assert!(out.contains("kconmon_tcp_results_total{source=\"a\",destination=\"b\",source_zone=\"z1\",destination_zone=\"z2\",result=\"fail\"} 0"));
        assert!(out.contains("kconmon_dns_results_total{source=\"a\",source_zone=\"z1\",host=\"kubernetes.default\",result=\"pass\"} 1"));
        assert!(out.contains("podflow_probe_dns_seconds_count{src_zone=\"z1\",src_node=\"a\",resolver=\"10.96.0.10:53\",name=\"kubernetes.default\"} 1"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(esc("node-1"), "node-1");
    }
}

#[cfg(test)]
mod docs {
    /// docs/metrics.md's probe table, rendered from [`super::METRICS`].
    fn table() -> String {
        let mut out =
            String::from("| probe metric | type | labels | meaning |\n|---|---|---|---|\n");
        for m in super::METRICS {
            let labels = if m.labels.is_empty() {
                "—".to_string()
            } else {
                m.labels.join(", ")
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                m.name, m.kind, labels, m.help
            ));
        }
        out
    }

    /// docs/metrics.md lists exactly the probe metrics (`UPDATE_DOCS=1 cargo test -p
    /// podflow-probe docs` rewrites the table, or appends it with its heading).
    #[test]
    fn every_probe_metric_is_documented() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
        let doc = std::fs::read_to_string(path).expect("docs/metrics.md");
        let want = table();
        let found = doc.find("| probe metric | type |").map(|start| {
            let end = doc[start..]
                .find("\n\n")
                .map_or(doc.len(), |e| start + e + 1);
            (start, end)
        });
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let new = match found {
                Some((start, end)) => format!("{}{}{}", &doc[..start], want, &doc[end..]),
                None => format!(
                    "{}\n## Probe metrics\n\nThe agent's with `--probes` (docs/probes.md); pair labels follow `--probe-node-label-pairs`.\n\n{want}",
                    doc.trim_end()
                ),
            };
            std::fs::write(path, new).expect("write docs/metrics.md");
            return;
        }
        let (start, end) = found.expect("docs/metrics.md has no probe table: run UPDATE_DOCS=1 cargo test -p podflow-probe docs");
        assert!(
            doc[start..end] == want,
            "docs/metrics.md's probe table and METRICS differ: run UPDATE_DOCS=1 cargo test -p podflow-probe docs"
        );
    }
}
