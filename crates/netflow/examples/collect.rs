//! The floor of podflow's NetFlow/IPFIX collector, for profiling: the listener, the
//! decoders, and a per-(src, dst, dst port, protocol) sum of bytes and packets in a
//! hash map flushed every second; no attribution and no store. `scripts/bench-netflow.sh`
//! measures the whole collector (`podflow server --netflow-listen`); this one shows
//! what decoding and receiving cost alone (docs/benchmarks.md).
//!
//! ```text
//! collect [--listen ADDR]... [--threads N] [--batch N] [--rcvbuf BYTES] [--coalesce-us N]
//!         [--duration SECS]
//! ```
//!
//! Runs until SIGINT/SIGTERM (or `--duration`), then prints one line of
//! `key=value` pairs: datagrams and records received, kernel drops, decode errors,
//! what the aggregation flushed, and the process's CPU time from /proc/self/stat.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use nix::sys::signal::{SigSet, Signal};
use podflow_netflow::{Batch, Listener, ListenerConfig};

/// (src, dst, dst port, protocol) of an IPv6 (or mixed) flow.
type Key6 = (IpAddr, IpAddr, u16, u8);

/// Sums per key for the current second, and what earlier flushes wrote out.
///
/// IPv4 keys are packed into a u128 (src << 64 | dst << 32 | port << 8 | proto): a
/// 32-byte entry instead of 56, which matters when hundreds of thousands of keys are
/// live (the map is bound by memory latency, not by hashing).
#[derive(Debug)]
struct Agg {
    v4: HashMap<u128, (u64, u64)>,
    v6: HashMap<Key6, (u64, u64)>,
    last_flush: Instant,
    flushes: u64,
    keys_flushed: u64,
    bytes_flushed: u64,
    packets_flushed: u64,
}

impl Agg {
    fn record(&mut self, batch: &Batch) {
        for f in &batch.flows {
            let (port, proto) = (f.dst_port, f.proto.0);
            let e = match (f.src, f.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let k = (u128::from(u32::from(s)) << 64)
                        | (u128::from(u32::from(d)) << 32)
                        | (u128::from(port) << 8)
                        | u128::from(proto);
                    self.v4.entry(k).or_default()
                }
                (s, d) => self.v6.entry((s, d, port, proto)).or_default(),
            };
            e.0 += f.bytes;
            e.1 += f.packets;
        }
        if self.last_flush.elapsed() >= Duration::from_secs(1) {
            self.flush();
        }
    }

    /// Stands in for the store write: walks every key once and empties the map.
    fn flush(&mut self) {
        self.last_flush = Instant::now();
        self.flushes += 1;
        for (b, p) in self
            .v4
            .drain()
            .map(|(_, v)| v)
            .chain(self.v6.drain().map(|(_, v)| v))
        {
            self.keys_flushed += 1;
            self.bytes_flushed += b;
            self.packets_flushed += p;
        }
    }
}

#[derive(Debug)]
struct Args {
    config: ListenerConfig,
    duration: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let mut config = ListenerConfig {
        addrs: Vec::new(),
        ..Default::default()
    };
    let mut duration = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                let a: SocketAddr = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
                config.addrs.push(a);
            }
            "--threads" => config.sockets_per_addr = num(value()?)?,
            "--batch" => config.batch_datagrams = num(value()?)?,
            "--rcvbuf" => config.rcvbuf_bytes = num(value()?)?,
            "--coalesce-us" => config.coalesce = Duration::from_micros(num(value()?)? as u64),
            "--duration" => duration = Some(Duration::from_secs(num(value()?)? as u64)),
            "-h" | "--help" => {
                return Err(
                    "usage: collect [--listen ADDR]... [--threads N] [--batch N] \
                            [--rcvbuf BYTES] [--coalesce-us N] [--duration SECS]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    if config.addrs.is_empty() {
        config.addrs.push(SocketAddr::from(([127, 0, 0, 1], 2055)));
    }
    Ok(Args { config, duration })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Block the stop signals in every thread (threads inherit the mask); one thread
    // takes them with sigwait.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let agg = Arc::new(Mutex::new(Agg {
        v4: HashMap::new(),
        v6: HashMap::new(),
        last_flush: Instant::now(),
        flushes: 0,
        keys_flushed: 0,
        bytes_flushed: 0,
        packets_flushed: 0,
    }));
    let a = Arc::clone(&agg);
    let listener =
        match Listener::start(args.config, Arc::clone(&stop), move |batch: &mut Batch| {
            a.lock().unwrap_or_else(|p| p.into_inner()).record(batch)
        }) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
    for s in listener.sockets() {
        eprintln!(
            "listening on {} (SO_RCVBUF {} bytes{})",
            s.local,
            s.rcvbuf_bytes,
            if s.rcvbuf_forced { ", forced" } else { "" }
        );
    }
    let st = Arc::clone(&stop);
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            st.store(true, Ordering::Relaxed);
        }
    });
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = listener.stats();
    if let Err(e) = listener.join() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let mut agg = agg.lock().unwrap_or_else(|p| p.into_inner());
    agg.flush();
    let s = stats.snapshot();
    let seq_lost: u64 = stats.exporters().iter().map(|(_, s)| s.sequence_lost).sum();
    println!(
        "collect: datagrams={} bytes={} records={} kernel_drops={} decode_errors={} \
         truncated={} batches={} sequence_lost={} flushes={} keys_flushed={} \
         agg_bytes={} agg_packets={} cpu_s={:.3} wall_s={:.3}",
        s.datagrams,
        s.bytes,
        s.records,
        s.kernel_drops,
        s.decode_errors.total(),
        s.truncated,
        s.batches,
        seq_lost,
        agg.flushes,
        agg.keys_flushed,
        agg.bytes_flushed,
        agg.packets_flushed,
        podflow_testkit::cpu_seconds(std::process::id()).unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64(),
    );
    ExitCode::SUCCESS
}
