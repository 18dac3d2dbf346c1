//! Properties: the decoder never panics, and encode -> decode gives the values back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use podflow_netflow::encode::{
    self, IPFIX_IPV4_18, Ie, Message, V5Flow, V5Header, V9_IPV4_18, Value, ie,
};
use podflow_netflow::{Decoder, DecoderConfig, FlowRecord};
use proptest::prelude::*;

fn exporter() -> SocketAddr {
    "192.0.2.1:4739".parse().expect("addr")
}

/// A template mixing IPv6, a variable-length field and an enterprise element.
const IPFIX_V6: [Ie; 10] = [
    ie(27, 16),
    ie(28, 16),
    ie(7, 2),
    ie(11, 2),
    ie(4, 1),
    ie(1, 8),
    ie(2, 8),
    ie(156, 8),     // flowStartNanoseconds (NTP format)
    ie(82, 0xffff), // interfaceName, variable length
    Ie {
        id: 1,
        len: 4,
        enterprise: Some(9),
    },
];

/// Valid packets of every version, templates first, for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut m = Message::v9(1000, 1_700_000_000, 0, 1);
    m.template(256, &V9_IPV4_18)
        .options_template(257, &[ie(1, 4)], &[ie(34, 4), ie(48, 1)])
        .data(
            257,
            &[ie(1, 4), ie(34, 4), ie(48, 1)],
            &[vec![Value::U(0), Value::U(10), Value::U(1)]],
        )
        .data(
            256,
            &V9_IPV4_18,
            &[vec![Value::U(1); 18], vec![Value::U(2); 18]],
        );
    v.push(m.build());
    let mut m = Message::ipfix(1_700_000_000, 0, 1);
    let mut rec = vec![Value::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)); 2];
    rec.extend([
        Value::U(1),
        Value::U(2),
        Value::U(6),
        Value::U(3),
        Value::U(4),
        Value::U(5),
    ]);
    rec.extend([Value::Bytes(b"eth0".to_vec()), Value::U(9)]);
    m.template(300, &IPFIX_V6)
        .template(301, &IPFIX_IPV4_18)
        .data(300, &IPFIX_V6, &[rec.clone(), rec])
        .data(301, &IPFIX_IPV4_18, &[vec![Value::U(7); 18]])
        .withdraw(301, false);
    v.push(m.build());
    let f = V5Flow {
        src: Ipv4Addr::new(10, 0, 0, 1),
        dst: Ipv4Addr::new(10, 0, 0, 2),
        input: 1,
        output: 2,
        packets: 3,
        bytes: 4,
        first: 5,
        last: 6,
        src_port: 7,
        dst_port: 8,
        tcp_flags: 9,
        proto: 6,
    };
    v.push(encode::v5(&V5Header::default(), &[f, f]));
    v
}

fn small_decoder() -> Decoder {
    // Tiny limits so the bounded paths run too.
    Decoder::new(DecoderConfig {
        template_timeout_secs: 5,
        max_templates: 4,
        max_templates_per_exporter: 3,
        max_domains: 3,
        domain_idle_secs: 7,
        pending_max_sets: 3,
        pending_max_bytes: 300,
        pending_timeout_secs: 2,
    })
}

#[derive(Clone, Debug)]
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    bytes: u32,
    packets: u32,
    start_ms: u64,
    dur_ms: u32,
}

fn flow() -> impl Strategy<Value = Flow> {
    let v4 = any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)));
    (
        v4.clone(),
        v4,
        any::<u16>(),
        any::<u16>(),
        prop_oneof![Just(6u8), Just(17u8), Just(132u8)],
        any::<u32>(),
        any::<u32>(),
        // Within a day: v9 uptime arithmetic reads ages up to 24 days.
        1_700_000_000_000u64..1_700_086_400_000,
        0u32..3_600_000,
    )
        .prop_map(
            |(src, dst, sport, dport, proto, bytes, packets, start_ms, dur_ms)| Flow {
                src,
                dst,
                sport,
                dport,
                proto,
                bytes,
                packets,
                start_ms,
                dur_ms,
            },
        )
}

fn check(f: &Flow, r: &FlowRecord) -> Result<(), TestCaseError> {
    prop_assert_eq!((r.src, r.dst), (f.src, f.dst));
    prop_assert_eq!(
        (r.src_port, r.dst_port, r.proto.0),
        (f.sport, f.dport, f.proto)
    );
    prop_assert_eq!(
        (r.bytes, r.packets),
        (u64::from(f.bytes), u64::from(f.packets))
    );
    prop_assert_eq!(r.start_ns, f.start_ms * 1_000_000);
    prop_assert_eq!(r.end_ns, (f.start_ms + u64::from(f.dur_ms)) * 1_000_000);
    Ok(())
}

fn values(f: &Flow, start: u64, end: u64) -> Vec<Value> {
    vec![
        Value::Ip(f.src),
        Value::Ip(f.dst),
        Value::U(0),
        Value::U(1),
        Value::U(2),
        Value::U(u64::from(f.packets)),
        Value::U(u64::from(f.bytes)),
        Value::U(start),
        Value::U(end),
        Value::U(u64::from(f.sport)),
        Value::U(u64::from(f.dport)),
        Value::U(0),
        Value::U(u64::from(f.proto)),
        Value::U(0),
        Value::U(0),
        Value::U(0),
        Value::U(0),
        Value::U(0),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_arbitrary_bytes(version in prop_oneof![Just(5u16), Just(9), Just(10), any::<u16>()],
                                       body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut pkt = version.to_be_bytes().to_vec();
        pkt.extend(body);
        let mut d = small_decoder();
        let mut out = Vec::new();
        let res = d.decode(exporter(), &pkt, 0, &mut out);
        // Whatever happens, it is either records or a counted error.
        let errors = d.total_stats().errors.total();
        prop_assert!(res.is_ok() || errors >= 1);
    }

    #[test]
    fn never_panics_on_mutated_valid_packets(which in 0usize..3,
                                             flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                             cut in any::<usize>(),
                                             now in 0u64..20) {
        let seeds = seeds();
        let mut d = small_decoder();
        let mut out = Vec::new();
        // Install the templates from the valid packets first so data paths run.
        for s in &seeds {
            let _ = d.decode(exporter(), s, 0, &mut out);
        }
        let mut pkt = seeds[which].clone();
        for (at, x) in flips {
            let n = pkt.len();
            pkt[at % n] ^= x;
        }
        pkt.truncate(cut % (pkt.len() + 1));
        let before = out.len();
        let _ = d.decode(exporter(), &pkt, now, &mut out);
        d.expire(now);
        prop_assert!(out.len() - before <= pkt.len(), "no record from nothing");
    }

    /// `decode_flows` is `decode` then `to_flow`, datagram by datagram: the same flows,
    /// results and counters, held data released by a later template included, and the
    /// observer asked once for each datagram that yields a record.
    #[test]
    fn decode_flows_is_decode_then_to_flow(
        packets in proptest::collection::vec(
            (0usize..6, proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), any::<usize>(), 0u64..20),
            1..10),
    ) {
        let mut seeds = seeds();
        // Data before its template (held), then the template (released).
        // TCP records with SYN, FIN and RST|ACK: what opens and closes a flow.
        let tcp = |flags: u64| {
            let mut v = vec![Value::U(3); 18];
            (v[11], v[12]) = (Value::U(flags), Value::U(6));
            v
        };
        let mut data = Message::v9(2000, 1_700_000_000, 7, 1);
        data.data(258, &V9_IPV4_18, &[tcp(0x02), tcp(0x01), tcp(0x14)]);
        seeds.push(data.build());
        let mut template = Message::v9(2001, 1_700_000_001, 8, 1);
        template.template(258, &V9_IPV4_18);
        seeds.push(template.build());
        // IPFIX end reasons and an ICMP type and code.
        const ENDS: [Ie; 12] = [
            ie(8, 4), ie(12, 4), ie(7, 2), ie(11, 2), ie(4, 1), ie(6, 1),
            ie(1, 8), ie(2, 8), ie(152, 8), ie(153, 8), ie(136, 1), ie(32, 2),
        ];
        let rec = |proto: u64, flags: u64, reason: u64| {
            let mut v = vec![Value::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))); 2];
            v.extend([40000, 443, proto, flags, 1500, 3, 1_699_999_999_000, 1_700_000_000_000,
                reason, 0x0800].map(Value::U));
            v
        };
        let mut ends = Message::ipfix(1_700_000_000, 0, 3);
        ends.template(260, &ENDS)
            .data(260, &ENDS, &[rec(6, 0x11, 2), rec(17, 0, 1), rec(1, 0, 3), rec(58, 0, 4), rec(6, 0x02, 2)]);
        seeds.push(ends.build());
        let (mut by_record, mut by_flow) = (small_decoder(), small_decoder());
        for (which, flips, cut, now) in packets {
            let mut pkt = seeds[which].clone();
            let n = pkt.len();
            for (at, x) in flips {
                pkt[at % n] ^= x;
            }
            pkt.truncate(n - cut % (n / 4 + 1));
            let mut records = Vec::new();
            let want = by_record.decode(exporter(), &pkt, now, &mut records);
            let mut asked = Vec::new();
            let mut flows = Vec::new();
            let got = by_flow.decode_flows(exporter(), &pkt, now, |k| {
                asked.push(*k);
                7
            }, &mut flows);
            prop_assert_eq!(got, want);
            let want_flows: Vec<_> = records.iter().map(|r| r.to_flow(7)).collect();
            prop_assert_eq!(flows, want_flows);
            prop_assert!(asked.len() == usize::from(!records.is_empty()), "asked {:?}", asked);
            for (k, r) in asked.iter().zip(&records) {
                prop_assert_eq!((k.exporter, k.version, k.domain), (r.exporter, r.version, r.domain));
            }
            by_record.expire(now);
            by_flow.expire(now);
            prop_assert_eq!(by_flow.total_stats(), by_record.total_stats());
        }
    }

    #[test]
    fn ipfix_round_trip(flows in proptest::collection::vec(flow(), 1..40), seq in any::<u32>()) {
        let recs: Vec<_> = flows
            .iter()
            .map(|f| values(f, f.start_ms, f.start_ms + u64::from(f.dur_ms)))
            .collect();
        let mut m = Message::ipfix(1_700_000_000, seq, 9);
        m.template(256, &IPFIX_IPV4_18).data(256, &IPFIX_IPV4_18, &recs);
        let mut d = Decoder::default();
        let mut out = Vec::new();
        prop_assert_eq!(d.decode(exporter(), &m.build(), 0, &mut out), Ok(flows.len()));
        for (f, r) in flows.iter().zip(&out) {
            check(f, r)?;
            prop_assert_eq!(r.domain, 9);
        }
    }

    #[test]
    fn v9_round_trip(flows in proptest::collection::vec(flow(), 1..40), uptime in 4_000_000u32..u32::MAX) {
        // v9 times are sysUptime ms; choose export time so every flow ended before it.
        let export_ms = flows.iter().map(|f| f.start_ms + u64::from(f.dur_ms)).max().unwrap_or(0);
        let export_ms = export_ms.div_ceil(1000) * 1000;
        let recs: Vec<_> = flows
            .iter()
            .map(|f| {
                let up = |t: u64| u64::from(uptime.wrapping_sub((export_ms - t) as u32));
                values(f, up(f.start_ms), up(f.start_ms + u64::from(f.dur_ms)))
            })
            .collect();
        let mut m = Message::v9(uptime, (export_ms / 1000) as u32, 0, 3);
        m.template(256, &V9_IPV4_18).data(256, &V9_IPV4_18, &recs);
        let mut d = Decoder::default();
        let mut out = Vec::new();
        prop_assert_eq!(d.decode(exporter(), &m.build(), 0, &mut out), Ok(flows.len()));
        for (f, r) in flows.iter().zip(&out) {
            // v9 counters here are 4 bytes, so the u32 values fit exactly.
            check(f, r)?;
        }
    }
}
