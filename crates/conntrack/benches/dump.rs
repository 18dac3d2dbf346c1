//! Dump benchmark: podflow's dump + decode + delta against `conntrack -L > /dev/null` on
//! the same table, in the same run, inside a namespace this benchmark creates and fills
//! with batched netlink inserts.
//!
//! `cargo bench -p podflow-conntrack --bench dump -- [--sizes 100000,1000000]`
//! The last line is `conntrack_dump_ratio_<size>=<podflow s / conntrack-tools s>` for
//! the largest size (e.g. `conntrack_dump_ratio_1m=`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podflow_conntrack::{CtSocket, Source, SourceConfig};
use podflow_testkit::Netns;

const MAX_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Puts the global conntrack limit back when dropped.
struct RestoreMax(String);

impl Drop for RestoreMax {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_PATH, self.0.trim());
    }
}

fn fill(ns: &Netns, n: usize) {
    ns.run(move || {
        let mut l = podflow_conntrack::load::Loader::open().expect("insert socket");
        l.create(1, 0..n as u32, 3600).expect("send inserts");
        let errors = l.settle(Duration::from_millis(50)).expect("errors");
        assert_eq!(errors, 0, "kernel refused {errors} inserts");
    });
}

fn count(ns: &Netns) -> usize {
    ns.sh("cat /proc/sys/net/netfilter/nf_conntrack_count")
        .expect("count")
        .trim()
        .parse()
        .expect("number")
}

fn conntrack_l(ns: &Netns) -> Duration {
    let t0 = Instant::now();
    let st = ns
        .command("conntrack")
        .args(["-L"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("conntrack -L");
    assert!(st.success());
    t0.elapsed()
}

fn label(n: usize) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| {
            s.split(',')
                .map(|v| v.parse().expect("--sizes: numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![100_000, 1_000_000]);
    if !podflow_testkit::can_run("dump benchmark")
        || !podflow_testkit::have("dump benchmark", "conntrack")
    {
        std::process::exit(0);
    }
    let old = std::fs::read_to_string(MAX_PATH).expect("read nf_conntrack_max");
    let _restore = RestoreMax(old.clone());
    let need = sizes.iter().max().copied().unwrap_or(0) + 100_000;
    if old.trim().parse::<usize>().unwrap_or(0) < need {
        std::fs::write(MAX_PATH, need.to_string()).expect("raise nf_conntrack_max");
    }
    let _ = Command::new("nproc").status();
    let mut last = String::new();
    for &n in &sizes {
        let ns = Netns::new("bench").expect("namespace");
        ns.sh(
            "sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1",
        )
        .expect("sysctl");
        let t0 = Instant::now();
        fill(&ns, n);
        let fill_s = t0.elapsed().as_secs_f64();
        let have = count(&ns);
        assert!(have >= n, "table holds {have} of {n}");
        let mut src = Source::open(&SourceConfig {
            netns: Some(ns.path()),
            events: false,
            ..Default::default()
        })
        .expect("open source");
        // Alternate the tools, best of 3 each, so both see the same cache state.
        let mut ct = Vec::new();
        let mut cold = Duration::ZERO;
        let mut warm = Vec::new();
        let mut emitted = 0u64;
        let mut floor = Vec::new();
        for round in 0..3 {
            ct.push(conntrack_l(&ns));
            let t = Instant::now();
            src.dump_discard().expect("raw dump");
            floor.push(t.elapsed());
            let s = src.dump(&mut |_| emitted += 1).expect("dump");
            assert_eq!(s.entries as usize, have);
            if round == 0 {
                cold = s.elapsed
            } else {
                warm.push(s.elapsed)
            }
        }
        // User-space cost alone: the same dump captured to memory, then decoded and tracked.
        let datagrams = ns.run(|| {
            let sock = CtSocket::open(0, 1 << 20, "capture").expect("socket");
            sock.send(&podflow_conntrack::encode::dump_request(9), "dump")
                .expect("send");
            let mut out = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(podflow_conntrack::socket_recv::Recv::Data(n)) =
                sock.recv(&mut buf, None, "dump")
            {
                let done = podflow_conntrack::nl::Messages::new(&buf[..n])
                    .flatten()
                    .any(|(h, _)| h.kind == podflow_conntrack::nl::NLMSG_DONE);
                out.push(buf[..n].to_vec());
                if done {
                    break;
                }
            }
            out
        });
        let mut stats = podflow_conntrack::DecodeStats::default();
        let t = Instant::now();
        let mut decoded = 0usize;
        for d in &datagrams {
            for (h, p) in podflow_conntrack::nl::Messages::new(d).flatten() {
                if h.kind != podflow_conntrack::nl::NLMSG_DONE {
                    decoded +=
                        usize::from(podflow_conntrack::decode::decode_entry(p, &mut stats).is_ok());
                }
            }
        }
        let decode_ns = t.elapsed().as_nanos() as f64 / decoded.max(1) as f64;
        let mut tracker = podflow_conntrack::Tracker::new(0);
        let mut track_ns = [0f64; 2];
        for slot in &mut track_ns {
            tracker.begin_dump();
            let t = Instant::now();
            for d in &datagrams {
                for (_, p) in podflow_conntrack::nl::Messages::new(d).flatten() {
                    if let Ok(e) = podflow_conntrack::decode::decode_entry(p, &mut stats) {
                        tracker.on_dump(&e, &mut |_| {});
                    }
                }
            }
            tracker.end_dump();
            *slot = t.elapsed().as_nanos() as f64 / decoded.max(1) as f64;
        }
        println!(
            "user-space per entry: decode {decode_ns:.0} ns, decode+track first {:.0} ns, decode+track steady {:.0} ns",
            track_ns[0], track_ns[1]
        );
        let ct_best = ct.iter().min().copied().unwrap_or_default().as_secs_f64();
        let warm_best = warm.iter().min().copied().unwrap_or_default().as_secs_f64();
        let floor_best = floor
            .iter()
            .min()
            .copied()
            .unwrap_or_default()
            .as_secs_f64();
        let mem = src.tracker().memory_bytes() as f64 / src.tracker().len().max(1) as f64;
        println!(
            "entries={have} fill_s={fill_s:.2} conntrack_l_s={ct_best:.3} kernel_floor_s={floor_best:.3} floor_ratio={:.3} podflow_first_dump_s={:.3} \
             podflow_dump_s={warm_best:.3} ratio_first={:.3} ratio={:.3} tracker_bytes_per_conn={mem:.0} emitted={emitted}",
            floor_best / ct_best,
            cold.as_secs_f64(),
            cold.as_secs_f64() / ct_best,
            warm_best / ct_best,
        );
        last = format!(
            "conntrack_dump_ratio_{}={:.3}",
            label(n),
            warm_best / ct_best
        );
        drop(src);
        drop(ns);
    }
    println!("{last}");
}
