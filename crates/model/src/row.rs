use std::net::IpAddr;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{FlowLabels, Oriented, Protocol};

/// What flows are summed by within an interval: ephemeral client ports are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowKey {
    /// IP protocol.
    pub proto: Protocol,
    /// The local end.
    pub local: IpAddr,
    /// The remote end actually talked to.
    pub remote: IpAddr,
    /// The responder's port.
    pub responder_port: u16,
    /// Whether the local end started the connections.
    pub local_initiated: bool,
    /// The dialled address when DNAT changed it (a Service).
    pub service: Option<(IpAddr, u16)>,
}

impl FlowKey {
    /// The key of an oriented observation.
    pub fn of(proto: Protocol, o: &Oriented) -> FlowKey {
        FlowKey {
            proto,
            local: o.local,
            remote: o.remote,
            responder_port: o.responder_port,
            local_initiated: o.local_initiated,
            service: o.service,
        }
    }
}

/// Summed traffic of one key over one interval, seen from the local end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTotals {
    /// Bytes local → remote (L3).
    pub bytes_out: u64,
    /// Packets local → remote.
    pub packets_out: u64,
    /// Bytes remote → local (L3).
    pub bytes_in: u64,
    /// Packets remote → local.
    pub packets_in: u64,
    /// Connections that started.
    pub opened: u64,
    /// Connections that ended.
    pub closed: u64,
}

impl FlowTotals {
    /// Adds an oriented observation's traffic and its (opened, closed) connections.
    pub fn add(&mut self, o: &Oriented, (opened, closed): (u64, u64)) {
        self.bytes_out += o.out.bytes;
        self.packets_out += o.out.packets;
        self.bytes_in += o.inbound.bytes;
        self.packets_in += o.inbound.packets;
        self.opened += opened;
        self.closed += closed;
    }

    /// Adds another total.
    pub fn merge(&mut self, other: &FlowTotals) {
        self.bytes_out += other.bytes_out;
        self.packets_out += other.packets_out;
        self.bytes_in += other.bytes_in;
        self.packets_in += other.packets_in;
        self.opened += other.opened;
        self.closed += other.closed;
    }

    /// The six counters in their stored column order: bytes out, packets out, bytes in,
    /// packets in, connections opened, connections closed.
    pub fn columns(&self) -> [u64; 6] {
        [
            self.bytes_out,
            self.packets_out,
            self.bytes_in,
            self.packets_in,
            self.opened,
            self.closed,
        ]
    }

    /// Totals from the six counters in [`FlowTotals::columns`] order.
    pub fn from_columns(c: [u64; 6]) -> FlowTotals {
        let [bytes_out, packets_out, bytes_in, packets_in, opened, closed] = c;
        FlowTotals {
            bytes_out,
            packets_out,
            bytes_in,
            packets_in,
            opened,
            closed,
        }
    }

    /// Bytes in both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes_out + self.bytes_in
    }
}

/// One stored row: a key's totals over one interval, from one observer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowRow {
    /// Interval start, seconds since the Unix epoch.
    pub interval_start: i64,
    /// Interval length in seconds.
    pub interval_s: u32,
    /// The node (or exporter) that saw the traffic.
    pub observer: String,
    /// What the row is summed by.
    pub key: FlowKey,
    /// The sums.
    pub totals: FlowTotals,
    /// Who the ends are (from the first observation of the key in the interval).
    pub labels: Arc<FlowLabels>,
    /// Price of the bytes, USD.
    pub cost_usd: f64,
}
