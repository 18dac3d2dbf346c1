//! Per-node rate limits on what agents send: a bucket of bytes per node, refilled at the
//! configured rate. A batch beyond it is not refused: its stream waits (HTTP/2 flow
//! control then holds the agent, which keeps its batches), so a node replaying a long
//! outage, or one whose credentials were stolen, cannot take more than its share of the
//! server while every other node goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Nodes with a bucket of their own; beyond this, idle buckets are dropped and, if
/// every one is busy, new nodes share one bucket (bounded whatever the callers send).
pub(crate) const MAX_BUCKETS: usize = 10_000;

/// How many seconds of the rate a node may send at once after being idle.
const BURST_S: f64 = 4.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Bytes that may be sent now; negative: owed (the sender waits it off).
    tokens: f64,
    at: Instant,
}

/// The buckets of every node.
#[derive(Debug)]
pub(crate) struct NodeRates {
    /// Bytes per second per node.
    rate: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

/// The key of the bucket nodes share when [`MAX_BUCKETS`] are busy.
const SHARED: &str = "";

impl NodeRates {
    /// Buckets refilled at `bytes_per_s` (burst: [`BURST_S`] seconds of it).
    pub(crate) fn new(bytes_per_s: u64) -> NodeRates {
        NodeRates {
            rate: bytes_per_s.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn burst(&self) -> f64 {
        self.rate * BURST_S
    }

    /// Takes `bytes` from `node`'s bucket at `now`; returns how long its stream must wait
    /// before sending them (zero while the node is within its rate).
    pub(crate) fn take(&self, node: &str, bytes: u64, now: Instant) -> Duration {
        let (rate, burst) = (self.rate, self.burst());
        let Ok(mut buckets) = self.buckets.lock() else {
            return Duration::ZERO;
        };
        if !buckets.contains_key(node) && buckets.len() >= MAX_BUCKETS {
            // Buckets that refilled to the brim since are the same as new ones: drop them.
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let key = if buckets.contains_key(node) || buckets.len() < MAX_BUCKETS {
            node
        } else {
            SHARED
        };
        let b = buckets.entry(Arc::from(key)).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled = b.tokens + rate * now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = refilled.min(burst) - bytes as f64;
        b.at = now;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }

    /// Buckets held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_node_within_its_rate_never_waits_beyond_it_waits_what_it_owes() {
        let r = NodeRates::new(MIB);
        let t0 = Instant::now();
        // 4 s of burst: 4 MiB at once, then each further MiB costs a second.
        assert_eq!(r.take("a", 4 * MIB, t0), Duration::ZERO);
        assert_eq!(r.take("a", MIB, t0), Duration::from_secs(1));
        assert_eq!(r.take("a", MIB, t0), Duration::from_secs(2));
        // Another node has its own bucket.
        assert_eq!(r.take("b", MIB, t0), Duration::ZERO);
        // Three seconds later a has paid its 2 MiB debt and gained 1 MiB.
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(r.take("a", MIB, t3), Duration::ZERO);
        assert_eq!(r.take("a", MIB, t3), Duration::from_secs(1));
        // Idle for long: the bucket is full again but never more than the burst.
        let t100 = t0 + Duration::from_secs(100);
        assert_eq!(r.take("a", 4 * MIB, t100), Duration::ZERO);
        assert_eq!(r.take("a", MIB, t100), Duration::from_secs(1));
    }

    #[test]
    fn the_buckets_stay_bounded_busy_newcomers_share_one() {
        let r = NodeRates::new(MIB);
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS {
            // Busy: each owes nothing yet but has spent part of its burst.
            r.take(&format!("n{i}"), MIB, t0);
        }
        assert_eq!(r.len(), MAX_BUCKETS);
        // Newcomers while every bucket is busy share one.
        assert_eq!(r.take("x", 4 * MIB, t0), Duration::ZERO);
        assert_eq!(
            r.take("y", MIB, t0),
            Duration::from_secs(1),
            "y pays x's use"
        );
        assert!(r.len() <= MAX_BUCKETS + 1);
        // Once the busy buckets refilled, a newcomer gets a bucket of its own.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(r.take("z", 4 * MIB, later), Duration::ZERO);
        assert!(r.len() <= 3, "refilled buckets were dropped: {}", r.len());
    }
}
