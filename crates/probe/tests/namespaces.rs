//! Agents in network namespaces: node A probes B over an impaired link and C over a
//! clean one. The impairments are real (an NFQUEUE delayer and a random-drop rule in
//! B's netfilter); the truth for loss is the binomial bound of the configured rate.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use common::{PORTS, Remote, binomial_bounds, link, median};
use podflow_impair::testing::can_run;
use podflow_impair::{Backend, DelaySpec, Delayer, Direction, LossRule};
use podflow_probe::peers::Peer;
use podflow_probe::prober::{self, Me, ProbeConfig};
use podflow_probe::{Mesh, MeshConfig, Outcome, ProbeKind, ProbeResult};
use podflow_testkit::Netns;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const A_B: &str = "10.97.1.1";
const B: &str = "10.97.1.2";
const A_C: &str = "10.97.2.1";
const C: &str = "10.97.2.2";

struct Lab {
    a: Netns,
    b: Netns,
    c: Netns,
    b_dev: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let a = Netns::new(&format!("{tag}a")).expect("netns a");
        let b = Netns::new(&format!("{tag}b")).expect("netns b");
        let c = Netns::new(&format!("{tag}c")).expect("netns c");
        let (_, b_dev) = link(&a, &b, A_B, B);
        link(&a, &c, A_C, C);
        Lab { a, b, c, b_dev }
    }
}

fn peers() -> Vec<Peer> {
    vec![
        Peer::new("b", "zone-2", vec![B.parse().expect("addr")]),
        Peer::new("c", "zone-3", vec![C.parse().expect("addr")]),
    ]
}

fn mesh_cfg(interval_ms: u64, kinds: Vec<ProbeKind>) -> MeshConfig {
    MeshConfig {
        me: Me {
            node: "a".into(),
            zone: "zone-1".into(),
        },
        probe: ProbeConfig {
            ports: PORTS,
            udp_count: 10,
            udp_spacing_ms: 2,
            ..ProbeConfig::default()
        },
        interval_ms,
        jitter_ms: 5,
        kinds,
        // Every kind every round: these tests are about what each probe sees, not
        // the schedule (mesh::round_kinds has its own tests).
        mtu_every: 1,
        icmp_every: 1,
        http_every: 1,
        ..MeshConfig::default()
    }
}

/// Runs `f` on a current-thread runtime on a thread inside `ns`.
fn in_ns<T: Send + 'static>(
    ns: &Netns,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
}

#[test]
fn impaired_pair_shows_its_delay_and_loss_the_clean_pair_none() {
    if !can_run(
        "probe::impaired_pair_shows_its_delay_and_loss_the_clean_pair_none",
        &["iptables", "nft"],
    ) {
        return;
    }
    let lab = Lab::new("pim");
    let _rb = Remote::start(&lab.b, B);
    let _rc = Remote::start(&lab.c, C);
    let a_b: IpAddr = A_B.parse().expect("addr");
    // Delay on B's way back to A: after the responder's t3, before A's receive stamp,
    // so it is the network's time. Loss on B's way in: silent, like a network's.
    let _delay = Delayer::start(
        lab.b.name(),
        a_b,
        Direction::ToPeer,
        DelaySpec::fixed(Duration::from_millis(20)),
    )
    .expect("delayer");
    let _loss = LossRule::add(
        lab.b.name(),
        a_b,
        Direction::FromPeer,
        0.1,
        Backend::Iptables,
    )
    .expect("loss rule");

    let results: Vec<ProbeResult> = in_ns(&lab.a, async move {
        let (_ptx, prx) = watch::channel(peers());
        let (tx, mut rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let mut cfg = mesh_cfg(60, vec![ProbeKind::Udp]);
        // Bursts of 20; a lost packet holds its round 100 ms (the delay is 20 ms).
        cfg.probe.udp_count = 20;
        cfg.probe.udp_timeout_ms = 100;
        let mesh = Mesh::start(cfg, prx, tx, cancel.clone());
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        let enough = |got: &Vec<ProbeResult>, n: &str| {
            got.iter()
                .filter(|r| r.dst_node == n)
                .map(|r| r.sent)
                .sum::<u32>()
                >= 400
        };
        while !(enough(&got, "b") && enough(&got, "c")) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => got.push(r),
                _ => break,
            }
        }
        cancel.cancel();
        mesh.join().await;
        got
    });
    let mut by: BTreeMap<&str, (u64, u64, Vec<u64>, u64)> = BTreeMap::new();
    for r in &results {
        assert_eq!((r.src_node.as_str(), r.src_zone.as_str()), ("a", "zone-1"));
        assert_eq!(
            r.late, 0,
            "a 250 ms timeout and a 20 ms delay: nothing is late"
        );
        let e = by.entry(r.dst_node.as_str()).or_default();
        e.0 += u64::from(r.sent);
        e.1 += u64::from(r.lost);
        e.2.extend(&r.rtt_ns);
        e.3 += u64::from(r.duplicates);
    }
    let fallbacks: u32 = results.iter().map(|r| r.timestamp_fallbacks).sum();
    for (n, (s, l, t, _)) in &by {
        let mut t = t.clone();
        eprintln!(
            "{n}: sent {s} lost {l} median {} ns ({} samples)",
            median(&mut t),
            t.len()
        );
    }
    eprintln!("timestamp fallbacks: {fallbacks}");
    let (sent, lost, rtts, dups) = by.get_mut("b").expect("results for b");
    assert!(*sent >= 300, "{sent} packets to b");
    let m = median(rtts);
    assert!(
        (18_000_000..=22_000_000).contains(&m),
        "b median RTT {m} ns, want 20 ms ± 2 ms"
    );
    let (lo, hi) = binomial_bounds(*sent, 0.1);
    assert!(
        (lo..=hi).contains(lost),
        "b lost {lost} of {sent}, want {lo}..={hi} (99.9%)"
    );
    assert_eq!(*dups, 0);
    let (sent, lost, rtts, _) = by.get_mut("c").expect("results for c");
    assert!(*sent >= 300, "{sent} packets to c");
    assert_eq!(*lost, 0, "c is not impaired");
    let m = median(rtts);
    assert!(m < 1_000_000, "c median RTT {m} ns, want under 1 ms");
    assert!(
        rtts.iter().all(|&t| t < 10_000_000),
        "c: no sample near b's delay"
    );
}

#[test]
fn reordering_never_mismatches_replies() {
    if !can_run("probe::reordering_never_mismatches_replies", &["iptables"]) {
        return;
    }
    let lab = Lab::new("pro");
    let _rb = Remote::start(&lab.b, B);
    let a_b: IpAddr = A_B.parse().expect("addr");
    // 1..11 ms per reply, packets 1 ms apart: the replies come back shuffled.
    let spec = DelaySpec {
        base: Duration::from_millis(1),
        jitter: Duration::from_millis(10),
    };
    let delay = Delayer::start(lab.b.name(), a_b, Direction::ToPeer, spec).expect("delayer");
    let r = in_ns(&lab.a, async move {
        let cfg = ProbeConfig {
            ports: PORTS,
            udp_count: 100,
            udp_spacing_ms: 1,
            ..ProbeConfig::default()
        };
        let me = Me {
            node: "a".into(),
            zone: "z".into(),
        };
        prober::probe(&cfg, &me, &peers()[0], ProbeKind::Udp).await
    });
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.error);
    assert_eq!((r.sent, r.lost, r.duplicates, r.late), (100, 0, 0, 0));
    assert_eq!(r.rtt_ns.len(), 100);
    // Each sample is its own packet's: never below the delay's 1 ms floor (a reply
    // matched to a later packet's send would be). Above, the delayer's thread may be
    // scheduled late on a loaded machine: 11 ms plus generous slack.
    for t in &r.rtt_ns {
        assert!(
            (900_000..=30_000_000).contains(t),
            "rtt {t} ns outside 1..11 ms (+slack)"
        );
    }
    let spread = r.rtt_ns.iter().max().unwrap_or(&0) - r.rtt_ns.iter().min().unwrap_or(&0);
    assert!(spread > 3_000_000, "the delays did vary ({spread} ns)");
    // In sequence order the samples are not sorted: the replies were reordered.
    assert!(r.rtt_ns.windows(2).any(|w| w[0] > w[1] + 1_000_000));
    assert!(delay.stats().released >= 100);
}

#[test]
fn lower_path_mtu_loses_only_the_full_size_probe() {
    if !can_run("probe::lower_path_mtu_loses_only_the_full_size_probe", &[]) {
        return;
    }
    let lab = Lab::new("pmt");
    let _rb = Remote::start(&lab.b, B);
    // The far side's interface takes at most 1400 bytes: A (1500) sends into a black
    // hole, no ICMP comes back.
    lab.b
        .sh(&format!("ip link set {} mtu 1400", lab.b_dev))
        .expect("mtu");
    let (small, big, tcp) = in_ns(&lab.a, async move {
        let cfg = ProbeConfig {
            ports: PORTS,
            mtu: 1500,
            mtu_count: 3,
            ..ProbeConfig::default()
        };
        let me = Me {
            node: "a".into(),
            zone: "z".into(),
        };
        let p = &peers()[0];
        (
            prober::probe(&cfg, &me, p, ProbeKind::Udp).await,
            prober::probe(&cfg, &me, p, ProbeKind::UdpMtu).await,
            prober::probe(&cfg, &me, p, ProbeKind::Tcp).await,
        )
    });
    assert_eq!(
        (small.outcome, small.lost),
        (Outcome::Ok, 0),
        "{}",
        small.error
    );
    assert_eq!(tcp.outcome, Outcome::Ok, "{}", tcp.error);
    assert_eq!(
        (big.outcome, big.sent, big.lost),
        (Outcome::Fail, 3, 3),
        "{}",
        big.error
    );
    assert!(big.error.contains("lost 3 of 3"), "{}", big.error);
    // And the same probe through a 1400 path MTU setting passes.
    let ok = in_ns(&lab.a, async move {
        let cfg = ProbeConfig {
            ports: PORTS,
            mtu: 1400,
            mtu_count: 3,
            ..ProbeConfig::default()
        };
        let me = Me {
            node: "a".into(),
            zone: "z".into(),
        };
        prober::probe(&cfg, &me, &peers()[0], ProbeKind::UdpMtu).await
    });
    assert_eq!((ok.outcome, ok.lost), (Outcome::Ok, 0), "{}", ok.error);
}

#[test]
fn removed_peer_stops_stopped_responder_keeps_failing() {
    if !can_run(
        "probe::removed_peer_stops_stopped_responder_keeps_failing",
        &[],
    ) {
        return;
    }
    let lab = Lab::new("prm");
    let _rb = Remote::start(&lab.b, B);
    let mut rc = Remote::start(&lab.c, C);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // The test drives the mesh in A; C's responder is stopped from here on its signal.
    let stopper = std::thread::spawn(move || {
        if stop_rx.recv().is_ok() {
            rc.stop();
            let _ = done_tx.send(());
        }
        rc
    });
    let interval = Duration::from_millis(200);
    let (after_removal, failing) = in_ns(&lab.a, async move {
        let (ptx, prx) = watch::channel(peers());
        let (tx, mut rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let mesh = Mesh::start(
            mesh_cfg(200, vec![ProbeKind::Udp, ProbeKind::Tcp]),
            prx,
            tx,
            cancel.clone(),
        );
        let first = collect(&mut rx, Duration::from_millis(700)).await;
        assert!(
            first
                .iter()
                .any(|r| r.dst_node == "b" && r.outcome == Outcome::Ok)
        );
        assert!(
            first
                .iter()
                .any(|r| r.dst_node == "c" && r.outcome == Outcome::Ok)
        );
        // C's responder stops: C keeps being probed and keeps failing.
        stop_tx.send(()).expect("stopper");
        done_rx.recv().expect("stopped");
        let stopped_at = podflow_probe::tsock::now_ns();
        let second = collect(&mut rx, Duration::from_millis(1000)).await;
        let failing: Vec<ProbeResult> = second
            .into_iter()
            .filter(|r| r.dst_node == "c" && r.started_unix_ns > stopped_at)
            .collect();
        // C is removed: from now on nothing about it, failure or not.
        while rx.try_recv().is_ok() {}
        ptx.send(vec![peers()[0].clone()]).expect("update");
        let third = collect(&mut rx, interval * 3).await;
        assert!(third.iter().any(|r| r.dst_node == "b"), "b still probed");
        cancel.cancel();
        mesh.join().await;
        (
            third.into_iter().filter(|r| r.dst_node == "c").count(),
            failing,
        )
    });
    let _ = stopper.join();
    assert_eq!(after_removal, 0, "results for a removed peer");
    assert!(
        failing.len() >= 4,
        "{} results for the stopped responder",
        failing.len()
    );
    for r in &failing {
        assert_eq!(r.outcome, Outcome::Fail, "{:?}", r);
        assert!(r.sent > 0 && r.lost == r.sent, "{:?}", r);
    }
}

/// Every result that arrives within `d`.
async fn collect(rx: &mut mpsc::Receiver<ProbeResult>, d: Duration) -> Vec<ProbeResult> {
    let deadline = tokio::time::Instant::now() + d;
    let mut v = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        v.push(r);
    }
    v
}
