//! The decoder on real kernel messages (captured by `examples/capture.rs`, see
//! tests/data/README.md), checked against what conntrack-tools printed at the same moment.

use std::collections::HashMap;

use podflow_conntrack::decode::{CtEvent, DecodeStats, decode_entry, event_of};
use podflow_conntrack::nl::{Messages, NLMSG_DONE};
use podflow_conntrack::{CtEntry, Tracker};
use podflow_model::Protocol;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

fn decode_all(bytes: &[u8]) -> Vec<(CtEvent, CtEntry)> {
    let mut stats = DecodeStats::default();
    let mut out = Vec::new();
    for m in Messages::new(bytes) {
        let (h, p) = m.expect("valid framing");
        if h.kind == NLMSG_DONE {
            break;
        }
        let ev = event_of(&h).expect("a ctnetlink message");
        out.push((ev, decode_entry(p, &mut stats).expect("decodes")));
    }
    assert_eq!(stats.unknown_attributes, 0);
    out
}

/// `id -> (src, sport, orig packets, orig bytes, reply packets, reply bytes)` from
/// `conntrack -L -o extended,id`.
fn listing() -> HashMap<u32, (String, u16, [u64; 4])> {
    let text = String::from_utf8(data("dump-tcp4-udp6.conntrack-L.txt")).expect("utf8");
    text.lines()
        .map(|l| {
            let get = |k: &'static str| {
                l.split_whitespace()
                    .filter_map(move |w| w.strip_prefix(k))
                    .map(str::to_string)
            };
            let nums: Vec<u64> = get("packets=")
                .zip(get("bytes="))
                .flat_map(|(p, b)| [p.parse().expect("n"), b.parse().expect("n")])
                .collect();
            let id: u32 = get("id=").next().expect("id").parse().expect("id");
            let src = get("src=").next().expect("src");
            let sport = get("sport=").next().expect("sport").parse().expect("port");
            (id, (src, sport, [nums[0], nums[1], nums[2], nums[3]]))
        })
        .collect()
}

#[test]
fn captured_dump_matches_conntrack_tools() {
    let entries = decode_all(&data("dump-tcp4-udp6.bin"));
    let want = listing();
    assert_eq!(entries.len(), want.len());
    for (ev, e) in entries {
        assert_eq!(ev, CtEvent::Dump);
        let (src, sport, n) = want
            .get(&e.id)
            .unwrap_or_else(|| panic!("id {} not in the listing", e.id));
        assert_eq!(&e.orig.src.to_string(), src);
        assert_eq!(e.orig.src_port, *sport);
        assert_eq!(
            [
                e.counters_orig.packets,
                e.counters_orig.bytes,
                e.counters_reply.packets,
                e.counters_reply.bytes
            ],
            *n
        );
        assert!(
            e.has_counters && e.start_ns > 0,
            "accounting and timestamps were on"
        );
        if e.proto == Protocol::TCP {
            assert_eq!(e.tcp_state, 3, "ESTABLISHED");
            assert!(e.orig.src.is_ipv4());
        } else {
            assert_eq!(e.proto, Protocol::UDP);
            assert!(e.orig.src.is_ipv6());
        }
    }
}

#[test]
fn captured_events_feed_the_tracker_to_the_final_counters() {
    let events = decode_all(&data("events-tcp4-udp6.bin"));
    let news = events.iter().filter(|(e, _)| *e == CtEvent::New).count();
    let destroys: Vec<_> = events
        .iter()
        .filter(|(e, _)| *e == CtEvent::Destroy)
        .collect();
    assert!(
        news >= 2 && destroys.len() >= 2,
        "{news} NEW, {} DESTROY",
        destroys.len()
    );
    for (_, e) in &destroys {
        assert!(
            e.has_counters && e.start_ns > 0 && e.stop_ns >= e.start_ns,
            "DESTROY carries counters and times: {e:?}"
        );
    }
    for (ev, e) in &events {
        if *ev == CtEvent::New {
            assert!(!e.has_counters, "NEW events carry no counters");
        }
    }
    // NEW then DESTROY through the tracker: the deltas sum to the final counters.
    let mut t = Tracker::new(0);
    t.begin_dump();
    t.end_dump();
    let mut total = 0u64;
    for (ev, e) in &events {
        match ev {
            CtEvent::New => t.on_new(e, &mut |o| {
                total += o.delta_orig.bytes + o.delta_reply.bytes
            }),
            CtEvent::Destroy => t.on_destroy(e, &mut |o| {
                total += o.delta_orig.bytes + o.delta_reply.bytes
            }),
            _ => {}
        }
    }
    let want: u64 = destroys
        .iter()
        .map(|(_, e)| e.counters_orig.bytes + e.counters_reply.bytes)
        .sum();
    assert_eq!(total, want);
    assert!(t.is_empty());
}
