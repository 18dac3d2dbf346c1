//! Server ingest and query benchmarks.
//!
//! `cargo bench -p podflow-server --bench ingest -- [--observations N] [--rows N]`
//!
//! 1. Ingest: observations → attribution → aggregation → store, on one core (a
//!    current-thread runtime), into the embedded store and, when python3 with chdb is
//!    installed, into ClickHouse (chdb behind the test front). 10,000 distinct flow keys.
//! 2. Query: the top-50 workload pairs over 24 h on the embedded store holding N rows
//!    (and, for comparison, over a range off the hour boundaries, and pod pairs, which the
//!    hourly rollup does not hold).
//!
//! Last lines: `server_ingest_obs_per_sec_sqlite=`, `server_ingest_obs_per_sec_clickhouse=`,
//! `query_top50_24h_ms=`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podflow_model::{
    Class, Counters, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, Observation, Protocol,
    Tuple,
};
use podflow_role::Registry;
use podflow_server::{Driver, DriverConfig, MAX_PENDING_ROWS};
use podflow_store::query::{GroupQuery, View, dim};
use podflow_store::{ClickHouseConfig, ClickHouseStore, FlowStore, SqliteStore};

fn arg(name: &str, default: usize) -> usize {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn observations(n: usize) -> Vec<Observation> {
    (0..n)
        .map(|i| {
            let k = (i % 10_000) as u32;
            let src = IpAddr::V4(Ipv4Addr::from(0x0a01_0000 | (k % 100)));
            let dst = IpAddr::V4(Ipv4Addr::from(0x0a02_0000 | (k / 100)));
            let sport = 30_000 + (i % 20_000) as u16;
            Observation {
                proto: Protocol::TCP,
                orig: Tuple {
                    src,
                    dst,
                    src_port: sport,
                    dst_port: 8080,
                },
                reply: Tuple {
                    src: dst,
                    dst: src,
                    src_port: 8080,
                    dst_port: sport,
                },
                delta_orig: Counters {
                    bytes: 1500,
                    packets: 3,
                },
                delta_reply: Counters {
                    bytes: 9000,
                    packets: 7,
                },
                opened: i % 10 == 0,
                ..Default::default()
            }
        })
        .collect()
}

fn ingest<S: FlowStore + 'static>(store: S, obs: &[Observation]) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The store is dropped outside the runtime (the ClickHouse store owns a runtime of its own).
    let (rate, _store) = rt.block_on(async {
        let cfg = DriverConfig {
            settings: Default::default(),
            observer: Some("node-a".into()),
            interval_s: 1,
            max_keys: 1_000_000,
            retention: Duration::from_secs(86400),
            max_pending_rows: MAX_PENDING_ROWS,
            probe_ports: Vec::new(),
            netflow_keep_addresses: false,
        };
        let token = tokio_util::sync::CancellationToken::new();
        let mut p = Driver::new(cfg, store, Arc::new(Registry::default()), &token)
            .await
            .expect("driver");
        let observer: Arc<str> = Arc::from("node-a");
        let t0 = Instant::now();
        let mut last = Instant::now();
        for chunk in obs.chunks(4096) {
            p.ingest(&observer, None, chunk, podflow_inventory_now());
            if last.elapsed() > Duration::from_secs(1) {
                p.tick().await;
                last = Instant::now();
            }
        }
        p.finish().await;
        (obs.len() as f64 / t0.elapsed().as_secs_f64(), p.store())
    });
    rate
}

fn podflow_inventory_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn clickhouse_front(dir: &std::path::Path) -> Option<(podflow_testkit::ChildGuard, u16)> {
    let port = podflow_testkit::free_port();
    podflow_testkit::clickhouse_front(dir, port).map(|f| (f, port))
}

/// Stored rows `first..first + n` of the query benchmark.
fn rows(first: usize, n: usize, t0: i64, per_interval: usize) -> Vec<FlowRow> {
    (first..first + n)
        .map(|i| {
            let w = (i % 500) as u32;
            let end = |ns: &str, wl: String| EndLabels {
                kind: "pod",
                namespace: ns.into(),
                name: format!("{wl}-0").into(),
                workload: wl.into(),
                workload_kind: "Deployment".into(),
                ..Default::default()
            };
            FlowRow {
                // `per_interval` rows per 10 s interval: the rows fill the 24 h.
                interval_start: t0 + (i / per_interval) as i64 * 10 % 86_400,
                interval_s: 10,
                observer: format!("node-{}", i % 20),
                key: FlowKey {
                    proto: Protocol::TCP,
                    local: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i as u32 % 100_000))),
                    remote: IpAddr::V4(Ipv4Addr::from(0x0b00_0000 | w)),
                    responder_port: 8080,
                    local_initiated: true,
                    service: None,
                    prefixes: Default::default(),
                },
                totals: FlowTotals {
                    bytes_out: 1000 + i as u64 % 977,
                    packets_out: 3,
                    bytes_in: 5000,
                    packets_in: 5,
                    opened: 1,
                    closed: 1,
                },
                labels: Arc::new(FlowLabels {
                    class: if i % 3 == 0 {
                        Class::InterZone
                    } else {
                        Class::IntraZone
                    },
                    local: end("ns-a", format!("client-{}", i % 50)),
                    remote: end("ns-b", format!("svc-{w}")),
                    ..Default::default()
                }),
                cost_usd: 0.0,
            }
        })
        .collect()
}

fn main() {
    let n_obs = arg("--observations", 1_000_000);
    let n_rows = arg("--rows", 10_000_000);
    let obs = observations(n_obs);
    let dir = tempfile::tempdir().expect("tmp");

    let sqlite = SqliteStore::open(&dir.path().join("ingest.sqlite")).expect("sqlite");
    let rate_sqlite = ingest(sqlite, &obs);
    println!("ingest sqlite: {n_obs} observations, {rate_sqlite:.0} obs/s (one core)");

    let ch_dir = dir.path().join("ch");
    std::fs::create_dir_all(&ch_dir).expect("dir");
    let rate_ch = match clickhouse_front(&ch_dir) {
        // The front is killed when dropped, also if the run below panics.
        Some((_front, port)) => {
            let cfg = ClickHouseConfig {
                url: format!("http://127.0.0.1:{port}"),
                ..Default::default()
            };
            let store = ClickHouseStore::open(cfg).expect("clickhouse");
            // The store blocks on its own runtime: run the pipeline on a thread of its own.
            let obs2 = obs.clone();
            let r = std::thread::spawn(move || ingest(store, &obs2))
                .join()
                .expect("thread");
            println!("ingest clickhouse (chdb behind the Python test front): {r:.0} obs/s");
            r
        }
        None => {
            println!(
                "ingest clickhouse: SKIPPED (python3 with chdb not installed: pip install --no-deps chdb-core==26.9.0 lz4 clickhouse-cityhash)"
            );
            0.0
        }
    };

    // Query latency at n_rows stored rows over 24 h.
    let path = dir.path().join("query.sqlite");
    let mut store = SqliteStore::open(&path).expect("sqlite");
    let t0 = 1_800_000_000;
    // 8,640 intervals of 10 s in 24 h (≈ 1,160 rows each at 10M rows).
    let per_interval = n_rows.div_ceil(8_640).max(1);
    let t = Instant::now();
    for start in (0..n_rows).step_by(200_000) {
        let chunk = rows(start, (n_rows - start).min(200_000), t0, per_interval);
        store.write(&chunk).expect("write");
    }
    println!(
        "query: wrote {n_rows} rows in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let reader = SqliteStore::open_reader(&path).expect("reader");
    let q = GroupQuery {
        from: t0,
        to: t0 + 86_400,
        group_by: [
            "src_namespace",
            "src_workload",
            "dst_namespace",
            "dst_workload",
        ]
        .iter()
        .filter_map(|d| dim(d))
        .collect(),
        filters: Vec::new(),
        limit: 50,
        view: View::Once,
    };
    // The query really reads every row: the total over the range counts them all.
    let all = reader
        .group(&GroupQuery {
            group_by: Vec::new(),
            limit: 1,
            ..q.clone()
        })
        .expect("total");
    assert_eq!(
        all[0].connections, n_rows as u64,
        "every stored row is in the 24 h range"
    );
    let best_of_3 = |q: &GroupQuery| {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let r = reader.group(q).expect("query");
            assert_eq!(r.len(), 50, "{q:?}");
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        best
    };
    let best = best_of_3(&q);
    // The same over a range not on hour boundaries: two partial hours come from the rows.
    let unaligned = best_of_3(&GroupQuery {
        from: t0 + 1_799,
        to: t0 + 86_400 - 1_801,
        ..q.clone()
    });
    // Pod pairs are not in the hourly rollup: every row of the range is read.
    let pods = best_of_3(&GroupQuery {
        group_by: ["src_name", "dst_name"]
            .iter()
            .filter_map(|d| dim(d))
            .collect(),
        ..q.clone()
    });
    println!("query top-50 workload pairs, 24 h not on hour boundaries: {unaligned:.0} ms");
    println!("query top-50 pod pairs (rows, not the rollup), 24 h: {pods:.0} ms");
    println!("server_ingest_obs_per_sec_sqlite={rate_sqlite:.0}");
    println!("server_ingest_obs_per_sec_clickhouse={rate_ch:.0}");
    println!("query_top50_24h_ms={best:.0}");
}
