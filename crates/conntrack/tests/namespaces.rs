//! The conntrack source against the real kernel, in namespaces these tests create.
//!
//! Reference numbers come from conntrack-tools in the same namespace: `conntrack -L -o
//! extended` for live entries and `conntrack -E -e DESTROY` for the final counters.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use podflow_conntrack::{Source, SourceConfig};
use podflow_model::{Counters, Observation, Protocol};
use podflow_testkit::{Netns, Pair, connect, exchange, serve};

/// Per connection (keyed by protocol and the client's port): what podflow reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    orig: Counters,
    reply: Counters,
    opened: u32,
    closed: u32,
}

#[derive(Default)]
struct Ledger(HashMap<(u8, u16), Seen>);

impl Ledger {
    fn add(&mut self, o: Observation) {
        let s = self.0.entry((o.proto.0, o.orig.src_port)).or_default();
        s.orig += o.delta_orig;
        s.reply += o.delta_reply;
        s.opened += u32::from(o.opened);
        s.closed += u32::from(o.closed);
    }
    fn get(&self, proto: Protocol, port: u16) -> Seen {
        self.0.get(&(proto.0, port)).copied().unwrap_or_default()
    }
}

fn counters(c: podflow_testkit::CtLine) -> (Counters, Counters) {
    (
        Counters {
            packets: c.orig.0,
            bytes: c.orig.1,
        },
        Counters {
            packets: c.reply.0,
            bytes: c.reply.1,
        },
    )
}

fn ct_list(ns: &Netns) -> HashMap<(String, u16), (Counters, Counters)> {
    ns.sh("conntrack -L -o extended 2>/dev/null")
        .expect("conntrack -L")
        .lines()
        .filter_map(podflow_testkit::parse_ct)
        .map(|(p, c)| ((p, c.sport), counters(c)))
        .collect()
}

struct DestroyLog(podflow_testkit::DestroyLog);

impl DestroyLog {
    fn start(ns: &Netns) -> DestroyLog {
        DestroyLog(podflow_testkit::DestroyLog::start(ns))
    }
    fn wait(&self, proto: &str, sport: u16, within: Duration) -> (Counters, Counters) {
        counters(self.0.wait(proto, sport, within))
    }
}

fn open_source(ns: &Netns) -> Source {
    Source::open(&SourceConfig {
        netns: Some(ns.path()),
        ..Default::default()
    })
    .expect("open source")
}

fn dump(src: &mut Source, led: &mut Ledger) {
    src.dump(&mut |o| led.add(o)).expect("dump");
}

fn poll(src: &mut Source, led: &mut Ledger) {
    src.poll(Duration::from_millis(50), &mut |o| led.add(o))
        .expect("poll");
}

#[test]
fn tcp_totals_equal_the_kernels_final_counters() {
    if !podflow_testkit::can_run("tcp_totals_equal_the_kernels_final_counters")
        || !podflow_testkit::have("tcp_totals", "conntrack")
    {
        return;
    }
    let pair = Pair::new("ct1").expect("namespaces");
    pair.a.short_tcp_timeouts().expect("timeouts");
    let log = DestroyLog::start(&pair.a);
    serve(&pair, 5001);
    let mut src = open_source(&pair.a);
    assert!(src.features().accounting && src.features().timestamps);
    let mut led = Ledger::default();
    dump(&mut src, &mut led);

    // A connection that lives across dumps, whose last bytes come after the last dump.
    let mut c1 = connect(&pair, Pair::B4, 5001);
    let p1 = c1.local_addr().expect("addr").port();
    exchange(&mut c1, 100_000, 300_000);
    poll(&mut src, &mut led);
    dump(&mut src, &mut led);
    // While alive, podflow's running totals equal what the kernel shows now.
    let live = ct_list(&pair.a);
    let (ko, kr) = live.get(&("tcp".into(), p1)).copied().expect("c1 in table");
    let seen = led.get(Protocol::TCP, p1);
    assert_eq!((seen.orig, seen.reply), (ko, kr), "live totals");
    assert_eq!(seen.opened, 1);
    exchange(&mut c1, 12_345, 54_321);

    // A connection that opens and closes entirely between two dumps.
    let mut c2 = connect(&pair, Pair::B4, 5001);
    let p2 = c2.local_addr().expect("addr").port();
    exchange(&mut c2, 5_000, 70_000);
    drop(c2);
    drop(c1);

    // TIME_WAIT is 1 s here; the next dump reaps the entries and the kernel sends DESTROY.
    std::thread::sleep(Duration::from_millis(2500));
    poll(&mut src, &mut led);
    dump(&mut src, &mut led);
    poll(&mut src, &mut led);
    for (port, what) in [(p1, "across dumps"), (p2, "between dumps")] {
        let (fo, fr) = log.wait("tcp", port, Duration::from_secs(5));
        poll(&mut src, &mut led);
        let s = led.get(Protocol::TCP, port);
        assert_eq!(
            (s.orig, s.reply),
            (fo, fr),
            "final totals of the connection {what}"
        );
        assert_eq!(
            (s.opened, s.closed),
            (1, 1),
            "events of the connection {what}"
        );
        assert!(fo.bytes > 100_000 || port == p2);
    }
    assert_eq!(src.tracker().len(), 0, "closed connections are forgotten");
}

#[test]
fn udp_and_ipv6_totals_match_and_survive_zeroed_counters() {
    if !podflow_testkit::can_run("udp_and_ipv6")
        || !podflow_testkit::have("udp_and_ipv6", "conntrack")
    {
        return;
    }
    let pair = Pair::new("ct2").expect("namespaces");
    let log = DestroyLog::start(&pair.a);
    // UDP echo in B on both families.
    for ip in [Pair::B4, Pair::B6] {
        let addr: SocketAddr = if ip.contains(':') {
            format!("[{ip}]:6001")
        } else {
            format!("{ip}:6001")
        }
        .parse()
        .expect("addr");
        let (tx, rx) = std::sync::mpsc::channel();
        pair.b.spawn(move || {
            let s = UdpSocket::bind(addr).expect("bind udp");
            tx.send(()).expect("ready");
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n * 2 / 3], from);
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("udp up");
    }
    let mut src = open_source(&pair.a);
    let mut led = Ledger::default();
    dump(&mut src, &mut led);
    let ports = pair.a.run(|| {
        let mut ports = Vec::new();
        for (ip, n) in [(Pair::B4, 40), (Pair::B6, 25)] {
            let dst: SocketAddr = if ip.contains(':') {
                format!("[{ip}]:6001")
            } else {
                format!("{ip}:6001")
            }
            .parse()
            .expect("addr");
            let s = UdpSocket::bind(if ip.contains(':') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })
            .expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 2048];
            for i in 0..n {
                s.send_to(&vec![9u8; 300 + i * 10], dst).expect("send");
                s.recv_from(&mut buf).expect("echo");
            }
            ports.push(s.local_addr().expect("addr").port());
        }
        ports
    });
    poll(&mut src, &mut led);
    dump(&mut src, &mut led);
    let live = ct_list(&pair.a);
    let v4 = live
        .get(&("udp".into(), ports[0]))
        .copied()
        .expect("v4 flow");
    let s = led.get(Protocol::UDP, ports[0]);
    assert_eq!((s.orig, s.reply), v4);
    assert_eq!(v4.0.packets, 40);
    // conntrack -L shows IPv6 too; compare by port.
    let v6 = live
        .get(&("udp".into(), ports[1]))
        .copied()
        .expect("v6 flow");
    let s6 = led.get(Protocol::UDP, ports[1]);
    assert_eq!((s6.orig, s6.reply), v6);
    assert_eq!(v6.1.packets, 25);

    // Someone zeroes the counters (conntrack -L -z); podflow counts a reset and goes on.
    pair.a.sh("conntrack -L -z >/dev/null 2>&1").expect("zero");
    let before = led.get(Protocol::UDP, ports[0]);
    let p = ports[0];
    pair.a.run(move || {
        let s = UdpSocket::bind(format!("0.0.0.0:{p}")).expect("rebind same port");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.send_to(&[1u8; 500], format!("{}:6001", Pair::B4))
            .expect("send");
        let mut buf = [0u8; 2048];
        s.recv_from(&mut buf).expect("echo");
    });
    dump(&mut src, &mut led);
    assert!(
        src.stats()
            .counter_resets
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let after = led.get(Protocol::UDP, ports[0]);
    assert_eq!(
        after.orig.packets - before.orig.packets,
        1,
        "only the new datagram"
    );
    assert_eq!(
        after.orig.bytes - before.orig.bytes,
        528,
        "500 bytes + 8 UDP + 20 IPv4"
    );

    // Deleting the entry sends its DESTROY: the remaining bytes (none) and the close.
    pair.a
        .sh(&format!(
            "conntrack -D -p udp --orig-port-src {} >/dev/null 2>&1",
            ports[1]
        ))
        .expect("delete");
    let (mut fo, mut fr) = log.wait("udp", ports[1], Duration::from_secs(5));
    poll(&mut src, &mut led);
    let s6 = led.get(Protocol::UDP, ports[1]);
    // Before the zeroing podflow had v6; the kernel's final counters count from zero.
    fo += v6.0;
    fr += v6.1;
    assert_eq!((s6.orig, s6.reply), (fo, fr));
    assert_eq!(s6.closed, 1);
}

#[test]
fn event_overflow_is_counted_and_recovered_by_a_dump() {
    if !podflow_testkit::can_run("event_overflow")
        || !podflow_testkit::have("event_overflow", "conntrack")
    {
        return;
    }
    let pair = Pair::new("ct3").expect("namespaces");
    serve(&pair, 5003);
    let (tx, rx) = std::sync::mpsc::channel();
    let addr: SocketAddr = format!("{}:6003", Pair::B4).parse().expect("addr");
    pair.b.spawn(move || {
        let s = UdpSocket::bind(addr).expect("bind udp");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("udp up");
    // The smallest event buffer the kernel allows: a burst must overflow it.
    let mut src = Source::open(&SourceConfig {
        netns: Some(pair.a.path()),
        event_buffer: 1,
        ..Default::default()
    })
    .expect("open");
    let mut led = Ledger::default();
    dump(&mut src, &mut led);
    let mut long = connect(&pair, Pair::B4, 5003);
    let lp = long.local_addr().expect("addr").port();
    exchange(&mut long, 20_000, 40_000);
    // A burst of 400 short UDP flows while podflow is not reading.
    pair.a.run(move || {
        let mut buf = [0u8; 64];
        for _ in 0..400 {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            s.send_to(&[3u8; 32], addr).expect("send");
            let _ = s.recv_from(&mut buf);
        }
    });
    exchange(&mut long, 1_000, 2_000);
    poll(&mut src, &mut led);
    let overflows = src
        .stats()
        .event_overflows
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(overflows >= 1, "the burst overflowed the event socket");
    // The recovery dump found every live connection: totals are exact.
    let live = ct_list(&pair.a);
    let (ko, kr) = live
        .get(&("tcp".into(), lp))
        .copied()
        .expect("long in table");
    let s = led.get(Protocol::TCP, lp);
    assert_eq!(
        (s.orig, s.reply),
        (ko, kr),
        "long-lived connection exact after overflow"
    );
    let udp_live: Vec<_> = live.iter().filter(|((p, _), _)| p == "udp").collect();
    // Ephemeral ports can repeat across the burst (same tuple, same entry).
    assert!(udp_live.len() > 300, "{} UDP entries", udp_live.len());
    for ((_, port), (o, r)) in udp_live {
        let s = led.get(Protocol::UDP, *port);
        assert_eq!((s.orig, s.reply), (*o, *r), "udp flow {port}");
    }
}

#[test]
fn missing_accounting_is_reported_and_enable_features_turns_it_on() {
    if !podflow_testkit::can_run("features") {
        return;
    }
    let ns = Netns::new("feat").expect("namespace");
    ns.sh("sysctl -qw net.netfilter.nf_conntrack_acct=0 net.netfilter.nf_conntrack_timestamp=0")
        .expect("sysctl");
    let src = open_source(&ns);
    let f = src.features();
    assert!(!f.accounting && !f.timestamps);
    let missing = f.missing();
    assert_eq!(missing.len(), 2);
    assert!(
        missing[0].contains("nf_conntrack_acct=0") && missing[0].contains("--enable-accounting")
    );
    drop(src);
    let src = Source::open(&SourceConfig {
        netns: Some(ns.path()),
        enable_features: true,
        ..Default::default()
    })
    .expect("open with --enable-accounting");
    assert!(src.features().accounting && src.features().timestamps);
    assert_eq!(
        ns.sh("sysctl -n net.netfilter.nf_conntrack_acct")
            .expect("read")
            .trim(),
        "1"
    );
}

/// What the first-reply source reported per connection, and the UPDATE event counters.
#[derive(Default)]
struct Replies(HashMap<(u8, u16), Vec<u64>>);

impl Replies {
    fn add(&mut self, o: Observation) {
        if o.first_reply_ns > 0 {
            self.0
                .entry((o.proto.0, o.orig.src_port))
                .or_default()
                .push(o.first_reply_ns);
        }
    }
    /// The one first-reply time of the connection (it must be reported exactly once).
    fn of(&self, proto: Protocol, port: u16) -> Duration {
        match self.0.get(&(proto.0, port)).map(Vec::as_slice) {
            Some([ns]) => Duration::from_nanos(*ns),
            other => panic!("{proto} {port}: first reply reported {other:?}, want once"),
        }
    }
}

/// (UPDATE events, UPDATEs that were not a first reply, all events).
fn updates(src: &Source) -> (u64, u64, u64) {
    let s = src.stats();
    let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let update = g(&s.events_update);
    (
        update,
        g(&s.updates_ignored),
        update + g(&s.events_new) + g(&s.events_destroy),
    )
}

fn pump(src: &mut Source, seen: &mut Replies) {
    src.poll(Duration::from_millis(100), &mut |o| seen.add(o))
        .expect("poll");
    src.dump(&mut |o| seen.add(o)).expect("dump");
    src.poll(Duration::from_millis(100), &mut |o| seen.add(o))
        .expect("poll");
}

/// One client connection's whole life, from A: a UDP question answered after `DELAY`,
/// then a TCP request/response and close; the entries are deleted so their DESTROY
/// events come now. Returns (udp port, tcp port).
fn one_udp_and_one_tcp(pair: &Pair, ns_tag: u16) -> (u16, u16) {
    let up = podflow_testkit::udp_ask(pair, Pair::B4, 6100 + ns_tag);
    let mut c = connect(pair, Pair::B4, 5100 + ns_tag);
    let tp = c.local_addr().expect("addr").port();
    exchange(&mut c, 1_000, 2_000);
    drop(c);
    // Let the FIN exchange finish (TIME_WAIT), then end both entries.
    std::thread::sleep(Duration::from_millis(300));
    pair.a
        .sh(&format!(
            "conntrack -D -p udp --orig-port-src {up} >/dev/null 2>&1; \
             conntrack -D -p tcp --orig-port-src {tp} >/dev/null 2>&1; true"
        ))
        .expect("delete entries");
    (up, tp)
}

/// The first reply of a UDP exchange is the application's answer: a server that thinks
/// for 150 ms gives a first reply of 150 ms. For TCP it is the SYN-ACK, sent by the
/// kernel at once, whatever the application does. Also measures what UPDATE events cost
/// and that `ct event set new,reply,destroy` leaves one per connection.
#[test]
fn first_reply_times_a_delayed_udp_answer_and_a_tcp_handshake() {
    if !podflow_testkit::can_run("first_reply") || !podflow_testkit::have("first_reply", "nft") {
        return;
    }
    const DELAY: Duration = Duration::from_millis(150);
    let pair = Pair::new("fr").expect("namespaces");
    for tag in [1, 2] {
        podflow_testkit::serve_udp_delayed(&pair, Pair::B4, 6100 + tag, DELAY);
        serve(&pair, 5100 + tag);
    }
    let mut src = Source::open(&SourceConfig {
        netns: Some(pair.a.path()),
        first_reply: true,
        ..Default::default()
    })
    .expect("open source");
    assert!(src.features().timestamps);
    let mut seen = Replies::default();
    pump(&mut src, &mut seen);

    // Every event the kernel sends.
    let before = updates(&src);
    let (up, tp) = one_udp_and_one_tcp(&pair, 1);
    pump(&mut src, &mut seen);
    let after = updates(&src);
    let udp = seen.of(Protocol::UDP, up);
    assert!(
        udp >= DELAY && udp <= DELAY + Duration::from_millis(50),
        "UDP first reply {udp:?}, server waited {DELAY:?}"
    );
    let tcp = seen.of(Protocol::TCP, tp);
    assert!(
        tcp < Duration::from_millis(50),
        "TCP first reply is the SYN-ACK: {tcp:?}"
    );
    let all_updates = after.0 - before.0;
    eprintln!(
        "first reply: UDP {udp:?} (server waited {DELAY:?}), TCP {tcp:?}; events for one \
         UDP exchange and one short TCP connection: {} of which {all_updates} UPDATEs \
         ({} not a first reply)",
        after.2 - before.2,
        after.1 - before.1
    );
    // UDP: the reply. TCP: SYN_RECV (the reply), ESTABLISHED, then the close states.
    assert!(all_updates >= 5, "{all_updates}");
    assert_eq!(after.1 - before.1, all_updates - 2, "two first replies");

    // With the event mask operators can set, one UPDATE per connection remains: the reply.
    pair.a
        .sh("nft -f - <<'EOF'
table inet pfmask {
  chain out { type filter hook output priority 0; ct state new ct event set new,reply,destroy; }
}
EOF")
        .expect("nft ct event set");
    let before = updates(&src);
    let (up, tp) = one_udp_and_one_tcp(&pair, 2);
    pump(&mut src, &mut seen);
    let after = updates(&src);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (2, 0),
        "ct event set new,reply,destroy: only the two replies"
    );
    eprintln!(
        "with ct event set new,reply,destroy: {} events",
        after.2 - before.2
    );
    let udp = seen.of(Protocol::UDP, up);
    assert!(
        udp >= DELAY && udp <= DELAY + Duration::from_millis(50),
        "{udp:?}"
    );
    assert!(seen.of(Protocol::TCP, tp) < Duration::from_millis(50));
}

/// A storm of short connections (entries created and deleted by batched netlink messages:
/// one NEW and one DESTROY event each) while podflow does not read, with an event buffer
/// far smaller than the storm: with reliable delivery every DESTROY arrives (the kernel
/// keeps the entries and redelivers), each connection is reported closed exactly once;
/// without it the same storm loses DESTROYs (the control).
#[test]
fn reliable_delivery_loses_no_destroy_under_a_storm() {
    if !podflow_testkit::can_run("reliable_delivery") {
        return;
    }
    const N: u64 = 20_000;
    for reliable in [true, false] {
        let ns = podflow_testkit::Netns::new("ctrel").expect("namespace");
        ns.sh(
            "sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1",
        )
        .expect("sysctl");
        let mut src = Source::open_with(
            &SourceConfig {
                netns: Some(ns.path()),
                event_buffer: 256 << 10,
                ..Default::default()
            },
            &podflow_conntrack::SourceOptions {
                reliable_events: reliable,
                ..Default::default()
            },
            podflow_conntrack::Tracker::new(0),
        )
        .expect("open");
        assert_eq!(src.reliable_events(), reliable);
        let mut closed: HashMap<u64, u32> = HashMap::new();
        let mut add = |o: Observation| {
            if o.closed {
                *closed
                    .entry(podflow_conntrack::conn_key(
                        o.conn_id, o.proto.0, o.zone, &o.orig,
                    ))
                    .or_default() += 1;
            }
        };
        src.dump(&mut add).expect("first dump");
        let report = ns.run(|| {
            let mut l = podflow_conntrack::load::Loader::open().expect("loader");
            let r = podflow_conntrack::load::storm(&mut l, 50, None, Duration::from_secs(60), N)
                .expect("storm");
            let errors = l.settle(Duration::from_millis(100)).expect("settle");
            (r, errors)
        });
        assert_eq!(report.0.entries, N);
        assert_eq!(report.1, 0, "the kernel refused some creates or deletes");
        let stats = src.stats();
        let destroys = || {
            stats
                .events_destroy
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        // Read until every DESTROY is in (the kernel redelivers the held ones), at most 60 s.
        let t = std::time::Instant::now();
        while destroys() < N && t.elapsed() < Duration::from_secs(if reliable { 60 } else { 3 }) {
            src.poll(Duration::from_millis(50), &mut add).expect("poll");
        }
        let overflows = stats
            .event_overflows
            .load(std::sync::atomic::Ordering::Relaxed);
        if reliable {
            assert_eq!(destroys(), N, "every DESTROY delivered");
            assert_eq!(closed.len() as u64, N, "every connection reported closed");
            assert!(closed.values().all(|&c| c == 1), "and only once");
            assert_eq!(overflows, 0, "no overflow is reported in reliable mode");
        } else {
            assert!(overflows >= 1, "the control storm overflowed the buffer");
            assert!(destroys() < N, "and lost DESTROYs ({} of {N})", destroys());
        }
    }
}

/// A restart from a checkpoint against the real kernel: a source dumps a table, its
/// tracker is checkpointed, entries close and others open while "no agent runs", and a new
/// source opened with the restored tracker continues: remembered connections report only
/// what moved, the closed ones are counted as closed while down, the new ones are reported
/// whole, and nothing is taken as a new baseline.
#[test]
fn a_restored_tracker_continues_where_the_checkpoint_left_off() {
    if !podflow_testkit::can_run("restored_tracker") {
        return;
    }
    let ns = podflow_testkit::Netns::new("ctcp").expect("namespace");
    ns.sh("sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1")
        .expect("sysctl");
    let cfg = SourceConfig {
        netns: Some(ns.path()),
        ..Default::default()
    };
    ns.run(|| {
        let mut l = podflow_conntrack::load::Loader::open().expect("loader");
        l.create(1, 0..3000, 600).expect("create");
        assert_eq!(l.settle(Duration::from_millis(50)).expect("settle"), 0);
    });
    let mut src = open_source(&ns);
    let mut n = 0;
    src.dump(&mut |_| n += 1).expect("dump");
    assert_eq!(
        (n, src.tracker().len()),
        (0, 3000),
        "the first dump is a baseline"
    );
    let checkpoint = src.checkpoint();
    drop(src);
    // While down: 500 close (their DESTROY goes nowhere), 200 open.
    ns.run(|| {
        let mut l = podflow_conntrack::load::Loader::open().expect("loader");
        l.delete(1, 0..500).expect("delete");
        l.create(1, 5000..5200, 600).expect("create");
        assert_eq!(l.settle(Duration::from_millis(50)).expect("settle"), 0);
    });
    let tracker = podflow_conntrack::Tracker::restore(&checkpoint).expect("restore");
    let mut src = Source::open_with(&cfg, &Default::default(), tracker).expect("open");
    let mut opened = 0;
    let mut other = 0;
    src.dump(&mut |o| {
        if o.opened { opened += 1 } else { other += 1 }
    })
    .expect("dump");
    let stats = src.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        opened, 200,
        "the connections new since the checkpoint, reported whole"
    );
    assert_eq!(other, 0, "the idle remembered ones did not move");
    assert_eq!(get(&stats.closed_while_down), 500);
    assert_eq!(get(&stats.baselined), 0, "no new baseline");
    assert_eq!(src.tracker().len(), 2700);
}
