//! Loss rules and the NFQUEUE delayer on a real veth pair in namespaces made here.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use podflow_impair::testing::can_run;
use podflow_impair::{Backend, DelaySpec, Delayer, Direction, LossRule, check_netns};
use podflow_testkit::{Pair, serve_udp_delayed};

const PORT: u16 = 7777;

/// From A: `n` datagrams to B's echo, one at a time; returns the RTTs of those answered.
fn pings(pair: &Pair, n: usize, wait: Duration) -> Vec<Duration> {
    pair.a.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(wait)).expect("timeout");
        let to: SocketAddr = format!("{}:{PORT}", Pair::B4).parse().expect("addr");
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..n as u32 {
            let t = Instant::now();
            s.send_to(&i.to_be_bytes(), to).expect("send");
            // Skip stale answers of earlier (timed-out) pings.
            while let Ok((len, _)) = s.recv_from(&mut buf) {
                if len == 4 && buf[..4] == i.to_be_bytes() {
                    rtts.push(t.elapsed());
                    break;
                }
            }
        }
        rtts
    })
}

fn tables(pair: &Pair) -> String {
    pair.a.sh("nft list tables; iptables -S").expect("nft list")
        + &pair.b.sh("nft list tables; iptables -S").expect("nft list")
}

#[test]
fn delayer_adds_its_delay_and_cleans_up() {
    if !can_run("impair::delayer_adds_its_delay_and_cleans_up", &["nft"]) {
        return;
    }
    let pair = Pair::new("imd").expect("namespaces");
    serve_udp_delayed(&pair, Pair::B4, PORT, Duration::ZERO);
    let base = pings(&pair, 10, Duration::from_millis(150));
    assert_eq!(base.len(), 10);
    let b4: IpAddr = Pair::B4.parse().expect("addr");
    {
        let d = Delayer::start(
            pair.a.name(),
            b4,
            Direction::ToPeer,
            DelaySpec::fixed(Duration::from_millis(20)),
        )
        .expect("delayer");
        assert!(tables(&pair).contains("pf_delay_"));
        let rtts = pings(&pair, 20, Duration::from_millis(150));
        assert_eq!(rtts.len(), 20, "a delay loses nothing");
        for r in &rtts {
            assert!(
                *r >= Duration::from_millis(20) && *r < Duration::from_millis(40),
                "{r:?}"
            );
        }
        let st = d.stats();
        assert_eq!((st.queued, st.released, st.overflow), (20, 20, 0));
    }
    assert!(
        !tables(&pair).contains("pf_delay_"),
        "the rule goes with the delayer"
    );
    let after = pings(&pair, 10, Duration::from_millis(150));
    assert!(
        after.iter().all(|r| *r < Duration::from_millis(10)),
        "{after:?}"
    );
}

#[test]
fn loss_rules_drop_their_share_and_clean_up() {
    if !can_run(
        "impair::loss_rules_drop_their_share_and_clean_up",
        &["nft", "iptables"],
    ) {
        return;
    }
    let pair = Pair::new("iml").expect("namespaces");
    serve_udp_delayed(&pair, Pair::B4, PORT, Duration::ZERO);
    for backend in [Backend::Nft, Backend::Iptables] {
        let n = 400;
        let got = {
            // In B on what comes from A: lost on the way, not refused at A's send.
            let a4: IpAddr = Pair::A4.parse().expect("addr");
            let _r =
                LossRule::add(pair.b.name(), a4, Direction::FromPeer, 0.5, backend).expect("rule");
            pings(&pair, n, Duration::from_millis(15)).len()
        };
        // Binomial(400, 0.5): mean 200, sd 10; 4.5 sd either way.
        assert!(
            (155..=245).contains(&got),
            "{backend:?}: {got} of {n} answered"
        );
        assert_eq!(
            pings(&pair, 50, Duration::from_millis(150)).len(),
            50,
            "{backend:?}: rule removed"
        );
    }
    assert!(!tables(&pair).contains("pf_loss_"), "{}", tables(&pair));
}

#[test]
fn refuses_the_host_namespace_and_bad_values() {
    assert!(check_netns("").is_err());
    assert!(check_netns("../proc").is_err());
    assert!(check_netns("pf-does-not-exist-42").is_err());
    let lo: IpAddr = "127.0.0.1".parse().expect("addr");
    assert!(
        LossRule::add(
            "pf-does-not-exist-42",
            lo,
            Direction::ToPeer,
            0.1,
            Backend::Nft
        )
        .is_err()
    );
    if !can_run("impair::refuses_bad_probability", &["nft"]) {
        return;
    }
    let pair = Pair::new("imv").expect("namespaces");
    assert!(LossRule::add(pair.a.name(), lo, Direction::ToPeer, 1.5, Backend::Nft).is_err());
}
