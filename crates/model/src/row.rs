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
    /// Whether the ends are full addresses or networks (rows summed per network).
    pub prefixes: Prefixes,
}

/// How much of each end's address a key keeps: `None` is the full address, a length
/// the network of that many leading bits. Flows with no end in the cluster are summed
/// per network (docs/netflow.md, "Traffic with no end in the cluster").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prefixes {
    /// The local end's network length, `None` for the full address.
    pub local: Option<u8>,
    /// The remote end's.
    pub remote: Option<u8>,
}

/// The length of a full address: 32 (IPv4) or 128 (IPv6).
pub fn full_prefix_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `Some(len)` for a network of `ip`'s family, `None` when `len` keeps the whole address.
pub fn network_len(ip: IpAddr, len: u8) -> Option<u8> {
    (len < full_prefix_len(ip)).then_some(len)
}

fn end_text(ip: IpAddr, len: Option<u8>) -> String {
    match len {
        Some(l) => format!("{ip}/{l}"),
        None => ip.to_string(),
    }
}

impl FlowKey {
    /// The key of an oriented observation (full addresses).
    pub fn of(proto: Protocol, o: &Oriented) -> FlowKey {
        FlowKey {
            proto,
            local: o.local,
            remote: o.remote,
            responder_port: o.responder_port,
            local_initiated: o.local_initiated,
            service: o.service,
            prefixes: Prefixes::default(),
        }
    }

    /// The local end's prefix length as stored: 32 or 128 for a full address.
    pub fn local_prefix_len(&self) -> u8 {
        self.prefixes
            .local
            .unwrap_or_else(|| full_prefix_len(self.local))
    }

    /// The remote end's.
    pub fn remote_prefix_len(&self) -> u8 {
        self.prefixes
            .remote
            .unwrap_or_else(|| full_prefix_len(self.remote))
    }

    /// The local end as text: the address, or `address/length` for a network.
    pub fn local_text(&self) -> String {
        end_text(self.local, self.prefixes.local)
    }

    /// The remote end as text.
    pub fn remote_text(&self) -> String {
        end_text(self.remote, self.prefixes.remote)
    }

    /// The key with the stored prefix lengths (a length of a full address is `None`).
    pub fn with_prefix_lens(mut self, local: u8, remote: u8) -> FlowKey {
        self.prefixes = Prefixes {
            local: network_len(self.local, local),
            remote: network_len(self.remote, remote),
        };
        self
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

/// The most bytes one row may carry in one direction over one interval: 2^40 (1 TiB),
/// far above what any interface carries in an interval (400 Gbit/s for 10 s is 2^39).
/// Observations that would pass it are rejected and counted, so a stored counter never
/// comes near 2^63 and sums over any range stay exact (docs/reliability.md).
pub const MAX_ROW_BYTES: u64 = 1 << 40;

/// The most packets one row may carry in one direction over one interval: 2^36.
pub const MAX_ROW_PACKETS: u64 = 1 << 36;

impl FlowTotals {
    /// Adds an oriented observation's traffic and its (opened, closed) connections
    /// (saturating: counters never wrap).
    pub fn add(&mut self, o: &Oriented, (opened, closed): (u64, u64)) {
        self.bytes_out = self.bytes_out.saturating_add(o.out.bytes);
        self.packets_out = self.packets_out.saturating_add(o.out.packets);
        self.bytes_in = self.bytes_in.saturating_add(o.inbound.bytes);
        self.packets_in = self.packets_in.saturating_add(o.inbound.packets);
        self.opened = self.opened.saturating_add(opened);
        self.closed = self.closed.saturating_add(closed);
    }

    /// Whether adding `o` keeps every counter within [`MAX_ROW_BYTES`] and
    /// [`MAX_ROW_PACKETS`].
    pub fn fits(&self, o: &Oriented) -> bool {
        let ok = |have: u64, add: u64, max: u64| have.checked_add(add).is_some_and(|v| v <= max);
        ok(self.bytes_out, o.out.bytes, MAX_ROW_BYTES)
            && ok(self.bytes_in, o.inbound.bytes, MAX_ROW_BYTES)
            && ok(self.packets_out, o.out.packets, MAX_ROW_PACKETS)
            && ok(self.packets_in, o.inbound.packets, MAX_ROW_PACKETS)
    }

    /// Adds another total (saturating).
    pub fn merge(&mut self, other: &FlowTotals) {
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.packets_out = self.packets_out.saturating_add(other.packets_out);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.packets_in = self.packets_in.saturating_add(other.packets_in);
        self.opened = self.opened.saturating_add(other.opened);
        self.closed = self.closed.saturating_add(other.closed);
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

    /// Bytes in both directions (saturating).
    pub fn bytes(&self) -> u64 {
        self.bytes_out.saturating_add(self.bytes_in)
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

/// An agent's part of a chunk: rows written as one unit under one token, the rows of
/// exactly the batches its parts name (docs/reliability.md, "Exactly once"). A chunk
/// written again with the same token is dropped by a store that deduplicates
/// (ClickHouse), so its rows count once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkId {
    /// The chunk's deduplication token: stable across retries and restarts.
    pub token: String,
    /// The agent whose batches these are; `None` for rows no agent replays (the
    /// server's own NetFlow listener, `podflow run`'s local source).
    pub agent: Option<String>,
    /// The agent's batches (sequence numbers, ascending) whose observations are in the
    /// chunk.
    pub seqs: Vec<u64>,
    /// The day of every row's interval (days since the Unix epoch: ClickHouse's
    /// partition), so one chunk is one part.
    pub day: i64,
}

/// What the store keeps about an agent: its durable mark, where it runs, when it was
/// last seen, and the chunks written (or being written) above its mark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentMark {
    /// The agent.
    pub agent: String,
    /// Every batch at or below this sequence number is durable.
    pub seq: u64,
    /// The node it runs on (its batches' observer).
    pub node: String,
    /// The latest observation time of its batches, Unix seconds.
    pub last_seen: i64,
    /// Chunks holding batches above `seq` whose rows may be in the store (an intent
    /// written before the rows): replays of those batches must be cut into the same
    /// chunk again, with the same token.
    pub pending: Vec<ChunkId>,
}
