//! A small NetFlow v5/v9/IPFIX encoder for tests, benchmarks, fuzz seeds and demos.
//!
//! It writes what it is told (no validation), so tests can also build broken packets.

use std::net::{IpAddr, Ipv4Addr};

/// Field length announcing an IPFIX variable-length field.
pub const VARLEN: u16 = 0xFFFF;

/// One template field: information element id, length, optional enterprise number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ie {
    /// Element id (without the enterprise bit).
    pub id: u16,
    /// Length in bytes, or [`VARLEN`].
    pub len: u16,
    /// Enterprise number for enterprise-specific elements (IPFIX only).
    pub enterprise: Option<u32>,
}

/// A standard element of `len` bytes.
pub const fn ie(id: u16, len: u16) -> Ie {
    Ie {
        id,
        len,
        enterprise: None,
    }
}

/// A value to write into a field of a data record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// An unsigned integer, written big-endian in the field's length.
    U(u64),
    /// An address (4 or 16 bytes).
    Ip(IpAddr),
    /// Raw bytes (variable-length fields get their length prefix).
    Bytes(Vec<u8>),
}

/// The typical 18-field IPv4 template of NetFlow v9 exporters (times as sysUptime ms).
pub const V9_IPV4_18: [Ie; 18] = [
    ie(8, 4),  // sourceIPv4Address
    ie(12, 4), // destinationIPv4Address
    ie(15, 4), // ipNextHopIPv4Address
    ie(10, 4), // ingressInterface
    ie(14, 4), // egressInterface
    ie(2, 4),  // packetDeltaCount
    ie(1, 4),  // octetDeltaCount
    ie(22, 4), // flowStartSysUpTime
    ie(21, 4), // flowEndSysUpTime
    ie(7, 2),  // sourceTransportPort
    ie(11, 2), // destinationTransportPort
    ie(6, 1),  // tcpControlBits
    ie(4, 1),  // protocolIdentifier
    ie(5, 1),  // ipClassOfService
    ie(16, 4), // bgpSourceAsNumber
    ie(17, 4), // bgpDestinationAsNumber
    ie(9, 1),  // sourceIPv4PrefixLength
    ie(13, 1), // destinationIPv4PrefixLength
];

/// The same 18 fields for IPFIX, with 8-byte counters and absolute milliseconds.
pub const IPFIX_IPV4_18: [Ie; 18] = [
    ie(8, 4),
    ie(12, 4),
    ie(15, 4),
    ie(10, 4),
    ie(14, 4),
    ie(2, 8),   // packetDeltaCount
    ie(1, 8),   // octetDeltaCount
    ie(152, 8), // flowStartMilliseconds
    ie(153, 8), // flowEndMilliseconds
    ie(7, 2),
    ie(11, 2),
    ie(6, 1),
    ie(4, 1),
    ie(5, 1),
    ie(16, 4),
    ie(17, 4),
    ie(9, 1),
    ie(13, 1),
];

/// Builds one NetFlow v9 or IPFIX message set by set.
#[derive(Clone, Debug)]
pub struct Message {
    ipfix: bool,
    header: [u32; 4],
    sets: Vec<u8>,
    records: u16,
}

impl Message {
    /// A v9 packet header: sysUptime (ms), unix secs, sequence, source id.
    pub fn v9(sys_uptime: u32, unix_secs: u32, seq: u32, source_id: u32) -> Self {
        Message {
            ipfix: false,
            header: [sys_uptime, unix_secs, seq, source_id],
            sets: Vec::new(),
            records: 0,
        }
    }

    /// An IPFIX message header: export time (s), sequence, observation domain.
    pub fn ipfix(export_secs: u32, seq: u32, domain: u32) -> Self {
        Message {
            ipfix: true,
            header: [export_secs, seq, domain, 0],
            sets: Vec::new(),
            records: 0,
        }
    }

    fn push_fields(body: &mut Vec<u8>, fields: &[Ie]) {
        for f in fields {
            let id = if f.enterprise.is_some() {
                f.id | 0x8000
            } else {
                f.id
            };
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&f.len.to_be_bytes());
            if let Some(e) = f.enterprise {
                body.extend_from_slice(&e.to_be_bytes());
            }
        }
    }

    /// Appends a set with the given id and body (length filled in).
    pub fn raw_set(&mut self, set_id: u16, body: &[u8]) -> &mut Self {
        self.sets.extend_from_slice(&set_id.to_be_bytes());
        self.sets
            .extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        self.sets.extend_from_slice(body);
        self
    }

    /// Appends a template set with one template.
    pub fn template(&mut self, id: u16, fields: &[Ie]) -> &mut Self {
        let mut b = Vec::new();
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        Self::push_fields(&mut b, fields);
        self.records += 1;
        self.raw_set(if self.ipfix { 2 } else { 0 }, &b)
    }

    /// Appends an options template set with one options template.
    pub fn options_template(&mut self, id: u16, scope: &[Ie], fields: &[Ie]) -> &mut Self {
        let mut b = Vec::new();
        b.extend_from_slice(&id.to_be_bytes());
        if self.ipfix {
            b.extend_from_slice(&((scope.len() + fields.len()) as u16).to_be_bytes());
            b.extend_from_slice(&(scope.len() as u16).to_be_bytes());
        } else {
            b.extend_from_slice(&((scope.len() * 4) as u16).to_be_bytes());
            b.extend_from_slice(&((fields.len() * 4) as u16).to_be_bytes());
        }
        Self::push_fields(&mut b, scope);
        Self::push_fields(&mut b, fields);
        // v9 options template sets are padded to 4 bytes.
        while !self.ipfix && b.len() % 4 != 0 {
            b.push(0);
        }
        self.records += 1;
        self.raw_set(if self.ipfix { 3 } else { 1 }, &b)
    }

    /// Appends an IPFIX template withdrawal (id 2 / 3 withdraws all of a kind).
    pub fn withdraw(&mut self, id: u16, options: bool) -> &mut Self {
        let mut b = id.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        self.raw_set(if options { 3 } else { 2 }, &b)
    }

    /// Appends a data set of `records` laid out by `fields`.
    pub fn data(&mut self, id: u16, fields: &[Ie], records: &[Vec<Value>]) -> &mut Self {
        let mut b = Vec::new();
        for r in records {
            for (f, v) in fields.iter().zip(r) {
                write_value(&mut b, f.len, v);
            }
        }
        self.records = self.records.wrapping_add(records.len() as u16);
        self.raw_set(id, &b)
    }

    /// The finished datagram.
    pub fn build(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(20 + self.sets.len());
        if self.ipfix {
            m.extend_from_slice(&10u16.to_be_bytes());
            m.extend_from_slice(&((16 + self.sets.len()) as u16).to_be_bytes());
            for h in &self.header[..3] {
                m.extend_from_slice(&h.to_be_bytes());
            }
        } else {
            m.extend_from_slice(&9u16.to_be_bytes());
            m.extend_from_slice(&self.records.to_be_bytes());
            for h in &self.header {
                m.extend_from_slice(&h.to_be_bytes());
            }
        }
        m.extend_from_slice(&self.sets);
        m
    }
}

/// Writes `v` as a field of `len` bytes (or with a length prefix for [`VARLEN`]).
pub fn write_value(b: &mut Vec<u8>, len: u16, v: &Value) {
    match v {
        Value::U(x) => {
            let n = usize::from(len).min(8);
            b.extend_from_slice(&x.to_be_bytes()[8 - n..]);
            b.extend(std::iter::repeat_n(0, usize::from(len).saturating_sub(8)));
        }
        Value::Ip(IpAddr::V4(a)) => b.extend_from_slice(&a.octets()),
        Value::Ip(IpAddr::V6(a)) => b.extend_from_slice(&a.octets()),
        Value::Bytes(x) if len == VARLEN => {
            if x.len() < 255 {
                b.push(x.len() as u8);
            } else {
                b.push(255);
                b.extend_from_slice(&(x.len() as u16).to_be_bytes());
            }
            b.extend_from_slice(x);
        }
        Value::Bytes(x) => {
            let n = usize::from(len);
            b.extend(x.iter().copied().chain(std::iter::repeat(0)).take(n));
        }
    }
}

/// A NetFlow v5 header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V5Header {
    /// Milliseconds since the exporter booted.
    pub sys_uptime: u32,
    /// Export time, seconds.
    pub unix_secs: u32,
    /// Export time, residual nanoseconds.
    pub unix_nsecs: u32,
    /// Flows exported before this packet.
    pub flow_sequence: u32,
    /// Engine type.
    pub engine_type: u8,
    /// Engine id.
    pub engine_id: u8,
    /// Mode (top 2 bits) and interval (low 14 bits).
    pub sampling: u16,
}

/// A NetFlow v5 flow record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V5Flow {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Input ifindex.
    pub input: u16,
    /// Output ifindex.
    pub output: u16,
    /// Packets.
    pub packets: u32,
    /// Bytes.
    pub bytes: u32,
    /// sysUptime at the first packet.
    pub first: u32,
    /// sysUptime at the last packet.
    pub last: u32,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Cumulative TCP flags.
    pub tcp_flags: u8,
    /// IP protocol.
    pub proto: u8,
}

/// Encodes a NetFlow v5 datagram.
pub fn v5(h: &V5Header, flows: &[V5Flow]) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + 48 * flows.len());
    b.extend_from_slice(&5u16.to_be_bytes());
    b.extend_from_slice(&(flows.len() as u16).to_be_bytes());
    for v in [h.sys_uptime, h.unix_secs, h.unix_nsecs, h.flow_sequence] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.push(h.engine_type);
    b.push(h.engine_id);
    b.extend_from_slice(&h.sampling.to_be_bytes());
    for f in flows {
        b.extend_from_slice(&f.src.octets());
        b.extend_from_slice(&f.dst.octets());
        b.extend_from_slice(&[0; 4]); // nexthop
        b.extend_from_slice(&f.input.to_be_bytes());
        b.extend_from_slice(&f.output.to_be_bytes());
        for v in [f.packets, f.bytes, f.first, f.last] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&f.src_port.to_be_bytes());
        b.extend_from_slice(&f.dst_port.to_be_bytes());
        b.push(0); // pad1
        b.push(f.tcp_flags);
        b.push(f.proto);
        b.push(0); // tos
        b.extend_from_slice(&[0; 4]); // src_as, dst_as
        b.extend_from_slice(&[0; 2]); // src_mask, dst_mask
        b.extend_from_slice(&[0; 2]); // pad2
    }
    b
}
