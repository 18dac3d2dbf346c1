//! The agent <-> server gRPC schema (`proto/podflow.proto`) and conversions between its
//! messages and podflow's model.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use podflow_model::{Counters, Observation, Protocol, Tuple};

#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
mod generated {
    tonic::include_proto!("podflow.v1");
}

pub use generated::ingest_client::IngestClient;
pub use generated::ingest_server::{Ingest, IngestServer};
pub use generated::{
    Ack, Observation as PbObservation, ObservationBatch, Peer as PbPeer, PeerSet, ProbeStats,
    Tuple as PbTuple,
};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// A message field that does not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// An address is neither 4 nor 16 bytes.
    #[error(
        "batch {seq} from agent {agent}: observation {index}: {field} has {len} bytes, expected 4 or 16"
    )]
    Address {
        /// Agent.
        agent: String,
        /// Batch.
        seq: u64,
        /// Observation index in the batch.
        index: usize,
        /// Field name.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A value is out of range (ports > 65535, protocol > 255, ...).
    #[error(
        "batch {seq} from agent {agent}: observation {index}: {field} = {value} is out of range"
    )]
    Range {
        /// Agent.
        agent: String,
        /// Batch.
        seq: u64,
        /// Observation index in the batch.
        index: usize,
        /// Field name.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// A tuple is missing.
    #[error("batch {seq} from agent {agent}: observation {index}: no {field} tuple")]
    Missing {
        /// Agent.
        agent: String,
        /// Batch.
        seq: u64,
        /// Observation index in the batch.
        index: usize,
        /// Field name.
        field: &'static str,
    },
}

/// Address bytes.
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An address from 4 or 16 bytes.
pub fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

fn tuple_pb(t: &Tuple) -> PbTuple {
    PbTuple {
        src: ip_bytes(t.src),
        dst: ip_bytes(t.dst),
        src_port: u32::from(t.src_port),
        dst_port: u32::from(t.dst_port),
    }
}

/// An observation as a message.
pub fn observation_pb(o: &Observation) -> PbObservation {
    PbObservation {
        proto: u32::from(o.proto.0),
        orig: Some(tuple_pb(&o.orig)),
        reply: Some(tuple_pb(&o.reply)),
        orig_bytes: o.delta_orig.bytes,
        orig_packets: o.delta_orig.packets,
        reply_bytes: o.delta_reply.bytes,
        reply_packets: o.delta_reply.packets,
        opened: o.opened,
        closed: o.closed,
        start_ns: o.start_ns,
        stop_ns: o.stop_ns,
        conn_id: o.conn_id,
        zone: u32::from(o.zone),
        mark: o.mark,
        first_reply_ns: o.first_reply_ns,
    }
}

/// Where in a batch a conversion is happening, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// Agent id.
    pub agent: &'a str,
    /// Batch sequence number.
    pub seq: u64,
    /// Observation index.
    pub index: usize,
}

impl At<'_> {
    fn range(&self, field: &'static str, value: u64) -> ConvertError {
        ConvertError::Range {
            agent: self.agent.into(),
            seq: self.seq,
            index: self.index,
            field,
            value,
        }
    }
}

fn tuple_from(t: Option<&PbTuple>, field: &'static str, at: At<'_>) -> Result<Tuple, ConvertError> {
    let t = t.ok_or_else(|| ConvertError::Missing {
        agent: at.agent.into(),
        seq: at.seq,
        index: at.index,
        field,
    })?;
    let addr = |b: &[u8], f: &'static str| {
        ip_from(b).ok_or_else(|| ConvertError::Address {
            agent: at.agent.into(),
            seq: at.seq,
            index: at.index,
            field: f,
            len: b.len(),
        })
    };
    Ok(Tuple {
        src: addr(&t.src, "src")?,
        dst: addr(&t.dst, "dst")?,
        src_port: u16::try_from(t.src_port)
            .map_err(|_| at.range("src_port", u64::from(t.src_port)))?,
        dst_port: u16::try_from(t.dst_port)
            .map_err(|_| at.range("dst_port", u64::from(t.dst_port)))?,
    })
}

/// A message as an observation; errors name the agent, batch, observation and field.
pub fn observation_from(p: &PbObservation, at: At<'_>) -> Result<Observation, ConvertError> {
    Ok(Observation {
        proto: Protocol(u8::try_from(p.proto).map_err(|_| at.range("proto", u64::from(p.proto)))?),
        orig: tuple_from(p.orig.as_ref(), "orig", at)?,
        reply: tuple_from(p.reply.as_ref(), "reply", at)?,
        delta_orig: Counters {
            bytes: p.orig_bytes,
            packets: p.orig_packets,
        },
        delta_reply: Counters {
            bytes: p.reply_bytes,
            packets: p.reply_packets,
        },
        opened: p.opened,
        closed: p.closed,
        start_ns: p.start_ns,
        stop_ns: p.stop_ns,
        conn_id: p.conn_id,
        zone: u16::try_from(p.zone).map_err(|_| at.range("zone", u64::from(p.zone)))?,
        mark: p.mark,
        first_reply_ns: p.first_reply_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        ]
    }

    fn tuple() -> impl Strategy<Value = Tuple> {
        (ip(), ip(), any::<u16>(), any::<u16>()).prop_map(|(src, dst, src_port, dst_port)| Tuple {
            src,
            dst,
            src_port,
            dst_port,
        })
    }

    proptest! {
        #[test]
        fn observation_round_trips(orig in tuple(), reply in tuple(), n in any::<[u64; 5]>(), f in any::<(bool, bool, u8, u16, u32, u32, u64, u64)>()) {
            let o = Observation {
                proto: Protocol(f.2),
                orig,
                reply,
                delta_orig: Counters { bytes: n[0], packets: n[1] },
                delta_reply: Counters { bytes: n[2], packets: n[3] },
                opened: f.0,
                closed: f.1,
                start_ns: f.6,
                stop_ns: f.7,
                conn_id: f.4,
                zone: f.3,
                mark: f.5,
                first_reply_ns: n[4],
            };
            let back = observation_from(&observation_pb(&o), At { agent: "a", seq: 1, index: 0 });
            prop_assert_eq!(back, Ok(o));
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut p = observation_pb(&Observation::default());
        p.orig.as_mut().expect("orig").src = vec![1, 2, 3];
        let e = observation_from(
            &p,
            At {
                agent: "node-a",
                seq: 7,
                index: 3,
            },
        )
        .expect_err("3 bytes");
        assert_eq!(
            e.to_string(),
            "batch 7 from agent node-a: observation 3: src has 3 bytes, expected 4 or 16"
        );
        let mut p = observation_pb(&Observation::default());
        p.reply.as_mut().expect("reply").dst_port = 70000;
        let e = observation_from(
            &p,
            At {
                agent: "node-a",
                seq: 7,
                index: 0,
            },
        )
        .expect_err("port");
        assert!(e.to_string().contains("dst_port = 70000"));
    }

    /// `first_reply_ns` is field 15, a varint: old peers skip it, and an old agent's
    /// message (without it) reads as 0 = not measured.
    #[test]
    fn first_reply_is_a_new_field_old_peers_can_ignore() {
        use prost::Message;
        let old = observation_pb(&Observation::default()).encode_to_vec();
        assert!(!old.contains(&0x78), "unset: not on the wire");
        let back = PbObservation::decode(old.as_slice()).expect("decode");
        assert_eq!(back.first_reply_ns, 0);
        let o = Observation {
            first_reply_ns: 150_000_000,
            ..Default::default()
        };
        let new = observation_pb(&o).encode_to_vec();
        // Tag 15 << 3 | varint = 0x78, then 150_000_000 as a varint.
        let mut tail = vec![0x78];
        prost::encoding::encode_varint(150_000_000, &mut tail);
        assert!(new.ends_with(&tail), "{new:02x?}");
    }
}
