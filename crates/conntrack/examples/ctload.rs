//! Conntrack load and reference readers for `scripts/bench-agent.sh` and
//! `scripts/bench-events.sh`. Every subcommand works inside the network namespace given
//! by `--netns /run/netns/NAME` (made by the script; nothing touches another namespace).
//!
//! ```text
//! ctload fill   --netns P --n N                      N idle ESTABLISHED entries (batched CT_NEW)
//! ctload floor  --netns P --dumps K --interval-ms I  K raw dumps (receive and discard), I ms apart:
//!               [--mark V/M] [--family 4|6]          the kernel's floor; prints CPU per dump
//! ctload storm  --netns P [--rate R] --seconds S     create + delete entries at R entries/s (none:
//!               [--max N]                            as fast as possible): one NEW + one DESTROY each
//! ctload events --netns P --seconds S [--buffer B]   podflow's conntrack Source, events only (the
//!               [--reliable] [--no-new]              measured process of bench-events.sh): prints
//!                                                    events, overflows and CPU
//! ctload events-floor --netns P --seconds S          a bare event reader: the NEW and DESTROY
//!               [--buffer B]                         groups received by recvmmsg and discarded
//!                                                    (the floor for any reader); same output
//! ```
//!
//! Output lines are `key=value` pairs for the scripts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use podflow_conntrack::{
    DumpFilter, Source, SourceConfig, SourceOptions, Tracker, enter_netns, load,
};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match arg(args, name) {
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}: not a number: {v}");
            std::process::exit(2)
        }),
        None => default,
    }
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

/// CPU time of this process (all threads, user + system), seconds.
fn process_cpu_s() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("ctload: {what}: {e}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!("usage: ctload fill|floor|storm|events --netns /run/netns/NAME ...");
        std::process::exit(2)
    };
    let Some(ns) = arg(&args, "--netns").map(PathBuf::from) else {
        die("arguments", "--netns /run/netns/NAME is required")
    };
    if let Err(e) = enter_netns(&ns) {
        die("enter namespace", e)
    }
    match cmd.as_str() {
        "fill" => {
            let n: u32 = num(&args, "--n", 100_000);
            let t = Instant::now();
            let mut l = load::Loader::open().unwrap_or_else(|e| die("socket", e));
            l.create(1, 0..n, 3600).unwrap_or_else(|e| die("insert", e));
            let errors = l
                .settle(Duration::from_millis(100))
                .unwrap_or_else(|e| die("insert", e));
            println!(
                "filled={n} errors={errors} seconds={:.2}",
                t.elapsed().as_secs_f64()
            );
            if errors > 0 {
                std::process::exit(1)
            }
        }
        "floor" => {
            let dumps: u32 = num(&args, "--dumps", 5);
            let interval = Duration::from_millis(num(&args, "--interval-ms", 0));
            let mut filter = DumpFilter::default();
            if let Some(m) = arg(&args, "--mark") {
                let (v, mask) = m.split_once('/').unwrap_or((m.as_str(), "0xffffffff"));
                let p = |s: &str| {
                    u32::from_str_radix(s.trim_start_matches("0x"), 16)
                        .unwrap_or_else(|e| die("--mark V/M (hex)", e))
                };
                filter.mark = Some((p(v), p(mask)));
            }
            filter.ipv6 = arg(&args, "--family").map(|f| f == "6");
            let mut src = Source::open_with(
                &SourceConfig {
                    events: false,
                    ..Default::default()
                },
                &SourceOptions {
                    filter,
                    ..Default::default()
                },
                Tracker::new(0),
            )
            .unwrap_or_else(|e| die("open", e));
            let (mut cpu, mut wall, mut msgs) = (0.0, 0.0, 0);
            for k in 0..dumps {
                if k > 0 {
                    std::thread::sleep(interval);
                }
                let (c0, t0) = (process_cpu_s(), Instant::now());
                msgs = src.dump_discard().unwrap_or_else(|e| die("dump", e));
                cpu += process_cpu_s() - c0;
                wall += t0.elapsed().as_secs_f64();
            }
            let k = f64::from(dumps.max(1));
            println!(
                "floor_entries={msgs} floor_dumps={dumps} floor_cpu_per_dump_s={:.4} floor_wall_per_dump_s={:.4}",
                cpu / k,
                wall / k
            );
        }
        "storm" => {
            let rate: Option<f64> = arg(&args, "--rate").and_then(|r| r.parse().ok());
            let secs: f64 = num(&args, "--seconds", 5.0);
            let max: u64 = num(&args, "--max", u64::MAX);
            let mut l = load::Loader::open().unwrap_or_else(|e| die("socket", e));
            let cpu0 = process_cpu_s();
            let r = load::storm(&mut l, 50, rate, Duration::from_secs_f64(secs), max)
                .unwrap_or_else(|e| die("storm", e));
            let errors = l
                .settle(Duration::from_millis(100))
                .unwrap_or_else(|e| die("storm", e));
            println!(
                "storm_entries={} storm_events={} storm_seconds={:.3} storm_rate={:.0} storm_errors={errors} storm_cpu_s={:.3}",
                r.entries,
                2 * r.entries,
                r.elapsed.as_secs_f64(),
                r.rate,
                process_cpu_s() - cpu0
            );
        }
        "events" => {
            let secs: f64 = num(&args, "--seconds", 10.0);
            let buffer: usize = num(&args, "--buffer", 16 << 20);
            let mut src = Source::open_with(
                &SourceConfig {
                    event_buffer: buffer,
                    ..Default::default()
                },
                &SourceOptions {
                    reliable_events: flag(&args, "--reliable"),
                    new_events: !flag(&args, "--no-new"),
                    ..Default::default()
                },
                Tracker::new(0),
            )
            .unwrap_or_else(|e| die("open", e));
            let stats = src.stats();
            let stop = AtomicBool::new(false);
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut observations = 0u64;
            let mut closed = 0u64;
            // The first dump (an empty table) before the clock starts.
            src.dump(&mut |_| {}).unwrap_or_else(|e| die("dump", e));
            println!("ready=1");
            let cpu0 = process_cpu_s();
            std::thread::scope(|s| {
                s.spawn(|| {
                    while Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    stop.store(true, Relaxed);
                });
                // Dumps only at the start and on overflow: the interval is longer than the run.
                src.run(Duration::from_secs(3600), 4096, &stop, &mut |batch| {
                    observations += batch.len() as u64;
                    closed += batch.iter().filter(|o| o.closed).count() as u64;
                })
                .unwrap_or_else(|e| die("run", e));
            });
            let cpu = process_cpu_s() - cpu0;
            let new = stats.events_new.load(Relaxed);
            let destroy = stats.events_destroy.load(Relaxed);
            println!(
                "events_new={new} events_destroy={destroy} events={} overflows={} dumps={} observations={observations} closed={closed} cpu_s={cpu:.3} reliable={}",
                new + destroy,
                stats.event_overflows.load(Relaxed),
                stats.dumps.load(Relaxed),
                src.reliable_events(),
            );
        }
        "events-floor" => events_floor(&args),
        other => die("subcommand", format!("unknown: {other}")),
    }
}

/// `events-floor`: receive the NEW and DESTROY groups and discard them, counting datagrams
/// (one event each) and overflows; what the kernel's delivery costs any listener.
fn events_floor(args: &[String]) {
    use podflow_conntrack::CtSocket;
    use podflow_conntrack::socket_recv::{BATCH_SLOTS, Batch, SLOT_BYTES};
    let secs: f64 = num(args, "--seconds", 10.0);
    let buffer: usize = num(args, "--buffer", 16 << 20);
    // Groups 1 (NEW) and 3 (DESTROY), as `conntrack -E -e NEW,DESTROY` and the agent.
    let sock = CtSocket::open(0b101, buffer, "events-floor").unwrap_or_else(|e| die("open", e));
    let mut buf = vec![0u8; BATCH_SLOTS * SLOT_BYTES];
    let mut lens = [0usize; BATCH_SLOTS];
    let (mut events, mut overflows) = (0u64, 0u64);
    println!("ready=1");
    let cpu0 = process_cpu_s();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        match sock.recv_batch(
            &mut buf,
            &mut lens,
            Some(Duration::from_millis(20)),
            "events",
        ) {
            Ok(Batch::Data(n)) => events += n as u64,
            Ok(Batch::Overflow) => overflows += 1,
            Ok(Batch::Timeout) => {}
            Err(e) => die("recv", e),
        }
    }
    let cpu = process_cpu_s() - cpu0;
    println!("events={events} overflows={overflows} cpu_s={cpu:.3}");
}
