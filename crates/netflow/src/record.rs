//! The decoded flow record and its conversion to a podflow observation.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use podflow_model::{Counters, Observation, Protocol, Tuple};

use crate::error::Version;

/// TCP FIN flag.
pub const TCP_FIN: u16 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u16 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u16 = 0x04;

/// The direction a flow was metered in (IPFIX flowDirection, v9 DIRECTION).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Metered on ingress (0).
    Ingress,
    /// Metered on egress (1).
    Egress,
}

/// One decoded flow record, counters already scaled by the sampling rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// Protocol version of the datagram it came in.
    pub version: Version,
    /// The exporter (the datagram's source address).
    pub exporter: SocketAddr,
    /// Observation domain (IPFIX), source id (v9) or engine type << 8 | engine id (v5).
    pub domain: u32,
    /// IP protocol.
    pub proto: Protocol,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (ICMP: 0).
    pub src_port: u16,
    /// Destination port (ICMP: type << 8 | code).
    pub dst_port: u16,
    /// Bytes, multiplied by `sampling_rate`.
    pub bytes: u64,
    /// Packets, multiplied by `sampling_rate`.
    pub packets: u64,
    /// Bytes as exported.
    pub raw_bytes: u64,
    /// Packets as exported.
    pub raw_packets: u64,
    /// The 1-in-N sampling rate applied (1 = unsampled).
    pub sampling_rate: u32,
    /// Flow start, ns since the Unix epoch (0 = unknown).
    pub start_ns: u64,
    /// Flow end, ns since the Unix epoch (0 = unknown).
    pub end_ns: u64,
    /// Cumulative TCP flags (0 when absent).
    pub tcp_flags: u16,
    /// Input interface index (0 when absent).
    pub in_if: u32,
    /// Output interface index (0 when absent).
    pub out_if: u32,
    /// Metering direction when the record carries one.
    pub direction: Option<Direction>,
    /// IPFIX flowEndReason when present (1 idle, 2 active, 3 end detected, 4 forced, 5 lack of resources).
    pub end_reason: Option<u8>,
}

impl Default for FlowRecord {
    fn default() -> Self {
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        FlowRecord {
            version: Version::Ipfix,
            exporter: SocketAddr::new(unspecified, 0),
            domain: 0,
            proto: Protocol(0),
            src: unspecified,
            dst: unspecified,
            src_port: 0,
            dst_port: 0,
            bytes: 0,
            packets: 0,
            raw_bytes: 0,
            raw_packets: 0,
            sampling_rate: 1,
            start_ns: 0,
            end_ns: 0,
            tcp_flags: 0,
            in_if: 0,
            out_if: 0,
            direction: None,
            end_reason: None,
        }
    }
}

impl FlowRecord {
    /// Whether the record says the flow ended: a TCP FIN or RST was seen, or the
    /// meter reports an idle timeout or a detected end (flowEndReason 1 or 3).
    ///
    /// Active timeouts (2), forced ends (4) and lack of resources (5) only cut a
    /// long flow into records; the connection goes on.
    pub fn ended(&self) -> bool {
        closed(self.proto, self.tcp_flags, self.end_reason)
    }

    /// Whether the record says the flow started in it (a TCP SYN was seen).
    pub fn started(&self) -> bool {
        opened(self.proto, self.tcp_flags)
    }

    /// What of the record an observation needs, with the number of its observer.
    pub fn to_flow(&self, observer: u32) -> Flow {
        Flow {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            opened: self.started(),
            closed: self.ended(),
            observer,
            bytes: self.bytes,
            packets: self.packets,
            start_ns: self.start_ns,
            end_ns: self.end_ns,
        }
    }

    /// The record as a podflow observation ([`Flow::to_observation`]).
    pub fn to_observation(&self) -> Observation {
        self.to_flow(0).to_observation()
    }
}

/// A decoded record as the collector keeps it: a one-way flow, what
/// [`Flow::to_observation`] needs and nothing else (half an observation's size). The
/// listener hands these to its sink; most are only summed, never made observations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (ICMP: 0).
    pub src_port: u16,
    /// Destination port (ICMP: type << 8 | code).
    pub dst_port: u16,
    /// IP protocol.
    pub proto: Protocol,
    /// The record says the flow started in it ([`FlowRecord::started`]).
    pub opened: bool,
    /// The record says the flow ended ([`FlowRecord::ended`]).
    pub closed: bool,
    /// Its observer: an index into the batch's observers ([`crate::Batch`]).
    pub observer: u32,
    /// Bytes, scaled by the sampling rate.
    pub bytes: u64,
    /// Packets, scaled by the sampling rate.
    pub packets: u64,
    /// Flow start, ns since the Unix epoch (0 = unknown).
    pub start_ns: u64,
    /// Flow end, ns since the Unix epoch (0 = unknown).
    pub end_ns: u64,
}

impl Flow {
    /// The original tuple: src → dst.
    pub fn tuple(&self) -> Tuple {
        Tuple {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
    }

    /// Whether the record is the responder's direction of its connection (server →
    /// client): its source port is of a lower class than its destination port, the
    /// classes being well-known (below 1024), registered (below 32768, NodePorts
    /// included) and ephemeral (32768 and above, where Linux starts its clients' ports).
    /// Ports of one class, and protocols without ports, keep the record's direction
    /// (docs/netflow.md#direction).
    pub fn is_reply(&self) -> bool {
        self.proto.has_ports() && port_class(self.src_port) < port_class(self.dst_port)
    }

    /// The connection's tuple, initiator → responder: the record's, or its mirror for a
    /// reply ([`Flow::is_reply`]).
    pub fn initiator_tuple(&self) -> Tuple {
        let t = self.tuple();
        if self.is_reply() { t.reversed() } else { t }
    }

    /// The flow as a podflow observation of its connection: `orig` is initiator →
    /// responder ([`Flow::initiator_tuple`]), `reply` its mirror. A record is one-way:
    /// its traffic is the original direction's, or the reply's for a reply record,
    /// which opens and closes nothing (its connection is counted on the initiator's
    /// records, so a connection metered both ways counts once).
    pub fn to_observation(&self) -> Observation {
        let orig = self.initiator_tuple();
        let counters = Counters {
            bytes: self.bytes,
            packets: self.packets,
        };
        let reply = self.is_reply();
        let none = Counters::default();
        Observation {
            proto: self.proto,
            orig,
            reply: orig.reversed(),
            delta_orig: if reply { none } else { counters },
            delta_reply: if reply { counters } else { none },
            opened: self.opened && !reply,
            closed: self.closed && !reply,
            start_ns: self.start_ns,
            stop_ns: self.end_ns,
            conn_id: 0,
            zone: 0,
            mark: 0,
            first_reply_ns: 0,
        }
    }
}

/// [`FlowRecord::started`] of a record's protocol and TCP flags.
#[inline]
pub(crate) fn opened(proto: Protocol, tcp_flags: u16) -> bool {
    proto == Protocol::TCP && tcp_flags & TCP_SYN != 0
}

/// [`FlowRecord::ended`] of a record's protocol, TCP flags and flowEndReason.
#[inline]
pub(crate) fn closed(proto: Protocol, tcp_flags: u16, end_reason: Option<u8>) -> bool {
    (proto == Protocol::TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0)
        || matches!(end_reason, Some(1) | Some(3))
}

/// Ports below this are well-known (IANA's system ports).
const WELL_KNOWN_BELOW: u16 = 1024;
/// Ports from this one on are taken as ephemeral: Linux's default
/// `net.ipv4.ip_local_port_range` starts here (and ends at 60999; Windows and the
/// IANA's dynamic range, 49152–65535, lie inside).
const EPHEMERAL_FROM: u16 = 32768;

/// 0 well-known, 1 registered, 2 ephemeral.
fn port_class(p: u16) -> u8 {
    u8::from(p >= WELL_KNOWN_BELOW) + u8::from(p >= EPHEMERAL_FROM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(flags: u16) -> FlowRecord {
        FlowRecord {
            proto: Protocol::TCP,
            src: "10.0.0.1".parse().expect("addr"),
            dst: "10.0.0.2".parse().expect("addr"),
            src_port: 40000,
            dst_port: 443,
            bytes: 1500,
            packets: 3,
            tcp_flags: flags,
            start_ns: 5,
            end_ns: 9,
            ..Default::default()
        }
    }

    #[test]
    fn observation_mirrors_the_tuple_and_carries_one_way_counters() {
        let o = tcp(0x10).to_observation();
        assert_eq!(o.orig.src, "10.0.0.1".parse::<IpAddr>().expect("addr"));
        assert_eq!(o.reply.src, o.orig.dst);
        assert_eq!(o.reply.dst, o.orig.src);
        assert_eq!((o.reply.src_port, o.reply.dst_port), (443, 40000));
        assert_eq!(
            o.delta_orig,
            Counters {
                bytes: 1500,
                packets: 3
            }
        );
        assert!(o.delta_reply.is_zero());
        assert!(!o.opened && !o.closed);
        assert_eq!((o.start_ns, o.stop_ns), (5, 9));
        assert!(!o.is_dnat() && !o.is_snat());
    }

    #[test]
    fn fin_rst_and_end_reason_close_syn_opens() {
        assert!(tcp(TCP_FIN).to_observation().closed);
        assert!(tcp(TCP_RST | 0x10).to_observation().closed);
        assert!(tcp(TCP_SYN).to_observation().opened);
        let mut r = tcp(0);
        r.end_reason = Some(2);
        assert!(!r.to_observation().closed, "active timeout is not an end");
        r.end_reason = Some(3);
        assert!(r.to_observation().closed);
        let mut udp = tcp(TCP_FIN);
        udp.proto = Protocol::UDP;
        assert!(!udp.to_observation().closed, "flags mean nothing for UDP");
    }

    #[test]
    fn a_reply_record_is_its_connection_seen_from_the_initiator() {
        let mut r = tcp(TCP_SYN | TCP_FIN | 0x10);
        (r.src, r.dst) = (r.dst, r.src);
        (r.src_port, r.dst_port) = (443, 40000);
        let f = r.to_flow(0);
        assert!(f.is_reply());
        let o = r.to_observation();
        assert_eq!(
            o.orig,
            tcp(0).to_observation().orig,
            "initiator → responder"
        );
        assert_eq!(o.reply, o.orig.reversed());
        assert!(o.delta_orig.is_zero());
        assert_eq!((o.delta_reply.bytes, o.delta_reply.packets), (1500, 3));
        assert!(
            !o.opened && !o.closed,
            "its connection is counted on the initiator's records"
        );
        assert!(!o.is_dnat() && !o.is_snat());
    }

    #[test]
    fn port_classes_decide_the_direction_and_equal_classes_keep_the_record() {
        let dir = |sport: u16, dport: u16, proto: Protocol| {
            let mut r = tcp(0);
            (r.src_port, r.dst_port, r.proto) = (sport, dport, proto);
            r.to_flow(0).is_reply()
        };
        let tcp = Protocol::TCP;
        assert!(dir(443, 1024, tcp), "well-known to registered");
        assert!(dir(8080, 40000, tcp), "registered to ephemeral");
        assert!(dir(30080, 32768, tcp), "a NodePort to an ephemeral port");
        assert!(dir(53, 60999, Protocol::UDP));
        assert!(!dir(40000, 443, tcp), "the request");
        assert!(!dir(1023, 80, tcp), "both well-known");
        assert!(!dir(5432, 8080, tcp), "both registered");
        assert!(!dir(50000, 40000, tcp), "both ephemeral");
        assert!(!dir(0, 40000, Protocol::ICMP), "no ports, no rule");
    }
}
