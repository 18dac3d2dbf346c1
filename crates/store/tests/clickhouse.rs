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
        remote_observed: false,
    });
    let s3 = Arc::new(FlowLabels {
        class: Class::IntraVpc,
        local: end("pod", "shop", "web-1", "node-a", "us-east-1a"),
        remote: EndLabels {
            kind: "cloud_range",
            name: "S3".into(),
            region: "us-east-1".into(),
            cloud: "aws".into(),
            ..Default::default()
        },
        ..Default::default()
    });
    let inet = Arc::new(FlowLabels {
        class: Class::PublicInternet,
        local: end("node", "", "node-b", "node-b", "us-east-1b"),
        remote: EndLabels {
            kind: "internet",
            ..Default::default()
        },
        ..Default::default()
    });
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
    // An explicit token: the same token is dropped, another one counts.
    ch.write_with_token(second, "agent-1/seq-7").expect("write");
    ch.write_with_token(second, "agent-1/seq-7").expect("retry");
    let mut want = sum_rows(first);
    want.merge(&sum_rows(second));
    assert_eq!(
        total(&ch.flows(&all(t0(), t0() + 180)).expect("flows")),
        want
    );
    ch.write_with_token(second, "agent-1/seq-8")
        .expect("a new batch");
    want.merge(&sum_rows(second));
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
    assert_eq!(n, 60, "35 kubenetmon columns + 25 of podflow's");
    let ch = ClickHouseStore::open(config(&url)).expect("second open");
    assert_eq!(cols(&url), n);
    // A table from an older podflow (a column missing) gets it back, data kept.
    sql_exec(
        &url,
        "ALTER TABLE network_flows_0 DROP COLUMN remoteCloudService",
    );
    assert_eq!(cols(&url), n - 1);
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
fn expire_deletes_old_intervals() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_dir, front)) = setup() else { return };
    let mut ch = ClickHouseStore::open(config(&front.url())).expect("open");
    let rows = sample_rows(t0());
    ch.write(&rows).expect("write");
    assert_eq!(ch.expire(t0() + 60).expect("expire"), 5);
    let left = ch.flows(&all(0, i64::MAX)).expect("flows");
    let kept: Vec<_> = rows
        .iter()
        .filter(|r| r.interval_start >= t0() + 60)
        .cloned()
        .collect();
    assert_eq!(total(&left), sum_rows(&kept));
    assert!(left.iter().all(|s| s.first == t0() + 60));
    assert_eq!(ch.expire(t0() + 60).expect("expire again"), 0);
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
    assert_eq!(plain.len(), 2);
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
