//! Decode throughput for v5, v9 and IPFIX with realistic datagrams (30 records each).
//!
//! Plain std::time (no criterion). Prints records/s per version; the last line is
//! `netflow_decode_records_per_sec_v9=<n>`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use podflow_netflow::encode::{IPFIX_IPV4_18, Message, V5Flow, V5Header, V9_IPV4_18, Value, v5};
use podflow_netflow::{Decoder, FlowRecord};

const PER_DATAGRAM: usize = 30;
const DATAGRAMS: usize = 64;

fn addr(i: usize, net: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, net, (i >> 8) as u8, i as u8)
}

fn values(i: usize, ipfix: bool) -> Vec<Value> {
    let (start, end) = if ipfix {
        (1_700_000_000_000 + i as u64, 1_700_000_001_000 + i as u64)
    } else {
        (900_000 + i as u64, 999_000)
    };
    vec![
        Value::Ip(IpAddr::V4(addr(i, 1))),
        Value::Ip(IpAddr::V4(addr(i * 7, 2))),
        Value::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        Value::U(3),
        Value::U(4),
        Value::U(10 + i as u64 % 50),
        Value::U(1500 * (10 + i as u64 % 50)),
        Value::U(start),
        Value::U(end),
        Value::U(40000 + i as u64),
        Value::U(443),
        Value::U(0x1b),
        Value::U(6),
        Value::U(0),
        Value::U(64512),
        Value::U(64513),
        Value::U(24),
        Value::U(24),
    ]
}

fn v9_datagrams() -> Vec<Vec<u8>> {
    (0..DATAGRAMS)
        .map(|d| {
            let mut m = Message::v9(1_000_000, 1_700_000_000, d as u32, 1);
            if d == 0 {
                m.template(256, &V9_IPV4_18);
            }
            let recs: Vec<_> = (0..PER_DATAGRAM)
                .map(|i| values(d * PER_DATAGRAM + i, false))
                .collect();
            m.data(256, &V9_IPV4_18, &recs);
            m.build()
        })
        .collect()
}

fn ipfix_datagrams() -> Vec<Vec<u8>> {
    (0..DATAGRAMS)
        .map(|d| {
            let mut m = Message::ipfix(1_700_000_000, (d * PER_DATAGRAM) as u32, 1);
            if d == 0 {
                m.template(256, &IPFIX_IPV4_18);
            }
            let recs: Vec<_> = (0..PER_DATAGRAM)
                .map(|i| values(d * PER_DATAGRAM + i, true))
                .collect();
            m.data(256, &IPFIX_IPV4_18, &recs);
            m.build()
        })
        .collect()
}

fn v5_datagrams() -> Vec<Vec<u8>> {
    (0..DATAGRAMS)
        .map(|d| {
            let h = V5Header {
                sys_uptime: 1_000_000,
                unix_secs: 1_700_000_000,
                flow_sequence: (d * PER_DATAGRAM) as u32,
                ..Default::default()
            };
            let flows: Vec<_> = (0..PER_DATAGRAM)
                .map(|i| {
                    let n = d * PER_DATAGRAM + i;
                    V5Flow {
                        src: addr(n, 1),
                        dst: addr(n * 7, 2),
                        input: 3,
                        output: 4,
                        packets: 10,
                        bytes: 15000,
                        first: 900_000,
                        last: 999_000,
                        src_port: 40000,
                        dst_port: 443,
                        tcp_flags: 0x1b,
                        proto: 6,
                    }
                })
                .collect();
            v5(&h, &flows)
        })
        .collect()
}

/// Decodes the datagrams repeatedly for about `budget`; returns records/s.
fn run(name: &str, packets: &[Vec<u8>], budget: Duration) -> f64 {
    let exporter: SocketAddr = "10.0.0.7:2055".parse().expect("addr");
    let mut d = Decoder::default();
    let mut out: Vec<FlowRecord> = Vec::with_capacity(PER_DATAGRAM * 2);
    // Warm up: installs the template.
    for p in packets {
        out.clear();
        let _ = d.decode(exporter, p, 0, &mut out);
    }
    let mut records = 0u64;
    let t = Instant::now();
    while t.elapsed() < budget {
        for _ in 0..50 {
            for p in packets {
                out.clear();
                let n = d.decode(exporter, black_box(p), 0, &mut out).unwrap_or(0);
                records += n as u64;
                black_box(&out);
            }
        }
    }
    let rate = records as f64 / t.elapsed().as_secs_f64();
    println!(
        "{name}: {:.2} M records/s ({} records/datagram)",
        rate / 1e6,
        PER_DATAGRAM
    );
    rate
}

/// The same datagrams through the `netflow_parser` crate, for a ratio on this machine.
fn run_reference(name: &str, packets: &[Vec<u8>], budget: Duration) -> f64 {
    let mut p = netflow_parser::NetflowParser::default();
    for pkt in packets {
        let r = p.parse_bytes(pkt);
        if r.error.is_some() || r.packets.is_empty() {
            println!(
                "netflow_parser {name}: parse error on the bench datagrams: {:?}",
                r.error
            );
        }
    }
    let mut records = 0u64;
    let t = Instant::now();
    while t.elapsed() < budget {
        for _ in 0..5 {
            for pkt in packets {
                let r = p.parse_bytes(black_box(pkt));
                records += if r.packets.is_empty() {
                    0
                } else {
                    PER_DATAGRAM as u64
                };
                black_box(&r);
            }
        }
    }
    let rate = records as f64 / t.elapsed().as_secs_f64();
    println!("netflow_parser {name}: {:.2} M records/s", rate / 1e6);
    rate
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );
    let mut lines = Vec::new();
    for (name, pkts) in [
        ("v5", v5_datagrams()),
        ("v9", v9_datagrams()),
        ("ipfix", ipfix_datagrams()),
    ] {
        let ours = run(name, &pkts, budget);
        let theirs = run_reference(name, &pkts, budget);
        lines.push((name, ours, theirs));
    }
    for (name, ours, theirs) in &lines {
        println!("{name}: podflow / netflow_parser = {:.1}x", ours / theirs);
    }
    let v9 = lines.iter().find(|l| l.0 == "v9").map_or(0.0, |l| l.1);
    println!("netflow_decode_records_per_sec_v9={v9:.0}");
}
