//! Every probe against a real responder on 127.0.0.1 (no root needed except ICMP,
//! which reports "unavailable" without it).

use std::net::{IpAddr, SocketAddr};

use podflow_probe::peers::Peer;
use podflow_probe::prober::{self, Me, ProbeConfig};
use podflow_probe::responder::{Ports, Responder, ResponderConfig};
use podflow_probe::{Outcome, ProbeKind};
use tokio_util::sync::CancellationToken;

fn me() -> Me {
    Me {
        node: "a".into(),
        zone: "z1".into(),
    }
}

async fn responder() -> (Responder, ProbeConfig, Peer) {
    let lo: IpAddr = "127.0.0.1".parse().expect("addr");
    let rc = ResponderConfig {
        bind: lo,
        ports: Ports {
            udp: 0,
            tcp: 0,
            http: 0,
        },
        ..ResponderConfig::default()
    };
    let r = Responder::start(&rc, CancellationToken::new()).expect("responder binds");
    let cfg = ProbeConfig {
        ports: r.ports(),
        mtu: 1500,
        ..ProbeConfig::default()
    };
    (r, cfg, Peer::new("b", "z2", vec![lo]))
}

#[tokio::test]
async fn every_kind_against_a_live_responder() {
    let (resp, cfg, peer) = responder().await;
    for kind in [
        ProbeKind::Udp,
        ProbeKind::UdpMtu,
        ProbeKind::Tcp,
        ProbeKind::Http,
    ] {
        let r = prober::probe(&cfg, &me(), &peer, kind).await;
        assert_eq!(r.outcome, Outcome::Ok, "{kind}: {}", r.error);
        assert_eq!(
            (
                r.src_node.as_str(),
                r.dst_node.as_str(),
                r.dst_zone.as_str()
            ),
            ("a", "b", "z2")
        );
        assert_eq!(r.lost, 0);
        assert!(!r.rtt_ns.is_empty());
        assert!(
            r.rtt_ns.iter().all(|&t| t > 0 && t < 100_000_000),
            "{kind}: {:?}",
            r.rtt_ns
        );
    }
    let r = prober::probe(&cfg, &me(), &peer, ProbeKind::Icmp).await;
    if nix::unistd::Uid::effective().is_root() {
        assert_eq!(r.outcome, Outcome::Ok, "icmp: {}", r.error);
        assert_eq!((r.sent, r.lost), (cfg.icmp_count, 0));
    } else {
        assert!(
            matches!(r.outcome, Outcome::Ok | Outcome::Unavailable),
            "{}",
            r.error
        );
    }
    let s = resp.stats();
    assert_eq!(s.udp.received, 7, "5 small + 2 full-MTU");
    assert_eq!(s.udp.answered, 7);
    assert_eq!((s.tcp.answered, s.http.answered), (1, 1));
    assert_eq!(s.udp.malformed + s.http.malformed, 0);
    resp.stop().await;
}

#[tokio::test]
async fn stopped_responder_fails_every_kind_with_a_reason() {
    let (resp, cfg, peer) = responder().await;
    resp.stop().await;
    for kind in [
        ProbeKind::Udp,
        ProbeKind::UdpMtu,
        ProbeKind::Tcp,
        ProbeKind::Http,
    ] {
        let r = prober::probe(&cfg, &me(), &peer, kind).await;
        assert_eq!(r.outcome, Outcome::Fail, "{kind}");
        assert_eq!(r.lost, r.sent, "{kind}");
        assert!(r.sent > 0, "{kind}: a failure is never '0 sent'");
        assert!(!r.error.is_empty(), "{kind}");
    }
}

// Multi-threaded: the test's own blocking HTTP client must not stall the responder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_are_counted_and_ignored() {
    let (resp, cfg, peer) = responder().await;
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = resp.udp_addr();
    for junk in [
        &b""[..],
        b"x",
        &[0u8; 48],
        &[0x50, 0x46, 0x50, 0x42, 1, 2, 0, 0][..],
    ] {
        s.send_to(junk, to).expect("send");
    }
    let mut reply = Vec::new();
    podflow_probe::wire::encode(
        &podflow_probe::wire::Probe::request(1, 1, 1, 48),
        &mut reply,
    )
    .expect("encode");
    reply[5] = 2; // a reply: responders do not answer replies
    s.send_to(&reply, to).expect("send");
    s.send_to(&[0u8; 9300], to).expect("send"); // longer than the responder reads
    // The responder still answers real probes.
    let r = prober::probe(&cfg, &me(), &peer, ProbeKind::Udp).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.error);
    let st = resp.stats();
    assert_eq!(st.udp.malformed, 6, "{st:?}");
    assert_eq!(st.udp.answered, 5);
    // HTTP garbage: counted, answered 400, the server goes on.
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(resp.http_addr()).expect("connect");
    c.write_all(b"BREW /pot HTCPCP/1.0\r\n\r\n").expect("write");
    let mut back = String::new();
    c.read_to_string(&mut back).expect("read");
    assert!(back.starts_with("HTTP/1.1 400"), "{back}");
    let r = prober::probe(&cfg, &me(), &peer, ProbeKind::Http).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.error);
    assert_eq!(resp.stats().http.malformed, 1);
}

#[tokio::test]
async fn dns_against_a_local_fake_resolver() {
    // A tiny resolver on 127.0.0.1 that answers every A query for probe.test with
    // 10.0.0.7, after first sending an answer with the wrong id.
    let srv = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let at: SocketAddr = srv.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut b = [0u8; 512];
        while let Ok((n, from)) = srv.recv_from(&mut b).await {
            let mut a = b[..n].to_vec();
            a[2] |= 0x80;
            a[7] = 1;
            a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 7]);
            let mut wrong = a.clone();
            wrong[0] ^= 0xff;
            let _ = srv.send_to(&wrong, from).await;
            if b[12..n].starts_with(b"\x05probe\x04test\x00") {
                let _ = srv.send_to(&a, from).await;
            } else {
                a[3] = 0x83; // NXDOMAIN
                a[7] = 0;
                a.truncate(n);
                let _ = srv.send_to(&a, from).await;
            }
        }
    });
    let cfg = ProbeConfig::default();
    let r = prober::dns_lookup(&cfg, &me(), at, "probe.test", podflow_probe::dns::QType::A).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.error);
    assert_eq!(
        (r.kind, r.dns_name.as_str(), r.duplicates),
        (ProbeKind::Dns, "probe.test", 1)
    );
    assert_eq!(r.dst_node, at.to_string());
    let r = prober::dns_lookup(
        &cfg,
        &me(),
        at,
        "nothing.test",
        podflow_probe::dns::QType::A,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Fail);
    assert!(r.error.contains("NXDOMAIN"), "{}", r.error);
    // Nobody there: a timeout, named.
    let cfg = ProbeConfig {
        dns_timeout_ms: 200,
        ..ProbeConfig::default()
    };
    let dead: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let r = prober::dns_lookup(
        &cfg,
        &me(),
        dead,
        "probe.test",
        podflow_probe::dns::QType::A,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Fail);
    assert!(!r.error.is_empty());
}

/// A fake peer that answers every probe twice, replays the previous answer and sends
/// an answer of another session: no reply may land on the wrong packet.
#[tokio::test]
async fn duplicated_replayed_and_foreign_replies_never_mismatch() {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = s.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut prev: Option<Vec<u8>> = None;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let t = podflow_probe::tsock::now_ns();
            if podflow_probe::wire::reply_in_place(&mut buf[..n], t, t).is_err() {
                continue;
            }
            let reply = buf[..n].to_vec();
            let mut foreign = reply.clone();
            foreign[8] ^= 0x01; // another session
            for m in [&reply, &reply, &foreign] {
                let _ = s.send_to(m, from);
            }
            if let Some(p) = prev.replace(reply) {
                let _ = s.send_to(&p, from);
            }
        }
    });
    let cfg = ProbeConfig {
        ports: Ports {
            udp: port,
            tcp: 1,
            http: 1,
        },
        udp_count: 20,
        udp_spacing_ms: 2,
        ..ProbeConfig::default()
    };
    let peer = Peer::new("fake", "z", vec!["127.0.0.1".parse().expect("addr")]);
    let r = prober::probe(&cfg, &me(), &peer, ProbeKind::Udp).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.error);
    assert_eq!((r.sent, r.lost, r.late), (20, 0, 0));
    assert_eq!(r.rtt_ns.len(), 20);
    // Each packet's second copy, plus the replays that came before the burst ended.
    assert!(r.duplicates >= 20, "{} duplicates", r.duplicates);
    assert!(r.rtt_ns.iter().all(|&t| t < 5_000_000), "{:?}", r.rtt_ns);
}

/// The default burst leaves back to back (`udp_spacing_ms: 0`): every packet is still
/// answered on its own sequence number, one RTT sample each, and the transmit stamps
/// (read once a burst now) are all found: a burst with no user-clock fallback comes
/// within a few (receive stamping is switched on lazily by the kernel).
#[tokio::test]
async fn back_to_back_burst_keeps_per_packet_samples_and_kernel_stamps() {
    let (_resp, cfg, peer) = responder().await;
    assert_eq!(cfg.udp_spacing_ms, 0, "the default");
    let addr = peer.addrs[0];
    let mut slot = None;
    for attempt in 0..20 {
        let r = prober::udp_burst(&cfg, &me(), &peer, addr, false, &mut slot).await;
        assert_eq!(r.outcome, Outcome::Ok, "{}", r.error);
        assert_eq!((r.sent, r.lost, r.duplicates), (5, 0, 0));
        assert_eq!(r.rtt_ns.len(), 5);
        assert!(slot.is_some(), "the socket is kept");
        if r.timestamp_fallbacks == 0 {
            return;
        }
        eprintln!("attempt {attempt}: {} fallbacks", r.timestamp_fallbacks);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("every burst took user-clock times: transmit stamps not read");
}
