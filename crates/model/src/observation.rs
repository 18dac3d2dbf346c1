use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// An IP protocol number (IANA), with names for the ones podflow knows.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Protocol(pub u8);

impl Protocol {
    /// ICMP (1).
    pub const ICMP: Protocol = Protocol(1);
    /// TCP (6).
    pub const TCP: Protocol = Protocol(6);
    /// UDP (17).
    pub const UDP: Protocol = Protocol(17);
    /// ICMPv6 (58).
    pub const ICMPV6: Protocol = Protocol(58);
    /// SCTP (132).
    pub const SCTP: Protocol = Protocol(132);
    /// UDP-Lite (136).
    pub const UDPLITE: Protocol = Protocol(136);
    /// DCCP (33).
    pub const DCCP: Protocol = Protocol(33);

    /// The lower-case name (`tcp`, `udp`, ...) or the number for the others.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self {
            Self::ICMP => "icmp".into(),
            Self::TCP => "tcp".into(),
            Self::UDP => "udp".into(),
            Self::ICMPV6 => "icmpv6".into(),
            Self::SCTP => "sctp".into(),
            Self::UDPLITE => "udplite".into(),
            Self::DCCP => "dccp".into(),
            Protocol(n) => n.to_string().into(),
        }
    }

    /// Parses a name as printed by [`Protocol::name`] or a number.
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "icmp" => Self::ICMP,
            "tcp" => Self::TCP,
            "udp" => Self::UDP,
            "icmpv6" | "ipv6-icmp" => Self::ICMPV6,
            "sctp" => Self::SCTP,
            "udplite" => Self::UDPLITE,
            "dccp" => Self::DCCP,
            other => Protocol(other.parse().ok()?),
        })
    }

    /// Whether the protocol has ports (TCP, UDP, SCTP, UDP-Lite, DCCP).
    pub fn has_ports(self) -> bool {
        matches!(
            self,
            Self::TCP | Self::UDP | Self::SCTP | Self::UDPLITE | Self::DCCP
        )
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One direction of a connection: addresses and ports as the kernel tracks them.
///
/// For ICMP the ports are the echo identifier (in `src_port`) and type/code
/// (`dst_port` = type << 8 | code), as conntrack keys them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 when the protocol has none).
    pub src_port: u16,
    /// Destination port (0 when the protocol has none).
    pub dst_port: u16,
}

impl Tuple {
    /// The same tuple seen from the other end (the reply direction without NAT).
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

impl Default for Tuple {
    fn default() -> Self {
        Tuple {
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            src_port: 0,
            dst_port: 0,
        }
    }
}

/// Bytes and packets (L3 bytes, as the kernel counts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counters {
    /// Bytes, IP header included.
    pub bytes: u64,
    /// Packets.
    pub packets: u64,
}

impl Counters {
    /// Whether both are zero.
    pub fn is_zero(self) -> bool {
        self.bytes == 0 && self.packets == 0
    }
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, rhs: Self) {
        self.bytes += rhs.bytes;
        self.packets += rhs.packets;
    }
}

/// One connection seen by one observer, as a delta since it was last reported.
///
/// `orig` is the direction of the connection's first packet: its source started the
/// connection. `reply` is what the kernel expects back; it differs from the mirror of
/// `orig` when NAT rewrote the destination (DNAT: `reply.src` is the real backend) or
/// the source (SNAT: `reply.dst` is the translated source).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// IP protocol.
    pub proto: Protocol,
    /// Original direction.
    pub orig: Tuple,
    /// Reply direction.
    pub reply: Tuple,
    /// Bytes/packets in the original direction since the last report.
    pub delta_orig: Counters,
    /// Bytes/packets in the reply direction since the last report.
    pub delta_reply: Counters,
    /// The connection started within this delta.
    pub opened: bool,
    /// The connection ended within this delta.
    pub closed: bool,
    /// Start time, ns since the Unix epoch (0 = unknown: timestamps off).
    pub start_ns: u64,
    /// Stop time, ns since the Unix epoch (0 = still open or unknown).
    pub stop_ns: u64,
    /// Kernel conntrack id (reused by the kernel; not an identity on its own).
    pub conn_id: u32,
    /// Conntrack zone.
    pub zone: u16,
    /// Connection mark.
    pub mark: u32,
    /// Time from the connection's first packet to its first reply packet, ns (0 = not
    /// measured). Carried once per connection, on the observation after the reply (see
    /// docs/semantics.md, "Time to first reply").
    #[serde(default)]
    pub first_reply_ns: u64,
}

/// An observation seen from the observer's side: which end is local, who initiated,
/// and the traffic as out (local → remote) and in (remote → local).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Oriented {
    /// The local end (on the observer's node).
    pub local: IpAddr,
    /// The remote end actually talked to (after DNAT: the backend).
    pub remote: IpAddr,
    /// The responder's port (the initiator's ephemeral port is dropped).
    pub responder_port: u16,
    /// Whether the local end started the connection.
    pub local_initiated: bool,
    /// The address the initiator dialled when DNAT changed it (a Service), else `None`.
    pub service: Option<(IpAddr, u16)>,
    /// Local → remote.
    pub out: Counters,
    /// Remote → local.
    pub inbound: Counters,
}

impl Observation {
    /// The responder as the initiator dialled it (before DNAT).
    pub fn dialled(&self) -> (IpAddr, u16) {
        (self.orig.dst, self.orig.dst_port)
    }

    /// The responder that actually answered (after DNAT).
    pub fn responder(&self) -> (IpAddr, u16) {
        (self.reply.src, self.reply.src_port)
    }

    /// Whether DNAT rewrote the destination. For protocols without ports (ICMP, whose
    /// tuple "ports" are the echo id and type/code and differ between directions without
    /// any NAT) only addresses are compared.
    pub fn is_dnat(&self) -> bool {
        if self.proto.has_ports() {
            self.dialled() != self.responder()
        } else {
            self.orig.dst != self.reply.src
        }
    }

    /// Whether SNAT rewrote the source (the responder saw `reply.dst`); addresses only for
    /// protocols without ports.
    pub fn is_snat(&self) -> bool {
        if self.proto.has_ports() {
            self.orig.src != self.reply.dst || self.orig.src_port != self.reply.dst_port
        } else {
            self.orig.src != self.reply.dst
        }
    }

    /// Orients the observation: `is_local` says whether an address belongs to the
    /// observer's node.
    ///
    /// The local end is the initiator when its address is local; otherwise the
    /// responder when that is local; when neither is (traffic forwarded through the
    /// node) the initiator is taken as the local end.
    pub fn orient(&self, is_local: impl Fn(IpAddr) -> bool) -> Oriented {
        let (resp_addr, resp_port) = self.responder();
        let service = self.is_dnat().then(|| self.dialled());
        let local_initiated =
            is_local(self.orig.src) || !(is_local(resp_addr) || is_local(self.orig.dst));
        let responder_port = if self.proto.has_ports() { resp_port } else { 0 };
        if local_initiated {
            Oriented {
                local: self.orig.src,
                remote: resp_addr,
                responder_port,
                local_initiated,
                service,
                out: self.delta_orig,
                inbound: self.delta_reply,
            }
        } else {
            Oriented {
                local: resp_addr,
                remote: self.orig.src,
                responder_port,
                local_initiated,
                service,
                out: self.delta_reply,
                inbound: self.delta_orig,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn obs(orig: (&str, u16, &str, u16), reply: (&str, u16, &str, u16)) -> Observation {
        Observation {
            proto: Protocol::TCP,
            orig: Tuple {
                src: ip(orig.0),
                src_port: orig.1,
                dst: ip(orig.2),
                dst_port: orig.3,
            },
            reply: Tuple {
                src: ip(reply.0),
                src_port: reply.1,
                dst: ip(reply.2),
                dst_port: reply.3,
            },
            delta_orig: Counters {
                bytes: 100,
                packets: 2,
            },
            delta_reply: Counters {
                bytes: 5000,
                packets: 5,
            },
            ..Default::default()
        }
    }

    #[test]
    fn outbound_connection_keeps_responder_port_and_maps_directions() {
        let o = obs(
            ("10.0.0.1", 40000, "10.0.0.2", 80),
            ("10.0.0.2", 80, "10.0.0.1", 40000),
        );
        let r = o.orient(|a| a == ip("10.0.0.1"));
        assert!(r.local_initiated);
        assert_eq!(
            (r.local, r.remote, r.responder_port),
            (ip("10.0.0.1"), ip("10.0.0.2"), 80)
        );
        assert_eq!(r.out.bytes, 100);
        assert_eq!(r.inbound.bytes, 5000);
        assert_eq!(r.service, None);
        assert!(!o.is_snat());
    }

    #[test]
    fn inbound_connection_swaps_directions() {
        let o = obs(
            ("10.0.0.9", 40000, "10.0.0.1", 22),
            ("10.0.0.1", 22, "10.0.0.9", 40000),
        );
        let r = o.orient(|a| a == ip("10.0.0.1"));
        assert!(!r.local_initiated);
        assert_eq!(
            (r.local, r.remote, r.responder_port),
            (ip("10.0.0.1"), ip("10.0.0.9"), 22)
        );
        assert_eq!(r.out.bytes, 5000);
        assert_eq!(r.inbound.bytes, 100);
    }

    #[test]
    fn dnat_records_the_dialled_service_next_to_the_backend() {
        // 10.0.0.1 dials ClusterIP 10.96.0.10:80, DNAT to backend 10.1.0.5:8080.
        let o = obs(
            ("10.0.0.1", 40000, "10.96.0.10", 80),
            ("10.1.0.5", 8080, "10.0.0.1", 40000),
        );
        let r = o.orient(|a| a == ip("10.0.0.1"));
        assert!(o.is_dnat());
        assert_eq!(r.remote, ip("10.1.0.5"));
        assert_eq!(r.responder_port, 8080);
        assert_eq!(r.service, Some((ip("10.96.0.10"), 80)));
    }

    #[test]
    fn snat_is_recognised() {
        let o = obs(
            ("10.1.0.5", 40000, "1.2.3.4", 443),
            ("1.2.3.4", 443, "192.168.1.10", 61000),
        );
        assert!(o.is_snat());
        assert!(!o.is_dnat());
    }

    #[test]
    fn forwarded_traffic_takes_the_initiator_as_local() {
        let o = obs(
            ("10.1.0.5", 40000, "10.2.0.7", 53),
            ("10.2.0.7", 53, "10.1.0.5", 40000),
        );
        let r = o.orient(|_| false);
        assert!(r.local_initiated);
        assert_eq!(r.local, ip("10.1.0.5"));
    }

    #[test]
    fn icmp_has_no_responder_port() {
        let mut o = obs(
            ("10.0.0.1", 7, "10.0.0.2", 0x0800),
            ("10.0.0.2", 7, "10.0.0.1", 0),
        );
        o.proto = Protocol::ICMP;
        assert_eq!(o.orient(|a| a == ip("10.0.0.1")).responder_port, 0);
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in [1u8, 6, 17, 58, 132, 136, 33, 47] {
            assert_eq!(Protocol::parse(&Protocol(p).name()), Some(Protocol(p)));
        }
        assert_eq!(Protocol::parse("nope"), None);
    }
}
