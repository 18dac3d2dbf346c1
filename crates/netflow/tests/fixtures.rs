//! Annotated byte fixtures: every field of every datagram is commented.

use std::net::{IpAddr, SocketAddr};

use podflow_model::Protocol;
use podflow_netflow::encode::{Message, Value, ie};
use podflow_netflow::{
    Decoder, DecoderConfig, Direction, DomainKey, ErrorReason, FlowRecord, Version,
};

fn exporter() -> SocketAddr {
    "10.0.0.7:2055".parse().expect("addr")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("addr")
}

fn key(version: Version, domain: u32) -> DomainKey {
    DomainKey {
        exporter: exporter(),
        version,
        domain,
    }
}

fn decode(d: &mut Decoder, pkt: &[u8], now: u64) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    d.decode(exporter(), pkt, now, &mut out).expect("decodes");
    out
}

/// Export time of the v5/v9 fixtures: 2024-01-01T00:00:00Z.
const T0: u64 = 1_704_067_200;
const NS: u64 = 1_000_000_000;

#[rustfmt::skip]
const V5: &[u8] = &[
    // header
    0x00, 0x05,             // version 5
    0x00, 0x02,             // count 2
    0x00, 0x01, 0x86, 0xa0, // sysUptime 100000 ms
    0x65, 0x92, 0x00, 0x80, // unix_secs 1704067200
    0x00, 0x00, 0x00, 0x00, // unix_nsecs 0
    0x00, 0x00, 0x00, 0x64, // flow_sequence 100
    0x01,                   // engine_type 1
    0x02,                   // engine_id 2
    0x40, 0x0a,             // sampling: mode 1, interval 10
    // record 1: TCP 10.1.0.1:40000 -> 10.2.0.2:443
    0x0a, 0x01, 0x00, 0x01, // srcaddr 10.1.0.1
    0x0a, 0x02, 0x00, 0x02, // dstaddr 10.2.0.2
    0x00, 0x00, 0x00, 0x00, // nexthop
    0x00, 0x03,             // input ifindex 3
    0x00, 0x04,             // output ifindex 4
    0x00, 0x00, 0x00, 0x05, // dPkts 5
    0x00, 0x00, 0x01, 0xf4, // dOctets 500
    0x00, 0x01, 0x7d, 0x78, // first 97656 ms (2344 ms before export)
    0x00, 0x01, 0x86, 0x9f, // last 99999 ms (1 ms before export)
    0x9c, 0x40,             // srcport 40000
    0x01, 0xbb,             // dstport 443
    0x00,                   // pad1
    0x11,                   // tcp_flags ACK|FIN
    0x06,                   // prot TCP
    0x00,                   // tos
    0x00, 0x00, 0x00, 0x00, // src_as, dst_as
    0x18, 0x18,             // src_mask, dst_mask
    0x00, 0x00,             // pad2
    // record 2: UDP 10.1.0.1:5353 -> 10.2.0.3:53
    0x0a, 0x01, 0x00, 0x01, // srcaddr 10.1.0.1
    0x0a, 0x02, 0x00, 0x03, // dstaddr 10.2.0.3
    0x00, 0x00, 0x00, 0x00, // nexthop
    0x00, 0x03,             // input 3
    0x00, 0x04,             // output 4
    0x00, 0x00, 0x00, 0x01, // dPkts 1
    0x00, 0x00, 0x00, 0x40, // dOctets 64
    0x00, 0x01, 0x86, 0xa0, // first 100000 (= export time)
    0x00, 0x01, 0x86, 0xa0, // last 100000
    0x14, 0xe9,             // srcport 5353
    0x00, 0x35,             // dstport 53
    0x00, 0x00, 0x11, 0x00, // pad1, tcp_flags 0, prot UDP, tos
    0x00, 0x00, 0x00, 0x00, // src_as, dst_as
    0x00, 0x00, 0x00, 0x00, // masks, pad2
];

#[test]
fn v5_header_sampling_times_and_fields() {
    let mut d = Decoder::default();
    let r = decode(&mut d, V5, 0);
    assert_eq!(r.len(), 2);
    let a = &r[0];
    assert_eq!(a.version, Version::V5);
    assert_eq!(a.domain, 0x0102);
    assert_eq!(a.proto, Protocol::TCP);
    assert_eq!((a.src, a.dst), (ip("10.1.0.1"), ip("10.2.0.2")));
    assert_eq!((a.src_port, a.dst_port), (40000, 443));
    assert_eq!((a.raw_bytes, a.raw_packets), (500, 5));
    assert_eq!((a.bytes, a.packets, a.sampling_rate), (5000, 50, 10));
    assert_eq!(a.start_ns, T0 * NS - 2_344_000_000);
    assert_eq!(a.end_ns, T0 * NS - 1_000_000);
    assert_eq!((a.tcp_flags, a.in_if, a.out_if), (0x11, 3, 4));
    assert!(a.to_observation().closed, "FIN closes");
    let b = &r[1];
    assert_eq!(b.proto, Protocol::UDP);
    assert_eq!((b.dst, b.dst_port, b.bytes), (ip("10.2.0.3"), 53, 640));
    assert_eq!((b.start_ns, b.end_ns), (T0 * NS, T0 * NS));
    let s = d.stats_for(&key(Version::V5, 0x0102)).expect("stats");
    assert_eq!((s.datagrams, s.records, s.sequence_lost), (1, 2, 0));
}

#[test]
fn v5_truncated_count_decodes_what_fits_and_names_the_problem() {
    let mut d = Decoder::default();
    let mut out = Vec::new();
    let err = d
        .decode(exporter(), &V5[..24 + 48 + 10], 0, &mut out)
        .expect_err("short");
    assert_eq!(out.len(), 1, "the whole first record is kept");
    assert_eq!(err.reason(), ErrorReason::BadLength);
    assert_eq!(
        err.to_string(),
        "NetFlow v5 packet from 10.0.0.7:2055: header announces 2 records (96 bytes) but only 58 bytes follow"
    );
}

#[test]
fn v5_sequence_gap_counts_lost_flows() {
    let mut d = Decoder::default();
    decode(&mut d, V5, 0);
    let mut next = V5.to_vec();
    next[16..20].copy_from_slice(&102u32.to_be_bytes()); // expected: 100 + 2
    decode(&mut d, &next, 0);
    next[16..20].copy_from_slice(&110u32.to_be_bytes()); // expected 104: 6 flows lost
    decode(&mut d, &next, 0);
    let s = d.stats_for(&key(Version::V5, 0x0102)).expect("stats");
    assert_eq!(s.sequence_lost, 6);
    assert_eq!(s.records, 6, "no record dropped on a gap");
}

#[rustfmt::skip]
const V9_TEMPLATE: &[u8] = &[
    // header
    0x00, 0x09,             // version 9
    0x00, 0x01,             // count 1 record
    0x00, 0x00, 0x27, 0x10, // sysUptime 10000 ms
    0x65, 0x92, 0x00, 0x80, // unix_secs 1704067200
    0x00, 0x00, 0x00, 0x07, // sequence 7
    0x00, 0x00, 0x00, 0x2a, // source id 42
    // template flowset
    0x00, 0x00,             // flowset id 0 = template
    0x00, 0x2c,             // length 44
    0x01, 0x04,             // template id 260
    0x00, 0x09,             // field count 9
    0x00, 0x08, 0x00, 0x04, // IPV4_SRC_ADDR (8), 4
    0x00, 0x0c, 0x00, 0x04, // IPV4_DST_ADDR (12), 4
    0x00, 0x07, 0x00, 0x02, // L4_SRC_PORT (7), 2
    0x00, 0x0b, 0x00, 0x02, // L4_DST_PORT (11), 2
    0x00, 0x04, 0x00, 0x01, // PROTOCOL (4), 1
    0x00, 0x01, 0x00, 0x04, // IN_BYTES (1), 4
    0x00, 0x02, 0x00, 0x04, // IN_PKTS (2), 4
    0x00, 0x16, 0x00, 0x04, // FIRST_SWITCHED (22), 4
    0x00, 0x15, 0x00, 0x04, // LAST_SWITCHED (21), 4
];

#[rustfmt::skip]
const V9_DATA: &[u8] = &[
    // header
    0x00, 0x09,             // version 9
    0x00, 0x02,             // count 2 records
    0x00, 0x00, 0x27, 0x10, // sysUptime 10000 ms
    0x65, 0x92, 0x00, 0x80, // unix_secs 1704067200
    0x00, 0x00, 0x00, 0x08, // sequence 8
    0x00, 0x00, 0x00, 0x2a, // source id 42
    // data flowset
    0x01, 0x04,             // flowset id 260
    0x00, 0x40,             // length 64 = 4 + 2 * 29 + 2 padding
    // record 1
    0x0a, 0x00, 0x00, 0x01, // src 10.0.0.1
    0x0a, 0x00, 0x00, 0x02, // dst 10.0.0.2
    0x04, 0xd2,             // sport 1234
    0x00, 0x50,             // dport 80
    0x06,                   // proto TCP
    0x00, 0x00, 0x03, 0xe8, // bytes 1000
    0x00, 0x00, 0x00, 0x0a, // packets 10
    0x00, 0x00, 0x23, 0x28, // first 9000 ms (1 s before export)
    0x00, 0x00, 0x26, 0xac, // last 9900 ms
    // record 2
    0x0a, 0x00, 0x00, 0x03, // src 10.0.0.3
    0x0a, 0x00, 0x00, 0x04, // dst 10.0.0.4
    0x00, 0x35,             // sport 53
    0xc3, 0x50,             // dport 50000
    0x11,                   // proto UDP
    0x00, 0x00, 0x00, 0x64, // bytes 100
    0x00, 0x00, 0x00, 0x01, // packets 1
    0x00, 0x00, 0x27, 0x10, // first 10000
    0x00, 0x00, 0x27, 0x10, // last 10000
    0x00, 0x00,             // padding
];

fn check_v9_records(r: &[FlowRecord]) {
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].src, r[0].dst), (ip("10.0.0.1"), ip("10.0.0.2")));
    assert_eq!(
        (r[0].src_port, r[0].dst_port, r[0].proto),
        (1234, 80, Protocol::TCP)
    );
    assert_eq!(
        (r[0].bytes, r[0].packets, r[0].sampling_rate),
        (1000, 10, 1)
    );
    assert_eq!(r[0].start_ns, T0 * NS - NS);
    assert_eq!(r[0].end_ns, T0 * NS - 100_000_000);
    assert_eq!((r[0].domain, r[0].version), (42, Version::V9));
    assert_eq!(
        (r[1].src_port, r[1].proto, r[1].bytes),
        (53, Protocol::UDP, 100)
    );
    assert_eq!(r[1].start_ns, T0 * NS);
}

#[test]
fn v9_template_then_data() {
    let mut d = Decoder::default();
    assert!(decode(&mut d, V9_TEMPLATE, 0).is_empty());
    check_v9_records(&decode(&mut d, V9_DATA, 1));
    let s = d.stats_for(&key(Version::V9, 42)).expect("stats");
    assert_eq!(
        (s.datagrams, s.templates, s.records, s.sequence_lost),
        (2, 1, 2, 0)
    );
}

#[test]
fn v9_template_and_data_in_one_packet() {
    let mut pkt = V9_TEMPLATE.to_vec();
    pkt.extend_from_slice(&V9_DATA[20..]);
    let mut d = Decoder::default();
    check_v9_records(&decode(&mut d, &pkt, 0));
}

#[test]
fn v9_data_before_template_is_held_then_decoded() {
    let mut d = Decoder::default();
    assert!(decode(&mut d, V9_DATA, 0).is_empty());
    assert_eq!(d.pending(), (1, 60));
    // The held records come out with the datagram that brings the template, with
    // the times of the datagram they came in.
    check_v9_records(&decode(&mut d, V9_TEMPLATE, 1));
    assert_eq!(d.pending(), (0, 0));
    let s = d.stats_for(&key(Version::V9, 42)).expect("stats");
    assert_eq!(
        (s.pending_sets_held, s.pending_records_decoded, s.records),
        (1, 2, 2)
    );
    // Sequence 8 then 7: reordered, not lost.
    assert_eq!((s.sequence_lost, s.sequence_resets), (0, 1));
}

#[test]
fn held_data_comes_out_as_flows_of_the_templates_datagram_observer() {
    let mut d = Decoder::default();
    let mut flows = Vec::new();
    let mut asked = Vec::new();
    let mut observer = |k: &DomainKey| {
        asked.push(*k);
        5
    };
    assert_eq!(
        d.decode_flows(exporter(), V9_DATA, 0, &mut observer, &mut flows),
        Ok(0)
    );
    assert_eq!(
        d.decode_flows(exporter(), V9_TEMPLATE, 1, &mut observer, &mut flows),
        Ok(2)
    );
    assert_eq!(
        asked,
        vec![key(Version::V9, 42)],
        "asked once, for the datagram that yielded"
    );
    let mut by_record = Decoder::default();
    decode(&mut by_record, V9_DATA, 0);
    let records = decode(&mut by_record, V9_TEMPLATE, 1);
    check_v9_records(&records);
    let want: Vec<_> = records.iter().map(|r| r.to_flow(5)).collect();
    assert_eq!(flows, want);
    let s = d.stats_for(&key(Version::V9, 42)).expect("stats");
    assert_eq!((s.pending_records_decoded, s.records), (2, 2));
}

#[test]
fn held_sets_are_bounded_and_drops_counted() {
    let mut d = Decoder::new(DecoderConfig {
        pending_max_sets: 2,
        ..Default::default()
    });
    for _ in 0..5 {
        decode(&mut d, V9_DATA, 0);
    }
    assert_eq!(d.pending().0, 2);
    let s = d.stats_for(&key(Version::V9, 42)).expect("stats");
    assert_eq!((s.pending_sets_held, s.pending_sets_dropped), (5, 3));
    d.expire(1000);
    assert_eq!(d.pending(), (0, 0));
    let s = d.stats_for(&key(Version::V9, 42)).expect("stats");
    assert_eq!(s.pending_sets_dropped, 5);
}

#[test]
fn v9_field_past_record_names_template_field_and_offset() {
    // A template whose 10th field (index 9) is longer than what the set holds.
    let mut t = Message::v9(0, 0, 0, 1);
    let mut fields: Vec<_> = (0..9).map(|_| ie(1, 4)).collect();
    fields.push(ie(2, 4));
    t.template(300, &fields);
    let mut d = Decoder::default();
    decode(&mut d, &t.build(), 0);
    let mut m = Message::v9(0, 0, 1, 1);
    // 39 bytes: the minimum is 40, so this is padding, not an error...
    m.raw_set(300, &[0; 39]);
    let mut out = Vec::new();
    assert_eq!(d.decode(exporter(), &m.build(), 0, &mut out), Ok(0));
    // ...while a variable-length IPFIX record can really run past its set.
    let mut t = Message::ipfix(0, 0, 1);
    t.template(300, &[ie(82, 0xffff), ie(1, 4)]);
    decode(&mut d, &t.build(), 0);
    let mut m = Message::ipfix(0, 0, 1);
    m.raw_set(300, &[10, b'e', b't', b'h', b'0', 0, 0, 0, 1]);
    let err = d
        .decode(exporter(), &m.build(), 0, &mut out)
        .expect_err("past");
    assert_eq!(
        err.to_string(),
        "IPFIX packet from 10.0.0.7:2055: template 300 field 0 runs past the record at offset 20"
    );
    let s = d.stats_for(&key(Version::Ipfix, 1)).expect("stats");
    assert_eq!(s.errors.get(ErrorReason::BadRecord), 1);
}

#[rustfmt::skip]
const V9_OPTIONS: &[u8] = &[
    // header
    0x00, 0x09,             // version 9
    0x00, 0x02,             // count 2
    0x00, 0x00, 0x27, 0x10, // sysUptime 10000
    0x65, 0x92, 0x00, 0x80, // unix_secs
    0x00, 0x00, 0x00, 0x06, // sequence 6
    0x00, 0x00, 0x00, 0x2a, // source id 42
    // options template flowset
    0x00, 0x01,             // flowset id 1 = options template
    0x00, 0x18,             // length 24
    0x01, 0x00,             // template id 256
    0x00, 0x04,             // option scope length 4 (one scope field)
    0x00, 0x08,             // option length 8 (two fields)
    0x00, 0x01, 0x00, 0x04, // scope: System (1), 4 -- not octetDeltaCount
    0x00, 0x22, 0x00, 0x04, // SAMPLING_INTERVAL (34), 4
    0x00, 0x23, 0x00, 0x01, // SAMPLING_ALGORITHM (35), 1
    0x00, 0x00,             // padding
    // options data flowset
    0x01, 0x00,             // flowset id 256
    0x00, 0x10,             // length 16
    0x0a, 0x00, 0x00, 0x07, // scope System: 10.0.0.7
    0x00, 0x00, 0x00, 0x64, // sampling interval 100
    0x02,                   // algorithm 2 = random
    0x00, 0x00, 0x00,       // padding
];

#[test]
fn v9_options_sampling_scales_bytes_and_packets() {
    let mut d = Decoder::default();
    decode(&mut d, V9_OPTIONS, 0);
    decode(&mut d, V9_TEMPLATE, 0);
    let r = decode(&mut d, V9_DATA, 0);
    assert_eq!((r[0].raw_bytes, r[0].raw_packets), (1000, 10));
    assert_eq!(
        (r[0].bytes, r[0].packets, r[0].sampling_rate),
        (100_000, 1000, 100)
    );
    assert_eq!(r[0].to_observation().delta_orig.bytes, 100_000);
    let k = key(Version::V9, 42);
    assert_eq!(d.sampling_rate(&k), 100);
    let s = d.stats_for(&k).expect("stats");
    assert_eq!(
        (s.options_templates, s.options_records, s.records),
        (1, 1, 2)
    );
}

#[test]
fn ipfix_per_sampler_rates_from_options() {
    // Options: scope samplerId (48) / selectorId (302); samplingPacketInterval (305) and
    // samplingPacketSpace (306): select 1, skip 63 = 1 in 64; samplerRandomInterval (50).
    let opt = [ie(302, 4), ie(305, 4), ie(306, 4)];
    let opt2 = [ie(48, 2), ie(50, 4)];
    let data = [ie(8, 4), ie(12, 4), ie(1, 4), ie(2, 4), ie(302, 4)];
    let mut m = Message::ipfix(1_700_000_000, 0, 5);
    m.options_template(400, &opt[..1], &opt[1..])
        .data(400, &opt, &[vec![Value::U(9), Value::U(1), Value::U(63)]])
        .options_template(401, &opt2[..1], &opt2[1..])
        .data(401, &opt2, &[vec![Value::U(3), Value::U(10)]])
        .template(500, &data)
        .data(
            500,
            &data,
            &[
                vec![
                    Value::Ip(ip("10.0.0.1")),
                    Value::Ip(ip("10.0.0.2")),
                    Value::U(100),
                    Value::U(2),
                    Value::U(9),
                ],
                vec![
                    Value::Ip(ip("10.0.0.1")),
                    Value::Ip(ip("10.0.0.2")),
                    Value::U(100),
                    Value::U(2),
                    Value::U(3),
                ],
                vec![
                    Value::Ip(ip("10.0.0.1")),
                    Value::Ip(ip("10.0.0.2")),
                    Value::U(100),
                    Value::U(2),
                    Value::U(77),
                ],
            ],
        );
    let mut d = Decoder::default();
    let r = decode(&mut d, &m.build(), 0);
    let rates: Vec<(u32, u64)> = r.iter().map(|r| (r.sampling_rate, r.bytes)).collect();
    assert_eq!(rates, vec![(64, 6400), (10, 1000), (1, 100)]);
}

#[rustfmt::skip]
const IPFIX_V6: &[u8] = &[
    // message header
    0x00, 0x0a,             // version 10
    0x00, 0x8c,             // length 140 (the test appends the last 6 bytes)
    0x65, 0x92, 0x00, 0x80, // export time 1704067200
    0x00, 0x00, 0x00, 0x00, // sequence 0
    0x00, 0x00, 0x00, 0x01, // observation domain 1
    // template set
    0x00, 0x02,             // set id 2 = template
    0x00, 0x38,             // length 56
    0x01, 0x2c,             // template id 300
    0x00, 0x0b,             // field count 11
    0x00, 0x1b, 0x00, 0x10, // sourceIPv6Address (27), 16
    0x00, 0x1c, 0x00, 0x10, // destinationIPv6Address (28), 16
    0x00, 0x07, 0x00, 0x02, // sourceTransportPort, 2
    0x00, 0x0b, 0x00, 0x02, // destinationTransportPort, 2
    0x00, 0x04, 0x00, 0x01, // protocolIdentifier, 1
    0x00, 0x01, 0x00, 0x08, // octetDeltaCount, 8
    0x00, 0x02, 0x00, 0x08, // packetDeltaCount, 8
    0x00, 0x60, 0xff, 0xff, // applicationName (96), variable length
    0x80, 0x64, 0x00, 0x04, // enterprise bit | element 100, length 4
    0x00, 0x00, 0x73, 0x79, //   enterprise number 29561
    0x00, 0x3d, 0x00, 0x01, // flowDirection (61), 1
    0x00, 0x88, 0x00, 0x01, // flowEndReason (136), 1
    // data set
    0x01, 0x2c,             // set id 300
    0x00, 0x44,             // length 68
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // src 2001:db8::1
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // dst 2001:db8::2
    0xc3, 0x50,             // sport 50000
    0x01, 0xbb,             // dport 443
    0x06,                   // proto TCP
    0, 0, 0, 0, 0, 0, 0x0b, 0xb8, // octets 3000
    0, 0, 0, 0, 0, 0, 0, 0x03,    // packets 3
    0x04, b'h', b't', b't', b'p', // applicationName: length 4, "http"
];

#[test]
fn ipfix_ipv6_varlen_and_enterprise_element() {
    // The fixture stops inside the record: flowDirection and flowEndReason follow.
    let mut pkt = IPFIX_V6.to_vec();
    pkt.extend_from_slice(&[
        0xde, 0xad, 0xbe, 0xef, // enterprise 29561 element 100: skipped
        0x01, // flowDirection egress
        0x03, // flowEndReason 3 = end of flow detected
    ]);
    let mut d = Decoder::default();
    let r = decode(&mut d, &pkt, 0);
    assert_eq!(r.len(), 1);
    let a = &r[0];
    assert_eq!((a.src, a.dst), (ip("2001:db8::1"), ip("2001:db8::2")));
    assert_eq!(
        (a.src_port, a.dst_port, a.bytes, a.packets),
        (50000, 443, 3000, 3)
    );
    assert_eq!(a.direction, Some(Direction::Egress));
    assert_eq!(a.end_reason, Some(3));
    assert!(a.to_observation().closed);
    let s = d.stats_for(&key(Version::Ipfix, 1)).expect("stats");
    assert_eq!(
        (s.enterprise_fields_skipped, s.templates, s.records),
        (1, 1, 1)
    );
}

#[test]
fn ipfix_withdrawal_removes_the_template() {
    let fields = [ie(8, 4), ie(12, 4), ie(1, 4)];
    let rec = vec![
        Value::Ip(ip("10.0.0.1")),
        Value::Ip(ip("10.0.0.2")),
        Value::U(7),
    ];
    let mut d = Decoder::default();
    let mut m = Message::ipfix(0, 0, 1);
    m.template(256, &fields)
        .data(256, &fields, std::slice::from_ref(&rec));
    assert_eq!(decode(&mut d, &m.build(), 0).len(), 1);
    #[rustfmt::skip]
    let withdrawal = [
        0x00, 0x0a,             // version 10
        0x00, 0x18,             // length 24
        0x00, 0x00, 0x00, 0x00, // export time
        0x00, 0x00, 0x00, 0x01, // sequence 1 (one record so far)
        0x00, 0x00, 0x00, 0x01, // domain 1
        0x00, 0x02,             // set id 2 = template set
        0x00, 0x08,             // length 8
        0x01, 0x00,             // template id 256
        0x00, 0x00,             // field count 0 = withdrawal
    ];
    decode(&mut d, &withdrawal, 0);
    assert_eq!(d.template_count(), 0);
    let mut m = Message::ipfix(0, 1, 1);
    m.data(256, &fields, &[rec]);
    assert!(
        decode(&mut d, &m.build(), 0).is_empty(),
        "held, not decoded"
    );
    let s = d.stats_for(&key(Version::Ipfix, 1)).expect("stats");
    assert_eq!((s.templates_withdrawn, s.pending_sets_held), (1, 1));
    assert_eq!(s.sequence_lost, 0);
}

#[test]
fn ipfix_withdraw_all_and_expiry() {
    let fields = [ie(8, 4), ie(12, 4), ie(1, 4)];
    let mut d = Decoder::new(DecoderConfig {
        template_timeout_secs: 60,
        ..Default::default()
    });
    let mut m = Message::ipfix(0, 0, 1);
    m.template(256, &fields).template(257, &fields);
    decode(&mut d, &m.build(), 0);
    assert_eq!(d.template_count(), 2);
    let mut w = Message::ipfix(0, 0, 1);
    w.withdraw(2, false);
    decode(&mut d, &w.build(), 0);
    assert_eq!(d.template_count(), 0);
    decode(&mut d, &m.build(), 100);
    d.expire(150);
    assert_eq!(d.template_count(), 2, "50 s old: kept");
    decode(&mut d, &m.build(), 155); // refresh of identical templates
    d.expire(200);
    assert_eq!(d.template_count(), 2);
    d.expire(216);
    assert_eq!(d.template_count(), 0);
    let s = d.stats_for(&key(Version::Ipfix, 1)).expect("stats");
    assert_eq!(
        (s.templates_withdrawn, s.templates_expired, s.templates),
        (2, 2, 6)
    );
}

fn ipfix_records(seq: u32, n: usize) -> Vec<u8> {
    let fields = [ie(8, 4), ie(12, 4), ie(1, 4)];
    let rec = vec![
        Value::Ip(ip("10.0.0.1")),
        Value::Ip(ip("10.0.0.2")),
        Value::U(7),
    ];
    let mut m = Message::ipfix(0, seq, 1);
    m.template(256, &fields).data(256, &fields, &vec![rec; n]);
    m.build()
}

#[test]
fn ipfix_sequence_counts_records_and_tolerates_softflowd() {
    let mut d = Decoder::default();
    for (seq, n) in [(0, 3), (3, 2), (10, 1), (11, 4)] {
        decode(&mut d, &ipfix_records(seq, n), 0);
    }
    let s = d.stats_for(&key(Version::Ipfix, 1)).expect("stats");
    assert_eq!((s.sequence_lost, s.records), (5, 10), "5..10 missing");

    // softflowd: each number already counts the message's own records.
    let mut d = Decoder::default();
    for (seq, n) in [(3, 3), (5, 2), (6, 1), (10, 4), (11, 1)] {
        decode(&mut d, &ipfix_records(seq, n), 0);
    }
    let s = d.stats_for(&key(Version::Ipfix, 1)).expect("stats");
    assert_eq!((s.sequence_lost, s.sequence_resets, s.records), (0, 0, 11));
}

#[test]
fn v9_sequence_counts_datagrams() {
    let mut d = Decoder::default();
    decode(&mut d, V9_TEMPLATE, 0);
    let mut pkt = V9_DATA.to_vec();
    for seq in [8u32, 9, 12, 13] {
        pkt[12..16].copy_from_slice(&seq.to_be_bytes());
        decode(&mut d, &pkt, 0);
    }
    let s = d.stats_for(&key(Version::V9, 42)).expect("stats");
    assert_eq!((s.sequence_lost, s.records), (2, 8));
}

#[test]
fn errors_are_counted_by_reason() {
    let mut d = Decoder::default();
    let mut out = Vec::new();
    let e = d
        .decode(exporter(), &[0, 7, 0, 0], 0, &mut out)
        .expect_err("v7");
    assert_eq!(e.reason().as_str(), "unknown_version");
    let e = d
        .decode(exporter(), &V9_DATA[..10], 0, &mut out)
        .expect_err("short");
    assert_eq!(
        e.to_string(),
        "NetFlow v9 packet from 10.0.0.7:2055: 10 bytes are too short for the 20-byte header"
    );
    let mut bad = V9_DATA.to_vec();
    bad[22..24].copy_from_slice(&200u16.to_be_bytes());
    let e = d.decode(exporter(), &bad, 0, &mut out).expect_err("set");
    assert_eq!(e.reason(), ErrorReason::BadSet);
    let total = d.total_stats();
    assert_eq!(total.errors.total(), 3);
    assert_eq!(total.errors.get(ErrorReason::ShortHeader), 1);
}

#[test]
fn ipfix_absolute_and_uptime_times() {
    // Options data announces systemInitTimeMilliseconds (160); data records carry
    // flowStartSysUpTime (22) / flowEndSysUpTime (21) relative to it, or NTP-format
    // flowStartMicroseconds (154) / flowEndNanoseconds (157), or seconds (150/151).
    let init_ms = T0 * 1000 - 3_600_000; // booted an hour before T0
    let opt = [ie(149, 4), ie(160, 8)];
    let up = [ie(8, 4), ie(12, 4), ie(22, 4), ie(21, 4)];
    let ntp = [ie(8, 4), ie(12, 4), ie(154, 8), ie(157, 8)];
    let secs = [ie(8, 4), ie(12, 4), ie(150, 4), ie(151, 4)];
    let a = || Value::Ip(ip("10.0.0.1"));
    let ntp_of = |unix_ns: u64| {
        let secs = unix_ns / NS + 2_208_988_800;
        let frac = ((unix_ns % NS) << 32).div_ceil(NS);
        Value::U(secs << 32 | frac)
    };
    let mut m = Message::ipfix(T0 as u32, 0, 1);
    m.options_template(256, &opt[..1], &opt[1..])
        .data(256, &opt, &[vec![Value::U(1), Value::U(init_ms)]])
        .template(257, &up)
        .data(
            257,
            &up,
            &[vec![a(), a(), Value::U(3_000_000), Value::U(3_599_000)]],
        )
        .template(258, &ntp)
        .data(
            258,
            &ntp,
            &[vec![
                a(),
                a(),
                ntp_of(T0 * NS - 1_500_000_000),
                ntp_of(T0 * NS + 250),
            ]],
        )
        .template(259, &secs)
        .data(
            259,
            &secs,
            &[vec![a(), a(), Value::U(T0 - 10), Value::U(T0)]],
        );
    let mut d = Decoder::default();
    let r = decode(&mut d, &m.build(), 0);
    let times: Vec<(u64, u64)> = r.iter().map(|r| (r.start_ns, r.end_ns)).collect();
    assert_eq!(
        times,
        vec![
            (
                (init_ms + 3_000_000) * 1_000_000,
                (init_ms + 3_599_000) * 1_000_000
            ),
            (T0 * NS - 1_500_000_000, T0 * NS + 250),
            ((T0 - 10) * NS, T0 * NS),
        ]
    );
}
