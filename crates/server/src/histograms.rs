//! Connection duration histograms per Service, from conntrack's start/stop timestamps of
//! closed connections that went through the Service (DNAT). Bounded: at most
//! [`MAX_SERVICES`] Services get their own series, the rest share `other`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Bucket upper bounds, seconds.
pub const BOUNDS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// Services with their own series.
pub const MAX_SERVICES: usize = 500;

#[derive(Debug, Default, Clone)]
struct Hist {
    counts: [u64; BOUNDS.len() + 1],
    sum: f64,
}

/// Per-Service histograms.
#[derive(Debug, Default)]
pub struct ServiceDurations {
    series: BTreeMap<(String, String), Hist>,
}

impl ServiceDurations {
    /// Records one connection of `secs` seconds to Service `namespace/name`.
    pub fn observe(&mut self, namespace: &str, name: &str, secs: f64) {
        let key = (namespace.to_string(), name.to_string());
        let key = if self.series.contains_key(&key) || self.series.len() < MAX_SERVICES {
            key
        } else {
            ("other".to_string(), "other".to_string())
        };
        let h = self.series.entry(key).or_default();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
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
            for (i, b) in BOUNDS.iter().enumerate() {
                cum += h.counts[i];
                let _ = writeln!(
                    out,
                    "{name}_bucket{{service_namespace=\"{ns}\",service=\"{svc}\",le=\"{b}\"}} {cum}"
                );
            }
            cum += h.counts[BOUNDS.len()];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_services_bounded() {
        let mut d = ServiceDurations::default();
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
}
