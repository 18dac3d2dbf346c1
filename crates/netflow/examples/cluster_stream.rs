//! The NetFlow benchmark's cluster stream (scripts/bench-netflow.sh --cluster): the v9 or
//! IPFIX export of every node of a simulated cluster, as a pcap that tcpreplay replays
//! onto a loopback, plus the matching inventory (Kubernetes List YAML) and cloud ranges
//! (an AWS ip-ranges.json) for `podflow server --inventory ... --cloud-ranges ...`.
//!
//! ```text
//! cargo run --release -p podflow-netflow --example cluster_stream -- OUT_DIR [NODES PODS]
//! cargo run --release -p podflow-netflow --example cluster_stream -- --distinct N OUT_DIR
//! ```
//!
//! `--distinct N` writes the worst case instead (scripts/bench-netflow.sh without
//! `--cluster`): one exporter's N one-way records, each of its own address pair (a random
//! 10.0.0.0/8 source, a random 172.16.0.0/12 destination, random ports, TCP; no inventory
//! is loaded, so none is in a cluster), as `distinct_v5.pcap`, `distinct_v9.pcap` and `distinct_ipfix.pcap` with
//! `distinct_results.txt`. A replay loop is those N records; every loop repeats them.
//!
//! Defaults: 60 nodes in 3 zones, 4,000 pods, 200 Services. Every node's pods open, per
//! pod: 3 connections to each of 2 pods on other nodes (both nodes export those), 3 to
//! each of 2 Services (half dialled at the ClusterIP, half at a backend pod), 1 to each of
//! 2 internet addresses (a pool of 5,000) and 2 to an S3 address. Each connection is two
//! one-way records (request, answer). The capture holds one record of each per export
//! round; replayed in a loop, the same connections repeat, as long-lived connections
//! repeat every active timeout. Node `n` exports from 127.0.1.`n+1` (port 20000 + `n`),
//! domain 0, to 127.0.0.1:2055, ~30 records a datagram, the template every 32
//! datagrams of each exporter. Deterministic: the same arguments give the same files.
//!
//! The cluster and its inventory come from `podflow_testkit::cluster` (shared with the
//! server sizing benchmark).
//!
//! Writes `cluster_v9.pcap`, `cluster_ipfix.pcap`, `inventory.yaml`,
//! `cloud/ip-ranges.json` and `results.txt` (one line per capture: `NAME: D datagrams
//! carrying R flow records per loop`, the format bench-netflow.sh reads).

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use podflow_netflow::encode::{IPFIX_IPV4_18, Message, V9_IPV4_18, Value};
use podflow_testkit::cluster::{Cluster, INTERNET_POOL, Rng, S3_BASE, cloud_ranges, internet_ip};

/// One one-way record: (exporting node, src, sport, dst, dport, bytes, packets, flags).
type Rec = (usize, Ipv4Addr, u16, Ipv4Addr, u16, u64, u64, u8);

/// Both records of a connection, exported by `nodes` (one or two).
fn connection(
    out: &mut Vec<Rec>,
    nodes: &[usize],
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    rng: &mut Rng,
) {
    let req = 2 + rng.below(8) as u64;
    let resp = 2 + rng.below(20) as u64;
    for &n in nodes {
        out.push((n, src, sport, dst, dport, req * 120, req, 0x18));
        out.push((n, dst, dport, src, sport, resp * 900, resp, 0x18));
    }
}

/// Every record of one export round.
fn records(c: &Cluster, rng: &mut Rng) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut port = 32768u16;
    let mut eph = || {
        port = if port >= 60999 { 32768 } else { port + 1 };
        port
    };
    let s3 = S3_BASE;
    for (p, &(node, ip)) in c.pods.iter().enumerate() {
        for _ in 0..2 {
            let q = c.remote_pod(node, rng);
            let (qnode, qip) = c.pods[q];
            for _ in 0..3 {
                connection(&mut out, &[node, qnode], (ip, eph()), (qip, 8080), rng);
            }
        }
        for k in 0..2 {
            let (cip, backends) = &c.services[(p * 7 + k * 13) % c.services.len()];
            for j in 0..3 {
                let backend = backends[j % backends.len()];
                let (bnode, bip) = c.pods[backend];
                let (dst, nodes) = if j % 2 == 0 {
                    (*cip, vec![node])
                } else {
                    (bip, vec![node, bnode])
                };
                connection(&mut out, &nodes, (ip, eph()), (dst, 80), rng);
            }
        }
        for _ in 0..2 {
            let dst = internet_ip(rng.below(INTERNET_POOL));
            connection(&mut out, &[node], (ip, eph()), (dst, 443), rng);
        }
        let s3ip = Ipv4Addr::from(u32::from(s3) + rng.below(1 << 17) as u32);
        for _ in 0..2 {
            connection(&mut out, &[node], (ip, eph()), (s3ip, 443), rng);
        }
    }
    out
}

/// A record's field values in the 18-field template's order.
fn values(r: &Rec, ipfix: bool, now_ms: u64, uptime_ms: u64) -> Vec<Value> {
    let &(_, src, sport, dst, dport, bytes, packets, flags) = r;
    let ip = |a: Ipv4Addr| Value::Ip(IpAddr::V4(a));
    let (start, end) = if ipfix {
        (now_ms - 4000, now_ms - 10)
    } else {
        (uptime_ms - 4000, uptime_ms - 10)
    };
    vec![
        ip(src),
        ip(dst),
        ip(Ipv4Addr::UNSPECIFIED),
        Value::U(1),
        Value::U(2),
        Value::U(packets),
        Value::U(bytes),
        Value::U(start),
        Value::U(end),
        Value::U(u64::from(sport)),
        Value::U(u64::from(dport)),
        Value::U(u64::from(flags)),
        Value::U(6),
        Value::U(0),
        Value::U(0),
        Value::U(0),
        Value::U(24),
        Value::U(24),
    ]
}

/// The worst case's records: `n` one-way records, each of its own address pair, from a
/// random 10.0.0.0/8 address to a random 172.16.0.0/12 one (none in the cluster, no
/// inventory loaded), exported by node 0.
fn distinct_records(n: usize, rng: &mut Rng) -> Vec<Rec> {
    (0..n)
        .map(|_| {
            let src = Ipv4Addr::from(0x0a00_0000 | (rng.next_u64() as u32 & 0x00ff_ffff));
            let dst = Ipv4Addr::from(0xac10_0000 | (rng.next_u64() as u32 & 0x000f_ffff));
            let sport = 1024 + rng.below(64_000) as u16;
            let dport = [443u16, 80, 53, 8080][rng.below(4)];
            let packets = 1 + rng.below(20) as u64;
            (
                0,
                src,
                sport,
                dst,
                dport,
                packets * (60 + rng.below(1400) as u64),
                packets,
                0x18,
            )
        })
        .collect()
}

/// The v5 export datagrams of node 0's records (v5 carries at most 30 a datagram).
fn v5_datagrams(recs: &[Rec]) -> Vec<(usize, Vec<u8>)> {
    use podflow_netflow::encode::{V5Flow, V5Header, v5};
    let (now_s, uptime_ms) = (1_790_000_000u32, 86_400_000u32);
    let mut sequence = 0u32;
    recs.chunks(30)
        .map(|chunk| {
            let flows: Vec<V5Flow> = chunk
                .iter()
                .map(
                    |&(_, src, sport, dst, dport, bytes, packets, flags)| V5Flow {
                        src,
                        dst,
                        input: 1,
                        output: 2,
                        packets: packets as u32,
                        bytes: bytes as u32,
                        first: uptime_ms - 4000,
                        last: uptime_ms - 10,
                        src_port: sport,
                        dst_port: dport,
                        tcp_flags: flags,
                        proto: 6,
                    },
                )
                .collect();
            let h = V5Header {
                sys_uptime: uptime_ms,
                unix_secs: now_s,
                unix_nsecs: 0,
                flow_sequence: sequence,
                engine_type: 0,
                engine_id: 0,
                sampling: 0,
            };
            sequence = sequence.wrapping_add(flows.len() as u32);
            (0, v5(&h, &flows))
        })
        .collect()
}

/// The export datagrams of every node, interleaved: (node, UDP payload).
fn datagrams(nodes: usize, recs: &[Rec], ipfix: bool) -> Vec<(usize, Vec<u8>)> {
    const PER_DATAGRAM: usize = 30;
    const TEMPLATE_EVERY: usize = 32;
    // Export time: September 2026, after the pods' creation and before any replay.
    let (now_s, uptime_ms) = (1_790_000_000u32, 86_400_000u64);
    let now_ms = u64::from(now_s) * 1000;
    let tpl = if ipfix { &IPFIX_IPV4_18 } else { &V9_IPV4_18 };
    let mut per_node: Vec<Vec<&Rec>> = vec![Vec::new(); nodes];
    for r in recs {
        per_node[r.0].push(r);
    }
    let mut each: Vec<Vec<Vec<u8>>> = Vec::with_capacity(nodes);
    for rs in &per_node {
        let (mut seq, mut out) = (0u32, Vec::new());
        for (i, chunk) in rs.chunks(PER_DATAGRAM).enumerate() {
            let mut m = if ipfix {
                Message::ipfix(now_s, seq, 0)
            } else {
                Message::v9(uptime_ms as u32, now_s, seq, 0)
            };
            if i % TEMPLATE_EVERY == 0 {
                m.template(256, tpl);
            }
            let vals: Vec<Vec<Value>> = chunk
                .iter()
                .map(|r| values(r, ipfix, now_ms, uptime_ms))
                .collect();
            m.data(256, tpl, &vals);
            // v9 counts datagrams, IPFIX data records.
            seq = seq.wrapping_add(if ipfix { chunk.len() as u32 } else { 1 });
            out.push(m.build());
        }
        each.push(out);
    }
    // Round-robin over the nodes, so every part of a replay carries every exporter.
    let longest = each.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..longest {
        for (n, d) in each.iter().enumerate() {
            if let Some(p) = d.get(i) {
                out.push((n, p.clone()));
            }
        }
    }
    out
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An Ethernet/IPv4/UDP frame from node `n`'s exporter to 127.0.0.1:2055 (UDP checksum
/// 0: none, allowed over IPv4).
fn frame(n: usize, id: u16, payload: &[u8]) -> Vec<u8> {
    let src = Ipv4Addr::new(127, 0, 1, (n % 250 + 1) as u8);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&[127, 0, 0, 1]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&(20000 + n as u16).to_be_bytes());
    f.extend_from_slice(&2055u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn write_pcap(path: &Path, dgrams: &[(usize, Vec<u8>)]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    // Classic pcap, microseconds, snaplen 65535, Ethernet.
    for v in [0xa1b2_c3d4u32.to_le_bytes().to_vec(), vec![2, 0, 4, 0]] {
        w.write_all(&v)?;
    }
    for v in [0u32, 0, 65535, 1] {
        w.write_all(&v.to_le_bytes())?;
    }
    for (i, (n, p)) in dgrams.iter().enumerate() {
        let f = frame(*n, i as u16, p);
        let us = i as u64 * 10;
        for v in [
            1_800_000_000 + (us / 1_000_000) as u32,
            (us % 1_000_000) as u32,
            f.len() as u32,
            f.len() as u32,
        ] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&f)?;
    }
    w.flush()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--distinct") {
        return distinct(&args[1..]);
    }
    let usage = "usage: cluster_stream OUT_DIR [NODES PODS] | --distinct N OUT_DIR";
    let out = Path::new(args.first().ok_or(usage)?);
    let num = |i: usize, d: usize| -> Result<usize, String> {
        args.get(i).map_or(Ok(d), |s| {
            s.parse()
                .map_err(|_| format!("{usage}: {s:?} is not a number"))
        })
    };
    let (nodes, pods) = (num(1, 60)?, num(2, 4000)?);
    if nodes == 0 || nodes > 250 || pods < nodes || pods > nodes * 250 {
        return Err(format!("{usage}: 1..=250 nodes, NODES..=250*NODES pods").into());
    }
    std::fs::create_dir_all(out.join("cloud"))?;
    let mut rng = Rng(17);
    let c = Cluster::new(nodes, pods, &mut rng);
    let recs = records(&c, &mut rng);
    std::fs::write(out.join("inventory.yaml"), c.inventory())?;
    std::fs::write(out.join("cloud/ip-ranges.json"), cloud_ranges())?;
    let mut results = String::new();
    for (name, ipfix) in [("cluster_v9.pcap", false), ("cluster_ipfix.pcap", true)] {
        let d = datagrams(c.nodes, &recs, ipfix);
        write_pcap(&out.join(name), &d)?;
        let line = format!(
            "{name}: {} datagrams carrying {} flow records per loop ({:.1} a datagram; \
             {nodes} nodes, {pods} pods)",
            d.len(),
            recs.len(),
            recs.len() as f64 / d.len() as f64
        );
        println!("{line}");
        results.push_str(&line);
        results.push('\n');
    }
    std::fs::write(out.join("results.txt"), results)?;
    Ok(())
}

/// `--distinct N OUT_DIR`: the worst case's three captures.
fn distinct(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: cluster_stream --distinct N OUT_DIR";
    let n: usize = args
        .first()
        .and_then(|s| s.parse().ok())
        .filter(|n| (1..=10_000_000).contains(n))
        .ok_or_else(|| format!("{usage}: N is a number of records, 1..=10000000"))?;
    let out = Path::new(args.get(1).ok_or(usage)?);
    std::fs::create_dir_all(out)?;
    let recs = distinct_records(n, &mut Rng(23));
    let pairs: std::collections::HashSet<(Ipv4Addr, Ipv4Addr)> =
        recs.iter().map(|r| (r.1, r.3)).collect();
    let mut results = String::new();
    for (name, d) in [
        ("distinct_v5.pcap", v5_datagrams(&recs)),
        ("distinct_v9.pcap", datagrams(1, &recs, false)),
        ("distinct_ipfix.pcap", datagrams(1, &recs, true)),
    ] {
        write_pcap(&out.join(name), &d)?;
        let line = format!(
            "{name}: {} datagrams carrying {} flow records per loop ({:.1} a datagram; \
             {} distinct address pairs)",
            d.len(),
            recs.len(),
            recs.len() as f64 / d.len() as f64,
            pairs.len()
        );
        println!("{line}");
        results.push_str(&line);
        results.push('\n');
    }
    std::fs::write(out.join("distinct_results.txt"), results)?;
    Ok(())
}
