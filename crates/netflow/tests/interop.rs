//! Real exporter output: softflowd's, pmacctd's (nfprobe) and fprobe's datagrams
//! captured to pcap by netflow-lab.sh (see tests/data/README.md). podflow's per-pair
//! totals must equal what nfdump decoded from the same stream (tests/data/<name>.nfdump),
//! and their sum nfacctd's totals where the lab recorded them.

mod common;

use common::{CAPTURES, Totals, data_dir, read_capture, read_expected};

use podflow_netflow::{Decoder, FlowRecord};

fn check(name: &str) {
    let datagrams = read_capture(name);
    assert!(!datagrams.is_empty(), "{name}: no datagrams");
    let want = read_expected(name);
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
    // nfdump and nfacctd keep sampled counters as exported; podflow scales them.
    let mut got = Totals::new();
    for r in &records {
        assert_eq!(r.sampling_rate, want.sampling_rate, "{name}: {r:?}");
        let rate = u64::from(r.sampling_rate);
        assert_eq!(
            (r.packets, r.bytes),
            (r.raw_packets * rate, r.raw_bytes * rate)
        );
        let e = got.entry((r.src, r.dst)).or_default();
        *e = (e.0 + 1, e.1 + r.raw_packets, e.2 + r.raw_bytes);
    }
    assert_eq!(got, want.pairs, "{name}: podflow vs nfdump per (src, dst)");
    if let Some(nfacctd) = want.nfacctd {
        let sum = got
            .values()
            .fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
        assert_eq!(sum, nfacctd, "{name}: podflow vs nfacctd totals");
    }
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

#[test]
fn pmacctd_v5_matches_nfdump() {
    check("pmacctd_v5");
}

#[test]
fn pmacctd_v9_matches_nfdump() {
    check("pmacctd_v9");
}

#[test]
fn pmacctd_ipfix_matches_nfdump() {
    check("pmacctd_ipfix");
}

/// 1-in-2 sampling announced in the v5 header (mode 1, interval 2).
#[test]
fn pmacctd_sampled_v5_matches_nfdump() {
    check("pmacctd_sampled_v5");
}

/// Sampler 1 announced in options data (samplerRandomInterval 2), flowSamplerID on
/// every record; times as 16-byte flowStart/EndMicroseconds (nfprobe_tstamp_usec).
#[test]
fn pmacctd_sampled_v9_matches_nfdump() {
    check("pmacctd_sampled_v9");
}

/// As v9, with an IPFIX options template scoped by the exporter's address.
#[test]
fn pmacctd_sampled_ipfix_matches_nfdump() {
    check("pmacctd_sampled_ipfix");
}

#[test]
fn fprobe_v5_matches_nfdump() {
    check("fprobe_v5");
}

/// Every pcap in tests/data is in CAPTURES (which the listener test replays) and has
/// a test here.
#[test]
fn every_capture_is_checked() {
    let mut pcaps: Vec<String> = std::fs::read_dir(data_dir())
        .expect("read tests/data")
        .filter_map(|e| {
            let name = e.expect("dir entry").file_name().into_string().ok()?;
            Some(name.strip_suffix(".pcap")?.to_owned())
        })
        .collect();
    pcaps.sort();
    let mut listed: Vec<&str> = CAPTURES.to_vec();
    listed.sort();
    assert_eq!(pcaps, listed, "tests/data pcaps vs common::CAPTURES");
    let source = include_str!("interop.rs");
    for name in CAPTURES {
        let call = format!("check(\"{name}\")");
        assert!(source.contains(&call), "{name}: no test in interop.rs");
    }
}
