//! The listener over real sockets on 127.0.0.1 and [::1]: datagrams in, exactly the
//! expected observations out, kernel drops counted, and a prompt stop.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{CAPTURES, Totals, read_capture, read_expected};
use podflow_model::Protocol;
use podflow_netflow::encode::{
    IPFIX_IPV4_18, Message, V5Flow, V5Header, V9_IPV4_18, Value, ie, v5,
};
use podflow_netflow::{Batch, ErrorReason, Flow, Listener, ListenerConfig, Version};

/// The one-way flows the sink got, with their observers (as the listener decoded them,
/// before `Flow::to_observation` puts a reply its connection's way).
type Seen = Arc<Mutex<Vec<(Arc<str>, Flow)>>>;

/// A listener whose sink appends everything to a vector.
fn start(addrs: &[&str], sockets: usize) -> (Listener, Arc<AtomicBool>, Seen) {
    let config = ListenerConfig {
        addrs: addrs.iter().map(|a| a.parse().expect("addr")).collect(),
        sockets_per_addr: sockets,
        rcvbuf_bytes: 4 << 20,
        ..Default::default()
    };
    start_with(config)
}

fn start_with(config: ListenerConfig) -> (Listener, Arc<AtomicBool>, Seen) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let l = Listener::start(config, Arc::clone(&stop), move |b: &mut Batch| {
        let flows = b
            .flows
            .iter()
            .filter_map(|f| Some((Arc::clone(b.observer(f)?), *f)));
        s.lock().expect("lock").extend(flows)
    })
    .expect("listener starts");
    (l, stop, seen)
}

fn stop_and_join(l: Listener, stop: &AtomicBool) {
    stop.store(true, Ordering::Relaxed);
    l.join().expect("threads end cleanly");
}

/// Polls `cond` every 10 ms for up to 5 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn client(to: SocketAddr) -> UdpSocket {
    let any: SocketAddr = if to.is_ipv6() {
        "[::1]:0".parse().expect("addr")
    } else {
        "127.0.0.1:0".parse().expect("addr")
    };
    let c = UdpSocket::bind(any).expect("client bind");
    c.connect(to).expect("connect");
    c
}

fn v5_flow(i: u8, packets: u32, bytes: u32) -> V5Flow {
    V5Flow {
        src: Ipv4Addr::new(10, 0, 0, i),
        dst: Ipv4Addr::new(10, 0, 1, i),
        input: 1,
        output: 2,
        packets,
        bytes,
        first: 1_000,
        last: 2_000,
        src_port: 40_000 + u16::from(i),
        dst_port: 443,
        tcp_flags: 0x10,
        proto: 6,
    }
}

fn v5_datagram(seq: u32, flows: &[V5Flow]) -> Vec<u8> {
    let h = V5Header {
        sys_uptime: 10_000,
        unix_secs: 1_700_000_000,
        flow_sequence: seq,
        engine_type: 1,
        engine_id: 2,
        ..Default::default()
    };
    v5(&h, flows)
}

/// The 18 values of V9_IPV4_18 / IPFIX_IPV4_18 with the given pair and counters.
fn values(src: [u8; 4], dst: [u8; 4], packets: u64, bytes: u64, ipfix: bool) -> Vec<Value> {
    let (start, end) = if ipfix {
        (1_700_000_000_000, 1_700_000_001_000)
    } else {
        (5_000, 9_000)
    };
    vec![
        Value::Ip(IpAddr::from(src)),
        Value::Ip(IpAddr::from(dst)),
        Value::Ip(IpAddr::from([0, 0, 0, 0])),
        Value::U(1),
        Value::U(2),
        Value::U(packets),
        Value::U(bytes),
        Value::U(start),
        Value::U(end),
        Value::U(12_345),
        Value::U(53),
        Value::U(0),
        Value::U(17),
        Value::U(0),
        Value::U(0),
        Value::U(0),
        Value::U(24),
        Value::U(24),
    ]
}

fn sum(seen: &[(Arc<str>, Flow)], observer: &str) -> (usize, u64, u64) {
    seen.iter()
        .filter(|(o, _)| &**o == observer)
        .fold((0, 0, 0), |(n, p, b), (_, f)| {
            (n + 1, p + f.packets, b + f.bytes)
        })
}

#[test]
fn v5_v9_ipfix_records_reach_the_sink_exactly_once() {
    let (l, stop, seen) = start(&["127.0.0.1:0"], 2);
    let to = l.local_addrs()[0];
    assert_eq!(l.sockets().len(), 2);
    assert!(l.sockets().iter().all(|s| s.local == to));

    let d5 = v5_datagram(
        0,
        &[v5_flow(1, 3, 300), v5_flow(2, 5, 700), v5_flow(3, 1, 40)],
    );
    let mut m9 = Message::v9(10_000, 1_700_000_000, 0, 77);
    m9.template(256, &V9_IPV4_18);
    m9.data(
        256,
        &V9_IPV4_18,
        &[
            values([10, 1, 0, 1], [10, 1, 0, 2], 2, 120, false),
            values([10, 1, 0, 3], [10, 1, 0, 4], 4, 260, false),
        ],
    );
    let d9 = m9.build();
    let mut mx = Message::ipfix(1_700_000_001, 0, 9);
    mx.template(300, &IPFIX_IPV4_18);
    let dx_t = mx.build();
    let mut mx = Message::ipfix(1_700_000_001, 0, 9);
    mx.data(
        300,
        &IPFIX_IPV4_18,
        &[values([10, 2, 0, 1], [10, 2, 0, 2], 10, 10_000, true)],
    );
    let dx_d = mx.build();
    // One client per exporter: SO_REUSEPORT keeps each on one socket (one decoder).
    let (c5, c9, cx) = (client(to), client(to), client(to));
    c5.send(&d5).expect("send");
    c9.send(&d9).expect("send");
    cx.send(&dx_t).expect("send");
    cx.send(&dx_d).expect("send");
    wait_until("6 records", || seen.lock().expect("lock").len() >= 6);
    let stats = l.stats();
    stop_and_join(l, &stop);

    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 6, "{seen:?}");
    // v5 domain = engine type << 8 | engine id.
    assert_eq!(sum(&seen, "127.0.0.1/258"), (3, 9, 1040));
    assert_eq!(sum(&seen, "127.0.0.1/77"), (2, 6, 380));
    assert_eq!(sum(&seen, "127.0.0.1/9"), (1, 10, 10_000));
    let (_, o) = seen
        .iter()
        .find(|(o, _)| &**o == "127.0.0.1/9")
        .expect("ipfix record");
    assert_eq!(o.proto, Protocol::UDP);
    assert_eq!(o.src, IpAddr::from([10, 2, 0, 1]));
    assert_eq!((o.src_port, o.dst_port), (12_345, 53));
    assert_eq!(o.start_ns, 1_700_000_000_000_000_000);
    assert_eq!(o.end_ns, 1_700_000_001_000_000_000);

    let snap = stats.snapshot();
    assert_eq!(snap.datagrams, 4);
    assert_eq!(
        snap.bytes,
        (d5.len() + d9.len() + dx_t.len() + dx_d.len()) as u64
    );
    assert_eq!(snap.records, 6);
    assert_eq!(snap.decode_errors.total(), 0);
    assert_eq!(
        (snap.truncated, snap.receive_errors, snap.kernel_drops),
        (0, 0, 0)
    );
    // Datagrams that arrive together share a batch.
    assert!((1..=4).contains(&snap.batches), "{snap:?}");
    let mut ex = stats.exporters();
    ex.sort_by_key(|(k, _)| k.domain);
    let got: Vec<(Version, u32, u64, u64, u64)> = ex
        .iter()
        .map(|(k, s)| (k.version, k.domain, s.datagrams, s.records, s.templates))
        .collect();
    assert_eq!(
        got,
        vec![
            (Version::Ipfix, 9, 2, 1, 1),
            (Version::V9, 77, 1, 2, 1),
            (Version::V5, 258, 1, 3, 0),
        ]
    );
    assert!(ex.iter().all(|(k, _)| k.exporter.ip() == to.ip()));
}

/// Real exporters' streams (softflowd, pmacctd, fprobe) through the socket: per-pair
/// totals equal nfdump's (scaled by the sampling rate: observations carry scaled counters).
#[test]
fn exporter_captures_through_the_socket_match_nfdump() {
    for name in CAPTURES {
        let (l, stop, seen) = start(&["127.0.0.1:0"], 2);
        let to = l.local_addrs()[0];
        let datagrams = read_capture(name);
        let want = read_expected(name).scaled_pairs();
        let flows: u64 = want.values().map(|v| v.0).sum();
        let c = client(to);
        for g in &datagrams {
            c.send(&g.payload).expect("send");
        }
        wait_until(name, || seen.lock().expect("lock").len() as u64 >= flows);
        let stats = l.stats();
        stop_and_join(l, &stop);
        let mut got = Totals::new();
        for (_, f) in seen.lock().expect("lock").iter() {
            let e = got.entry((f.src, f.dst)).or_default();
            *e = (e.0 + 1, e.1 + f.packets, e.2 + f.bytes);
        }
        assert_eq!(got, want, "{name}: listener vs nfdump per (src, dst)");
        let snap = stats.snapshot();
        assert_eq!(snap.datagrams, datagrams.len() as u64, "{name}");
        assert_eq!(snap.records, flows, "{name}");
        assert_eq!(snap.decode_errors.total(), 0, "{name}");
        let ex = stats.exporters();
        assert_eq!(ex.len(), 1, "{name}: one exporter domain: {ex:?}");
        assert_eq!(ex[0].1.sequence_lost, 0, "{name}");
    }
}

#[test]
fn ipv6_and_ipv4_addresses_in_one_listener() {
    let probe = UdpSocket::bind("[::1]:0");
    if let Err(e) = probe {
        podflow_testkit::skip(
            "ipv6_and_ipv4_addresses_in_one_listener",
            &format!("cannot bind [::1]: {e}"),
        );
        return;
    }
    let (l, stop, seen) = start(&["127.0.0.1:0", "[::1]:0"], 2);
    assert_eq!(l.sockets().len(), 4);
    let addrs = l.local_addrs();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());

    // IPFIX with IPv6 flow addresses, over IPv6.
    let fields = [
        ie(27, 16), // sourceIPv6Address
        ie(28, 16), // destinationIPv6Address
        ie(2, 8),   // packetDeltaCount
        ie(1, 8),   // octetDeltaCount
        ie(7, 2),
        ie(11, 2),
        ie(4, 1),
    ];
    let src: IpAddr = "fd00::1".parse().expect("addr");
    let dst: IpAddr = "fd00::2".parse().expect("addr");
    let mut m = Message::ipfix(1_700_000_000, 0, 5);
    m.template(400, &fields);
    m.data(
        400,
        &fields,
        &[vec![
            Value::Ip(src),
            Value::Ip(dst),
            Value::U(7),
            Value::U(7_000),
            Value::U(50_000),
            Value::U(8_080),
            Value::U(6),
        ]],
    );
    client(addrs[1]).send(&m.build()).expect("send v6");
    client(addrs[0])
        .send(&v5_datagram(0, &[v5_flow(9, 1, 99)]))
        .expect("send v4");
    wait_until("2 records", || seen.lock().expect("lock").len() >= 2);
    stop_and_join(l, &stop);
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 2);
    assert_eq!(sum(&seen, "::1/5"), (1, 7, 7_000));
    assert_eq!(sum(&seen, "127.0.0.1/258"), (1, 1, 99));
    let (_, o) = seen
        .iter()
        .find(|(o, _)| &**o == "::1/5")
        .expect("v6 record");
    assert_eq!((o.src, o.dst), (src, dst));
    assert_eq!((o.dst_port, o.proto), (8_080, Protocol::TCP));
}

/// A tiny receive buffer and a sink that blocks: the kernel drops, the listener counts
/// every drop, and received + dropped = sent.
#[test]
fn kernel_drops_are_counted_when_the_sink_blocks() {
    let release = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let config = ListenerConfig {
        addrs: vec!["127.0.0.1:0".parse().expect("addr")],
        sockets_per_addr: 1,
        rcvbuf_bytes: 4096, // the kernel's minimum is a few KiB: a handful of datagrams
        ..Default::default()
    };
    let (r, e, d) = (
        Arc::clone(&release),
        Arc::clone(&entered),
        Arc::clone(&delivered),
    );
    let l = Listener::start(config, Arc::clone(&stop), move |b: &mut Batch| {
        e.fetch_add(1, Ordering::SeqCst);
        let t = Instant::now();
        while !r.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        d.fetch_add(b.len(), Ordering::SeqCst);
    })
    .expect("listener starts");
    let info = l.sockets()[0];
    assert!(info.rcvbuf_bytes < 64 << 10, "{info:?}");
    let c = client(info.local);
    const SENT: usize = 2000;
    c.send(&v5_datagram(0, &[v5_flow(1, 1, 100)]))
        .expect("send");
    wait_until("the sink to block", || entered.load(Ordering::SeqCst) == 1);
    for i in 1..SENT {
        c.send(&v5_datagram(i as u32, &[v5_flow(1, 1, 100)]))
            .expect("send");
    }
    release.store(true, Ordering::SeqCst);
    let stats = l.stats();
    // Drops are published once a second.
    wait_until("received + dropped = sent", || {
        let s = stats.snapshot();
        s.datagrams + s.kernel_drops == SENT as u64
    });
    let s = stats.snapshot();
    assert!(s.kernel_drops > 0, "{s:?}");
    assert!(s.datagrams > 1, "{s:?}");
    assert_eq!(s.datagrams + s.kernel_drops, SENT as u64, "{s:?}");
    // One more datagram after the gap: the decoder sees the v5 flow sequence jump and
    // counts exactly the records the kernel dropped as lost.
    c.send(&v5_datagram(SENT as u32, &[v5_flow(1, 1, 100)]))
        .expect("send");
    wait_until("the last datagram", || {
        stats.snapshot().datagrams == s.datagrams + 1
    });
    stop_and_join(l, &stop);
    let s = stats.snapshot();
    assert_eq!(s.datagrams + s.kernel_drops, SENT as u64 + 1, "{s:?}");
    // Every datagram that got through reached the sink (one flow each).
    assert_eq!(delivered.load(Ordering::SeqCst) as u64, s.datagrams);
    assert_eq!(s.records, s.datagrams);
    let ex = stats.exporters();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].1.sequence_lost, s.kernel_drops, "{ex:?}");
    assert_eq!(ex[0].1.records, s.records, "{ex:?}");
}

#[test]
fn stop_flag_ends_every_thread_within_a_second() {
    let (l, stop, _seen) = start(&["127.0.0.1:0"], 4);
    assert_eq!(l.sockets().len(), 4);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    stop_and_join(l, &stop);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "join took {took:?}");
}

#[test]
fn bind_error_names_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = Listener::start(
        ListenerConfig {
            addrs: vec![addr],
            sockets_per_addr: 1,
            ..Default::default()
        },
        Arc::new(AtomicBool::new(false)),
        |_: &mut Batch| {},
    )
    .expect_err("the port is taken without SO_REUSEPORT");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("NetFlow listener {addr}: bind: ")),
        "{msg}"
    );
    assert!(msg.contains("in use"), "{msg}");
    let err = Listener::start(
        ListenerConfig {
            addrs: vec![],
            ..Default::default()
        },
        Arc::new(AtomicBool::new(false)),
        |_: &mut Batch| {},
    )
    .expect_err("no address");
    assert_eq!(err.to_string(), "NetFlow listener: no listen address");
}

#[test]
fn bad_and_oversized_datagrams_are_counted_not_delivered() {
    let (l, stop, seen) = start_with(ListenerConfig {
        addrs: vec!["127.0.0.1:0".parse().expect("addr")],
        sockets_per_addr: 1,
        max_datagram_bytes: 200,
        ..Default::default()
    });
    let c = client(l.local_addrs()[0]);
    c.send(&[0, 42, 1, 2, 3]).expect("send"); // version 42
    c.send(&[0]).expect("send"); // one byte
    // 5 v5 flows = 24 + 5 * 48 = 264 bytes > 200: truncated by the receive buffer.
    let flows: Vec<V5Flow> = (1..=5).map(|i| v5_flow(i, 1, 10)).collect();
    c.send(&v5_datagram(0, &flows)).expect("send");
    c.send(&v5_datagram(5, &flows[..1])).expect("send");
    let stats = l.stats();
    wait_until("4 datagrams", || stats.snapshot().datagrams == 4);
    stop_and_join(l, &stop);
    let s = stats.snapshot();
    assert_eq!(s.decode_errors.get(ErrorReason::UnknownVersion), 1, "{s:?}");
    assert_eq!(s.decode_errors.get(ErrorReason::ShortHeader), 1, "{s:?}");
    assert_eq!(s.decode_errors.total(), 2);
    assert_eq!(s.truncated, 1);
    assert_eq!(s.records, 1);
    assert_eq!(seen.lock().expect("lock").len(), 1);
}

/// A socket bound to `from` (any address of 127.0.0.0/8 is local) sending to `to`.
fn client_from(from: Ipv4Addr, to: SocketAddr) -> UdpSocket {
    let c = UdpSocket::bind(SocketAddr::new(IpAddr::V4(from), 0)).expect("client bind");
    c.connect(to).expect("connect");
    c
}

#[test]
fn datagrams_from_outside_the_allow_list_are_dropped_and_counted() {
    let (l, stop, seen) = start_with(ListenerConfig {
        addrs: vec!["127.0.0.1:0".parse().expect("addr")],
        sockets_per_addr: 1,
        allow: "127.0.0.2/32,127.0.1.0/24".parse().expect("allow-list"),
        ..Default::default()
    });
    let to = l.local_addrs()[0];
    let d = v5_datagram(0, &[v5_flow(1, 2, 300)]);
    for (from, n) in [
        ([127, 0, 0, 2], 3),
        ([127, 0, 0, 3], 4),
        ([127, 0, 1, 9], 1),
    ] {
        let c = client_from(Ipv4Addr::from(from), to);
        for _ in 0..n {
            c.send(&d).expect("send");
        }
    }
    let stats = l.stats();
    wait_until("8 datagrams", || stats.snapshot().datagrams == 8);
    stop_and_join(l, &stop);
    let s = stats.snapshot();
    assert_eq!((s.denied, s.denied_bytes), (4, 4 * d.len() as u64));
    assert!(!s.allow_any);
    assert_eq!(s.records, 4);
    let seen = seen.lock().expect("lock");
    assert_eq!(sum(&seen, "127.0.0.2/258"), (3, 6, 900));
    assert_eq!(sum(&seen, "127.0.1.9/258"), (1, 2, 300));
    assert_eq!(sum(&seen, "127.0.0.3/258"), (0, 0, 0));
    assert_eq!(seen.len(), 4);
}

#[test]
fn ten_thousand_real_exporters_stay_within_the_cache_bounds() {
    let (l, stop, _seen) = start_with(ListenerConfig {
        addrs: vec!["127.0.0.1:0".parse().expect("addr")],
        sockets_per_addr: 1,
        rcvbuf_bytes: 4 << 20,
        decoder: podflow_netflow::DecoderConfig {
            max_templates: 1000,
            max_domains: 2000,
            ..Default::default()
        },
        ..Default::default()
    });
    let to = l.local_addrs()[0];
    let stats = l.stats();
    let fields = [ie(8, 4), ie(12, 4), ie(1, 4)];
    let mut m = Message::ipfix(1_700_000_000, 0, 1);
    m.template(256, &fields).template(257, &fields);
    let pkt = m.build();
    for i in 0..10_000u32 {
        // 127.0.100.0 onwards: 10,000 distinct source addresses.
        let c = client_from(Ipv4Addr::from(0x7f00_6400 + i), to);
        c.send(&pkt).expect("send");
        if i % 500 == 499 {
            // Paced, so the 4 MiB receive buffer never overflows.
            wait_until("the listener to catch up", || {
                stats.snapshot().datagrams == u64::from(i) + 1
            });
        }
    }
    wait_until("10,000 datagrams", || stats.snapshot().datagrams == 10_000);
    stop_and_join(l, &stop);
    let s = stats.snapshot();
    assert_eq!(s.kernel_drops, 0);
    assert!(s.templates_cached <= 1000, "{s:?}");
    assert!(s.domains_tracked <= 2000, "{s:?}");
    let t = stats.totals();
    assert_eq!(t.datagrams, 10_000, "counts of forgotten domains are kept");
    assert_eq!(t.templates, 20_000);
    let evicted = t.templates_evicted_total_limit + t.templates_evicted_domain_limit;
    assert_eq!(
        t.templates - evicted,
        s.templates_cached,
        "every template is cached or counted as evicted: {t:?}"
    );
    assert_eq!(t.domains_evicted + s.domains_tracked, 10_000);
    assert!(
        t.templates_evicted_total_limit > 0 && t.domains_evicted > 0,
        "{t:?}"
    );
}
