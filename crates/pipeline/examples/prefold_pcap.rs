//! Profiling aid: decodes a NetFlow/IPFIX pcap (the cluster stream of
//! crates/netflow/examples/cluster_stream.rs) into batches of 64 datagrams as the
//! listener does, then times the decode and the pre-sums separately over `loops`
//! replays, single-threaded. `prefold_pcap FILE.pcap [loops]`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use podflow_netflow::{Batch, Decoder, DecoderConfig};
use podflow_pipeline::prefold::Prefold;

/// The (exporter, UDP payload) of every Ethernet/IPv4/UDP frame of a classic pcap.
fn datagrams(data: &[u8]) -> Result<Vec<(SocketAddr, &[u8])>, String> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = data
            .get(at + 8..at + 12)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("short record header")?;
        let frame = data
            .get(at + 16..at + 16 + len)
            .ok_or_else(|| format!("frame at byte {at} runs past the file"))?;
        at += 16 + len;
        let ip = frame.get(14..).filter(|ip| ip.len() >= 28);
        let Some(ip) = ip else {
            return Err(format!("frame at byte {at} is not Ethernet/IPv4/UDP"));
        };
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let sport = u16::from_be_bytes([ip[20], ip[21]]);
        out.push((SocketAddr::from((src, sport)), &ip[28..]));
    }
    Ok(out)
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: prefold_pcap FILE.pcap [loops]")?;
    let loops: usize = match args.next() {
        Some(s) => s.parse().map_err(|e| format!("loops {s:?}: {e}"))?,
        None => 10,
    };
    let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let dgrams = datagrams(&data).map_err(|e| format!("{path}: {e}"))?;
    let mut dec = Decoder::new(DecoderConfig::default());
    let mut observers: HashMap<(std::net::IpAddr, u32), Arc<str>> = HashMap::new();
    let now = 1_790_000_000;
    let mut decode_into = |b: &mut Batch, chunk: &[(SocketAddr, &[u8])]| {
        b.flows.clear();
        b.observers.clear();
        let mut last: Option<((std::net::IpAddr, u32), u32)> = None;
        for (from, d) in chunk {
            let batch_observers = &mut b.observers;
            let observer = |k: &podflow_netflow::DomainKey| {
                let key = (k.exporter.ip(), k.domain);
                match last {
                    Some((k, i)) if k == key => i,
                    _ => {
                        let o = observers
                            .entry(key)
                            .or_insert_with(|| Arc::from(format!("{}/{}", key.0, key.1)));
                        let i = Batch::index_in(batch_observers, o);
                        last = Some((key, i));
                        i
                    }
                }
            };
            let _ = dec.decode_flows(*from, d, now, observer, &mut b.flows);
        }
    };
    // One loop decoded and kept, for the sums.
    let batches: Vec<Batch> = dgrams
        .chunks(64)
        .map(|c| {
            let mut b = Batch::default();
            decode_into(&mut b, c);
            b
        })
        .collect();
    let per_loop: usize = batches.iter().map(|b| b.flows.len()).sum();
    let records = per_loop * loops;
    let mut dec_s = f64::MAX;
    let mut fold_s = f64::MAX;
    let mut p = Prefold::new(10, 4_000_000);
    for _ in 0..3 {
        let t = Instant::now();
        let mut b = Batch::default();
        for _ in 0..loops {
            for chunk in dgrams.chunks(64) {
                decode_into(&mut b, chunk);
            }
        }
        dec_s = dec_s.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..loops {
            for b in &batches {
                let rest = p.add_batch(b, 5_000_000_000);
                assert!(rest.is_empty(), "the sums hold every key");
            }
        }
        fold_s = fold_s.min(t.elapsed().as_secs_f64());
    }
    println!(
        "records={records} keys={} decode_ns_per_record={:.1} prefold_ns_per_record={:.1}",
        p.len(),
        dec_s * 1e9 / records as f64,
        fold_s * 1e9 / records as f64
    );
    Ok(())
}
