//! What the decoder keeps for exporters stays within its bounds, whoever sends:
//! templates per exporter and in total, domains, and every eviction is counted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use podflow_netflow::encode::{Message, Value, ie};
use podflow_netflow::{Decoder, DecoderConfig, DomainKey, FlowRecord, Version};

/// The i-th of many exporters, all on 127.0.0.0/8.
fn exporter(i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + 1 + i)), 2055)
}

/// One IPFIX message announcing `templates` templates (ids 256..) for domain 1.
fn announce(templates: u16, seq: u32) -> Vec<u8> {
    let fields = [ie(8, 4), ie(12, 4), ie(1, 4)];
    let mut m = Message::ipfix(1_700_000_000, seq, 1);
    for id in 256..256 + templates {
        m.template(id, &fields);
    }
    m.build()
}

fn decode(d: &mut Decoder, from: SocketAddr, pkt: &[u8], now: u64) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    d.decode(from, pkt, now, &mut out).expect("decodes");
    out
}

#[test]
fn ten_thousand_exporters_stay_within_the_template_and_domain_bounds() {
    let cfg = DecoderConfig {
        max_templates: 1000,
        max_templates_per_exporter: 3,
        max_domains: 100_000,
        ..Default::default()
    };
    let mut d = Decoder::new(cfg);
    let pkt = announce(4, 0);
    let mut high = 0;
    for i in 0..10_000 {
        decode(&mut d, exporter(i), &pkt, 1000);
        high = high.max(d.template_count());
        assert!(d.template_count_for(exporter(i).ip()) <= 3);
    }
    assert_eq!(high, 1000, "never above the total bound");
    assert_eq!(d.template_count(), 1000);
    let t = d.total_stats();
    assert_eq!(t.templates, 40_000, "every template was received");
    // The fourth template of each exporter displaced its own oldest one...
    assert_eq!(t.templates_evicted_exporter_limit, 10_000);
    // ...and of the 30,000 that remained, all but the newest 1000 were evicted.
    assert_eq!(t.templates_evicted_total_limit, 29_000);
    assert_eq!(
        t.templates - t.templates_evicted_exporter_limit - t.templates_evicted_total_limit,
        d.template_count() as u64,
        "received = evicted + cached"
    );
    // The survivors are the newest exporters' (least recently announced go first).
    assert_eq!(d.template_count_for(exporter(9_999).ip()), 3);
    assert_eq!(d.template_count_for(exporter(0).ip()), 0);
    assert_eq!(d.domain_count(), 10_000);
}

#[test]
fn the_domain_table_is_bounded_and_forgotten_domains_keep_their_counts() {
    let cfg = DecoderConfig {
        max_domains: 1600,
        ..Default::default()
    };
    let mut d = Decoder::new(cfg);
    let pkt = announce(2, 0);
    let mut high = 0;
    for i in 0..10_000u32 {
        decode(&mut d, exporter(i), &pkt, 1000 + u64::from(i));
        high = high.max(d.domain_count());
    }
    assert!(high <= 1600, "{high}");
    let t = d.total_stats();
    assert_eq!(
        t.datagrams, 10_000,
        "counters of forgotten domains stay in the totals"
    );
    assert_eq!(t.templates, 20_000);
    assert_eq!(t.domains_evicted, 10_000 - d.domain_count() as u64);
    assert_eq!(t.templates_evicted_domain_limit, 2 * t.domains_evicted);
    assert_eq!(d.template_count(), 2 * d.domain_count());
    // The oldest went first: the last exporter is still known, the first is not.
    let key = |i| DomainKey {
        exporter: exporter(i),
        version: Version::Ipfix,
        domain: 1,
    };
    assert!(d.stats_for(&key(9_999)).is_some());
    assert!(d.stats_for(&key(0)).is_none());
    assert_eq!(d.retired_stats().domains_evicted, t.domains_evicted);
}

#[test]
fn idle_domains_expire_with_their_templates_and_an_active_one_stays() {
    let cfg = DecoderConfig {
        template_timeout_secs: 0, // templates never time out on their own
        domain_idle_secs: 600,
        ..Default::default()
    };
    let mut d = Decoder::new(cfg);
    let fields = [ie(8, 4), ie(12, 4), ie(1, 4)];
    for i in 0..100 {
        decode(&mut d, exporter(i), &announce(2, 0), 0);
    }
    assert_eq!((d.domain_count(), d.template_count()), (100, 200));
    // Exporter 7 keeps sending data.
    let mut m = Message::ipfix(1_700_000_000, 0, 1);
    m.data(
        256,
        &fields,
        &[vec![
            Value::Ip("10.0.0.1".parse().expect("ip")),
            Value::Ip("10.0.0.2".parse().expect("ip")),
            Value::U(1500),
        ]],
    );
    let flows = decode(&mut d, exporter(7), &m.build(), 500);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].bytes, 1500);
    d.expire(601);
    assert_eq!((d.domain_count(), d.template_count()), (1, 2));
    let t = d.total_stats();
    assert_eq!((t.domains_expired, t.templates_expired), (99, 198));
    assert_eq!((t.datagrams, t.records), (101, 1));
    d.expire(1101);
    assert_eq!((d.domain_count(), d.template_count()), (0, 0));
    assert_eq!(d.total_stats().domains_expired, 100);
}

#[test]
fn an_exporter_that_cycles_template_ids_evicts_only_its_own() {
    let cfg = DecoderConfig {
        max_templates_per_exporter: 8,
        ..Default::default()
    };
    let mut d = Decoder::new(cfg);
    decode(&mut d, exporter(1), &announce(4, 0), 0);
    // Exporter 0 announces 1000 distinct ids, a few per message.
    let fields = [ie(8, 4), ie(12, 4), ie(2, 4)];
    for k in 0..250u16 {
        let mut m = Message::ipfix(1_700_000_000, 0, 1);
        for id in 0..4 {
            m.template(256 + k * 4 + id, &fields);
        }
        decode(&mut d, exporter(0), &m.build(), 1);
    }
    assert_eq!(d.template_count_for(exporter(0).ip()), 8);
    assert_eq!(d.template_count_for(exporter(1).ip()), 4, "untouched");
    let s = d
        .stats_for(&DomainKey {
            exporter: exporter(0),
            version: Version::Ipfix,
            domain: 1,
        })
        .expect("stats");
    assert_eq!(s.templates_evicted_exporter_limit, 992);
    assert_eq!(d.total_stats().templates_evicted_total_limit, 0);
}

#[test]
fn a_refresh_makes_a_template_the_most_recent_and_saves_it_from_eviction() {
    let cfg = DecoderConfig {
        max_templates: 4,
        ..Default::default()
    };
    let mut d = Decoder::new(cfg);
    decode(&mut d, exporter(0), &announce(2, 0), 0); // A: 256, 257
    decode(&mut d, exporter(1), &announce(2, 0), 0); // B
    decode(&mut d, exporter(0), &announce(2, 0), 1); // A refreshed
    decode(&mut d, exporter(2), &announce(2, 0), 2); // C evicts B's two
    assert_eq!(d.template_count_for(exporter(0).ip()), 2);
    assert_eq!(d.template_count_for(exporter(1).ip()), 0);
    assert_eq!(d.template_count_for(exporter(2).ip()), 2);
    assert_eq!(d.total_stats().templates_evicted_total_limit, 2);
}
