//! Probe history on both stores: the same rows written to the embedded store and to a
//! real ClickHouse engine (chdb behind the test front) give the same grouped answers,
//! and a replayed row replaces the first instead of adding to it.

use podflow_store::probes::{BUCKETS, ProbeQuery, ProbeRow};
use podflow_store::{ClickHouseConfig, ClickHouseProbeStore, ProbeStore, SqliteProbeStore};

/// A recent minute (rows older than the table's TTL are dropped by ClickHouse at once).
fn t0() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now - now % 60 - 600
}

fn row(t: i64, src: &str, dst: &str, kind: &str, rtt_ns: u64, lost: u64) -> ProbeRow {
    let mut buckets = vec![0; BUCKETS];
    buckets[5] = 5 - lost;
    ProbeRow {
        interval_start: t0() + t,
        interval_s: 60,
        src_node: src.into(),
        dst_node: dst.into(),
        src_zone: format!("zone-{}", &src[..1]),
        dst_zone: format!("zone-{}", &dst[..1]),
        kind: kind.into(),
        count: 1,
        failures: u64::from(lost == 5),
        sent: 5,
        lost,
        rtt_count: 5 - lost,
        rtt_sum_ns: rtt_ns * (5 - lost),
        rtt_min_ns: rtt_ns,
        rtt_max_ns: rtt_ns,
        buckets,
        ..Default::default()
    }
}

#[test]
fn both_stores_group_probe_history_alike() {
    let test = "both_stores_group_probe_history_alike";
    let missing = std::process::Command::new("python3")
        .args(["-c", "import chdb, lz4, clickhouse_cityhash"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true);
    if missing {
        return podflow_testkit::skip(
            test,
            "python3 with chdb is missing (scripts/test.sh installs it)",
        );
    }
    let dir = tempfile::tempdir().expect("tmp");
    let port = podflow_testkit::free_port();
    let _front =
        podflow_testkit::clickhouse_front(&dir.path().join("ch"), port).expect("chdb front starts");
    let cfg = ClickHouseConfig {
        url: format!("http://127.0.0.1:{port}"),
        ..Default::default()
    };
    let mut ch = ClickHouseProbeStore::open(&cfg).expect("open ClickHouse probes");
    let mut lite = SqliteProbeStore::open(&dir.path().join("probes.sqlite")).expect("open sqlite");
    let rows = vec![
        row(0, "a1", "b1", "udp", 2_000_000, 1),
        row(60, "a1", "b1", "udp", 3_000_000, 0),
        row(60, "a2", "b1", "tcp", 1_000_000, 0),
        row(60, "b1", "a1", "udp", 2_500_000, 5),
    ];
    for s in [&mut ch as &mut dyn ProbeStore, &mut lite] {
        s.write_probes(&rows).expect("write");
        s.write_probes(&rows[1..2]).expect("a replay replaces");
    }
    for (group_by, filters) in [
        (vec!["src_zone", "dst_zone"], vec![]),
        (
            vec!["src_node", "dst_node", "kind"],
            vec![("kind", "udp".to_string())],
        ),
        (vec![], vec![]),
    ] {
        let q = ProbeQuery {
            from: t0(),
            to: t0() + 120,
            group_by,
            filters,
        };
        let mut a = ch.probes(&q).expect("ClickHouse query");
        let mut b = lite.probes(&q).expect("sqlite query");
        a.sort_by(|x, y| x.key.cmp(&y.key));
        b.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(a, b, "{q:?}");
    }
    let q = ProbeQuery {
        from: t0(),
        to: t0() + 120,
        group_by: vec!["src_zone", "dst_zone"],
        filters: vec![],
    };
    let ab = lite
        .probes(&q)
        .expect("query")
        .into_iter()
        .find(|g| g.key == ["zone-a", "zone-b"])
        .expect("a→b");
    assert_eq!(
        (ab.count, ab.sent, ab.lost),
        (3, 15, 1),
        "the replay was not added"
    );
}
