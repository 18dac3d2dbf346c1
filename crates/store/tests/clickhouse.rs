//! The ClickHouse store against a real ClickHouse engine: chdb (ClickHouse in process)
//! behind a small HTTP front (tests/fixtures/chdb_front.py), started per test on
//! 127.0.0.1 with its own data folder. Without python3 + chdb the tests print SKIPPED.
//!
//! Install: `pip install --no-deps chdb-core==26.9.0 lz4 clickhouse-cityhash`

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podflow_model::{Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, Protocol};
use podflow_store::clickhouse::{batch_token, create_statements};
use podflow_store::query::{self, GroupQuery, GroupRow, View};
use podflow_store::{
    ClickHouseConfig, ClickHouseStore, FlowQuery, FlowStore, FlowSummary, SqliteStore, StoreError,
};

/// chdb is one big process each: run the tests of this file one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn python() -> String {
    std::env::var("PODFLOW_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn chdb_available() -> bool {
    let ok = Command::new(python())
        .args([
            "-c",
            "import chdb.session, lz4.block, lz4.frame, clickhouse_cityhash.cityhash",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "\n*** SKIPPED: ClickHouse store tests need python3 with chdb: \
             pip install --no-deps chdb-core==26.9.0 lz4 clickhouse-cityhash ***\n"
        );
    }
    ok
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The chdb HTTP front as a child process; killed on drop.
struct Front {
    child: Option<Child>,
    port: u16,
    data: PathBuf,
    auth: Option<(String, String)>,
}

impl Front {
    fn start(data: &Path, port: u16, auth: Option<(&str, &str)>) -> Front {
        let mut f = Front {
            child: None,
            port,
            data: data.to_path_buf(),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        f.spawn();
        f
    }

    fn spawn(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chdb_front.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .arg("--data")
            .arg(&self.data)
            .arg("--port")
            .arg(self.port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((u, p)) = &self.auth {
            cmd.args(["--user", u, "--password", p]);
        }
        let mut child = cmd.spawn().expect("start chdb_front.py");
        let stdout = child.stdout.take().expect("front stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chdb front did not report READY within 60 s");
        assert!(line.starts_with("READY"), "chdb front said {line:?}");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running front in a fresh folder, or None (after a loud SKIPPED line).
fn setup() -> Option<(tempfile::TempDir, Front)> {
    if !chdb_available() {
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let front = Front::start(&dir.path().join("chdb"), free_port(), None);
    Some((dir, front))
}

fn config(url: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: url.into(),
        max_retries: 2,
        retry_backoff_ms: 50,
        timeout_s: 20,
        ..Default::default()
    }
}

fn end(kind: &'static str, ns: &str, name: &str, node: &str, zone: &str) -> EndLabels {
    EndLabels {
        kind,
        namespace: ns.into(),
        name: name.into(),
        workload_kind: if kind == "pod" { "Deployment" } else { "" }.into(),
        workload: if kind == "pod" {
            name.split('-').next().unwrap_or("")
        } else {
            ""
        }
        .into(),
        app: if kind == "pod" { "shop" } else { "" }.into(),
        node: node.into(),
        zone: zone.into(),
        region: if zone.is_empty() { "" } else { "us-east-1" }.into(),
        cloud: if zone.is_empty() { "" } else { "aws" }.into(),
    }
}

/// Node-b's host network and a host on the internet.
fn node_b_and_internet() -> FlowLabels {
    FlowLabels {
        class: Class::PublicInternet,
        local: end("node", "", "node-b", "node-b", "us-east-1b"),
        remote: EndLabels {
            kind: "internet",
            ..Default::default()
        },
        ..Default::default()
    }
}

/// S3 in us-east-1 (a cloud range).
fn s3_end() -> EndLabels {
    EndLabels {
        kind: "cloud_range",
        name: "S3".into(),
        region: "us-east-1".into(),
        cloud: "aws".into(),
        ..Default::default()
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn totals(n: u64) -> FlowTotals {
    FlowTotals {
        bytes_out: 1000 * n,
        packets_out: 10 * n,
        bytes_in: 300 * n + 7,
        packets_in: 3 * n + 1,
        opened: n % 3,
        closed: n % 2,
    }
}

/// A mix of keys: IPv4 and IPv6, with and without a Service, two observers, both
/// initiator sides, every label filled; costs are exact binary fractions.
fn sample_rows(t0: i64) -> Vec<FlowRow> {
    let web = Arc::new(FlowLabels {
        class: Class::InterZone,
        local: end("pod", "shop", "web-1", "node-a", "us-east-1a"),
        remote: end("pod", "shop", "db-0", "node-b", "us-east-1b"),
        service_namespace: "shop".into(),
        service_name: "db".into(),
        service_headless: false,
        service_prefers_close: true,
        service_zone_local: Some(false),
        remote_observed: false,
    });
    let s3 = Arc::new(FlowLabels {
        class: Class::IntraVpc,
        local: end("pod", "shop", "web-1", "node-a", "us-east-1a"),
        remote: s3_end(),
        ..Default::default()
    });
    let inet = Arc::new(node_b_and_internet());
    let v6a = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10));
    let v6b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53));
    let keys: Vec<(&str, FlowKey, Arc<FlowLabels>)> = vec![
        (
            "node-a",
            FlowKey {
                proto: Protocol::TCP,
                local: v4(10, 0, 1, 5),
                remote: v4(10, 0, 2, 7),
                responder_port: 5432,
                local_initiated: true,
                service: Some((v4(10, 96, 0, 10), 5432)),
                prefixes: Default::default(),
            },
            web.clone(),
        ),
        (
            "node-b",
            FlowKey {
                proto: Protocol::TCP,
                local: v4(10, 0, 2, 7),
                remote: v4(10, 0, 1, 5),
                responder_port: 5432,
                local_initiated: false,
                service: None,
                prefixes: Default::default(),
            },
            web,
        ),
        (
            "node-a",
            FlowKey {
                proto: Protocol::TCP,
                local: v4(10, 0, 1, 5),
                remote: v4(52, 216, 1, 1),
                responder_port: 443,
                local_initiated: true,
                service: None,
                prefixes: Default::default(),
            },
            s3,
        ),
        (
            "node-b",
            FlowKey {
                proto: Protocol::UDP,
                local: v6a,
                remote: v6b,
                responder_port: 53,
                local_initiated: true,
                service: Some((
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 10)),
                    53,
                )),
                prefixes: Default::default(),
            },
            inet.clone(),
        ),
        (
            "node-b",
            FlowKey {
                proto: Protocol(132),
                local: v4(10, 0, 2, 9),
                remote: v4(192, 0, 2, 1),
                responder_port: 0,
                local_initiated: false,
                service: None,
                prefixes: Default::default(),
            },
            inet,
        ),
    ];
    let mut rows = Vec::new();
    for (i, (observer, key, labels)) in keys.into_iter().enumerate() {
        for interval in 0..3i64 {
            let n = (i as u64 + 1) * 7 + interval as u64;
            rows.push(FlowRow {
                interval_start: t0 + interval * 60,
                interval_s: 60,
                observer: observer.into(),
                key,
                totals: totals(n),
                labels: labels.clone(),
                cost_usd: n as f64 * 0.125,
            });
        }
    }
    rows
}

/// An hour ago, on a minute: recent enough that the table's 90-day TTL keeps it.
/// The base time of every test's rows: fixed once per run, so a test that crosses a minute
/// boundary still queries the range it wrote.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now / 60 * 60 - 3600
    })
}

fn all(from: i64, to: i64) -> FlowQuery {
    FlowQuery {
        from,
        to,
        limit: 1000,
    }
}

/// Summaries in a fixed order (ties in bytes make the stores' own order ambiguous).
fn sorted(mut v: Vec<FlowSummary>) -> Vec<FlowSummary> {
    v.sort_by_key(|s| format!("{}{:?}", s.observer, s.key));
    v
}

fn total(v: &[FlowSummary]) -> FlowTotals {
    let mut t = FlowTotals::default();
    for s in v {
        t.merge(&s.totals);
    }
    t
}

fn sum_rows(rows: &[FlowRow]) -> FlowTotals {
    let mut t = FlowTotals::default();
    for r in rows {
        t.merge(&r.totals);
    }
    t
}

/// Runs one SQL query through the official client and returns one UInt64.
fn sql_u64(url: &str, sql: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = clickhouse::Client::default().with_url(url);
    rt.block_on(client.query(sql).fetch_one::<u64>())
        .expect(sql)
}

/// Runs one statement through the official client.
fn sql_exec(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = clickhouse::Client::default().with_url(url);
    rt.block_on(client.query(sql).execute()).expect(sql);
}

#[test]
fn rows_read_back_equal_to_the_sqlite_store() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((dir, front)) = setup() else { return };
    let rows = sample_rows(t0());
    let mut ch = ClickHouseStore::open(config(&front.url())).expect("open ClickHouse store");
    let mut lite = SqliteStore::open(&dir.path().join("flows.db")).expect("open SQLite store");
    ch.write(&rows).expect("ClickHouse write");
    lite.write(&rows).expect("SQLite write");

    for q in [
        all(t0(), t0() + 180),
        all(t0() + 60, t0() + 120),
        all(t0() - 600, t0()),
        all(0, i64::MAX),
    ] {
        let a = sorted(ch.flows(&q).expect("ClickHouse flows"));
        let b = sorted(lite.flows(&q).expect("SQLite flows"));
        assert_eq!(a, b, "query {q:?}");
    }
    let full = ch.flows(&all(t0(), t0() + 180)).expect("flows");
    assert_eq!(full.len(), 5);
    assert_eq!(total(&full), sum_rows(&rows));
    // Largest first, and the limit applies.
    let top = ch
        .flows(&FlowQuery {
            from: t0(),
            to: t0() + 180,
            limit: 2,
        })
        .expect("top 2");
    let lite_top = lite
        .flows(&FlowQuery {
            from: t0(),
            to: t0() + 180,
            limit: 2,
        })
        .expect("top 2");
    assert_eq!(top, lite_top);
    assert_eq!(top.len(), 2);
    assert!(top[0].totals.bytes() > top[1].totals.bytes());
    assert_eq!(top[0].key.proto, Protocol(132));
    assert_eq!(top[0].first, t0());
    assert_eq!(top[0].last, t0() + 180);
    // The one-interval query sees one interval's worth.
    let mid = ch.flows(&all(t0() + 60, t0() + 120)).expect("flows");
    let mid_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.interval_start == t0() + 60)
        .cloned()
        .collect();
    assert_eq!(total(&mid), sum_rows(&mid_rows));
    // IPv6 and the Service survive the round trip.
    assert!(full.iter().any(
        |s| s.key.local.is_ipv6() && s.key.service.is_some_and(|(a, p)| a.is_ipv6() && p == 53)
    ));

    // kubenetmon's view: bytes per direction, its class, cloud service and ports.
    let url = front.url();
    let out_bytes: u64 = rows.iter().map(|r| r.totals.bytes_out).sum();
    let in_bytes: u64 = rows.iter().map(|r| r.totals.bytes_in).sum();
    assert_eq!(
        sql_u64(
            &url,
            "SELECT sum(bytes) FROM network_flows_0 WHERE direction = 'out'"
        ),
        out_bytes
    );
    assert_eq!(
        sql_u64(
            &url,
            "SELECT sum(bytes) FROM network_flows_0 WHERE direction = 'in'"
        ),
        in_bytes
    );
    let s3_out: u64 = rows
        .iter()
        .filter(|r| r.key.responder_port == 443)
        .map(|r| r.totals.bytes_out)
        .sum();
    assert_eq!(
        sql_u64(
            &url,
            "SELECT sum(bytes) FROM network_flows_0 WHERE direction = 'out' \
             AND connectionClass = 'INTRA_REGION' AND remoteCloudService = 'S3' AND remotePort = 443"
        ),
        s3_out
    );
    assert_eq!(
        sql_u64(
            &url,
            "SELECT count() FROM network_flows_0 WHERE localPod = 'web-1' AND direction = 'out'"
        ),
        9
    );
    assert_eq!(
        sql_u64(
            &url,
            "SELECT count() FROM network_flows_0 WHERE connectionFlags['local_initiated'] AND direction = 'out'"
        ),
        9
    );
}

#[test]
fn duplicate_keys_are_summed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((dir, front)) = setup() else { return };
    let mut ch = ClickHouseStore::open(config(&front.url())).expect("open");
    let mut lite = SqliteStore::open(&dir.path().join("flows.db")).expect("open SQLite");
    let base = sample_rows(t0());
    let mut a = base[0].clone();
    a.totals = totals(1);
    let mut b = a.clone();
    b.totals = totals(2);
    b.cost_usd = 0.5;
    let mut c = a.clone();
    c.totals = totals(3);
    // In one batch, then another batch.
    for s in [&mut ch as &mut dyn FlowStore, &mut lite] {
        s.write(&[a.clone(), b.clone()]).expect("write a, b");
        s.write(std::slice::from_ref(&c)).expect("write c");
    }
    let got = ch.flows(&all(t0(), t0() + 60)).expect("flows");
    assert_eq!(got.len(), 1);
    let mut want = a.totals;
    want.merge(&b.totals);
    want.merge(&c.totals);
    assert_eq!(got[0].totals, want);
    assert_eq!(got[0].cost_usd, a.cost_usd + b.cost_usd + c.cost_usd);
    assert_eq!(
        got,
        lite.flows(&all(t0(), t0() + 60)).expect("SQLite flows")
    );
    // After merges the SummingMergeTree holds one out and one in row for the key.
    let url = front.url();
    sql_exec(&url, "OPTIMIZE TABLE network_flows_0 FINAL");
    assert_eq!(sql_u64(&url, "SELECT count() FROM network_flows_0"), 2);
    assert_eq!(
        sql_u64(
            &url,
            "SELECT sum(bytes_out) + sum(bytes_in) FROM network_flows_0"
        ),
        want.bytes()
    );
}

#[test]
fn a_retried_batch_counts_once() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_dir, front)) = setup() else { return };
    let mut ch = ClickHouseStore::open(config(&front.url())).expect("open");
    let rows = sample_rows(t0());
    let (first, second) = rows.split_at(6);
    ch.write(first).expect("write");
    ch.write(first)
        .expect("the same batch again (a retry after a lost reply)");
    assert_eq!(
        total(&ch.flows(&all(t0(), t0() + 180)).expect("flows")),
        sum_rows(first)
    );
    // Another batch and its retry count once; a batch that differs counts again.
    ch.write(second).expect("write");
    ch.write(second).expect("retry");
    let mut want = sum_rows(first);
    want.merge(&sum_rows(second));
    assert_eq!(
        total(&ch.flows(&all(t0(), t0() + 180)).expect("flows")),
        want
    );
    let mut next = second.to_vec();
    next[0].totals.closed += 1;
    ch.write(&next).expect("a new batch");
    want.merge(&sum_rows(&next));
    assert_eq!(
        total(&ch.flows(&all(t0(), t0() + 180)).expect("flows")),
        want
    );
    // Tokens depend on content only.
    let copy: Vec<FlowRow> = first
        .iter()
        .map(|r| FlowRow {
            labels: Arc::new((*r.labels).clone()),
            ..r.clone()
        })
        .collect();
    assert_eq!(batch_token(first), batch_token(&copy));
    let mut changed = copy.clone();
    changed[5].totals.closed += 1;
    assert_ne!(batch_token(first), batch_token(&changed));
    assert_ne!(batch_token(first), batch_token(second));
}

#[test]
fn store_down_then_back_loses_and_doubles_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_dir, mut front)) = setup() else {
        return;
    };
    let url = front.url();
    let mut ch = ClickHouseStore::open(config(&url)).expect("open");
    let rows = sample_rows(t0());
    let (a, b) = rows.split_at(7);
    ch.write(a).expect("write while up");
    front.kill();
    let t = Instant::now();
    let err = ch.write(b).expect_err("write while down must fail");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::ClickHouse(_)), "{err:?}");
    assert!(msg.contains(&url), "error names the URL: {msg}");
    assert!(
        msg.contains("default.network_flows_0"),
        "error names the table: {msg}"
    );
    assert!(msg.contains("3 attempt"), "two retries were made: {msg}");
    assert!(t.elapsed() < Duration::from_secs(10), "retries are bounded");
    assert!(
        ch.flows(&all(t0(), t0() + 180)).is_err(),
        "queries fail too while down"
    );

    front.restart();
    ch.write(b).expect("retry after restart");
    ch.write(b)
        .expect("a second retry (the caller did not see the ack) changes nothing");
    let got = ch
        .flows(&all(t0(), t0() + 180))
        .expect("flows after restart");
    assert_eq!(total(&got), sum_rows(&rows));
    assert_eq!(got.len(), 5);
}

#[test]
fn opening_twice_migrates_idempotently_and_adds_missing_columns() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_dir, front)) = setup() else { return };
    let url = front.url();
    let cols = |u: &str| {
        sql_u64(
            u,
            "SELECT count() FROM system.columns WHERE database = 'default' AND table = 'network_flows_0'",
        )
    };
    let rows = sample_rows(t0());
    {
        let mut ch = ClickHouseStore::open(config(&url)).expect("first open");
        ch.write(&rows[..3]).expect("write");
    }
    let n = cols(&url);
    assert_eq!(n, 66, "35 kubenetmon columns + 31 of podflow's");
    let ch = ClickHouseStore::open(config(&url)).expect("second open");
    assert_eq!(cols(&url), n);
    // A table from an older podflow (columns missing: kubenetmon's, and the Service
    // zone columns of before schema version 5) gets them back, data kept.
    let dropped = [
        "remoteCloudService",
        "service_headless",
        "service_prefers_close",
        "service_zone_local",
    ];
    for c in dropped {
        sql_exec(
            &url,
            &format!("ALTER TABLE network_flows_0 DROP COLUMN {c}"),
        );
    }
    assert_eq!(cols(&url), n - dropped.len() as u64);
    drop(ch);
    let mut ch = ClickHouseStore::open(config(&url)).expect("open migrates");
    assert_eq!(cols(&url), n);

    ch.write(&rows[3..]).expect("write after migration");
    assert_eq!(
        total(&ch.flows(&all(t0(), t0() + 180)).expect("flows")),
        sum_rows(&rows)
    );
}

#[test]
fn retention_is_the_tables_ttl_and_deletes_happen_on_request() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_dir, front)) = setup() else { return };
    let mut ch = ClickHouseStore::open(config(&front.url())).expect("open");
    let rows = sample_rows(t0());
    ch.write(&rows).expect("write");
    // The server's retention deletes nothing here: the table's TTL governs.
    assert_eq!(ch.expire(i64::MAX).expect("expire"), 0);
    assert_eq!(
        total(&ch.flows(&all(0, i64::MAX)).expect("flows")),
        sum_rows(&rows)
    );
    assert_eq!(ch.delete_before(t0() + 60).expect("delete"), 5);
    let left = ch.flows(&all(0, i64::MAX)).expect("flows");
    let kept: Vec<_> = rows
        .iter()
        .filter(|r| r.interval_start >= t0() + 60)
        .cloned()
        .collect();
    assert_eq!(total(&left), sum_rows(&kept));
    assert!(left.iter().all(|s| s.first == t0() + 60));
    assert_eq!(ch.delete_before(t0() + 60).expect("delete again"), 0);
}

#[test]
fn credentials_come_from_a_password_file() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !chdb_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let front = Front::start(
        &dir.path().join("chdb"),
        free_port(),
        Some(("podflow", "s3cret")),
    );
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret\n").expect("write password file");
    let cfg = ClickHouseConfig {
        user: Some("podflow".into()),
        password_file: Some(pw.clone()),
        ..config(&front.url())
    };
    let mut ch = ClickHouseStore::open(cfg.clone()).expect("open with the password file");
    ch.write(&sample_rows(t0())[..2]).expect("write");
    assert_eq!(ch.flows(&all(t0(), t0() + 180)).expect("flows").len(), 1);

    std::fs::write(&pw, "wrong\n").expect("write password file");
    let err = ClickHouseStore::open(cfg.clone()).expect_err("a wrong password is refused");
    let msg = err.to_string();
    assert!(msg.contains(&front.url()) && msg.contains("516"), "{msg}");
    assert!(
        msg.contains("1 attempt"),
        "authentication errors are not retried: {msg}"
    );

    let missing = ClickHouseConfig {
        password_file: Some(dir.path().join("nope")),
        ..cfg.clone()
    };
    let msg = ClickHouseStore::open(missing)
        .expect_err("missing file")
        .to_string();
    assert!(
        msg.contains("password_file") && msg.contains("nope"),
        "{msg}"
    );
    let both = ClickHouseConfig {
        password: Some("x".into()),
        ..cfg
    };
    assert!(ClickHouseStore::open(both).is_err());
}

#[test]
fn ddl_uses_on_cluster_and_replicated_engine_when_configured() {
    let plain = create_statements(&ClickHouseConfig::default());
    assert_eq!(plain.len(), 3);
    assert!(plain[2].contains("ENGINE = ReplacingMergeTree(version)"));
    assert!(
        plain[1].contains("ENGINE = SummingMergeTree(("),
        "{}",
        plain[1]
    );
    assert!(plain[1].contains("non_replicated_deduplication_window = 1000"));
    assert!(plain[1].contains("TTL intervalStartTime + toIntervalDay(90)"));
    assert!(plain[1].contains("PARTITION BY date"));
    assert!(
        !plain
            .iter()
            .any(|s| s.contains("ON CLUSTER") || s.contains("Replicated"))
    );

    let cfg = ClickHouseConfig {
        cluster: Some("flows".into()),
        database: "netmon".into(),
        ttl_days: 0,
        ..Default::default()
    };
    let ddl = create_statements(&cfg);
    assert_eq!(
        ddl[0],
        "CREATE DATABASE IF NOT EXISTS `netmon` ON CLUSTER `flows`"
    );
    assert!(
        ddl[1].starts_with(
            "CREATE TABLE IF NOT EXISTS `netmon`.`network_flows_0` ON CLUSTER `flows`"
        ),
        "{}",
        ddl[1]
    );
    assert!(ddl[1].contains(
        "ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', ("
    ));
    assert!(!ddl[1].contains("non_replicated_deduplication_window"));
    assert!(!ddl[1].contains("TTL"), "ttl_days = 0 keeps rows forever");
}

/// A small cluster's traffic with known totals: web (node-a, zone a) calls db (node-b,
/// zone b) through a Service and both nodes see it; web calls S3; the internet reaches
/// node-b's sshd; coredns (IPv6) asks an outside resolver.
fn grouped_rows(t0: i64) -> Vec<FlowRow> {
    let web = end("pod", "shop", "web-1", "node-a", "us-east-1a");
    let db = end("pod", "shop", "db-0", "node-b", "us-east-1b");
    let row =
        |t: i64, observer: &str, key: FlowKey, labels: FlowLabels, n: [u64; 6], cost| FlowRow {
            interval_start: t,
            interval_s: 60,
            observer: observer.into(),
            key,
            totals: FlowTotals::from_columns(n),
            labels: Arc::new(labels),
            cost_usd: cost,
        };
    let tcp = |local, remote, port, local_initiated, service| FlowKey {
        proto: Protocol::TCP,
        local,
        remote,
        responder_port: port,
        local_initiated,
        service,
        prefixes: Default::default(),
    };
    let web_db = |t, n, cost| {
        row(
            t,
            "node-a",
            tcp(
                v4(10, 0, 1, 5),
                v4(10, 0, 2, 7),
                5432,
                true,
                Some((v4(10, 96, 0, 10), 5432)),
            ),
            FlowLabels {
                class: Class::InterZone,
                local: web.clone(),
                remote: db.clone(),
                service_namespace: "shop".into(),
                service_name: "db".into(),
                service_zone_local: Some(true),
                remote_observed: true,
                ..Default::default()
            },
            n,
            cost,
        )
    };
    // The same connections from db's node: db responded, no DNAT seen there.
    let db_web = |t, n, cost| {
        row(
            t,
            "node-b",
            tcp(v4(10, 0, 2, 7), v4(10, 0, 1, 5), 5432, false, None),
            FlowLabels {
                class: Class::InterZone,
                local: db.clone(),
                remote: web.clone(),
                remote_observed: true,
                ..Default::default()
            },
            n,
            cost,
        )
    };
    let s3 = row(
        t0,
        "node-a",
        tcp(v4(10, 0, 1, 5), v4(52, 216, 1, 1), 443, true, None),
        FlowLabels {
            class: Class::IntraVpc,
            local: web.clone(),
            remote: s3_end(),
            ..Default::default()
        },
        [300, 5, 9000, 8, 1, 1],
        0.125,
    );
    let ssh = row(
        t0 + 60,
        "node-b",
        tcp(v4(10, 0, 2, 1), v4(192, 0, 2, 1), 22, false, None),
        node_b_and_internet(),
        [700, 7, 200, 3, 3, 0],
        0.0,
    );
    let dns = row(
        t0,
        "node-b",
        FlowKey {
            proto: Protocol::UDP,
            local: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x2, 0x10)),
            remote: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x53)),
            responder_port: 53,
            local_initiated: true,
            service: Some((
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa)),
                53,
            )),
            prefixes: Default::default(),
        },
        FlowLabels {
            class: Class::PublicInternet,
            local: EndLabels {
                workload_kind: "Deployment".into(),
                workload: "coredns".into(),
                namespace: "kube-system".into(),
                ..end("pod", "kube-system", "coredns-5d", "node-b", "us-east-1b")
            },
            remote: EndLabels {
                kind: "internet",
                ..Default::default()
            },
            service_namespace: "kube-system".into(),
            service_name: "kube-dns".into(),
            ..Default::default()
        },
        [64, 1, 128, 1, 1, 1],
        0.0625,
    );
    vec![
        web_db(t0, [1000, 10, 5000, 20, 2, 1], 0.25),
        db_web(t0, [5000, 20, 1000, 10, 2, 1], 0.25),
        web_db(t0 + 60, [100, 1, 400, 2, 1, 1], 0.5),
        db_web(t0 + 60, [400, 2, 100, 1, 1, 1], 0.5),
        s3,
        ssh,
        dns,
        // Before the range every query below uses.
        web_db(t0 - 60, [1 << 40, 1, 1, 1, 1, 1], 1.0),
    ]
}

/// A query dimension, or one of the bill's dimensions by the stored ends.
fn dimension(name: &str) -> query::Dim {
    query::dim(name)
        .or_else(|| query::local_dim(name))
        .expect("dimension")
}

fn group_query(
    from: i64,
    to: i64,
    view: View,
    group_by: &[&str],
    filters: &[(&str, &str)],
    limit: usize,
) -> GroupQuery {
    GroupQuery {
        from,
        to,
        group_by: group_by.iter().map(|n| dimension(n)).collect(),
        filters: filters
            .iter()
            .map(|(n, v)| (dimension(n), v.to_string()))
            .collect(),
        limit,
        view,
    }
}

/// `(key, bytes src → dst, bytes dst → src, connections, cost)` of each row.
fn brief(rows: &[GroupRow]) -> Vec<(Vec<&str>, u64, u64, u64, f64)> {
    rows.iter()
        .map(|r| {
            (
                r.key.iter().map(String::as_str).collect(),
                r.bytes_src_to_dst,
                r.bytes_dst_to_src,
                r.connections,
                r.cost_usd,
            )
        })
        .collect()
}

#[test]
fn grouped_queries_equal_the_sqlite_store() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((dir, front)) = setup() else { return };
    let mut ch = ClickHouseStore::open(config(&front.url())).expect("open ClickHouse store");
    let mut lite = SqliteStore::open(&dir.path().join("flows.db")).expect("open SQLite store");
    let rows = grouped_rows(t0());
    // Two inserts: ClickHouse holds unmerged parts, which must sum like merged ones.
    let (a, b) = rows.split_at(3);
    for s in [&mut ch as &mut dyn FlowStore, &mut lite] {
        s.write(a).expect("write");
        s.write(b).expect("write");
    }
    let (from, to) = (t0(), t0() + 120);
    // Both answers, largest first; rows that tie on bytes come in either order, so both
    // are put in key order within a tie before comparing.
    let both = |q: &GroupQuery| {
        let [c, l] = [
            ch.group(q).expect("ClickHouse group"),
            lite.group(q).expect("SQLite group"),
        ]
        .map(|mut v| {
            assert!(
                v.is_sorted_by(|a, b| a.bytes() >= b.bytes()),
                "{q:?}: {v:?}"
            );
            v.sort_by(|a, b| b.bytes().cmp(&a.bytes()).then_with(|| a.key.cmp(&b.key)));
            v
        });
        assert_eq!(c, l, "{q:?}");
        c
    };

    // The probes' own traffic (none here): the same expression on both stores.
    assert_eq!(
        both(&group_query(
            from,
            to,
            View::Raw,
            &["podflow_probe"],
            &[("podflow_probe", "false")],
            10
        ))
        .iter()
        .map(|r| r.key.clone())
        .collect::<Vec<_>>(),
        vec![vec!["false".to_string()]]
    );
    // Bytes over time by class: the same buckets on both stores.
    for step in ["time_1m", "time_10m", "time_1h", "time_1d"] {
        let rows = both(&group_query(
            from,
            to,
            View::Once,
            &[step, "class"],
            &[],
            100,
        ));
        assert!(!rows.is_empty(), "{step}");
        for r in &rows {
            let t: i64 = r.key[0].parse().expect("a bucket start");
            assert!(t <= to && t > from - 86400, "{step}: {r:?}");
        }
    }
    // Workload pairs: the raw view counts web → db on both nodes, count-once on web's.
    let q = |view| {
        group_query(
            from,
            to,
            view,
            &[
                "src_namespace",
                "src_workload",
                "dst_namespace",
                "dst_workload",
            ],
            &[],
            100,
        )
    };
    assert_eq!(
        brief(&both(&q(View::Raw))),
        vec![
            (
                vec!["shop", "web", "shop", "db"],
                2 * 1100,
                2 * 5400,
                6,
                1.5
            ),
            (vec!["shop", "web", "", "S3"], 300, 9000, 1, 0.125),
            (vec!["", "internet", "", "node-b"], 200, 700, 3, 0.0),
            (
                vec!["kube-system", "coredns", "", "internet"],
                64,
                128,
                1,
                0.0625
            ),
        ]
    );
    // Count-once: web → db now weighs less than web → S3.
    let once = both(&q(View::Once));
    assert_eq!(
        brief(&once[..2]),
        vec![
            (vec!["shop", "web", "", "S3"], 300, 9000, 1, 0.125),
            (vec!["shop", "web", "shop", "db"], 1100, 5400, 3, 0.75),
        ]
    );
    assert_eq!(once.len(), 4);
    assert_eq!(once[1].packets_src_to_dst, 11);
    assert_eq!(once[1].packets_dst_to_src, 22);
    assert_eq!(once[1].closed, 2);

    // Totals: no dimension, one row; an empty range, none.
    let total = both(&group_query(from, to, View::Once, &[], &[], 10));
    assert_eq!(
        brief(&total),
        vec![(
            vec![],
            1100 + 300 + 200 + 64,
            5400 + 9000 + 700 + 128,
            8,
            0.9375
        )]
    );
    assert!(both(&group_query(0, 100, View::Raw, &[], &[], 10)).is_empty());
    assert_eq!(
        both(&group_query(t0() - 60, to, View::Once, &[], &[], 10))[0].bytes_src_to_dst,
        (1 << 40) + 1100 + 300 + 200 + 64,
        "from is inclusive"
    );

    // Class and Service; "" is "no Service".
    assert_eq!(
        brief(&both(&group_query(
            from,
            to,
            View::Once,
            &["class"],
            &[],
            10
        ))),
        vec![
            (vec!["INTRA_VPC"], 300, 9000, 1, 0.125),
            (vec!["INTER_ZONE"], 1100, 5400, 3, 0.75),
            (vec!["PUBLIC_INTERNET"], 264, 828, 4, 0.0625),
        ]
    );
    assert_eq!(
        brief(&both(&group_query(
            from,
            to,
            View::Raw,
            &["service_namespace", "service_name", "service_ip"],
            &[("service_name", "")],
            10,
        ))),
        vec![(
            vec!["", "", ""],
            300 + 1100 + 200,
            9000 + 5400 + 700,
            7,
            0.875
        ),]
    );
    assert_eq!(
        brief(&both(&group_query(
            from,
            to,
            View::Once,
            &["service_name", "service_ip", "dst_ip", "dst_port", "proto"],
            &[("service_namespace", "kube-system")],
            10,
        ))),
        vec![(
            vec!["kube-dns", "fd00:96::a", "2001:db8:0:1::53", "53", "17"],
            64,
            128,
            1,
            0.0625
        )]
    );
    // Addresses, ports and protocols as the embedded store writes them (the two web → db
    // rows tie on bytes: sorted by key to compare).
    let mut by_addr = both(&group_query(
        from,
        to,
        View::Raw,
        &["src_ip", "dst_ip", "dst_port", "proto", "observer"],
        &[("src_ip", "10.0.1.5"), ("proto", "6")],
        10,
    ));
    by_addr.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        brief(&by_addr),
        vec![
            (
                vec!["10.0.1.5", "10.0.2.7", "5432", "6", "node-a"],
                1100,
                5400,
                3,
                0.75
            ),
            (
                vec!["10.0.1.5", "10.0.2.7", "5432", "6", "node-b"],
                1100,
                5400,
                3,
                0.75
            ),
            (
                vec!["10.0.1.5", "52.216.1.1", "443", "6", "node-a"],
                300,
                9000,
                1,
                0.125
            ),
        ]
    );

    // Largest first, and the limit cuts.
    let top = both(&group_query(from, to, View::Raw, &["dst_workload"], &[], 2));
    assert_eq!(
        brief(&top),
        vec![
            (vec!["db"], 2200, 10800, 6, 1.5),
            (vec!["S3"], 300, 9000, 1, 0.125),
        ]
    );
    // Filters match text exactly; a value with a quote is bound, not spliced.
    for (d, v) in [
        ("class", "INTER_ZONE' OR '1'='1"),
        ("src_workload", "WEB"),
        ("dst_port", "5432 "),
    ] {
        assert!(
            both(&group_query(from, to, View::Raw, &["class"], &[(d, v)], 10)).is_empty(),
            "{d}={v:?}"
        );
    }
    assert_eq!(
        brief(&both(&group_query(
            from,
            to,
            View::Once,
            &[
                "src_kind", "dst_kind", "src_zone", "dst_zone", "src_node", "dst_node"
            ],
            &[("dst_kind", "node"), ("src_zone", "")],
            10,
        ))),
        vec![(
            vec!["internet", "node", "", "us-east-1b", "", "node-b"],
            200,
            700,
            3,
            0.0
        )]
    );

    // Every dimension, alone and all together, in both views: the same rows as SQLite
    // (the time buckets, checked above, would split the rows by interval).
    let all: Vec<&str> = query::dimensions()
        .map(|d| d.name)
        .filter(|n| !n.starts_with("time_"))
        .collect();
    for view in [View::Raw, View::Once] {
        let mut each = both(&group_query(from, to, view, &all, &[], 100));
        each.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(each.len(), if view == View::Raw { 5 } else { 4 });
        // And the bill's dimensions by the stored ends.
        let local = [
            "local_cloud",
            "local_region",
            "local_namespace",
            "local_workload",
            "local_app",
            "local_ip",
            "local_initiated",
            "remote_kind",
            "remote_name",
            "remote_ip",
        ];
        for d in all.iter().chain(&local) {
            let mut c = ch
                .group(&group_query(from, to, view, &[d], &[], 100))
                .expect("ClickHouse");
            let mut l = lite
                .group(&group_query(from, to, view, &[d], &[], 100))
                .expect("SQLite");
            c.sort_by(|a, b| a.key.cmp(&b.key));
            l.sort_by(|a, b| a.key.cmp(&b.key));
            assert_eq!(c, l, "group by {d} ({view:?})");
            // Filtering by each value found gives that row back.
            for r in &c {
                let f = both(&group_query(from, to, view, &[], &[(d, &r.key[0])], 10));
                assert_eq!(f[0].bytes(), r.bytes(), "{d}={:?}", r.key[0]);
            }
        }
    }
}

/// ClickHouse exactly-once on the real engine: the real ledger and aggregator
/// (`podflow-pipeline`) cut one agent's batches into chunks (batches that come live, one
/// interval each, are a part each; two rows per chunk: several INSERTs per job; replayed
/// after a restart, the same batches would make one part, so only the re-cut from the
/// intents gives them their tokens back) and the store writes them while the test
/// front fails inserts or loses their answers (`/__faults`); the server's memory is lost
/// (a restart) at chosen points. Batch s carries 2^s bytes: the stored total says which
/// batches were counted and how often.
mod exactly_once {
    use std::collections::BTreeSet;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use podflow_model::{ChunkId, Counters, Oriented};
    use podflow_pipeline::Aggregator;
    use podflow_pipeline::ledger::{BatchId, Ledger, Offer};
    use podflow_store::{ChunkWrite, JobWrite};

    use super::*;

    const BATCHES: u64 = 6;

    /// Arms faults in the front; returns its count of faults injected so far.
    fn faults(front: &Front, query: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", front.port)).expect("connect to the front");
        write!(
            s,
            "GET /__faults?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out.split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// What a server holds in memory (a restart loses it).
    struct Server {
        ledger: Ledger<u64>,
        agg: Aggregator,
    }

    fn start(store: &ClickHouseStore) -> Server {
        Server {
            ledger: Ledger::new(10, 1_000_000, store.agents().expect("marks"), 7)
                .with_limits(podflow_pipeline::ledger::MAX_PART_WEIGHT, 2),
            agg: Aggregator::new(10, 10_000),
        }
    }

    /// Offers batch `seq` (observed at t0 + 10 seq) at `now` (`None`: as it is observed).
    fn offer(srv: &mut Server, unacked: &mut BTreeSet<u64>, seq: u64, now: Option<i64>) {
        let at = t0() + 10 * seq as i64;
        let id = BatchId {
            agent: Arc::from("agent-a"),
            seq,
        };
        match srv
            .ledger
            .offer(id, "node-a", at, now.unwrap_or(at), 1, seq)
        {
            Offer::Count { at, chunk } => {
                let o = Oriented {
                    local: v4(10, 0, 0, 1),
                    remote: v4(10, 1, 0, seq as u8),
                    responder_port: 80,
                    local_initiated: true,
                    service: None,
                    out: Counters {
                        bytes: 1 << seq,
                        packets: 1,
                    },
                    inbound: Counters::default(),
                };
                assert!(srv.agg.record_counted_in(
                    chunk,
                    &Arc::from("node-a"),
                    Protocol::TCP,
                    &o,
                    at,
                    FlowLabels::default,
                    0.0,
                    (1, 0),
                ));
            }
            Offer::Duplicate(s) => {
                unacked.remove(&s);
            }
            Offer::InFlight | Offer::Busy(_) => {}
        }
    }

    fn seal(srv: &mut Server, upto: i64) {
        let agg = &mut srv.agg;
        srv.ledger.seal(upto, |chunks| agg.take(upto, chunks));
    }

    fn stored(store: &ClickHouseStore) -> u64 {
        total(&store.flows(&all(0, i64::MAX)).expect("flows")).bytes_out
    }

    /// Writes the jobs in order, as the driver does; acks are checked against the store.
    fn write(srv: &mut Server, store: &mut ClickHouseStore, unacked: &mut BTreeSet<u64>) -> bool {
        while let Some(plan) = srv.ledger.next() {
            let id = plan.job.id;
            let ids: Vec<ChunkId> = plan
                .job
                .chunks
                .iter()
                .map(|c| ChunkId {
                    token: c.token.clone(),
                    agent: None,
                    seqs: Vec::new(),
                    day: c.day,
                })
                .collect();
            let chunks: Vec<ChunkWrite<'_>> = ids
                .iter()
                .zip(&plan.job.chunks)
                .map(|(id, c)| ChunkWrite { id, rows: &c.rows })
                .collect();
            let res = store.write_job(&JobWrite {
                intents: &plan.intents,
                chunks: &chunks,
                marks: &plan.marks,
            });
            if res.is_err() {
                srv.ledger.failed(id);
                return false;
            }
            let have = stored(store);
            for (_, seq) in srv.ledger.written(id) {
                assert_eq!(have & (1 << seq), 1 << seq, "batch {seq} acked, not stored");
                unacked.remove(&seq);
            }
        }
        true
    }

    fn all_bytes() -> u64 {
        (1..=BATCHES).map(|s| 1u64 << s).sum()
    }

    /// One run on table `table`: the agent sends its batches, the job's `k`-th INSERT
    /// (0: the intents; then the chunks; last: the marks) fails (`lose`: it lands and its
    /// answer is lost), then the same job is written again, by the same server or, with
    /// `restart`, by a new one the agent replays its unacked batches to.
    fn run(front: &Front, table: &str, k: usize, lose: bool, restart: bool) {
        let cfg = ClickHouseConfig {
            table: table.into(),
            max_retries: 0,
            ..config(&front.url())
        };
        let mut store = ClickHouseStore::open(cfg.clone()).expect("open");
        let mut srv = start(&store);
        let mut unacked: BTreeSet<u64> = (1..=BATCHES).collect();
        for s in 1..=BATCHES {
            offer(&mut srv, &mut unacked, s, None);
        }
        seal(&mut srv, t0() + 100);
        let inserts = 2 + srv.ledger.next().expect("a job").job.chunks.len();
        assert_eq!(inserts, 5, "intents, three chunks, marks");
        let kind = if lose { "lose_replies" } else { "fail_inserts" };
        faults(front, &format!("{kind}=1&after={k}&table="));
        let what = format!("insert {k} {kind}, restart {restart}");
        assert!(!write(&mut srv, &mut store, &mut unacked), "{what}: fails");
        assert_eq!(unacked.len() as u64, BATCHES, "{what}: nothing acked");
        if restart {
            drop(srv);
            drop(store);
            store = ClickHouseStore::open(cfg).expect("reopen");
            srv = start(&store);
            for s in unacked.clone() {
                offer(&mut srv, &mut unacked, s, Some(t0() + 200));
            }
            seal(&mut srv, t0() + 200);
        }
        assert!(
            write(&mut srv, &mut store, &mut unacked),
            "{what}: the retry"
        );
        assert_eq!(stored(&store), all_bytes(), "{what}: each batch once");
        assert!(unacked.is_empty(), "{what}: all acked");
        let marks: Vec<(String, u64, String)> = store
            .agents()
            .expect("marks")
            .into_iter()
            .map(|m| (m.agent, m.seq, m.node))
            .collect();
        assert_eq!(
            marks,
            vec![("agent-a".into(), BATCHES, "node-a".into())],
            "{what}"
        );
    }

    #[test]
    fn an_insert_whose_answer_is_lost_is_retried_and_counts_once() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_dir, front)) = setup() else { return };
        let mut store = ClickHouseStore::open(config(&front.url())).expect("open");
        let mut srv = start(&store);
        let mut unacked: BTreeSet<u64> = (1..=BATCHES).collect();
        for s in 1..=BATCHES {
            offer(&mut srv, &mut unacked, s, None);
        }
        seal(&mut srv, t0() + 100);
        // The second chunk lands, its answer is lost: the store's own retry sends it
        // again under the same token.
        faults(&front, "lose_replies=1&after=1&table=network_flows_0");
        assert!(write(&mut srv, &mut store, &mut unacked));
        assert_eq!(faults(&front, ""), "failed=0 lost=1");
        assert_eq!(stored(&store), all_bytes());
        assert!(unacked.is_empty());
    }

    #[test]
    fn a_job_failing_at_any_insert_is_written_again_and_counts_once() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_dir, front)) = setup() else { return };
        for k in 0..5 {
            for lose in [false, true] {
                run(&front, &format!("f_{k}_{lose}"), k, lose, false);
            }
        }
        assert_eq!(faults(&front, ""), "failed=5 lost=5");
    }

    #[test]
    fn a_server_restarted_between_the_rows_and_the_marks_counts_once() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_dir, front)) = setup() else { return };
        // Killed after the intents, after some chunks, after all of them (before the
        // marks), and with the marks written but not answered.
        for k in 0..5 {
            for lose in [false, true] {
                run(&front, &format!("r_{k}_{lose}"), k, lose, true);
            }
        }
    }
}

/// Avoidable cross-zone traffic per Service (`podflow_store::avoidable`) reads the same
/// from both stores: the grouped query by the Service zone columns, and the fold of it.
#[test]
fn service_costs_equal_the_sqlite_store() {
    use podflow_store::avoidable::{service_costs, service_query};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((dir, front)) = setup() else { return };
    let mut ch = ClickHouseStore::open(config(&front.url())).expect("open ClickHouse store");
    let mut lite = SqliteStore::open(&dir.path().join("flows.db")).expect("open SQLite store");
    let mut rows = grouped_rows(t0());
    // A headless Service asking for close backends, crossing with one in the zone.
    let mut kafka = rows[4].clone();
    kafka.key.remote = v4(10, 0, 2, 9);
    kafka.cost_usd = 1.0;
    kafka.labels = Arc::new(FlowLabels {
        class: Class::InterZone,
        remote: end("pod", "shop", "kafka-1", "node-b", "us-east-1b"),
        service_namespace: "shop".into(),
        service_name: "kafka".into(),
        service_headless: true,
        service_prefers_close: true,
        service_zone_local: Some(true),
        ..FlowLabels::clone(&kafka.labels)
    });
    rows.push(kafka);
    for s in [&mut ch as &mut dyn FlowStore, &mut lite] {
        s.write(&rows).expect("write");
    }
    let (from, to) = (t0(), t0() + 120);
    let q = service_query(from, to, None);
    let sorted = |mut v: Vec<GroupRow>| {
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    };
    let (c, l) = (
        sorted(ch.group(&q).expect("ClickHouse")),
        sorted(lite.group(&q).expect("SQLite")),
    );
    assert_eq!(c, l);
    let now = to + 3600;
    let costs = service_costs(&c, from, to, now, 100);
    assert_eq!(costs, service_costs(&l, from, to, now, 100));
    // db: web's rows only (count once), all across and avoidable.
    let db = &costs.services.iter().find(|s| s.name == "db").expect("db");
    assert_eq!(
        (
            db.bytes,
            db.cross_zone_bytes,
            db.avoidable_bytes,
            db.avoidable_cost_usd
        ),
        (6000 + 500, 6500, 6500, 0.75)
    );
    let kafka = &costs.headless[0];
    assert_eq!(
        (kafka.name.as_str(), kafka.avoidable_cost_usd),
        ("kafka", 1.0)
    );
    assert!(kafka.prefers_close_but_crosses);
    assert_eq!(
        kafka.projected_monthly_saving_usd,
        1.0 * 30.0 * 86_400.0 / 120.0
    );
}

/// Rows summed per network on both stores: kept apart from the full-address rows of the
/// same addresses, read back with their lengths, and an exact-address filter matches
/// only full-address rows (IPv4 /24 and IPv6 /48).
#[test]
fn network_rows_never_match_an_exact_address_on_both_stores() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((dir, front)) = setup() else { return };
    let mut ch = ClickHouseStore::open(config(&front.url())).expect("open ClickHouse store");
    let mut lite = SqliteStore::open(&dir.path().join("flows.db")).expect("open SQLite store");
    let at = |local: &str, remote: &str, n: u64, lens: Option<(u8, u8)>| {
        let mut key = FlowKey {
            proto: Protocol::TCP,
            local: local.parse().expect("ip"),
            remote: remote.parse().expect("ip"),
            responder_port: 443,
            local_initiated: true,
            service: None,
            prefixes: Default::default(),
        };
        if let Some((l, r)) = lens {
            key = key.with_prefix_lens(l, r);
        }
        FlowRow {
            interval_start: t0(),
            interval_s: 60,
            observer: "192.0.2.7/0".into(),
            key,
            totals: totals(n),
            labels: Arc::new(FlowLabels {
                class: Class::PublicInternet,
                local: end("internet", "", "", "", ""),
                remote: end("internet", "", "", "", ""),
                ..FlowLabels::default()
            }),
            cost_usd: 0.0,
        }
    };
    let rows = [
        at("203.0.113.0", "198.51.100.0", 3, None),
        at("203.0.113.0", "198.51.100.0", 2, Some((24, 24))),
        at("2001:db8:1::", "2001:db8:2::", 1, Some((48, 48))),
    ];
    for s in [&mut ch as &mut dyn FlowStore, &mut lite] {
        s.write(&rows).expect("write");
    }
    let flows = |s: &dyn FlowStore| {
        let mut v: Vec<(String, String, u64)> = s
            .flows(&all(t0(), t0() + 60))
            .expect("flows")
            .iter()
            .map(|f| (f.key.local_text(), f.key.remote_text(), f.totals.bytes_out))
            .collect();
        v.sort();
        v
    };
    let want = vec![
        (
            "2001:db8:1::/48".to_string(),
            "2001:db8:2::/48".to_string(),
            1000,
        ),
        ("203.0.113.0".into(), "198.51.100.0".into(), 3000),
        ("203.0.113.0/24".into(), "198.51.100.0/24".into(), 2000),
    ];
    assert_eq!(flows(&ch), want);
    assert_eq!(flows(&lite), want);
    for (dim, value, bytes) in [
        ("src_ip", "203.0.113.0", 3000),
        ("dst_ip", "198.51.100.0", 3000),
        ("src_ip", "203.0.113.0/24", 2000),
        ("dst_ip", "2001:db8:2::/48", 1000),
        ("dst_ip", "2001:db8:2::", 0),
    ] {
        let q = group_query(t0(), t0() + 60, View::Raw, &[], &[(dim, value)], 10);
        for s in [&ch as &dyn FlowStore, &lite] {
            let got: u64 = s
                .group(&q)
                .expect("group")
                .iter()
                .map(|g| g.bytes_src_to_dst)
                .sum();
            assert_eq!(got, bytes, "{dim}={value}");
        }
    }
    let q = group_query(t0(), t0() + 60, View::Raw, &["src_ip", "dst_ip"], &[], 10);
    assert_eq!(
        ch.group(&q).expect("ClickHouse"),
        lite.group(&q).expect("SQLite")
    );
}

/// A table from before the prefix lengths (schema version 6): opening it adds them to
/// its columns and its sorting key, its rows read as full addresses, and a network row
/// of the same addresses written after stays a row of its own.
#[test]
fn a_table_without_prefix_lengths_gets_them_in_its_key() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_dir, front)) = setup() else { return };
    let url = front.url();
    let cfg = config(&url);
    for ddl in create_statements(&cfg) {
        let old = ddl
            .replace(",\n    `local_prefix_len` UInt8 CODEC(ZSTD(1))", "")
            .replace(",\n    `remote_prefix_len` UInt8 CODEC(ZSTD(1))", "")
            .replace(", local_prefix_len, remote_prefix_len)", ")");
        assert!(!old.contains("prefix_len"), "{old}");
        sql_exec(&url, &old);
    }
    sql_exec(
        &url,
        &format!(
            "INSERT INTO network_flows_0 (date, intervalStartTime, intervalSeconds, proto, \
             direction, observer, local_addr, remote_addr, responder_port, local_initiated, \
             class, local_kind, remote_kind, bytes, bytes_out) VALUES (toDate({t}), {t}, 60, \
             'tcp', 'out', 'r/0', '::ffff:203.0.113.0', '::ffff:198.51.100.0', 443, true, \
             'UNKNOWN', 'internet', 'internet', 40, 40)",
            t = t0()
        ),
    );
    let mut ch = ClickHouseStore::open(cfg).expect("open migrates");
    let mut net = FlowRow {
        interval_start: t0(),
        interval_s: 60,
        observer: "r/0".into(),
        key: FlowKey {
            proto: Protocol::TCP,
            local: v4(203, 0, 113, 0),
            remote: v4(198, 51, 100, 0),
            responder_port: 443,
            local_initiated: true,
            service: None,
            prefixes: Default::default(),
        },
        totals: totals(1),
        labels: Arc::new(node_b_and_internet()),
        cost_usd: 0.0,
    };
    net.key = net.key.with_prefix_lens(24, 24);
    ch.write(&[net]).expect("write");
    let mut got: Vec<(String, String, u64)> = ch
        .flows(&all(t0(), t0() + 60))
        .expect("flows")
        .iter()
        .map(|f| (f.key.local_text(), f.key.remote_text(), f.totals.bytes_out))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("203.0.113.0".to_string(), "198.51.100.0".to_string(), 40),
            ("203.0.113.0/24".into(), "198.51.100.0/24".into(), 1000),
        ]
    );
    sql_exec(&url, "OPTIMIZE TABLE network_flows_0 FINAL");
    assert_eq!(
        sql_u64(
            &url,
            "SELECT count() FROM network_flows_0 WHERE direction = 'out'"
        ),
        2,
        "merged, the network row is still apart"
    );
}
