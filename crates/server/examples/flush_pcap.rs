//! Profiling aid: what one interval's flush costs the server. Decodes a NetFlow/IPFIX
//! capture (crates/netflow/examples/cluster_stream.rs) into the pre-sums as the receive
//! threads do, then closes the interval as the server does — attribution, aggregation,
//! the live metrics, the embedded store's write — and times that, over `rounds`
//! intervals in a row (each new, as the live server's are).
//!
//! `flush_pcap FILE.pcap [rounds] [--inventory FILE] [--cloud-ranges DIR]`
//!
//! Prints per round the flows flushed, the process's CPU seconds (all threads) and wall
//! seconds of the flush, and the store's part; last line
//! `flush_cpu_us_per_flow=<median over rounds>` (after the least, `_min=`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podflow_netflow::{Batch, Decoder, DecoderConfig, ObserverNames};
use podflow_role::Registry;
use podflow_server::{Driver, DriverConfig, EnrichSettings, InventorySource, MAX_PENDING_ROWS};
use podflow_store::SqliteStore;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: flush_pcap FILE.pcap [rounds] [--inventory FILE] [--cloud-ranges DIR]")?;
    let mut rounds = 5usize;
    let mut settings = EnrichSettings::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--inventory" => {
                let f = args.next().ok_or("--inventory needs a file")?;
                settings.inventory = InventorySource::File(PathBuf::from(f));
            }
            "--cloud-ranges" => {
                let d = args.next().ok_or("--cloud-ranges needs a folder")?;
                settings.cloud_ranges = Some(PathBuf::from(d));
            }
            n => rounds = n.parse().map_err(|e| format!("rounds {n:?}: {e}"))?,
        }
    }
    let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let dgrams = podflow_testkit::pcap::udp_payloads(&data).map_err(|e| format!("{path}: {e}"))?;
    let mut dec = Decoder::new(DecoderConfig::default());
    let mut names = ObserverNames::new(65_536);
    let batches: Vec<Batch> = dgrams
        .chunks(64)
        .map(|chunk: &[(SocketAddr, &[u8])]| {
            let mut b = Batch::default();
            for (from, d) in chunk {
                let _ = names.decode(&mut dec, *from, d, 1_790_000_000, &mut b);
            }
            b
        })
        .collect();
    let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let store = SqliteStore::open(&dir.path().join("flush.sqlite")).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let pid = std::process::id();
    let cpu = || podflow_testkit::cpu_seconds(pid).unwrap_or(0.0);
    let per_flow = rt.block_on(async {
        let cfg = DriverConfig {
            settings,
            observer: None,
            interval_s: 10,
            max_keys: 4_000_000,
            retention: Duration::from_secs(86_400),
            max_pending_rows: MAX_PENDING_ROWS,
            probe_ports: Vec::new(),
            netflow_keep_addresses: false,
        };
        let registry = Registry::new(&Default::default());
        let token = tokio_util::sync::CancellationToken::new();
        let mut d = Driver::new(cfg, store, Arc::clone(&registry), &token)
            .await
            .map_err(|e| e.to_string())?;
        let prefold = d.prefold();
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as u64);
        let mut per_flow = Vec::new();
        for round in 0..rounds {
            // Each round an interval of its own after the last (all new keys).
            let at = now_ns + round as u64 * 10_000_000_000;
            let flows = {
                let mut p = prefold.lock().map_err(|_| "prefold lock poisoned")?;
                for b in &batches {
                    let rest = p.add_batch(b, at);
                    if !rest.is_empty() {
                        return Err(format!("the pre-sums refused {} flows", rest.len()));
                    }
                }
                p.len()
            };
            let store_ns = || registry.pipeline.store_ns.load(std::sync::atomic::Ordering::Relaxed);
            let (c0, s0, t0) = (cpu(), store_ns(), Instant::now());
            d.finish().await;
            let (c, wall) = (cpu() - c0, t0.elapsed().as_secs_f64());
            let store_s = (store_ns() - s0) as f64 / 1e9;
            println!(
                "round {round}: {flows} flows, flush cpu {c:.2} s, wall {wall:.2} s, store {store_s:.2} s wall"
            );
            per_flow.push(c * 1e6 / flows.max(1) as f64);
        }
        per_flow.sort_by(f64::total_cmp);
        let min = per_flow.first().copied().unwrap_or(0.0);
        let median = per_flow.get(per_flow.len() / 2).copied().unwrap_or(0.0);
        Ok::<(f64, f64), String>((min, median))
    })?;
    println!("flush_cpu_us_per_flow_min={:.3}", per_flow.0);
    println!("flush_cpu_us_per_flow={:.3}", per_flow.1);
    Ok(())
}
