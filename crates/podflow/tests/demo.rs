//! `podflow demo` end to end: the real binary builds its cluster in network namespaces,
//! runs its agents, server and traffic; while it runs, the API must attribute and classify
//! every stream right and store payload bytes consistent with what the generators counted
//! (traffic.json); after it exits nothing named `pfd-*` is left.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use podflow_testkit::{free_port, http_get as get};
use serde_json::Value;

fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = get(port, path).unwrap_or_else(|| panic!("GET {path}: no answer"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGTERM lets the demo remove its namespaces; kill only if it hangs.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn counts(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("traffic.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn stream<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stream {name} in {c}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The client-side rows of a stream: observed on the client's node, initiated locally,
/// from the client's address to the dialled address (or through it, for the Service).
fn rows_of<'a>(rows: &'a [Value], s: &Value) -> Vec<&'a Value> {
    let service = s["dst_ip"] == "10.96.0.10";
    rows.iter()
        .filter(|r| {
            r["observer"] == s["client_node"]
                && r["local"] == s["client_ip"]
                && r["local_initiated"] == true
                && r["proto"] == s["proto"]
                && if service {
                    r["service"] == format!("10.96.0.10:{}", s["dst_port"])
                } else {
                    r["remote"] == s["dst_ip"]
                        && r["responder_port"] == s["dst_port"]
                        && r["service"].is_null()
                }
        })
        .collect()
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sums {
    bytes_out: u64,
    packets_out: u64,
    bytes_in: u64,
    packets_in: u64,
    opened: u64,
}

fn sums(rows: &[&Value]) -> Sums {
    rows.iter().fold(Sums::default(), |a, r| Sums {
        bytes_out: a.bytes_out + u(&r["bytes_out"]),
        packets_out: a.packets_out + u(&r["packets_out"]),
        bytes_in: a.bytes_in + u(&r["bytes_in"]),
        packets_in: a.packets_in + u(&r["packets_in"]),
        opened: a.opened + u(&r["connections_opened"]),
    })
}

/// Per-packet L3 header bytes: UDP exactly 28 (IPv4 20 + UDP 8); TCP 40..=60 (IPv4 20 +
/// TCP 20, plus options: 12 with timestamps, 20 on a SYN).
fn header_range(proto: &str) -> (u64, u64) {
    if proto == "udp" { (28, 28) } else { (40, 60) }
}

/// The payload the stored bytes contain, as a range.
fn payload_range(bytes: u64, packets: u64, proto: &str) -> (u64, u64) {
    let (lo, hi) = header_range(proto);
    (
        bytes.saturating_sub(hi * packets),
        bytes.saturating_sub(lo * packets),
    )
}

/// The `shop/api` backend in us-east-1b (node-c); the other is on web's node, in
/// us-east-1a.
const API_OTHER_ZONE: &str = "10.244.3.4";

const STREAMS: &[(&str, &str)] = &[
    ("web -> api pod (same node)", "INTRA_NODE"),
    ("web -> api Service", ""),
    ("api -> db (same zone)", "INTRA_ZONE"),
    ("report -> db (cross zone)", "INTER_ZONE"),
    ("web -> node-dns (udp)", "INTER_ZONE"),
    ("api -> node-dns (udp)", "INTRA_NODE"),
    ("web -> internet", "PUBLIC_INTERNET"),
    ("report -> S3", ""),
];

fn pfd_leftovers() -> (Vec<String>, Vec<String>) {
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let ns: Vec<String> = String::from_utf8_lossy(&ns.stdout)
        .lines()
        .filter(|l| l.starts_with("pfd-"))
        .map(str::to_string)
        .collect();
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let links: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with("pfd")))
        .map(str::to_string)
        .collect();
    (ns, links)
}

/// One conntrack DESTROY event: the kernel's final counters of a connection.
#[derive(Debug, Clone)]
struct Destroyed {
    node: String,
    proto: String,
    src: String,
    dst: String,
    dport: u64,
    /// The reply's source: the backend after DNAT.
    reply_src: String,
    orig: (u64, u64),
    reply: (u64, u64),
}

fn parse_destroy(node: &str, line: &str) -> Option<Destroyed> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let proto = w.iter().take(5).find(|x| matches!(**x, "tcp" | "udp"))?;
    let all = |k: &str| -> Vec<&str> { w.iter().filter_map(|x| x.strip_prefix(k)).collect() };
    let (src, dst, dport) = (all("src="), all("dst="), all("dport="));
    let n: Vec<u64> = w
        .iter()
        .filter_map(|x| {
            x.strip_prefix("packets=")
                .or_else(|| x.strip_prefix("bytes="))
        })
        .filter_map(|v| v.parse().ok())
        .collect();
    if src.len() < 2 || dst.is_empty() || dport.is_empty() || n.len() != 4 {
        return None;
    }
    Some(Destroyed {
        node: node.to_string(),
        proto: proto.to_string(),
        src: src[0].to_string(),
        dst: dst[0].to_string(),
        dport: dport[0].parse().ok()?,
        reply_src: src[1].to_string(),
        orig: (n[0], n[1]),
        reply: (n[2], n[3]),
    })
}

/// `conntrack -E -e DESTROY` in every demo node namespace, started as soon as the
/// namespaces exist (before the demo's traffic: its agents start first).
struct DestroyLogs {
    children: Vec<Child>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Destroyed>>>,
}

impl DestroyLogs {
    fn start() -> DestroyLogs {
        use std::io::BufRead;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut children = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in ["a", "b", "c"] {
            let ns = format!("/run/netns/pfd-node-{node}");
            while !Path::new(&ns).exists() {
                assert!(Instant::now() < deadline, "{ns} never appeared");
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut child = Command::new("ip")
                .args(["netns", "exec", &format!("pfd-node-{node}")])
                .args([
                    "stdbuf",
                    "-oL",
                    "conntrack",
                    "-E",
                    "-e",
                    "DESTROY",
                    "-o",
                    "extended",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("conntrack -E");
            let out = child.stdout.take().expect("stdout");
            let seen = seen.clone();
            let name = format!("node-{node}");
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(d) = parse_destroy(&name, &l) {
                        seen.lock().expect("lock").push(d);
                    }
                }
            });
            children.push(child);
        }
        DestroyLogs { children, seen }
    }

    /// The DESTROY events on `node` of connections to `dst:dport`.
    fn to(&self, node: &str, dst: &str, dport: u64) -> Vec<Destroyed> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|d| d.node == node && d.dst == dst && d.dport == dport)
            .cloned()
            .collect()
    }

    /// The DESTROY events of a stream, seen on its client's node.
    fn of(&self, s: &Value) -> Vec<Destroyed> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|d| {
                s["client_node"] == d.node.as_str()
                    && s["client_ip"] == d.src.as_str()
                    && s["dst_ip"] == d.dst.as_str()
                    && s["dst_port"] == d.dport
                    && s["proto"] == d.proto.as_str()
            })
            .cloned()
            .collect()
    }
}

impl Drop for DestroyLogs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The demo's names are fixed (`pfd-*`): its tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The web UI in headless Chromium renders the demo's workloads and edges, and its
/// top-talkers table matches the API (skipped loudly without chromium).
fn ui_renders_the_demo(port: u16) {
    if !podflow_testkit::have("demo UI", "chromium") {
        return;
    }
    let profile = tempfile::tempdir().expect("profile");
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=8000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{port}/?range=1h"))
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let state = dom
        .split(r#"<script type="application/json" id="podflow-state">"#)
        .nth(1)
        .and_then(|r| r.split("</script>").next())
        .unwrap_or_else(|| panic!("no rendered state in the page:\n{dom}"));
    let state: Value = serde_json::from_str(&state.replace("\\u003c", "<")).expect("state JSON");
    let ids: Vec<String> = state["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    for w in ["shop/web", "shop/api", "shop/db", "S3", "internet"] {
        assert!(ids.iter().any(|i| i == w), "the map lacks {w}: {ids:?}");
    }
    assert!(
        state["edges"].as_array().is_some_and(|e| e.len() >= 5),
        "{}",
        state["edges"]
    );
    let talkers = state["talkers"].as_array().expect("talkers");
    assert!(!talkers.is_empty());
    assert!(
        dom.contains("id=\"talkers\""),
        "the talkers table is in the page"
    );
    // The avoidable cross-zone table shows shop/api with a share and a saving.
    let api = state["avoidable"]["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "api"))
        .unwrap_or_else(|| panic!("no shop/api in {}", state["avoidable"]));
    let share = api["avoidable_share"].as_f64().expect("share");
    // (The exact split is checked against the kernel once the traffic stopped.)
    assert!(share > 0.0 && share < 1.0, "{api}");
    assert!(
        api["projected_monthly_saving_usd"].as_f64() > Some(0.0),
        "{api}"
    );
    assert!(
        dom.contains(r#"data-service="shop/api""#),
        "the avoidable table has a shop/api row"
    );
}

/// Avoidable cross-zone traffic (`/api/v1/cost/services`): `shop/api` has a Ready
/// backend in each zone and kube-proxy picks one at random, so each of web's
/// connections through the ClusterIP crosses to us-east-1b with probability 1/2 while
/// web's own zone has a Ready backend. Once every connection ended: the avoidable
/// connections and bytes are exactly those the kernel DNATed to the other zone's
/// backend, their number within the binomial bound of the connections made, and the
/// Service's bytes are web's and the NodePort's.
fn avoidable_share_is_the_generators_split(
    port: u16,
    from: i64,
    destroyed: &DestroyLogs,
    done: &Value,
    node_port: &[Destroyed],
) {
    let via_service = destroyed.of(stream(done, "web -> api Service"));
    let crossed: Vec<&Destroyed> = via_service
        .iter()
        .filter(|d| d.reply_src == API_OTHER_ZONE)
        .collect();
    let (n, k) = (via_service.len() as f64, crossed.len() as f64);
    // 4.5 standard deviations of Binomial(n, 1/2): outside it by chance about once in
    // 150,000 runs.
    let bound = 4.5 * (n / 4.0).sqrt();
    assert!(n >= 20.0, "only {n} connections through the Service");
    assert!(
        (k - n / 2.0).abs() <= bound,
        "{k} of {n} connections crossed zones: outside n/2 ± {bound:.1}"
    );
    let bytes = |ds: &mut dyn Iterator<Item = &Destroyed>| -> u64 {
        ds.map(|d| d.orig.1 + d.reply.1).sum()
    };
    let crossed_bytes = bytes(&mut crossed.iter().copied());
    let service_bytes = bytes(&mut via_service.iter()) + bytes(&mut node_port.iter());
    let cost = get_json(port, &format!("/api/v1/cost/services?from={}", from - 60));
    assert_eq!(cost["headless"], serde_json::json!([]), "{cost}");
    let api = cost["services"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["namespace"] == "shop" && s["name"] == "api")
        })
        .unwrap_or_else(|| panic!("no shop/api in {cost}"));
    assert_eq!(api["avoidable_connections"].as_f64(), Some(k), "{api}");
    assert_eq!(api["cross_zone_connections"].as_f64(), Some(k), "{api}");
    assert_eq!(
        api["avoidable_bytes"].as_u64(),
        Some(crossed_bytes),
        "{api}"
    );
    assert_eq!(
        api["cross_zone_bytes"].as_u64(),
        Some(crossed_bytes),
        "every crossing had a Ready backend in web's zone: {api}"
    );
    assert_eq!(api["bytes"].as_u64(), Some(service_bytes), "{api}");
    let share = api["avoidable_share"].as_f64().expect("share");
    assert!(
        (share - crossed_bytes as f64 / service_bytes as f64).abs() < 1e-12,
        "{api}"
    );
    assert_eq!(
        (api["prefers_close"].as_bool(), api["headless"].as_bool()),
        (Some(false), Some(false)),
        "{api}"
    );
    let saving = api["projected_monthly_saving_usd"]
        .as_f64()
        .expect("saving");
    let avoidable_cost = api["avoidable_cost_usd"].as_f64().expect("cost");
    let range = cost["range_seconds"].as_f64().expect("range");
    assert!(avoidable_cost > 0.0, "{api}");
    assert!(
        (saving - avoidable_cost * 30.0 * 86_400.0 / range).abs() <= 1e-9 * saving,
        "{api}"
    );
    // Of web's own connections through the Service, the avoidable share of the bytes
    // is the crossed connections' share (their sizes differ by a few header bytes).
    let of_stream = crossed_bytes as f64 / bytes(&mut via_service.iter()) as f64;
    assert!(
        (of_stream - k / n).abs() < 0.02,
        "{of_stream:.3} of web's bytes, {k} of {n} connections"
    );
    eprintln!(
        "avoidable: {k} of {n} connections through shop/api crossed zones (bound n/2 ± {bound:.1}); \
         {:.1}% of web's bytes, {:.1}% of the Service's; {saving:.4} USD a month projected",
        100.0 * of_stream,
        100.0 * share
    );
}

fn can_run(test: &str) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        podflow_testkit::skip(
            test,
            "needs root (network namespaces); .ci/run runs it as root",
        );
        return false;
    }
    ["ip", "iptables-restore", "nft", "conntrack", "stdbuf"]
        .iter()
        .all(|t| podflow_testkit::have(test, t))
}

/// Live (not zombie) processes whose environment names `parent` as their demo.
fn demo_children(parent: u32) -> Vec<i32> {
    let want = format!("PODFLOW_DEMO_PARENT={parent}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'));
            (!zombie && env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())).then_some(pid)
        })
        .collect()
}

#[test]
fn demo_cleanup_removes_what_a_killed_demo_left() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run("demo_cleanup") {
        return;
    }
    let data = tempfile::tempdir().expect("tmp");
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["demo", "--duration", "60s", "--interval", "1s", "--listen"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(data.path())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start podflow demo"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts(data.path()).is_none() {
        assert!(Instant::now() < deadline, "the demo did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A crash: no chance to clean up.
    let pid = demo.0.id();
    demo.0.kill().expect("SIGKILL");
    let _ = demo.0.wait();
    let (ns, _) = pfd_leftovers();
    assert_eq!(ns.len(), 12, "the killed demo left its namespaces: {ns:?}");
    let orphans = demo_children(pid);
    assert_eq!(orphans.len(), 4, "its server and 3 agents still run");

    let out = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(["demo", "--cleanup"])
        .output()
        .expect("podflow demo --cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ns, links) = pfd_leftovers();
    assert!(ns.is_empty() && links.is_empty(), "{ns:?} {links:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !demo_children(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the orphans did not stop: {:?}",
            demo_children(pid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn demo_removes_everything_when_its_server_cannot_start() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run("demo_failure") {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(["demo", "--duration", "30s", "--listen"])
        .arg(addr.to_string())
        .output()
        .expect("podflow demo");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("podflow server"),
        "the error names the server: {err}"
    );
    let (ns, links) = pfd_leftovers();
    assert!(ns.is_empty() && links.is_empty(), "{ns:?} {links:?}");
}

#[test]
fn demo_attributes_classifies_and_counts_its_traffic_then_leaves_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run("demo_end_to_end") {
        return;
    }
    let (ns, _) = pfd_leftovers();
    assert!(ns.is_empty(), "another demo's namespaces exist: {ns:?}");
    let data = tempfile::tempdir().expect("tmp");
    let dir = data.path().to_path_buf();
    let port = free_port();
    let started = Instant::now();
    let started_unix = (now_ms() / 1000) as i64;
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args([
                "demo",
                "--duration",
                "40s",
                "--traffic-for",
                "20s",
                "--interval",
                "1s",
                "--impair",
                "us-east-1b=20ms,20%",
                "--listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&dir)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start podflow demo"),
    );

    let destroyed = DestroyLogs::start();
    // Every stream has answered requests.
    let deadline = Instant::now() + Duration::from_secs(25);
    let c0 = loop {
        if let Some(c) = counts(&dir)
            && STREAMS
                .iter()
                .all(|(n, _)| u(&stream(&c, n)["requests_done"]) >= 3)
        {
            break c;
        }
        if let Ok(Some(st)) = demo.0.try_wait() {
            panic!("the demo exited early: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "the demo's traffic did not start: {:?}",
            counts(&dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // The store catches up with everything answered before c0: every stream's stored
    // payload is at least what the generators had completed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (rows, fetched_ms) = loop {
        let fetched_ms = now_ms();
        let json = get_json(port, "/api/v1/flows?from=0&limit=10000");
        let rows = json.as_array().cloned().unwrap_or_default();
        let behind: Vec<String> = STREAMS
            .iter()
            .filter_map(|(n, _)| {
                let s = stream(&c0, n);
                let proto = s["proto"].as_str().unwrap_or("tcp");
                let t = sums(&rows_of(&rows, s));
                let out = payload_range(t.bytes_out, t.packets_out, proto).1;
                let inn = payload_range(t.bytes_in, t.packets_in, proto).1;
                (out < u(&s["payload_out_done"]) || inn < u(&s["payload_in_done"])).then(|| {
                    format!(
                        "{n}: stored {t:?} vs done out {} in {}",
                        s["payload_out_done"], s["payload_in_done"]
                    )
                })
            })
            .collect();
        if behind.is_empty() {
            break (rows, fetched_ms);
        }
        assert!(
            Instant::now() < deadline,
            "the store never caught up with the generators:\n{}",
            behind.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        started.elapsed() < Duration::from_secs(24),
        "these checks must run while the traffic runs"
    );
    // Counts written after that query bound what it can contain from above.
    let deadline = Instant::now() + Duration::from_secs(5);
    let c1 = loop {
        if let Some(c) = counts(&dir).filter(|c| u(&c["written_at_ms"]) > fetched_ms) {
            break c;
        }
        assert!(Instant::now() < deadline, "traffic.json is not refreshed");
        std::thread::sleep(Duration::from_millis(100));
    };
    for (name, class) in STREAMS {
        let s = stream(&c1, name);
        let proto = s["proto"].as_str().unwrap_or("tcp");
        let mine = rows_of(&rows, s);
        assert!(!mine.is_empty(), "{name}: no rows");
        let t = sums(&mine);
        let out = payload_range(t.bytes_out, t.packets_out, proto).0;
        let inn = payload_range(t.bytes_in, t.packets_in, proto).0;
        assert!(
            out <= u(&s["payload_out_started"]) && inn <= u(&s["payload_in_started"]),
            "{name}: stored {t:?} holds more payload than was ever sent: {s}"
        );
        if proto == "udp" {
            // Every datagram has the same size: the stored bytes are exact per packet.
            let req = 16 + 40;
            assert_eq!(t.bytes_out, t.packets_out * (28 + req), "{name}: {t:?}");
            assert!(t.packets_out >= u(&stream(&c0, name)["requests_done"]));
        } else {
            // One connection per request.
            assert!(
                t.opened >= u(&stream(&c0, name)["requests_done"])
                    && t.opened <= u(&s["requests_started"]),
                "{name}: {} connections stored, generators: {s}",
                t.opened
            );
        }
        if !class.is_empty() {
            for r in &mine {
                assert_eq!(r["class"], *class, "{name}: {r}");
            }
        }
    }

    // Attribution: the client ends, and the destination ends.
    let one = |name: &str| -> Value { (*rows_of(&rows, stream(&c1, name))[0]).clone() };
    let web = one("web -> internet");
    let l = &web["local_meta"];
    assert_eq!(
        (
            l["kind"].as_str(),
            l["namespace"].as_str(),
            l["name"].as_str(),
            l["workload_kind"].as_str(),
            l["workload"].as_str(),
            l["node"].as_str(),
            l["zone"].as_str(),
            l["region"].as_str(),
        ),
        (
            Some("pod"),
            Some("shop"),
            Some("web-5d8f7c9b6-h2x9k"),
            Some("Deployment"),
            Some("web"),
            Some("node-a"),
            Some("us-east-1a"),
            Some("us-east-1"),
        ),
        "{web}"
    );
    assert_eq!(web["remote_meta"]["kind"], "internet", "{web}");
    let db = one("report -> db (cross zone)");
    let (l, r) = (&db["local_meta"], &db["remote_meta"]);
    assert_eq!(
        (
            l["workload_kind"].as_str(),
            l["workload"].as_str(),
            l["namespace"].as_str(),
            l["node"].as_str(),
            l["zone"].as_str()
        ),
        (
            Some("CronJob"),
            Some("report"),
            Some("batch"),
            Some("node-c"),
            Some("us-east-1b")
        ),
        "{db}"
    );
    assert_eq!(
        (
            r["name"].as_str(),
            r["workload_kind"].as_str(),
            r["workload"].as_str(),
            r["node"].as_str(),
            r["zone"].as_str()
        ),
        (
            Some("db-0"),
            Some("StatefulSet"),
            Some("db"),
            Some("node-b"),
            Some("us-east-1a")
        ),
        "{db}"
    );
    let dns = one("web -> node-dns (udp)");
    assert_eq!(
        (
            dns["remote_meta"]["workload_kind"].as_str(),
            dns["remote_meta"]["workload"].as_str(),
            dns["remote_meta"]["node"].as_str(),
            dns["remote_meta"]["zone"].as_str()
        ),
        (
            Some("DaemonSet"),
            Some("node-dns"),
            Some("node-c"),
            Some("us-east-1b")
        ),
        "{dns}"
    );
    let s3 = one("report -> S3");
    assert_eq!(
        (
            s3["remote_meta"]["kind"].as_str(),
            s3["remote_meta"]["name"].as_str(),
            s3["remote_meta"]["cloud"].as_str(),
            s3["remote_meta"]["region"].as_str()
        ),
        (
            Some("cloud_range"),
            Some("S3"),
            Some("aws"),
            Some("us-east-1")
        ),
        "{s3}"
    );

    // The Service: its backends are the destinations, with service_name set; both
    // backends (one on the client's node, one in the other zone) answer.
    let svc = rows_of(&rows, stream(&c1, "web -> api Service"));
    let backends: BTreeSet<&str> = svc.iter().filter_map(|r| r["remote"].as_str()).collect();
    assert_eq!(
        backends,
        BTreeSet::from(["10.244.1.3", API_OTHER_ZONE]),
        "both backends answer"
    );
    for r in &svc {
        assert_eq!(r["service_name"], "shop/api", "{r}");
        assert_eq!(r["remote_meta"]["workload"], "api", "{r}");
        let want = if r["remote"] == "10.244.1.3" {
            "INTRA_NODE"
        } else {
            "INTER_ZONE"
        };
        assert_eq!(r["class"], want, "{r}");
    }
    // The NodePort: traffic from the internet host reaches the Service through node-c.
    assert!(
        rows.iter().any(|r| r["observer"] == "node-c"
            && r["remote"] == "203.0.113.10"
            && r["local_initiated"] == false),
        "no NodePort row on node-c"
    );

    // The web UI is served where the demo says.
    let (status, page) = get(port, "/").expect("GET /");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"));
    ui_renders_the_demo(port);

    // The grouped query: every class, and the workload pairs.
    let q = get_json(
        port,
        "/api/v1/query?from=0&group_by=src_workload,dst_workload,class,dst_name&limit=1000",
    );
    let keys: Vec<&Value> = q["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| &r["key"])
        .collect();
    let classes: BTreeSet<&str> = keys.iter().filter_map(|k| k["class"].as_str()).collect();
    for c in ["INTRA_NODE", "INTRA_ZONE", "INTER_ZONE", "PUBLIC_INTERNET"] {
        assert!(classes.contains(c), "class {c} missing from {q}");
    }
    let pair = |s: &str, d: &str| {
        keys.iter()
            .any(|k| k["src_workload"] == s && k["dst_workload"] == d)
    };
    for (s, d) in [
        ("web", "api"),
        ("api", "db"),
        ("report", "db"),
        ("web", "node-dns"),
        ("report", "S3"),
        ("web", "internet"),
    ] {
        assert!(pair(s, d), "no {s} -> {d} in {q}");
    }

    // /transactions: the Service's endpoints are its two api pods.
    let tx = get_json(port, "/transactions?window=600");
    let api = tx["services"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["namespace"] == "shop" && s["name"] == "api")
        })
        .unwrap_or_else(|| panic!("no shop/api in {tx}"));
    let eps: BTreeSet<(&str, &str)> = api["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| Some((e["pod"].as_str()?, e["ip"].as_str()?)))
        .collect();
    assert_eq!(
        eps,
        BTreeSet::from([
            ("api-6b9c4d7f8-k7p2m", "10.244.1.3"),
            ("api-6b9c4d7f8-w4n8q", API_OTHER_ZONE)
        ]),
        "{tx}"
    );
    for e in api["endpoints"].as_array().expect("endpoints") {
        assert_eq!(e["port"], 8080, "{e}");
        assert!(u(&e["connections"]) > 0, "{e}");
    }

    // Exact: once the traffic stopped (--traffic-for) and every connection ended, each
    // stream's stored bytes and packets equal the kernel's final counters (conntrack
    // DESTROY events on the client's node), one connection per request.
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        if let Some(c) = counts(&dir).filter(|c| c["running"] == false) {
            break c;
        }
        assert!(Instant::now() < deadline, "the traffic did not stop");
        std::thread::sleep(Duration::from_millis(200));
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pending: Vec<String> = STREAMS
            .iter()
            .map(|(n, _)| (n, stream(&done, n)))
            .filter(|(_, s)| destroyed.of(s).len() as u64 != u(&s["requests_started"]))
            .map(|(n, s)| {
                format!(
                    "{n}: {} of {}",
                    destroyed.of(s).len(),
                    s["requests_started"]
                )
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections never ended: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let json = get_json(port, "/api/v1/flows?from=0&limit=10000");
        let rows = json.as_array().cloned().unwrap_or_default();
        let diff: Vec<String> = STREAMS
            .iter()
            .filter_map(|(n, _)| {
                let s = stream(&done, n);
                let d = destroyed.of(s);
                let want = d.iter().fold(Sums::default(), |a, d| Sums {
                    packets_out: a.packets_out + d.orig.0,
                    bytes_out: a.bytes_out + d.orig.1,
                    packets_in: a.packets_in + d.reply.0,
                    bytes_in: a.bytes_in + d.reply.1,
                    opened: a.opened + 1,
                });
                let got = sums(&rows_of(&rows, s));
                (got != want).then(|| format!("{n}: stored {got:?}, kernel {want:?}"))
            })
            .collect();
        if diff.is_empty() {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "stored totals differ from the kernel's:\n{}",
            diff.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for (n, _) in STREAMS {
        let s = stream(&done, n);
        let proto = s["proto"].as_str().unwrap_or("tcp");
        let t = sums(&rows_of(&rows, s));
        assert_eq!(u(&s["requests_failed"]), 0, "{n}: {s}");
        assert_eq!(
            t.opened,
            u(&s["requests_done"]),
            "{n}: one connection per request"
        );
        // The kernel's L3 bytes hold exactly the generators' payload plus headers.
        for (bytes, packets, payload) in [
            (t.bytes_out, t.packets_out, u(&s["payload_out_done"])),
            (t.bytes_in, t.packets_in, u(&s["payload_in_done"])),
        ] {
            let (lo, hi) = payload_range(bytes, packets, proto);
            assert!(
                (lo..=hi).contains(&payload),
                "{n}: payload {payload} outside {lo}..={hi} ({t:?})"
            );
        }
    }
    // The NodePort, seen where it is DNATed (node-c): stored exactly as the kernel counted.
    let np = destroyed.to("node-c", "172.30.0.13", 30080);
    assert_eq!(
        np.len() as u64,
        u(&stream(&done, "internet -> NodePort")["requests_done"]),
        "one connection per NodePort request"
    );
    let np_rows: Vec<&Value> = rows
        .iter()
        .filter(|r| r["observer"] == "node-c" && r["service"] == "172.30.0.13:30080")
        .collect();
    let want = np.iter().fold(Sums::default(), |a, d| Sums {
        bytes_out: a.bytes_out + d.reply.1,
        packets_out: a.packets_out + d.reply.0,
        bytes_in: a.bytes_in + d.orig.1,
        packets_in: a.packets_in + d.orig.0,
        opened: a.opened + 1,
    });
    assert_eq!(sums(&np_rows), want, "NodePort rows on node-c");
    for r in &np_rows {
        assert_eq!(r["service_name"], "shop/api", "{r}");
        assert_eq!(r["remote"], "203.0.113.10", "{r}");
        assert_eq!(r["class"], "PUBLIC_INTERNET", "{r}");
        assert_eq!(r["local_meta"]["workload"], "api", "{r}");
    }
    // /transactions: per endpoint of shop/api, exactly the connections the kernel saw
    // DNATed to it (through the ClusterIP on node-a, through the NodePort on node-c).
    let tx = get_json(port, "/transactions?window=600");
    let svc_stream = stream(&done, "web -> api Service");
    for e in tx["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "api"))
        .and_then(|s| s["endpoints"].as_array())
        .expect("shop/api endpoints")
    {
        let ip = e["ip"].as_str().unwrap_or_default();
        let via_service = destroyed
            .of(svc_stream)
            .iter()
            .filter(|d| d.reply_src == ip)
            .count() as u64;
        let via_node_port = np.iter().filter(|d| d.reply_src == ip).count() as u64;
        assert_eq!(
            u(&e["connections"]),
            via_service + via_node_port,
            "{ip}: {via_service} via the ClusterIP, {via_node_port} via the NodePort: {e}"
        );
    }

    avoidable_share_is_the_generators_split(port, started_unix, &destroyed, &done, &np);

    // The probes: --impair made the link between the zones sick (20% of what node-c
    // receives from the other zone lost, 20 ms on what it sends back), the zone's own
    // link is healthy.
    let pairs = get_json(port, "/api/v1/pairs?level=zone&from=0");
    let pair = |src: &str, dst: &str| {
        pairs["pairs"]
            .as_array()
            .and_then(|p| p.iter().find(|r| r["src"] == src && r["dst"] == dst))
            .cloned()
            .unwrap_or_else(|| panic!("no {src} -> {dst} pair in {pairs}"))
    };
    let sick = pair("us-east-1a", "us-east-1b");
    let loss = sick["loss"].as_f64().expect("loss");
    assert!((0.05..0.45).contains(&loss), "impaired loss {loss}: {sick}");
    let p50 = sick["rtt_p50_seconds"].as_f64().expect("rtt");
    assert!(
        (0.018..0.03).contains(&p50),
        "impaired median RTT {p50}: {sick}"
    );
    let healthy = pair("us-east-1a", "us-east-1a");
    assert_eq!(healthy["loss"].as_f64(), Some(0.0), "{healthy}");
    assert!(
        healthy["rtt_p50_seconds"].as_f64().expect("rtt") < 0.01,
        "{healthy}"
    );

    // The demo ends on its own, cleanly, and leaves nothing behind.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(st)) = demo.0.try_wait() {
            break st;
        }
        assert!(Instant::now() < deadline, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "demo exited with {status}");
    let (ns, links) = pfd_leftovers();
    assert!(ns.is_empty(), "namespaces left: {ns:?}");
    assert!(links.is_empty(), "links left: {links:?}");
    let final_counts = counts(&dir).expect("final traffic.json");
    let failed: u64 = final_counts["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| u(&s["requests_failed"]))
        .sum();
    let done: u64 = final_counts["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| u(&s["requests_done"]))
        .sum();
    assert!(failed * 100 <= done, "{failed} of {done} requests failed");
}
