//! Least privilege: `podflow agent` runs as an unprivileged user (nobody) holding only
//! CAP_NET_ADMIN — its effective, permitted and bounding sets checked in /proc — and
//! still dumps the conntrack table, subscribes to its events and delivers exactly the
//! kernel's counters to a server. Without CAP_NET_ADMIN it refuses to start and says why.
//!
//! The agent runs inside the test's namespace (`ip netns exec`, then `setpriv` drops
//! everything), as on a node with host networking: entering another namespace with
//! `--netns` would need CAP_SYS_ADMIN as well. The server runs in the same namespace, on
//! its loopback.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podflow_store::{FlowQuery, FlowStore, SqliteStore};
use podflow_testkit::{
    ChildGuard, DestroyLog, Netns, Pair, connect, exchange, http_get, parse_ct, serve, wait_until,
};

/// CAP_NET_ADMIN is capability 12.
const NET_ADMIN: u64 = 1 << 12;
/// The user the agent runs as.
const NOBODY: u32 = 65534;
const PORT: u16 = 5302;

fn get_in(ns: &Netns, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    ns.run(move || http_get(port, &path))
}

/// The value of one series (`name` with its labels, exactly) in a /metrics page.
fn metric_in(ns: &Netns, port: u16, series: &str) -> Option<u64> {
    let (_, body) = get_in(ns, port, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn start_server_in(ns: &Netns, data: &Path, http: u16, grpc: u16) -> ChildGuard {
    let p = ns
        .command(env!("CARGO_BIN_EXE_podflow"))
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
        get_in(ns, http, "/live").is_some()
    });
    p
}

/// `podflow agent` in `ns` as `uid` (0 or nobody) with exactly `caps` (`""` or
/// `",+net_admin"`) in its inheritable, ambient and bounding sets (so also in its
/// permitted and effective sets).
fn agent_as(ns: &Netns, uid: u32, caps: &str, data: &Path, grpc: u16, http: u16) -> Command {
    let mut c = ns.command("setpriv");
    if uid != 0 {
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups");
    }
    c.arg(format!("--inh-caps=-all{caps}"))
        .arg(format!("--ambient-caps=-all{caps}"))
        .arg(format!("--bounding-set=-all{caps}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_podflow"))
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
        .arg(data);
    c
}

/// A data directory the agent's user owns.
fn nobody_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tmp");
    let id = Some(nix::unistd::Uid::from_raw(NOBODY));
    nix::unistd::chown(d.path(), id, Some(nix::unistd::Gid::from_raw(NOBODY)))
        .expect("chown data dir");
    d
}

/// (uid, effective, permitted, bounding) of a process, from /proc/PID/status.
fn creds(pid: u32) -> (u32, u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{k} in /proc/{pid}/status"))
            .to_string()
    };
    let hex = |k: &str| u64::from_str_radix(&field(k), 16).expect("hex caps");
    let uid = field("Uid:")
        .split_whitespace()
        .nth(1)
        .and_then(|u| u.parse().ok())
        .expect("effective uid");
    (uid, hex("CapEff:"), hex("CapPrm:"), hex("CapBnd:"))
}

fn can_run(test: &str) -> bool {
    podflow_testkit::can_run(test)
        && podflow_testkit::have(test, "conntrack")
        && podflow_testkit::have(test, "setpriv")
}

#[test]
fn the_agent_as_nobody_with_only_net_admin_dumps_subscribes_and_delivers_exact_flows() {
    if can_run("privilege_nobody_net_admin") {
        delivers_exactly_with_only_net_admin(NOBODY, "privnb");
    }
}

/// The chart's securityContext: root, every capability dropped but NET_ADMIN (Kubernetes
/// gives a non-root container no ambient capabilities).
#[test]
fn the_agent_as_root_with_only_net_admin_dumps_subscribes_and_delivers_exact_flows() {
    if can_run("privilege_root_net_admin") {
        delivers_exactly_with_only_net_admin(0, "privrt");
    }
}

fn delivers_exactly_with_only_net_admin(as_uid: u32, tag: &str) {
    let pair = Pair::new(tag).expect("namespaces");
    pair.a.short_tcp_timeouts().expect("timeouts");
    let log = DestroyLog::start(&pair.a);
    serve(&pair, PORT);
    // Connections open before the agent starts: only a dump can find them.
    let mut early = connect(&pair, Pair::B4, PORT);
    exchange(&mut early, 1000, 2000);
    let early_port = early.local_addr().expect("addr").port();
    std::thread::sleep(Duration::from_millis(500)); // the last ACKs are in
    let baseline = pair
        .a
        .sh(&format!(
            "conntrack -L -p tcp --sport {early_port} -o extended 2>/dev/null"
        ))
        .ok()
        .and_then(|out| out.lines().find_map(parse_ct))
        .expect("the early connection in the table")
        .1;

    let sdata = tempfile::tempdir().expect("tmp");
    // Owned by the agent's user: root without CAP_DAC_OVERRIDE cannot write another's.
    let adata = if as_uid == 0 {
        tempfile::tempdir().expect("tmp")
    } else {
        nobody_dir()
    };
    let (http, grpc, ahttp) = (9481, 9482, 9483); // the namespace's own loopback
    let server = start_server_in(&pair.a, sdata.path(), http, grpc);
    let agent = ChildGuard(
        agent_as(&pair.a, as_uid, ",+net_admin", adata.path(), grpc, ahttp)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start agent"),
    );
    wait_until("the agent ready", Duration::from_secs(20), || {
        get_in(&pair.a, ahttp, "/ready").is_some_and(|(s, _)| s == 200)
    });
    // setpriv and ip netns exec exec in place: the child is the agent itself.
    let (uid, eff, prm, bnd) = creds(agent.0.id());
    assert_eq!(uid, as_uid);
    assert_eq!(
        (eff, prm, bnd),
        (NET_ADMIN, NET_ADMIN, NET_ADMIN),
        "CAP_NET_ADMIN and nothing else"
    );
    assert!(
        metric_in(&pair.a, ahttp, "podflow_conntrack_dumps_total").is_some_and(|n| n >= 1),
        "the first dump ran"
    );
    assert!(
        metric_in(&pair.a, ahttp, "podflow_conntrack_dump_entries_total").is_some_and(|n| n >= 1),
        "the dump found the early connection"
    );

    let mut ports = vec![early_port];
    exchange(&mut early, 3000, 4000);
    drop(early);
    for i in 0..5 {
        let mut c = connect(&pair, Pair::B4, PORT);
        ports.push(c.local_addr().expect("addr").port());
        exchange(&mut c, 10_000 + i * 1000, 30_000);
    }
    let truth: Vec<_> = ports
        .iter()
        .map(|p| log.wait("tcp", *p, Duration::from_secs(15)))
        .collect();
    let (want_out, want_in) = truth
        .iter()
        .fold((0, 0), |(o, i), c| (o + c.orig.1, i + c.reply.1));
    // The early connection predates the agent: only its bytes after the first dump are
    // the agent's to report (podflow_conntrack_baselined_total); the kernel's counters
    // were read while it sat idle before the agent started.
    let (want_out, want_in) = (want_out - baseline.orig.1, want_in - baseline.reply.1);
    // The agent also observes its own stream to the server and the test's HTTP requests
    // (all in this namespace), so its buffer is never empty for long: wait for the
    // server to hold exactly the kernel's bytes instead.
    let stored = || -> Option<(u64, u64)> {
        let (_, body) = get_in(&pair.a, http, "/api/v1/flows?limit=1000")?;
        let rows: serde_json::Value = serde_json::from_str(&body).ok()?;
        let mine = rows
            .as_array()?
            .iter()
            .filter(|r| r["responder_port"] == PORT);
        Some(mine.fold((0, 0), |(o, i), r| {
            (
                o + r["bytes_out"].as_u64().unwrap_or(0),
                i + r["bytes_in"].as_u64().unwrap_or(0),
            )
        }))
    };
    let t = Instant::now();
    loop {
        let got = stored();
        if got == Some((want_out, want_in)) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the server holds the kernel's bytes: got {got:?}, kernel {:?}",
            (want_out, want_in)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The event subscription worked: the five new connections and all six ends came as
    // events (the server's own gRPC connection on loopback may add more).
    let events = |t: &str| {
        metric_in(
            &pair.a,
            ahttp,
            &format!("podflow_conntrack_events_total{{type=\"{t}\"}}"),
        )
        .unwrap_or(0)
    };
    // The kernel's DESTROY log (conntrack -E) and the agent read the same events at their
    // own pace, and one scrape can fail while the agent is busy: wait for the counts.
    let t = Instant::now();
    let (mut new, mut destroy) = (0, 0);
    while (new < 5 || destroy < 6) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        (new, destroy) = (events("new"), events("destroy"));
    }
    assert!(new >= 5, "NEW events: {new}");
    assert!(destroy >= 6, "DESTROY events: {destroy}");
    assert_eq!(
        metric_in(&pair.a, ahttp, "podflow_conntrack_event_overflows_total"),
        Some(0)
    );

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let mut agent = agent;
    assert!(agent.0.wait().expect("agent exit").success());
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let mut server = server;
    assert!(server.0.wait().expect("server exit").success());

    let store = SqliteStore::open_reader(&sdata.path().join("podflow.sqlite")).expect("store");
    let rows = store
        .flows(&FlowQuery {
            from: 0,
            to: i64::MAX,
            limit: 1000,
        })
        .expect("query");
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| r.key.responder_port == PORT)
        .collect();
    let got_out: u64 = mine.iter().map(|r| r.totals.bytes_out).sum();
    let got_in: u64 = mine.iter().map(|r| r.totals.bytes_in).sum();
    assert_eq!(
        (got_out, got_in),
        (want_out, want_in),
        "stored bytes equal the kernel's final counters (less the early connection's baseline)"
    );
    let closed: u64 = mine.iter().map(|r| r.totals.closed).sum();
    let opened: u64 = mine.iter().map(|r| r.totals.opened).sum();
    assert_eq!((opened, closed), (5, 6), "opened while observed / closed");
    assert!(mine.iter().all(|r| r.observer == "node-a"));
}

#[test]
fn without_net_admin_the_agent_refuses_to_start_and_names_the_reason() {
    if !can_run("privilege_without_net_admin") {
        return;
    }
    let ns = Netns::new("nopriv").expect("namespace");
    ns.enable_conntrack().expect("conntrack");
    let adata = nobody_dir();
    let mut agent = ChildGuard(
        agent_as(&ns, NOBODY, "", adata.path(), 9482, 9483)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent"),
    );
    let t = Instant::now();
    let status = loop {
        if let Some(s) = agent.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the agent kept running without CAP_NET_ADMIN"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = agent.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    eprintln!("agent without CAP_NET_ADMIN: {status:?}\n{err}");
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        err.contains("Operation not permitted") || err.contains("EPERM"),
        "stderr names the refused operation: {err}"
    );
    assert!(
        err.contains("CAP_NET_ADMIN"),
        "stderr says what is missing: {err}"
    );
}
