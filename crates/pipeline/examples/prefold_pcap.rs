//! Profiling aid: decodes a NetFlow/IPFIX pcap (the cluster stream of
//! crates/netflow/examples/cluster_stream.rs) into batches of 64 datagrams as the
//! listener does, then times the decode and the pre-sums separately over `loops`
//! replays, single-threaded. `prefold_pcap FILE.pcap [loops]`.

use std::net::SocketAddr;
use std::time::Instant;

use podflow_netflow::{Batch, Decoder, DecoderConfig, ObserverNames};
use podflow_pipeline::prefold::Prefold;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: prefold_pcap FILE.pcap [loops]")?;
    let loops: usize = match args.next() {
        Some(s) => s.parse().map_err(|e| format!("loops {s:?}: {e}"))?,
        None => 10,
    };
    let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let dgrams = podflow_testkit::pcap::udp_payloads(&data).map_err(|e| format!("{path}: {e}"))?;
    let mut dec = Decoder::new(DecoderConfig::default());
    let mut names = ObserverNames::new(65_536);
    let now = 1_790_000_000;
    let mut decode_into = |b: &mut Batch, chunk: &[(SocketAddr, &[u8])]| {
        b.clear();
        for (from, d) in chunk {
            let _ = names.decode(&mut dec, *from, d, now, b);
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
