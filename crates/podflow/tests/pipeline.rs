//! `podflow agent` → `podflow server` end to end, as child processes: the agent observes a
//! namespace this test creates; the server is killed and restarted mid-stream and its store
//! is locked for a while; the stored totals must equal the kernel's final counters exactly.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use podflow_store::{FlowQuery, FlowStore, SqliteStore};
use podflow_testkit::{
    ChildGuard, DestroyLog, Pair, connect, exchange, free_port, http_get as get, serve, wait_until,
};

fn metric(port: u16, name: &str) -> Option<u64> {
    let (_, body) = get(port, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn start_server(data: &Path, http: u16, grpc: u16) -> ChildGuard {
    let p = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(["server", "--interval", "1s", "--listen"])
        .arg(format!("127.0.0.1:{http}"))
        .arg("--grpc-listen")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--data-dir")
        .arg(data)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start server");
    let p = ChildGuard(p);
    wait_until("the server", Duration::from_secs(20), || {
        get(http, "/live").is_some()
    });
    p
}

/// Starts `podflow agent` as node-a observing `ns`, streaming to the server's gRPC port,
/// with `extra` arguments (not waited for).
fn start_agent(
    ns: &podflow_testkit::Netns,
    data: &Path,
    grpc: u16,
    http: u16,
    extra: &[String],
) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args([
            "agent",
            "--interval",
            "1s",
            "--node-name",
            "node-a",
            "--server",
        ])
        .arg(format!("http://127.0.0.1:{grpc}"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--data-dir")
        .arg(data)
        .arg("--netns")
        .arg(ns.path())
        .args(extra)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start agent");
    ChildGuard(child)
}

/// Holds an exclusive lock on the SQLite file for `secs`: the server's writes fail meanwhile.
fn lock_store(db: &Path, secs: f64) -> Option<Child> {
    let marker = db.with_extension("locked");
    let script = format!(
        "import sqlite3,time\nc=sqlite3.connect({:?},isolation_level=None,timeout=10)\nc.execute('BEGIN EXCLUSIVE')\nopen({:?},'w').close()\ntime.sleep({secs})\nc.execute('COMMIT')\n",
        db.display().to_string(),
        marker.display().to_string(),
    );
    let child = Command::new("python3").args(["-c", &script]).spawn().ok()?;
    wait_until("the store lock", Duration::from_secs(10), || {
        marker.exists()
    });
    Some(child)
}

#[test]
fn agent_to_server_is_exact_across_a_server_kill_and_a_locked_store() {
    if !podflow_testkit::can_run("agent_to_server")
        || !podflow_testkit::have("agent_to_server", "conntrack")
    {
        return;
    }
    let pair = Pair::new("pipe").expect("namespaces");
    pair.a.short_tcp_timeouts().expect("timeouts");
    let log = DestroyLog::start(&pair.a);
    serve(&pair, 5301);
    let sdata = tempfile::tempdir().expect("tmp");
    let adata = tempfile::tempdir().expect("tmp");
    let (http, grpc, ahttp) = (free_port(), free_port(), free_port());
    let mut server = start_server(sdata.path(), http, grpc);
    let agent = start_agent(&pair.a, adata.path(), grpc, ahttp, &[]);
    wait_until("the agent", Duration::from_secs(20), || {
        get(ahttp, "/ready").is_some_and(|(s, _)| s == 200)
    });

    let mut ports = Vec::new();
    let mut burst = |n: usize, size: usize| {
        for i in 0..n {
            let mut c = connect(&pair, Pair::B4, 5301);
            ports.push(c.local_addr().expect("addr").port());
            exchange(&mut c, size + i * 1000, 3 * size);
        }
    };
    // 1. Normal operation.
    burst(5, 20_000);
    std::thread::sleep(Duration::from_millis(1500));
    // 2. The server dies without warning; traffic goes on; it comes back on the same data.
    server.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = server.0.wait();
    burst(5, 30_000);
    std::thread::sleep(Duration::from_millis(2500));
    server = start_server(sdata.path(), http, grpc);
    // 3. The store is locked by another process for longer than the busy timeout (5 s) plus
    // an interval, so at least one write fails whatever the timing; traffic goes on.
    let db = sdata.path().join("podflow.sqlite");
    let lock = lock_store(&db, 12.0);
    burst(5, 40_000);
    if let Some(mut l) = lock {
        let _ = l.wait();
        assert!(
            metric(http, "podflow_store_write_errors_total").unwrap_or(0) >= 1,
            "writes failed while locked"
        );
    }
    // Every connection's DESTROY is in (TIME_WAIT is 1 s; the agent's dumps reap them) and
    // every batch is acknowledged.
    let truth: Vec<_> = ports
        .iter()
        .map(|p| log.wait("tcp", *p, Duration::from_secs(15)))
        .collect();
    wait_until("every batch acked", Duration::from_secs(30), || {
        metric(ahttp, "podflow_agent_buffered_batches") == Some(0)
            && metric(ahttp, "podflow_conntrack_tracked_connections").is_some_and(|n| n <= 1)
    });
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let mut agent = agent;
    assert!(agent.0.wait().expect("agent exit").success());
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.0.wait().expect("server exit").success());

    let (want_out, want_in) = truth
        .iter()
        .fold((0, 0), |(o, i), c| (o + c.orig.1, i + c.reply.1));
    let store = SqliteStore::open_reader(&db).expect("store");
    let rows = store
        .flows(&FlowQuery {
            from: 0,
            to: i64::MAX,
            limit: 1000,
        })
        .expect("query");
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| r.key.responder_port == 5301)
        .collect();
    let got_out: u64 = mine.iter().map(|r| r.totals.bytes_out).sum();
    let got_in: u64 = mine.iter().map(|r| r.totals.bytes_in).sum();
    let opened: u64 = mine.iter().map(|r| r.totals.opened).sum();
    let closed: u64 = mine.iter().map(|r| r.totals.closed).sum();
    assert_eq!(
        (got_out, got_in),
        (want_out, want_in),
        "stored bytes equal the kernel's final counters"
    );
    assert_eq!((opened, closed), (15, 15));
    assert!(mine.iter().all(|r| r.observer == "node-a"));
}

#[test]
fn an_agent_forwards_netflow_records_to_the_server() {
    use podflow_netflow::encode::{V5Flow, V5Header, v5};
    if !podflow_testkit::can_run("agent_netflow") {
        return;
    }
    let ns = podflow_testkit::Netns::new("anf").expect("namespace");
    ns.enable_conntrack().expect("conntrack");
    let sdata = tempfile::tempdir().expect("tmp");
    let adata = tempfile::tempdir().expect("tmp");
    let (http, grpc, ahttp, nf) = (free_port(), free_port(), free_port(), free_port());
    let _server = start_server(sdata.path(), http, grpc);
    let _agent = start_agent(
        &ns,
        adata.path(),
        grpc,
        ahttp,
        &["--netflow-listen".to_string(), format!("127.0.0.1:{nf}")],
    );
    wait_until("the agent", Duration::from_secs(20), || {
        get(ahttp, "/ready").is_some_and(|(s, _)| s == 200)
    });
    let flow = V5Flow {
        src: [10, 7, 0, 1].into(),
        dst: [10, 7, 0, 2].into(),
        input: 1,
        output: 2,
        packets: 9,
        bytes: 4_321,
        first: 1_000,
        last: 2_000,
        src_port: 50_000,
        dst_port: 8443,
        tcp_flags: 0x10,
        proto: 6,
    };
    let h = V5Header {
        sys_uptime: 5_000,
        unix_secs: 1_800_000_000,
        engine_type: 0,
        engine_id: 3,
        ..Default::default()
    };
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("udp")
        .send_to(&v5(&h, &[flow]), ("127.0.0.1", nf))
        .expect("send");
    wait_until(
        "the record in the server's store",
        Duration::from_secs(20),
        || {
            get(http, "/api/v1/flows?limit=100").is_some_and(|(_, body)| {
                let rows: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                rows.as_array().is_some_and(|rows| {
                    rows.iter().any(|r| {
                        r["observer"] == "127.0.0.1/3"
                            && r["responder_port"] == 8443
                            && r["bytes_out"] == 4_321
                            && r["packets_out"] == 9
                    })
                })
            })
        },
    );
}
