//! `podflow run` end to end: the real binary observing a namespace this test creates,
//! checked against the kernel's own counters (conntrack-tools) and promtool.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podflow_store::{FlowQuery, FlowStore, SqliteStore};
use podflow_testkit::{Pair, connect, exchange, serve};

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to podflow");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
    let mut r = String::new();
    s.read_to_string(&mut r).expect("read");
    let (head, body) = r.split_once("\r\n\r\n").expect("http");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_string())
}

struct Podflow(Child);

impl Drop for Podflow {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Kernel counters (orig, reply) bytes of the TCP entry whose source port is `sport`.
fn kernel_bytes(pair: &Pair, sport: u16) -> (u64, u64) {
    let out = pair
        .a
        .sh(&format!(
            "conntrack -L -p tcp --orig-port-src {sport} -o extended 2>/dev/null"
        ))
        .expect("conntrack -L");
    let bytes: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes="))
        .map(|v| v.parse().expect("number"))
        .collect();
    assert_eq!(bytes.len(), 2, "one entry for sport {sport}: {out}");
    (bytes[0], bytes[1])
}

fn row_for(json: &serde_json::Value, port: u64) -> Option<serde_json::Value> {
    json.as_array()?
        .iter()
        .find(|r| r["remote"] == Pair::B4 && r["responder_port"] == port && r["local"] == Pair::A4)
        .cloned()
}

#[test]
fn run_reports_exact_bytes_in_the_api_metrics_and_store_and_flushes_on_sigterm() {
    if !podflow_testkit::can_run("run_end_to_end")
        || !podflow_testkit::have("run_end_to_end", "conntrack")
    {
        return;
    }
    let pair = Pair::new("run").expect("namespaces");
    serve(&pair, 5101);
    let data = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args([
            "run",
            "--interval",
            "1s",
            "--node-name",
            "node-a",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("--netns")
        .arg(pair.a.path())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start podflow");
    let mut pf = Podflow(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() || get(port, "/ready").0 != 200 {
        assert!(Instant::now() < deadline, "podflow did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(port, "/live").0, 200);

    let mut c = connect(&pair, Pair::B4, 5101);
    let sport = c.local_addr().expect("addr").port();
    exchange(&mut c, 100_000, 250_000);
    // Within a few intervals (dump, then the interval closes and is written) the row is
    // stored and served.
    let (k_out, k_in) = kernel_bytes(&pair, sport);
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let (status, body) = get(port, "/api/v1/flows?limit=50");
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        let row = row_for(&json, 5101);
        if let Some(r) = row
            .as_ref()
            .filter(|r| r["bytes_out"] == k_out && r["bytes_in"] == k_in)
        {
            break r.clone();
        }
        if Instant::now() > deadline {
            panic!("row never reached the kernel's counters ({k_out}, {k_in}): {row:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(row["bytes_out"], k_out, "{row}");
    assert_eq!(row["bytes_in"], k_in, "{row}");
    assert_eq!(row["local_initiated"], true);
    assert_eq!(row["connections_opened"], 1);
    assert_eq!(row["observer"], "node-a");

    // /metrics: the flow totals include these bytes, and promtool accepts the text.
    let (status, metrics) = get(port, "/metrics");
    assert_eq!(status, 200);
    let out_line = metrics
        .lines()
        .find(|l| l.starts_with("podflow_flow_bytes_total{proto=\"tcp\",direction=\"out\"}"))
        .expect("tcp out bytes");
    let v: u64 = out_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(v >= k_out, "{out_line} vs {k_out}");
    assert!(metrics.contains("podflow_conntrack_accounting_enabled 1"));
    if podflow_testkit::have("promtool", "promtool") {
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        p.stdin
            .take()
            .expect("stdin")
            .write_all(metrics.as_bytes())
            .expect("write");
        let o = p.wait_with_output().expect("promtool");
        assert!(
            o.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // The CLI view shows the conversation.
    let table = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(["flows", "--since", "5m", "--url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("podflow flows");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(Pair::A4) && l.contains("10.99.0.2:5101")),
        "{table}"
    );

    // Bytes sent right before SIGTERM are flushed by the last dump.
    exchange(&mut c, 3_000, 7_000);
    let (k_out, k_in) = kernel_bytes(&pair, sport);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pf.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("sigterm");
    let status = pf.0.wait().expect("wait");
    assert!(status.success(), "podflow exited with {status}");

    let store = SqliteStore::open_reader(&data.path().join("podflow.sqlite")).expect("store");
    let rows = store
        .flows(&FlowQuery {
            from: 0,
            to: i64::MAX,
            limit: 100,
        })
        .expect("query");
    let r = rows
        .iter()
        .find(|r| r.key.responder_port == 5101 && r.key.local.to_string() == Pair::A4)
        .expect("stored row");
    assert_eq!((r.totals.bytes_out, r.totals.bytes_in), (k_out, k_in));
    drop(c);
    assert!(Path::new(&data.path().join("podflow.sqlite")).exists());
}
