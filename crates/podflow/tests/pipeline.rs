//! `podflow agent` → `podflow server` end to end, as child processes: the agent observes a
//! namespace this test creates; the server is killed and restarted mid-stream and its store
//! is locked for a while, aborted at exact steps of a write (failpoints), or its
//! filesystem fills up; or the agent is killed mid-traffic and restarted on its data
//! directory; the stored totals must equal the kernel's final counters exactly.

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
    start_server_env(data, http, grpc, &[])
}

/// [`start_server`] with `env` set (failpoints).
fn start_server_env(data: &Path, http: u16, grpc: u16, env: &[(&str, &str)]) -> ChildGuard {
    let p = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .envs(env.iter().copied())
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
    start_agent_env(ns, data, (grpc, http), extra, &[])
}

/// [`start_agent`] with `env` set (libfaketime).
fn start_agent_env(
    ns: &podflow_testkit::Netns,
    data: &Path,
    (grpc, http): (u16, u16),
    extra: &[String],
    env: &[(&str, &str)],
) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .envs(env.iter().copied())
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
    // 1. Normal operation.
    burst(&pair, 5301, &mut ports, 5, 20_000);
    std::thread::sleep(Duration::from_millis(1500));
    // 2. The server dies without warning; traffic goes on; it comes back on the same data.
    server.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = server.0.wait();
    burst(&pair, 5301, &mut ports, 5, 30_000);
    std::thread::sleep(Duration::from_millis(2500));
    server = start_server(sdata.path(), http, grpc);
    // 3. The store is locked by another process for longer than the busy timeout (5 s) plus
    // an interval, so at least one write fails whatever the timing; traffic goes on.
    let db = sdata.path().join("podflow.sqlite");
    let lock = lock_store(&db, 12.0);
    burst(&pair, 5301, &mut ports, 5, 40_000);
    if let Some(mut l) = lock {
        let _ = l.wait();
        assert!(
            metric(http, "podflow_store_write_errors_total").unwrap_or(0) >= 1,
            "writes failed while locked"
        );
    }
    // Every connection's DESTROY is in (TIME_WAIT is 1 s; the agent's dumps reap them) and
    // every batch is acknowledged; the stored totals are the kernel's.
    stop_and_check((agent, server), (ahttp, &db), &log, 5301, &ports);
}

/// Connections to `port`, one after another, each with its own amounts; their source
/// ports go to `sports`.
fn burst(pair: &Pair, port: u16, sports: &mut Vec<u16>, n: usize, size: usize) {
    for i in 0..n {
        let mut c = connect(pair, Pair::B4, port);
        sports.push(c.local_addr().expect("addr").port());
        exchange(&mut c, size + i * 1000, 3 * size);
    }
}

/// Waits for `server` to end by itself (a failpoint's abort) and says how it ended.
#[cfg(feature = "failpoints")]
fn died(server: &mut ChildGuard, within: Duration) -> Option<std::process::ExitStatus> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < within {
        if let Ok(Some(st)) = server.0.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Stops agent and server, then checks that the bytes stored for `port` equal the
/// kernel's final counters of the connections `sports` (from `log`), and that each was
/// opened and closed once.
fn stop_and_check(
    (agent, mut server): (ChildGuard, ChildGuard),
    (ahttp, db): (u16, &Path),
    log: &DestroyLog,
    port: u16,
    sports: &[u16],
) {
    let truth: Vec<_> = sports
        .iter()
        .map(|p| log.wait("tcp", *p, Duration::from_secs(15)))
        .collect();
    wait_until("every batch acked", Duration::from_secs(40), || {
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
    let store = SqliteStore::open_reader(db).expect("store");
    let rows = store
        .flows(&FlowQuery {
            from: 0,
            to: i64::MAX,
            limit: 1000,
        })
        .expect("query");
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| r.key.responder_port == port)
        .collect();
    let sum = |f: fn(&podflow_store::FlowSummary) -> u64| mine.iter().map(|r| f(r)).sum::<u64>();
    assert_eq!(
        (sum(|r| r.totals.bytes_out), sum(|r| r.totals.bytes_in)),
        (want_out, want_in),
        "stored bytes equal the kernel's final counters"
    );
    let n = sports.len() as u64;
    assert_eq!((sum(|r| r.totals.opened), sum(|r| r.totals.closed)), (n, n));
    assert!(mine.iter().all(|r| r.observer == "node-a"));
}

/// The server dies (abort: no destructor, no flush) at the two worst moments of a write,
/// at exact steps no timing could hit: inside the store's transaction after the rows went
/// in (`sqlite-after-rows`: nothing of the job may survive), and after the job is durable
/// but before its acks are sent (`driver-after-write`: the agents replay what is already
/// stored, which must not count twice). Traffic goes on while it is down; after each
/// death it restarts on the same data directory. (Each failpoint fires at the first job
/// that reaches it: the agent reports only what changed, a few jobs in a burst.)
#[cfg(feature = "failpoints")]
#[test]
fn a_server_killed_inside_a_write_neither_doubles_nor_loses_bytes() {
    use std::os::unix::process::ExitStatusExt;
    let test = "a_server_killed_inside_a_write_neither_doubles_nor_loses_bytes";
    if !podflow_testkit::can_run(test) || !podflow_testkit::have(test, "conntrack") {
        return;
    }
    let pair = Pair::new("srvk").expect("namespaces");
    pair.a.short_tcp_timeouts().expect("timeouts");
    let log = DestroyLog::start(&pair.a);
    serve(&pair, 5302);
    let sdata = tempfile::tempdir().expect("tmp");
    let adata = tempfile::tempdir().expect("tmp");
    let (http, grpc, ahttp) = (free_port(), free_port(), free_port());
    let mut sports = Vec::new();
    let mut server = start_server_env(
        sdata.path(),
        http,
        grpc,
        &[("PODFLOW_FAILPOINTS", "sqlite-after-rows")],
    );
    let agent = start_agent(&pair.a, adata.path(), grpc, ahttp, &[]);
    wait_until("the agent", Duration::from_secs(20), || {
        get(ahttp, "/ready").is_some_and(|(s, _)| s == 200)
    });
    for (step, points) in [
        ("sqlite-after-rows", "driver-after-write"),
        ("driver-after-write", ""),
    ] {
        burst(&pair, 5302, &mut sports, 4, 20_000);
        let st = died(&mut server, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the server never reached {step}"));
        assert_eq!(
            st.signal(),
            Some(6),
            "{step}: the failpoint aborted it ({st:?})"
        );
        // Down: traffic goes on, the agent keeps its batches.
        burst(&pair, 5302, &mut sports, 3, 30_000);
        std::thread::sleep(Duration::from_millis(1500));
        server = start_server_env(sdata.path(), http, grpc, &[("PODFLOW_FAILPOINTS", points)]);
    }
    burst(&pair, 5302, &mut sports, 3, 40_000);
    let db = sdata.path().join("podflow.sqlite");
    stop_and_check((agent, server), (ahttp, &db), &log, 5302, &sports);
}

#[cfg(not(feature = "failpoints"))]
#[test]
fn a_server_killed_inside_a_write_neither_doubles_nor_loses_bytes() {
    podflow_testkit::skip(
        "a_server_killed_inside_a_write_neither_doubles_nor_loses_bytes",
        "built without the `failpoints` feature (scripts/test.sh passes --features podflow/failpoints)",
    );
}

/// The server's filesystem fills up (a small tmpfs, filled by another file): its writes
/// fail, it keeps the rows and sends no ack for them, the agent keeps its batches; once
/// space is freed, everything lands, once.
#[test]
fn a_full_filesystem_holds_the_rows_and_loses_nothing() {
    let test = "a_full_filesystem_holds_the_rows_and_loses_nothing";
    if !podflow_testkit::can_run(test) || !podflow_testkit::have(test, "conntrack") {
        return;
    }
    let pair = Pair::new("full").expect("namespaces");
    pair.a.short_tcp_timeouts().expect("timeouts");
    let log = DestroyLog::start(&pair.a);
    serve(&pair, 5303);
    let mount = tempfile::tempdir().expect("tmp");
    let fs = Tmpfs::mount(mount.path(), "16m");
    let adata = tempfile::tempdir().expect("tmp");
    let (http, grpc, ahttp) = (free_port(), free_port(), free_port());
    let server = start_server(mount.path(), http, grpc);
    let agent = start_agent(&pair.a, adata.path(), grpc, ahttp, &[]);
    wait_until("the agent", Duration::from_secs(20), || {
        get(ahttp, "/ready").is_some_and(|(s, _)| s == 200)
    });
    let mut sports = Vec::new();
    burst(&pair, 5303, &mut sports, 3, 20_000);
    std::thread::sleep(Duration::from_millis(1500));
    let filler = mount.path().join("filler");
    fill(&filler);
    let errors = metric(http, "podflow_store_write_errors_total").unwrap_or(0);
    burst(&pair, 5303, &mut sports, 5, 30_000);
    wait_until(
        "a write refused by the full disk",
        Duration::from_secs(20),
        || metric(http, "podflow_store_write_errors_total").is_some_and(|e| e > errors),
    );
    assert!(
        metric(ahttp, "podflow_agent_buffered_batches").is_some_and(|b| b > 0),
        "no ack for rows that are not stored: the agent keeps its batches"
    );
    assert_ne!(
        get(http, "/ready").map(|(s, _)| s),
        Some(200),
        "not ready while the store cannot write"
    );
    std::fs::remove_file(&filler).expect("free the space");
    burst(&pair, 5303, &mut sports, 3, 40_000);
    let db = mount.path().join("podflow.sqlite");
    stop_and_check((agent, server), (ahttp, &db), &log, 5303, &sports);
    drop(fs);
}

/// Sends one IPFIX message to 127.0.0.1:`port`: a template and one TCP record (10
/// packets, to port 443, the last second) per (source, destination, bytes).
fn send_ipfix(port: u16, flows: &[([u8; 4], [u8; 4], u64)]) {
    use podflow_netflow::encode::{IPFIX_IPV4_18, Message, Value};
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let ip = |a: [u8; 4]| Value::Ip(std::net::IpAddr::from(a));
    let records: Vec<Vec<Value>> = flows
        .iter()
        .map(|&(src, dst, bytes)| {
            vec![
                ip(src),
                ip(dst),
                ip([0, 0, 0, 0]),
                Value::U(1),
                Value::U(2),
                Value::U(10),
                Value::U(bytes),
                Value::U(now_ms - 1000),
                Value::U(now_ms),
                Value::U(40_000),
                Value::U(443),
                Value::U(0x10),
                Value::U(6),
                Value::U(0),
                Value::U(0),
                Value::U(0),
                Value::U(24),
                Value::U(24),
            ]
        })
        .collect();
    let mut m = Message::ipfix((now_ms / 1000) as u32, 0, 7);
    m.template(256, &IPFIX_IPV4_18);
    m.data(256, &IPFIX_IPV4_18, &records);
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("udp")
        .send_to(&m.build(), ("127.0.0.1", port))
        .expect("send");
}

/// A NetFlow record whose counter no interface could carry (2^50 bytes, IPFIX's 64-bit
/// octetDeltaCount) sent to `podflow server`'s listener: rejected and counted, the
/// records beside it stored, and the query API's sums stay exact.
#[test]
fn a_netflow_record_with_a_huge_counter_is_rejected_and_the_api_keeps_answering() {
    let sdata = tempfile::tempdir().expect("tmp");
    let (http, grpc, nf) = (free_port(), free_port(), free_port());
    let server = start_server_env(
        sdata.path(),
        http,
        grpc,
        &[("PODFLOW_NETFLOW_LISTEN", &format!("127.0.0.1:{nf}"))],
    );
    send_ipfix(
        nf,
        &[
            ([10, 9, 0, 1], [10, 9, 0, 2], 5_000),
            ([10, 9, 0, 1], [10, 9, 0, 3], 1 << 50),
            ([10, 9, 0, 1], [10, 9, 0, 4], 7_000),
        ],
    );
    // The query API's total: the two sane records once they are stored.
    let total = || -> Option<u64> {
        let (status, body) = get(http, "/api/v1/query?group_by=observer")?;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(
            v["rows"]
                .as_array()?
                .iter()
                .map(|r| {
                    r["bytes_src_to_dst"].as_u64().unwrap_or(0)
                        + r["bytes_dst_to_src"].as_u64().unwrap_or(0)
                })
                .sum(),
        )
    };
    wait_until("the sane records stored", Duration::from_secs(20), || {
        total().is_some_and(|b| b > 0)
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        total(),
        Some(12_000),
        "the two sane records, the huge one left out"
    );
    assert_eq!(
        metric(http, "podflow_observations_over_bound_total"),
        Some(1)
    );
    drop(server);
}

/// The agent's buffer log on a full filesystem while its server is away: the disk's
/// refusals are counted, batches stay in memory up to --buffer-memory and the oldest
/// beyond it are dropped and counted, the process lives; once the disk has room and the
/// server is back, what was kept is delivered.
#[test]
fn an_agents_buffer_on_a_full_filesystem_drops_counted_and_stays_within_memory() {
    let test = "an_agents_buffer_on_a_full_filesystem_drops_counted_and_stays_within_memory";
    if !podflow_testkit::can_run(test) || !podflow_testkit::have(test, "conntrack") {
        return;
    }
    let pair = Pair::new("spfl").expect("namespaces");
    pair.a.short_tcp_timeouts().expect("timeouts");
    serve(&pair, 5304);
    let mount = tempfile::tempdir().expect("tmp");
    let fs = Tmpfs::mount(mount.path(), "1m");
    let sdata = tempfile::tempdir().expect("tmp");
    let (http, grpc, ahttp) = (free_port(), free_port(), free_port());
    const MEMORY: u64 = 4096;
    // No server yet: everything the agent reports waits in its buffer.
    let agent = start_agent(
        &pair.a,
        mount.path(),
        grpc,
        ahttp,
        &["--buffer-memory".to_string(), MEMORY.to_string()],
    );
    wait_until("the agent", Duration::from_secs(20), || {
        get(ahttp, "/live").is_some_and(|(s, _)| s == 200)
    });
    fill(&mount.path().join("filler"));
    let mut sports = Vec::new();
    let t0 = std::time::Instant::now();
    while metric(ahttp, "podflow_agent_batches_dropped_total").unwrap_or(0) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no drop within 60 s: disk errors {:?}, memory {:?}",
            metric(ahttp, "podflow_agent_buffer_disk_errors_total"),
            metric(ahttp, "podflow_agent_buffered_bytes{place=\"memory\"}")
        );
        burst(&pair, 5304, &mut sports, 5, 2_000);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(metric(ahttp, "podflow_agent_buffer_disk_errors_total").unwrap_or(0) >= 1);
    let memory = metric(ahttp, "podflow_agent_buffered_bytes{place=\"memory\"}").expect("memory");
    assert!(memory <= MEMORY, "memory held {memory} B, bound {MEMORY} B");
    assert_eq!(
        get(ahttp, "/live").map(|(s, _)| s),
        Some(200),
        "the agent lives"
    );
    let dropped = metric(ahttp, "podflow_agent_batches_dropped_total").unwrap_or(0);
    // Room again, and a server: what was kept is delivered; nothing more is dropped.
    std::fs::remove_file(mount.path().join("filler")).expect("free the space");
    let server = start_server(sdata.path(), http, grpc);
    wait_until("the kept batches acked", Duration::from_secs(40), || {
        metric(ahttp, "podflow_agent_buffered_batches") == Some(0)
    });
    assert_eq!(
        metric(ahttp, "podflow_agent_batches_dropped_total"),
        Some(dropped)
    );
    assert!(metric(http, "podflow_server_batches_total{outcome=\"applied\"}").unwrap_or(0) >= 1);
    drop(server);
    drop(agent);
    drop(fs);
}

/// A tmpfs of `size` mounted on `dir` for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "podflow-test"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(st.success(), "mount a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the filesystem refuses (ENOSPC).
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

/// The stored totals of each responder port (one connection per port here): (out, in)
/// bytes and packets.
fn stored_by_port(db: &Path) -> std::collections::HashMap<u16, [u64; 4]> {
    let store = SqliteStore::open_reader(db).expect("store");
    let rows = store
        .flows(&FlowQuery {
            from: 0,
            to: i64::MAX,
            limit: 10_000,
        })
        .expect("query");
    let mut by_port = std::collections::HashMap::new();
    for r in rows.iter().filter(|r| r.observer == "node-a") {
        let t: &mut [u64; 4] = by_port.entry(r.key.responder_port).or_default();
        t[0] += r.totals.bytes_out;
        t[1] += r.totals.packets_out;
        t[2] += r.totals.bytes_in;
        t[3] += r.totals.packets_in;
    }
    by_port
}

/// The agent is SIGKILLed mid-traffic and restarted on the same data directory: from the
/// tracker checkpoint in its buffer's log (plus the batches logged after it) it continues
/// where its last report left off. Every connection has its own responder port, so each
/// is checked alone against the kernel's DESTROY counters:
/// - TCP connections closed before the kill: not counted again;
/// - TCP connections carrying traffic across the kill and the downtime: exact (no byte
///   counted twice, none lost);
/// - TCP connections opened while the agent was down: reported whole;
/// - UDP flows reported, then idle, that expired while the agent was down: exact (their
///   final counters are what was reported) and counted in closed_while_down.
#[test]
fn a_killed_agent_restarted_on_its_data_dir_neither_doubles_nor_loses_bytes() {
    use nix::sys::signal::Signal;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    if !podflow_testkit::can_run("agent_restart")
        || !podflow_testkit::have("agent_restart", "conntrack")
    {
        return;
    }
    let pair = Pair::new("arst").expect("namespaces");
    pair.a.short_tcp_timeouts().expect("timeouts");
    // Idle UDP flows expire after 8 s: after the kill, while the agent is down.
    pair.a
        .sh("sysctl -qw net.netfilter.nf_conntrack_udp_timeout=8 \
             net.netfilter.nf_conntrack_udp_timeout_stream=8")
        .expect("udp timeouts");
    let log = DestroyLog::start(&pair.a);
    let (before, alive, down, udp) = (5311..5313u16, 5321..5324u16, 5341..5343u16, 5331..5334u16);
    for p in before.clone().chain(alive.clone()).chain(down.clone()) {
        serve(&pair, p);
    }
    for p in udp.clone() {
        podflow_testkit::serve_udp_delayed(&pair, Pair::B4, p, Duration::ZERO);
    }
    let sdata = tempfile::tempdir().expect("tmp");
    let adata = tempfile::tempdir().expect("tmp");
    let (http, grpc, ahttp) = (free_port(), free_port(), free_port());
    let server = start_server(sdata.path(), http, grpc);
    let agent = start_agent(&pair.a, adata.path(), grpc, ahttp, &[]);
    let ready = |port| {
        wait_until("the agent", Duration::from_secs(20), || {
            get(port, "/ready").is_some_and(|(s, _)| s == 200)
        })
    };
    ready(ahttp);
    let mut sports = Vec::new();

    // 1. Connections that open and close while the agent runs.
    for (i, p) in before.clone().enumerate() {
        let mut c = connect(&pair, Pair::B4, p);
        sports.push(("tcp", c.local_addr().expect("addr").port()));
        exchange(&mut c, 10_000 + i * 1000, 30_000);
    }
    // 2. Connections with traffic all along, on a thread of their own.
    let streams: Vec<_> = alive
        .clone()
        .map(|p| {
            let c = connect(&pair, Pair::B4, p);
            sports.push(("tcp", c.local_addr().expect("addr").port()));
            c
        })
        .collect();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut streams = streams;
            let mut n = 0usize;
            while !stop.load(Relaxed) {
                for (i, c) in streams.iter_mut().enumerate() {
                    exchange(c, 500 + (n + i) % 700, 2_000 + (n * 13 + i) % 3_000);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            streams
        })
    };
    for (proto, sport) in &sports[..before.len()] {
        log.wait(proto, *sport, Duration::from_secs(10));
    }
    // 3. UDP flows, then two dumps (which report them into the log) before the kill.
    for p in udp.clone() {
        sports.push(("udp", podflow_testkit::udp_ask(&pair, Pair::B4, p)));
    }
    let udp_sent = std::time::Instant::now();
    let dumps = metric(ahttp, "podflow_conntrack_dumps_total").unwrap_or(0);
    wait_until(
        "two dumps after the UDP flows",
        Duration::from_secs(10),
        || metric(ahttp, "podflow_conntrack_dumps_total").is_some_and(|d| d >= dumps + 2),
    );
    // The dump's batch reaches the log (synced) within milliseconds of the dump.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        metric(ahttp, "podflow_agent_checkpoints_total").unwrap_or(0) >= 1,
        "a checkpoint after the first dump"
    );

    // 4. SIGKILL mid-traffic; while it is down, new connections open and the UDP flows
    // expire.
    agent.signal(Signal::SIGKILL);
    let mut agent = agent;
    let _ = agent.0.wait();
    let opened_while_down: Vec<_> = down
        .clone()
        .map(|p| {
            let mut c = connect(&pair, Pair::B4, p);
            sports.push(("tcp", c.local_addr().expect("addr").port()));
            exchange(&mut c, 7_000, 9_000);
            c
        })
        .collect();
    // Expired entries go when the kernel's garbage collector or a dump reaches them:
    // another tool's dump (no agent runs) reaps them.
    std::thread::sleep(
        (udp_sent + Duration::from_secs(9)).saturating_duration_since(std::time::Instant::now()),
    );
    pair.a
        .sh("conntrack -L >/dev/null 2>&1; true")
        .expect("conntrack -L");
    let n_udp = udp.len();
    let udp_truth: Vec<_> = sports[sports.len() - down.len() - n_udp..sports.len() - down.len()]
        .iter()
        .map(|(proto, sport)| log.wait(proto, *sport, Duration::from_secs(15)))
        .collect();
    assert_eq!(udp_truth.len(), n_udp);

    // 5. Restarted on the same data directory.
    let ahttp = free_port();
    let agent = start_agent(&pair.a, adata.path(), grpc, ahttp, &[]);
    ready(ahttp);
    assert!(
        metric(ahttp, "podflow_agent_restored_connections").unwrap_or(0) >= alive.len() as u64,
        "the tracker continued from the checkpoint"
    );
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Relaxed);
    let streams = traffic.join().expect("traffic thread");
    drop(streams);
    drop(opened_while_down);
    let truth: Vec<_> = sports
        .iter()
        .map(|(proto, sport)| log.wait(proto, *sport, Duration::from_secs(15)))
        .collect();
    wait_until("every batch acked", Duration::from_secs(30), || {
        metric(ahttp, "podflow_agent_buffered_batches") == Some(0)
            && metric(ahttp, "podflow_conntrack_tracked_connections").is_some_and(|n| n <= 1)
    });
    assert_eq!(
        metric(ahttp, "podflow_conntrack_closed_while_down_total"),
        Some(n_udp as u64),
        "the UDP flows that expired while the agent was down, and nothing else"
    );
    agent.signal(Signal::SIGTERM);
    let mut agent = agent;
    assert!(agent.0.wait().expect("agent exit").success());
    server.signal(Signal::SIGTERM);
    let mut server = server;
    assert!(server.0.wait().expect("server exit").success());

    let stored = stored_by_port(&sdata.path().join("podflow.sqlite"));
    let ports: Vec<u16> = before.chain(alive).chain(udp).chain(down).collect();
    assert_eq!(ports.len(), truth.len());
    for (port, c) in ports.iter().zip(&truth) {
        assert_eq!(c.dport, *port);
        assert_eq!(
            stored.get(port).copied().unwrap_or_default(),
            [c.orig.1, c.orig.0, c.reply.1, c.reply.0],
            "port {port}: stored (bytes out, packets out, bytes in, packets in) equal the kernel's final counters"
        );
    }
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

/// `/api/v1/query` rows over all time (raw view) grouped by `group_by`, each as its key
/// values and `[bytes src→dst, packets src→dst, bytes dst→src, packets dst→src, opened,
/// closed]`.
fn query_all(http: u16, group_by: &str, to: i64) -> Vec<(Vec<String>, [u64; 6])> {
    let Some((200, body)) = get(
        http,
        &format!("/api/v1/query?group_by={group_by}&view=raw&from=0&to={to}&limit=1000"),
    ) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let key = group_by
                .split(',')
                .map(|d| match &r["key"][d] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let n = |f: &str| r[f].as_u64().unwrap_or(0);
            (
                key,
                [
                    n("bytes_src_to_dst"),
                    n("packets_src_to_dst"),
                    n("bytes_dst_to_src"),
                    n("packets_dst_to_src"),
                    n("connections"),
                    n("connections_closed"),
                ],
            )
        })
        .collect()
}

const FOREVER: i64 = 4_000_000_000;

/// Bytes both ways per (source workload, destination workload), from the query API.
fn by_workload(http: u16) -> std::collections::BTreeMap<(String, String), u64> {
    query_all(http, "src_workload,dst_workload", FOREVER)
        .into_iter()
        .map(|(k, t)| ((k[0].clone(), k[1].clone()), t[0] + t[2]))
        .collect()
}

/// Totals per responder port, from the query API (see [`query_all`]).
fn by_port(http: u16, to: i64) -> std::collections::HashMap<u16, [u64; 6]> {
    query_all(http, "dst_port", to)
        .into_iter()
        .filter_map(|(k, t)| Some((k[0].parse().ok()?, t)))
        .collect()
}

/// `podflow server` attributing NetFlow records with the Kubernetes API as its inventory
/// (a fake API server in this test speaking list + watch in Kubernetes' JSON), while the
/// API fails: it does not answer at start (the server is live at once, not ready, and
/// says it waits for the inventory); then it comes up (ready; flows land on the right
/// workloads); then the watch history is lost twice while pods change, answered 410 Gone
/// once as a watch ERROR event and once as HTTP 410 on the re-watch (the server lists
/// again and attribution follows the pods that took the addresses meanwhile); then the
/// watch connections are cut mid-stream and a pod changes (the server watches again from
/// where it was, without a relist, and attribution follows). Exact bytes per workload.
#[test]
fn the_kubernetes_api_down_at_start_gone_and_cut_attribution_follows_the_pods() {
    use podflow_testkit::kubeapi::{FakeKube, Gone, node, pod, replicaset};
    const PODS: &str = "/api/v1/pods";
    // Creation times: a pod that takes an address over is newer than the one before.
    const JAN: &str = "2025-01-10T08:00:00Z";
    const JUNE: &str = "2025-06-01T00:00:00Z";
    const SEPT: &str = "2025-09-01T00:00:00Z";
    let sdata = tempfile::tempdir().expect("tmp");
    let kdir = tempfile::tempdir().expect("tmp");
    let (http, grpc, nf, api) = (free_port(), free_port(), free_port(), free_port());
    let kubeconfig = kdir.path().join("kubeconfig");
    FakeKube::write_kubeconfig(api, &kubeconfig).expect("kubeconfig");
    let server = start_server_env(
        sdata.path(),
        http,
        grpc,
        &[
            ("PODFLOW_NETFLOW_LISTEN", &format!("127.0.0.1:{nf}")),
            (
                "PODFLOW_KUBECONFIG",
                kubeconfig.to_str().expect("utf-8 path"),
            ),
        ],
    );
    // 1. Nothing listens on the API's port.
    assert_eq!(
        get(http, "/live").map(|(s, _)| s),
        Some(200),
        "live at once"
    );
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = get(http, "/ready").expect("/ready answers");
    assert_eq!(status, 503, "not ready without an inventory");
    assert!(
        body.contains("the inventory"),
        "/ready says what it waits for: {body:?}"
    );
    assert_eq!(get(http, "/live").map(|(s, _)| s), Some(200));

    // 2. The API comes up.
    // Pods of namespace shop on node-a, owned by (kind, name).
    let shop = |name: &str, ip: &str, owner: (&str, &str), created: &str| {
        pod("shop", name, "node-a", ip, Some(owner), created)
    };
    let web =
        |name: &str, ip: &str, created: &str| shop(name, ip, ("ReplicaSet", "web-5d4"), created);
    let fake = FakeKube::start(
        api,
        vec![
            node("node-a", "10.0.0.10", "us-east-1a"),
            replicaset("shop", "web-5d4", "web"),
            replicaset("shop", "api-7f9", "api"),
            web("web-5d4-x", "10.9.0.1", JAN),
            shop("db-0", "10.9.0.2", ("StatefulSet", "db"), JAN),
        ],
    )
    .expect("fake API server");
    wait_until(
        "ready once the API answers",
        Duration::from_secs(40),
        || get(http, "/ready").is_some_and(|(s, _)| s == 200),
    );
    let flow = |bytes| send_ipfix(nf, &[([10, 9, 0, 1], [10, 9, 0, 2], bytes)]);
    let expect = |want: &[(&str, &str, u64)], what: &str| {
        let want: std::collections::BTreeMap<(String, String), u64> = want
            .iter()
            .map(|(s, d, b)| ((s.to_string(), d.to_string()), *b))
            .collect();
        let t0 = std::time::Instant::now();
        loop {
            let got = by_workload(http);
            if got == want {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{what}: stored {got:?}, expected {want:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    flow(1_000);
    expect(&[("web", "db", 1_000)], "the first flow");

    // The watch history is lost (answered 410 `how`) while pod `gone` goes and `new` takes
    // its address; waits until the pods were listed again and watched after that list
    // (on an HTTP 410 the refused re-watch comes first), then for the index, rebuilt
    // within a second of a change.
    let replaced_unseen = |how: Gone, gone: &str, new: serde_json::Value| {
        let (lists, watches) = (fake.lists(PODS), fake.watches(PODS).len());
        fake.expire(how, |c| {
            c.delete("Pod", "shop", gone);
            c.apply(new);
        });
        let refused = usize::from(how == Gone::Http);
        wait_until(
            &format!("a relist after the 410 ({how:?})"),
            Duration::from_secs(30),
            || fake.lists(PODS) > lists && fake.watches(PODS).len() > watches + refused,
        );
        std::thread::sleep(Duration::from_secs(2));
    };

    // 3. 410 Gone as a watch ERROR event; meanwhile web-5d4-x went and api's pod took
    // its address.
    let api_pod = shop("api-7f9-y", "10.9.0.1", ("ReplicaSet", "api-7f9"), JUNE);
    replaced_unseen(Gone::Event, "web-5d4-x", api_pod);
    flow(2_000);
    expect(
        &[("web", "db", 1_000), ("api", "db", 2_000)],
        "after the relist on a 410 event",
    );

    // 4. 410 Gone as the HTTP answer to the re-watch; meanwhile db-0 went and cache-0
    // took its address.
    let cache_pod = shop("cache-0", "10.9.0.2", ("StatefulSet", "cache"), JUNE);
    replaced_unseen(Gone::Http, "db-0", cache_pod);
    flow(3_000);
    expect(
        &[
            ("web", "db", 1_000),
            ("api", "db", 2_000),
            ("api", "cache", 3_000),
        ],
        "after the relist on an HTTP 410",
    );

    // 5. The watches are cut mid-stream; then api's pod goes and a new web pod takes the
    // address: the re-watch resumes from its resourceVersion and sees it, no relist.
    let (lists, watches) = (fake.lists(PODS), fake.watches(PODS).len());
    fake.drop_watches();
    fake.delete("Pod", "shop", "api-7f9-y");
    fake.apply(web("web-5d4-z", "10.9.0.1", SEPT));
    wait_until("a re-watch of the pods", Duration::from_secs(30), || {
        fake.watches(PODS).len() > watches
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fake.lists(PODS), lists, "resumed without a relist");
    flow(4_000);
    expect(
        &[
            ("web", "db", 1_000),
            ("api", "db", 2_000),
            ("api", "cache", 3_000),
            ("web", "cache", 4_000),
        ],
        "after the cut watch",
    );
    assert_eq!(get(http, "/ready").map(|(s, _)| s), Some(200));
    drop(server);
}

/// The kernel's counters of the TCP connections in `ns` now, by destination port (one
/// connection per port): [bytes out, packets out, bytes in, packets in].
fn live_by_port(ns: &podflow_testkit::Netns) -> std::collections::HashMap<u16, [u64; 4]> {
    ns.sh("conntrack -L -p tcp -o extended 2>/dev/null")
        .expect("conntrack -L")
        .lines()
        .filter_map(podflow_testkit::parse_ct)
        .map(|(_, c)| (c.dport, [c.orig.1, c.orig.0, c.reply.1, c.reply.0]))
        .collect()
}

/// A storm of short connections (20,000 entries created and deleted by batched netlink
/// messages: a NEW and a DESTROY event each) in the namespace a real `podflow agent`
/// observes with a 256 KiB event socket, beside three long-lived connections carrying
/// known bytes. Without reliable delivery the storm overflows the socket (counted) and
/// the long connections are exact after the next dump and at their close; with it
/// (`--reliable-events`) every DESTROY of the storm arrives and the server stores every
/// short connection as opened and closed once.
fn storm_case(test: &str, tag: &str, reliable: bool, base_port: u16) {
    use podflow_conntrack::load::{Loader, storm};
    if !podflow_testkit::can_run(test) || !podflow_testkit::have(test, "conntrack") {
        return;
    }
    const N: u64 = 20_000;
    let pair = Pair::new(tag).expect("namespaces");
    pair.a.short_tcp_timeouts().expect("timeouts");
    let log = DestroyLog::start(&pair.a);
    let ports: Vec<u16> = (base_port..base_port + 3).collect();
    for p in &ports {
        serve(&pair, *p);
    }
    let sdata = tempfile::tempdir().expect("tmp");
    let adata = tempfile::tempdir().expect("tmp");
    let (http, grpc, ahttp) = (free_port(), free_port(), free_port());
    let server = start_server(sdata.path(), http, grpc);
    let mut extra = vec!["--event-buffer".to_string(), (256 << 10).to_string()];
    if reliable {
        extra.push("--reliable-events".into());
    }
    let agent = start_agent(&pair.a, adata.path(), grpc, ahttp, &extra);
    wait_until("the agent", Duration::from_secs(20), || {
        get(ahttp, "/ready").is_some_and(|(s, _)| s == 200)
    });
    let mut long: Vec<std::net::TcpStream> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = connect(&pair, Pair::B4, *p);
            exchange(&mut c, 10_000 + i * 1000, 20_000 + i * 3000);
            c
        })
        .collect();
    let sports: Vec<u16> = long
        .iter()
        .map(|c| c.local_addr().expect("addr").port())
        .collect();

    let (report, refused) = pair.a.run(|| {
        let mut l = Loader::open().expect("loader");
        let r = storm(&mut l, 50, None, Duration::from_secs(20), N).expect("storm");
        (r, l.settle(Duration::from_millis(100)).expect("settle"))
    });
    assert_eq!((report.entries, refused), (N, 0), "the storm ran whole");
    for (i, c) in long.iter_mut().enumerate() {
        exchange(c, 3_000 + i * 100, 5_000 + i * 100);
    }
    let m = |name: &str| metric(ahttp, name).unwrap_or(0);
    let destroys = "podflow_conntrack_events_total{type=\"destroy\"}";
    let overflows = "podflow_conntrack_event_overflows_total";
    if reliable {
        wait_until(
            "every DESTROY of the storm delivered",
            Duration::from_secs(40),
            || m(destroys) >= N,
        );
        assert_eq!(m(destroys), N, "each once");
        assert_eq!(m(overflows), 0, "no overflow reported in reliable mode");
    } else {
        assert!(m(overflows) >= 1, "the storm overflowed the event socket");
        assert!(
            m(destroys) < N,
            "and lost DESTROYs ({} of {N})",
            m(destroys)
        );
    }

    // The long connections, idle now, are exact after the next dump.
    std::thread::sleep(Duration::from_millis(300));
    let live = live_by_port(&pair.a);
    // Waits until every long connection's stored bytes and packets are the kernel's (and,
    // once `closed`, it is stored opened and closed once).
    let exact = |truth: &dyn Fn(u16) -> [u64; 4], closed: bool, what: &str| {
        let t0 = std::time::Instant::now();
        loop {
            let got = by_port(http, FOREVER);
            let row = |p: u16| got.get(&p).map(|t| [t[0], t[1], t[2], t[3]]);
            let ends = |p: u16| got.get(&p).map(|t| (t[4], t[5]));
            if ports
                .iter()
                .all(|p| row(*p) == Some(truth(*p)) && (!closed || ends(*p) == Some((1, 1))))
            {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{what}: stored {:?}, kernel {:?}",
                ports
                    .iter()
                    .map(|p| (row(*p), ends(*p)))
                    .collect::<Vec<_>>(),
                ports.iter().map(|p| truth(*p)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    exact(
        &|p| {
            live.get(&p)
                .copied()
                .expect("a long connection in the table")
        },
        false,
        "live connections after the next dump",
    );
    if reliable {
        wait_until(
            "every short connection stored opened and closed",
            Duration::from_secs(20),
            || {
                by_port(http, FOREVER)
                    .get(&80)
                    .is_some_and(|t| t[4] == N && t[5] == N)
            },
        );
    }

    // Closed: exact against the kernel's final counters, each opened and closed once.
    drop(long);
    let fin: std::collections::HashMap<u16, [u64; 4]> = sports
        .iter()
        .map(|s| {
            let c = log.wait("tcp", *s, Duration::from_secs(15));
            (c.dport, [c.orig.1, c.orig.0, c.reply.1, c.reply.0])
        })
        .collect();
    exact(
        &|p| fin[&p],
        true,
        "closed connections, each opened and closed once",
    );
    drop(agent);
    drop(server);
}

#[test]
fn an_event_socket_overflow_under_a_storm_is_counted_and_live_connections_stay_exact() {
    storm_case(
        "an_event_socket_overflow_under_a_storm_is_counted_and_live_connections_stay_exact",
        "strm",
        false,
        5361,
    );
}

#[test]
fn with_reliable_events_a_storm_loses_no_destroy() {
    storm_case(
        "with_reliable_events_a_storm_loses_no_destroy",
        "strr",
        true,
        5371,
    );
}

/// libfaketime's preload library, if installed.
fn libfaketime() -> Option<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

/// The agent's wall clock steps back an hour mid-run (libfaketime: the offset is read
/// from a file the test rewrites; the monotonic clock is left alone, as a real step does):
/// batches after the step are accepted, none is taken for a duplicate, and the stored
/// bytes of connections closed before, across and after the step equal the kernel's
/// final counters. Then the agent restarts on an empty data directory with the clock
/// still back, so its new sequence numbers (from the clock) start below the server's
/// mark: still nothing is dropped as a duplicate.
#[test]
fn a_clock_stepped_back_on_the_agent_drops_nothing_as_a_duplicate() {
    let test = "a_clock_stepped_back_on_the_agent_drops_nothing_as_a_duplicate";
    if !podflow_testkit::can_run(test)
        || !podflow_testkit::have(test, "conntrack")
        || !podflow_testkit::have(test, "faketime")
    {
        return;
    }
    let Some(lib) = libfaketime() else {
        podflow_testkit::skip(test, "libfaketime.so.1 not found (Debian package faketime)");
        return;
    };
    let pair = Pair::new("clk").expect("namespaces");
    pair.a.short_tcp_timeouts().expect("timeouts");
    let log = DestroyLog::start(&pair.a);
    serve(&pair, 5381);
    let clock = tempfile::tempdir().expect("tmp");
    let offset = clock.path().join("offset");
    std::fs::write(&offset, "+0").expect("offset");
    let offset_s = offset.to_str().expect("utf-8 path");
    let env = [
        ("LD_PRELOAD", lib),
        ("FAKETIME_TIMESTAMP_FILE", offset_s),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let sdata = tempfile::tempdir().expect("tmp");
    let adata = tempfile::tempdir().expect("tmp");
    let (http, grpc, ahttp) = (free_port(), free_port(), free_port());
    let server = start_server(sdata.path(), http, grpc);
    let agent = start_agent_env(&pair.a, adata.path(), (grpc, ahttp), &[], &env);
    wait_until("the agent", Duration::from_secs(20), || {
        get(ahttp, "/ready").is_some_and(|(s, _)| s == 200)
    });
    let acked = |port: u16| {
        wait_until("every batch acked", Duration::from_secs(30), || {
            metric(port, "podflow_agent_buffered_batches") == Some(0)
                && metric(port, "podflow_conntrack_tracked_connections").is_some_and(|n| n <= 1)
        })
    };
    let mut sports = Vec::new();
    let mut long = connect(&pair, Pair::B4, 5381);
    sports.push(long.local_addr().expect("addr").port());
    exchange(&mut long, 10_000, 20_000);
    burst(&pair, 5381, &mut sports, 3, 20_000);
    for s in &sports[1..] {
        log.wait("tcp", *s, Duration::from_secs(15));
    }
    acked(ahttp);

    // The wall clock steps back an hour. The server sees batches observed an hour
    // before they arrive (as it sees an agent's replays after an outage) and counts them.
    let replayed = "podflow_server_observations_total{kind=\"replayed\"}";
    assert_eq!(metric(http, replayed), Some(0));
    std::fs::write(&offset, "-3600").expect("step the clock");
    exchange(&mut long, 5_000, 7_000);
    burst(&pair, 5381, &mut sports, 3, 30_000);
    wait_until(
        "batches observed an hour back (the agent's clock stepped)",
        Duration::from_secs(20),
        || metric(http, replayed).is_some_and(|n| n > 0),
    );
    drop(long);
    for s in &sports {
        log.wait("tcp", *s, Duration::from_secs(15));
    }
    acked(ahttp);
    let mut agent = agent;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.0.wait().expect("agent exit").success());

    // Restarted on an empty data directory, the clock still an hour back.
    let adata2 = tempfile::tempdir().expect("tmp");
    let ahttp2 = free_port();
    let agent = start_agent_env(&pair.a, adata2.path(), (grpc, ahttp2), &[], &env);
    wait_until("the agent again", Duration::from_secs(20), || {
        get(ahttp2, "/ready").is_some_and(|(s, _)| s == 200)
    });
    burst(&pair, 5381, &mut sports, 3, 40_000);
    for s in &sports {
        log.wait("tcp", *s, Duration::from_secs(15));
    }
    acked(ahttp2);
    assert_eq!(
        metric(http, "podflow_server_batches_total{outcome=\"duplicate\"}").unwrap_or(0),
        0,
        "no batch taken for a duplicate"
    );
    assert!(metric(http, "podflow_server_batches_total{outcome=\"applied\"}").unwrap_or(0) >= 3);
    let db = sdata.path().join("podflow.sqlite");
    stop_and_check((agent, server), (ahttp2, &db), &log, 5381, &sports);
}
