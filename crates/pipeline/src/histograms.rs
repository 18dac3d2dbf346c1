//! Per-Service connection histograms from conntrack's timestamps, for connections that
//! went through the Service (DNAT): their duration (start/stop of closed connections) and
//! their time to first reply (`--first-reply`). Bounded: at most [`MAX_SERVICES`]
//! Services get their own series per family, the rest share `other`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Bucket upper bounds of connection durations, seconds.
pub const DURATION_BOUNDS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// Bucket upper bounds of times to first reply, seconds: 100 µs to 10 s.
pub const FIRST_REPLY_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Services with their own series.
pub const MAX_SERVICES: usize = 500;

#[derive(Debug, Clone)]
struct Hist {
    /// One count per bound, then `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

/// One histogram family, per Service.
#[derive(Debug)]
pub struct ServiceHistogram {
    bounds: &'static [f64],
    series: BTreeMap<(String, String), Hist>,
}

impl ServiceHistogram {
    /// An empty family with these bucket bounds (ascending, seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        ServiceHistogram {
            bounds,
            series: BTreeMap::new(),
        }
    }

    /// Records one value of `secs` seconds for Service `namespace/name`.
    pub fn observe(&mut self, namespace: &str, name: &str, secs: f64) {
        let key = (namespace.to_string(), name.to_string());
        let key = if self.series.contains_key(&key) || self.series.len() < MAX_SERVICES {
            key
        } else {
            ("other".to_string(), "other".to_string())
        };
        let n = self.bounds.len();
        let h = self.series.entry(key).or_insert_with(|| Hist {
            counts: vec![0; n + 1],
            sum: 0.0,
        });
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(n);
        h.counts[i] += 1;
        h.sum += secs;
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Appends the family (HELP/TYPE written by the caller).
    pub fn render(&self, out: &mut String, name: &str) {
        for ((ns, svc), h) in &self.series {
            let mut cum = 0u64;
            for (b, c) in self.bounds.iter().zip(&h.counts) {
                cum += c;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{service_namespace=\"{ns}\",service=\"{svc}\",le=\"{b}\"}} {cum}"
                );
            }
            cum += h.counts[self.bounds.len()];
            let _ = writeln!(
                out,
                "{name}_bucket{{service_namespace=\"{ns}\",service=\"{svc}\",le=\"+Inf\"}} {cum}"
            );
            let _ = writeln!(
                out,
                "{name}_sum{{service_namespace=\"{ns}\",service=\"{svc}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "{name}_count{{service_namespace=\"{ns}\",service=\"{svc}\"}} {cum}"
            );
        }
    }
}

/// The per-Service families /metrics shows.
#[derive(Debug)]
pub struct ServiceHistograms {
    /// Duration of closed connections.
    pub duration: ServiceHistogram,
    /// Time from a connection's first packet to its first reply packet.
    pub first_reply: ServiceHistogram,
}

impl Default for ServiceHistograms {
    fn default() -> Self {
        ServiceHistograms {
            duration: ServiceHistogram::new(&DURATION_BOUNDS),
            first_reply: ServiceHistogram::new(&FIRST_REPLY_BOUNDS),
        }
    }
}

impl ServiceHistograms {
    /// Records what `o`, an observation through Service `namespace/name`, says: its
    /// duration when it closed with both timestamps, its first reply when measured.
    pub fn observe(&mut self, namespace: &str, name: &str, o: &podflow_model::Observation) {
        if o.closed && o.start_ns > 0 && o.stop_ns >= o.start_ns {
            self.duration
                .observe(namespace, name, (o.stop_ns - o.start_ns) as f64 / 1e9);
        }
        if o.first_reply_ns > 0 {
            self.first_reply
                .observe(namespace, name, o.first_reply_ns as f64 / 1e9);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_services_bounded() {
        let mut d = ServiceHistogram::new(&DURATION_BOUNDS);
        d.observe("shop", "db", 0.003);
        d.observe("shop", "db", 0.2);
        d.observe("shop", "db", 500.0);
        let mut out = String::new();
        d.render(&mut out, "h");
        assert!(out.contains("h_bucket{service_namespace=\"shop\",service=\"db\",le=\"0.001\"} 0"));
        assert!(out.contains("h_bucket{service_namespace=\"shop\",service=\"db\",le=\"0.005\"} 1"));
        assert!(out.contains("h_bucket{service_namespace=\"shop\",service=\"db\",le=\"0.25\"} 2"));
        assert!(out.contains("h_bucket{service_namespace=\"shop\",service=\"db\",le=\"+Inf\"} 3"));
        assert!(out.contains("h_count{service_namespace=\"shop\",service=\"db\"} 3"));
        for i in 0..(MAX_SERVICES + 10) {
            d.observe("ns", &format!("s{i}"), 1.0);
        }
        assert_eq!(d.len(), MAX_SERVICES + 1, "the rest share `other`");
    }

    #[test]
    fn an_observation_feeds_duration_when_closed_and_first_reply_when_measured() {
        let mut h = ServiceHistograms::default();
        let open = podflow_model::Observation {
            start_ns: 1_000_000_000,
            first_reply_ns: 150_000_000,
            ..Default::default()
        };
        h.observe("shop", "db", &open);
        let closed = podflow_model::Observation {
            closed: true,
            start_ns: 1_000_000_000,
            stop_ns: 3_000_000_000,
            ..Default::default()
        };
        h.observe("shop", "db", &closed);
        let (mut d, mut f) = (String::new(), String::new());
        h.duration.render(&mut d, "d");
        h.first_reply.render(&mut f, "f");
        assert!(d.contains("d_count{service_namespace=\"shop\",service=\"db\"} 1"));
        assert!(d.contains("d_sum{service_namespace=\"shop\",service=\"db\"} 2"));
        assert!(f.contains("f_bucket{service_namespace=\"shop\",service=\"db\",le=\"0.1\"} 0"));
        assert!(f.contains("f_bucket{service_namespace=\"shop\",service=\"db\",le=\"0.25\"} 1"));
        assert!(f.contains("f_bucket{service_namespace=\"shop\",service=\"db\",le=\"0.0001\"} 0"));
        assert!(f.contains("f_count{service_namespace=\"shop\",service=\"db\"} 1"));
    }
}
