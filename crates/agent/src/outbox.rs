//! The outbox: the buffer of unacknowledged batches with the signal that more arrived.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use podflow_role::AgentStats;
use tokio::sync::Notify;

use crate::buffer::Buffer;

/// The batches waiting for an ack, shared by the producer, the sender and the metrics.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) buffer: Mutex<Buffer>,
    pub(crate) more: Notify,
    pub(crate) stats: Arc<AgentStats>,
    /// The probes, when on (the server's peer sets go there).
    pub(crate) probes: Option<crate::probes::Probes>,
    /// This node's name.
    pub(crate) node: String,
}

impl Outbox {
    /// Publishes the buffer's state in the agent's metrics.
    pub(crate) fn publish(&self, b: &Buffer) {
        self.stats.buffered.store(b.len() as u64, Relaxed);
        self.stats
            .buffered_mem_bytes
            .store(b.mem_bytes() as u64, Relaxed);
        self.stats
            .buffered_spill_bytes
            .store(b.disk_bytes(), Relaxed);
        let c = b.counts;
        self.stats.dropped.store(c.dropped, Relaxed);
        self.stats.disk_errors.store(c.disk_errors, Relaxed);
        self.stats.torn.store(c.torn, Relaxed);
        self.stats.compactions.store(c.compactions, Relaxed);
    }
}
