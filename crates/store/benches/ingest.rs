//! Insert throughput: 100k flow rows into ClickHouse (chdb behind the test HTTP front,
//! so the engine is real but in-process Python sits in front of it) and into the
//! embedded SQLite store, in the same run. Last line:
//! `store_insert_rows_per_sec_clickhouse=<n>`.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podflow_model::{Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, Protocol};
use podflow_store::{ClickHouseConfig, ClickHouseStore, FlowQuery, FlowStore, SqliteStore};

const ROWS: usize = 100_000;

fn rows(t0: i64) -> Vec<FlowRow> {
    let labels = Arc::new(FlowLabels {
        class: Class::InterZone,
        local: EndLabels {
            kind: "pod",
            namespace: "shop".into(),
            name: "web-1".into(),
            workload_kind: "Deployment".into(),
            workload: "web".into(),
            node: "node-a".into(),
            zone: "us-east-1a".into(),
            ..Default::default()
        },
        remote: EndLabels {
            kind: "pod",
            namespace: "shop".into(),
            name: "db-0".into(),
            node: "node-b".into(),
            zone: "us-east-1b".into(),
            ..Default::default()
        },
        ..Default::default()
    });
    (0..ROWS)
        .map(|i| {
            let n = i as u32;
            FlowRow {
                interval_start: t0 + (i % 10) as i64 * 60,
                interval_s: 60,
                observer: format!("node-{}", i % 8),
                key: FlowKey {
                    proto: Protocol::TCP,
                    local: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0xffff))),
                    remote: IpAddr::V4(Ipv4Addr::from(0x0a01_0000 | (n >> 4))),
                    responder_port: 443,
                    local_initiated: true,
                    service: None,
                    prefixes: Default::default(),
                },
                totals: FlowTotals {
                    bytes_out: 1000 + i as u64,
                    packets_out: 10,
                    bytes_in: 500,
                    packets_in: 5,
                    opened: 1,
                    closed: 1,
                },
                labels: labels.clone(),
                cost_usd: 0.001,
            }
        })
        .collect()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let t0 = now / 60 * 60 - 3600;
    let data = rows(t0);
    let want: u64 = data.iter().map(|r| r.totals.bytes()).sum();
    let q = FlowQuery {
        from: t0,
        to: t0 + 3600,
        limit: usize::MAX,
    };

    let mut lite = SqliteStore::open(&dir.path().join("flows.db")).expect("open SQLite");
    let t = Instant::now();
    for chunk in data.chunks(10_000) {
        lite.write(chunk).expect("SQLite write");
    }
    let sqlite_rate = rate(ROWS, t.elapsed());
    let got: u64 = lite
        .flows(&q)
        .expect("flows")
        .iter()
        .map(|s| s.totals.bytes())
        .sum();
    assert_eq!(got, want, "SQLite totals");
    println!("sqlite: {ROWS} rows in 10k batches: {sqlite_rate:.0} rows/s");

    let python = std::env::var("PODFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chdb_front.py");
    let child = Command::new(&python)
        .arg(script)
        .arg("--data")
        .arg(dir.path().join("chdb"))
        .arg("--port")
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("*** SKIPPED ClickHouse: cannot run {python}");
        return;
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if !line.starts_with("READY") {
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "*** SKIPPED ClickHouse: the chdb front did not start \
             (pip install --no-deps chdb-core==26.9.0 lz4 clickhouse-cityhash)"
        );
        return;
    }
    let cfg = ClickHouseConfig {
        url: format!("http://127.0.0.1:{port}"),
        ..Default::default()
    };
    let result = (|| {
        let mut ch = ClickHouseStore::open(cfg)?;
        let t = Instant::now();
        ch.write(&data)?;
        let d = t.elapsed();
        let got: u64 = ch.flows(&q)?.iter().map(|s| s.totals.bytes()).sum();
        Ok::<_, podflow_store::StoreError>((d, got))
    })();
    let _ = child.kill();
    let _ = child.wait();
    let (d, got) = result.expect("ClickHouse run");
    assert_eq!(got, want, "ClickHouse totals");
    let ch_rate = rate(ROWS, d);
    println!(
        "clickhouse (chdb via the HTTP front): {ROWS} rows (2 ClickHouse rows each) in {} batches of 50k: {ch_rate:.0} rows/s",
        ROWS.div_ceil(50_000)
    );
    println!("ratio clickhouse/sqlite = {:.2}", ch_rate / sqlite_rate);
    println!("store_insert_rows_per_sec_sqlite={sqlite_rate:.0}");
    println!("store_insert_rows_per_sec_clickhouse={ch_rate:.0}");
}
