//! Real exporter output: softflowd's v5, v9 and IPFIX datagrams captured to pcap by
//! netflow-lab.sh (see tests/data/README.md). podflow's per-pair totals must equal
//! what nfdump decoded from the same stream (tests/data/<name>.nfdump).

mod common;

use common::{Totals, data_dir, read_expected, read_pcap};

use podflow_netflow::{Decoder, FlowRecord};

fn check(name: &str) {
    let dir = data_dir();
    let pcap = dir.join(format!("{name}.pcap"));
    let datagrams = read_pcap(&pcap);
    assert!(!datagrams.is_empty(), "{name}: no datagrams");
    let mut d = Decoder::default();
    let mut records: Vec<FlowRecord> = Vec::new();
    for g in &datagrams {
        let before = records.len();
        d.decode(g.src, &g.payload, g.ts_secs, &mut records)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Times decoded from the exporter's clock land near the capture time.
        for r in &records[before..] {
            let ts_ns = g.ts_secs * 1_000_000_000;
            for t in [r.start_ns, r.end_ns] {
                assert!(
                    t + 120_000_000_000 > ts_ns && t <= ts_ns + 5_000_000_000,
                    "{name}: time {t} far from capture time {ts_ns}: {r:?}"
                );
            }
            assert!(r.start_ns <= r.end_ns, "{name}: start after end: {r:?}");
        }
    }
    let mut got = Totals::new();
    for r in &records {
        let e = got.entry((r.src, r.dst)).or_default();
        *e = (e.0 + 1, e.1 + r.packets, e.2 + r.bytes);
    }
    let want = read_expected(&dir.join(format!("{name}.nfdump")));
    assert_eq!(got, want, "{name}: podflow vs nfdump per (src, dst)");
    let s = d.total_stats();
    assert_eq!(s.errors.total(), 0, "{name}: {s:?}");
    // nfcapd reports sequence failures on softflowd's IPFIX (its numbers count the
    // current message); podflow recognises the pattern and reports neither loss nor reset.
    assert_eq!(
        s.sequence_lost, 0,
        "{name}: nothing was lost on loopback: {s:?}"
    );
    assert_eq!(s.sequence_resets, 0, "{name}: {s:?}");
    assert_eq!(s.pending_sets_dropped, 0, "{name}: {s:?}");
    assert_eq!(s.datagrams, datagrams.len() as u64);
}

#[test]
fn softflowd_v5_matches_nfdump() {
    check("softflowd_v5");
}

#[test]
fn softflowd_v9_matches_nfdump() {
    check("softflowd_v9");
}

#[test]
fn softflowd_ipfix_matches_nfdump() {
    check("softflowd_ipfix");
}
