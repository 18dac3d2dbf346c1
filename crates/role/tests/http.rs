//! The HTTP server under attack and load, over real sockets on 127.0.0.1 and real SQLite
//! files: the bearer token, TLS, the query time limit, the lanes, the concurrency limit,
//! slow clients, error bodies, and the write-ahead log while readers run.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podflow_api::{AppState, QueryLimits, StoreReader};
use podflow_model::{Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, Protocol};
use podflow_role::{HttpSettings, HttpTls, serve_http};
use podflow_store::{FlowStore, ReadPool, SqliteStore};
use tokio_util::sync::CancellationToken;

/// Held by each test: they measure time, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Answers nothing, always ready.
#[derive(Debug)]
struct Quiet;

impl podflow_api::Exposition for Quiet {
    fn metrics(&self) -> String {
        "podflow_build_info 1\n".into()
    }
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

fn pod(ns: &str, workload: &str) -> EndLabels {
    EndLabels {
        kind: "pod",
        namespace: ns.into(),
        name: format!("{workload}-0").into(),
        workload_kind: "Deployment".into(),
        workload: workload.into(),
        node: "node-a".into(),
        zone: "a".into(),
        ..Default::default()
    }
}

/// One row at interval `t` between `ns/src` and `ns2/dst`, remote address from `i`.
fn row(t: i64, i: u32, (ns, src): (&str, &str), (ns2, dst): (&str, &str), bytes: u64) -> FlowRow {
    FlowRow {
        interval_start: t,
        interval_s: 10,
        observer: format!("node-{}", i % 7),
        key: FlowKey {
            proto: Protocol::TCP,
            local: std::net::IpAddr::from([10, 1, (i >> 8) as u8, i as u8]),
            remote: std::net::IpAddr::from([10, 2, (i >> 16) as u8, (i >> 8) as u8]),
            responder_port: 80 + (i % 1000) as u16,
            local_initiated: true,
            service: None,
            prefixes: Default::default(),
        },
        totals: FlowTotals {
            bytes_out: bytes,
            packets_out: 1,
            bytes_in: bytes / 2,
            packets_in: 1,
            opened: 1,
            closed: 1,
        },
        labels: Arc::new(FlowLabels {
            class: Class::IntraZone,
            local: pod(ns, src),
            remote: pod(ns2, dst),
            ..Default::default()
        }),
        cost_usd: 0.0,
    }
}

/// A store of `n` distinct rows over 100 intervals from t = 1000 (a grouped query over
/// all of them by address takes seconds in a debug build).
fn big_store(dir: &Path, n: u32) -> PathBuf {
    let path = dir.join("podflow.sqlite");
    let mut s = SqliteStore::open(&path).expect("open");
    let t0 = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
        let rows: Vec<FlowRow> = chunk
            .iter()
            .map(|&i| {
                row(
                    1000 + i64::from(i % 100) * 10,
                    i,
                    ("shop", &format!("w{}", i % 50)),
                    ("db", &format!("d{}", i % 40)),
                    u64::from(i),
                )
            })
            .collect();
        s.write(&rows).expect("write");
    }
    eprintln!("wrote {n} rows in {:?}", t0.elapsed());
    path
}

/// The slow query: every row grouped by its addresses and ports (no rollup answers it).
const SLOW: &str =
    "/api/v1/query?from=0&to=5000&group_by=src_ip,dst_ip,dst_port,observer&view=raw&limit=10";

fn settings(timeout: Duration) -> HttpSettings {
    HttpSettings {
        limits: QueryLimits {
            timeout,
            max_concurrent: 64,
            expensive_lane: 1,
            cheap_lane: 4,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Serves `path` under `settings` on a free port.
async fn serve(path: Option<PathBuf>, settings: HttpSettings) -> (SocketAddr, Arc<AppState>) {
    let state = Arc::new(AppState {
        exposition: Arc::new(Quiet),
        store: path.map_or(StoreReader::None, StoreReader::sqlite),
        interval_s: 10,
        probes: None,
        billing: None,
        on_demand: None,
    });
    let addr: SocketAddr = format!("127.0.0.1:{}", podflow_testkit::free_port())
        .parse()
        .expect("addr");
    let shutdown = CancellationToken::new();
    serve_http(addr, Arc::clone(&state), settings, shutdown)
        .await
        .expect("serve");
    (addr, state)
}

/// An answer: status, headers (lower-case names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// `method path` with `headers` over a fresh connection (HTTP/1.0: the body ends at
/// the close).
fn request_blocking(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: x\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut r = Vec::new();
    s.read_to_end(&mut r).expect("read");
    parse(&String::from_utf8_lossy(&r))
}

fn parse(r: &str) -> Answer {
    let (head, body) = r.split_once("\r\n\r\n").unwrap_or((r, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    get_with(addr, path, &[]).await
}

async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let (path, headers): (String, Vec<(String, String)>) = (
        path.to_string(),
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        request_blocking(addr, "GET", &path, &h)
    })
    .await
    .expect("client")
}

/// `get` and how long it took.
async fn timed(addr: SocketAddr, path: &str) -> (Answer, Duration) {
    let t = Instant::now();
    let a = get(addr, path).await;
    (a, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_guards_the_data_and_rotates_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = big_store(dir.path(), 1000);
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-one\n").expect("token");
    let mut s = settings(Duration::from_secs(10));
    s.token_file = Some(token.clone());
    let (addr, _) = serve(Some(path), s).await;

    let flows = "/api/v1/flows?from=0&to=5000&limit=5";
    let none = get(addr, flows).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(
        none.headers.get("www-authenticate").map(String::as_str),
        Some("Bearer realm=\"podflow\"")
    );
    let wrong = get_with(addr, flows, &[("Authorization", "Bearer s3cret-two")]).await;
    assert_eq!(wrong.status, 401);
    let prefix = get_with(addr, flows, &[("Authorization", "Bearer s3cret-on")]).await;
    assert_eq!(prefix.status, 401);
    let basic = get_with(addr, flows, &[("Authorization", "Basic czNjcmV0LW9uZQ==")]).await;
    assert_eq!(basic.status, 401);
    let ok = get_with(addr, flows, &[("Authorization", "Bearer s3cret-one")]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let rows: serde_json::Value = serde_json::from_str(&ok.body).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(5));
    for p in [
        "/api/v1/query",
        "/api/v1/cost/services",
        "/api/graph/data",
        "/api/health",
        "/transactions",
        "/flows",
    ] {
        assert_eq!(get(addr, p).await.status, 401, "{p} without a token");
    }
    // Open without a token: probes, metrics, the UI's static files (they hold no data).
    for p in ["/live", "/ready", "/metrics", "/", "/ui/app.js"] {
        assert_eq!(get(addr, p).await.status, 200, "{p}");
    }
    // Read-only, and no CORS: another origin's page cannot read the answers.
    let post = tokio::task::spawn_blocking(move || {
        request_blocking(
            addr,
            "POST",
            flows,
            &[("Authorization", "Bearer s3cret-one")],
        )
    })
    .await
    .expect("post");
    assert_eq!(post.status, 405, "{post:?}");
    let cors = get_with(
        addr,
        flows,
        &[
            ("Authorization", "Bearer s3cret-one"),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(cors.status, 200);
    assert!(
        !cors
            .headers
            .keys()
            .any(|k| k.starts_with("access-control-")),
        "{:?}",
        cors.headers
    );

    // Rotation as a Secret volume does it: a new file renamed over the old one.
    let new = dir.path().join("token.new");
    std::fs::write(&new, "s3cret-two").expect("token");
    std::fs::rename(&new, &token).expect("rotate");
    let old = get_with(addr, flows, &[("Authorization", "Bearer s3cret-one")]).await;
    assert_eq!(old.status, 401, "the old token no longer works");
    let rotated = get_with(addr, flows, &[("Authorization", "Bearer s3cret-two")]).await;
    assert_eq!(rotated.status, 200);

    // --http-token-protects-metrics: /metrics needs it too, the probes stay open.
    let mut s = settings(Duration::from_secs(10));
    s.token_file = Some(token.clone());
    s.token_protects_metrics = true;
    let (addr, _) = serve(None, s).await;
    assert_eq!(get(addr, "/metrics").await.status, 401);
    let m = get_with(addr, "/metrics", &[("Authorization", "Bearer s3cret-two")]).await;
    assert_eq!(m.status, 200);
    assert!(m.body.contains("podflow_build_info"), "{}", m.body);
    assert_eq!(get(addr, "/live").await.status, 200);
    assert_eq!(get(addr, "/ready").await.status, 200);
    // An empty token file is refused at start.
    std::fs::write(&token, "\n").expect("empty");
    let mut s = settings(Duration::from_secs(10));
    s.token_file = Some(token);
    let state = Arc::new(AppState {
        exposition: Arc::new(Quiet),
        store: StoreReader::None,
        interval_s: 10,
        probes: None,
        billing: None,
        on_demand: None,
    });
    let addr: SocketAddr = format!("127.0.0.1:{}", podflow_testkit::free_port())
        .parse()
        .expect("addr");
    let e = serve_http(addr, state, s, CancellationToken::new())
        .await
        .expect_err("an empty token file");
    assert!(e.to_string().contains("--http-token-file"), "{e}");
}

/// A self-signed certificate for podflow.test and 127.0.0.1.
fn self_signed(cert: &Path, key: &Path) {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=podflow.test"])
        .args(["-addext", "subjectAltName=DNS:podflow.test,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// curl's HTTP status for `url` trusting `ca` ("" when the request failed).
async fn curl_status(url: &str, ca: &Path) -> String {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .await
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        code
    } else {
        String::new()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_with_a_self_signed_certificate() {
    let _serial = SERIAL.lock().await;
    if !podflow_testkit::have("https_with_a_self_signed_certificate", "openssl")
        || !podflow_testkit::have("https_with_a_self_signed_certificate", "curl")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    self_signed(&cert, &key);
    let path = big_store(dir.path(), 100);
    let mut s = settings(Duration::from_secs(10));
    s.tls = Some(HttpTls {
        cert: cert.clone(),
        key,
    });
    let (addr, _) = serve(Some(path), s).await;
    let url = format!(
        "https://127.0.0.1:{}/api/v1/flows?from=0&to=5000&limit=3",
        addr.port()
    );
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{ssl_verify_result}",
            "--cacert",
        ])
        .arg(&cert)
        .arg(&url)
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, tail) = text.rsplit_once('\n').expect("tail");
    assert_eq!(tail, "200 0", "status and certificate verification");
    let rows: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(3));
    // Plain HTTP to the TLS port gets no answer.
    let plain = get(addr, "/live").await;
    assert_ne!(plain.status, 200, "{plain:?}");
    // A client that does not trust the certificate is refused by curl's verification.
    let untrusted = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(&url)
        .output()
        .await
        .expect("curl");
    assert!(!untrusted.status.success());

    // The certificate rotates under the running listener (as a Secret volume does).
    let reloads = podflow_role::tls::HTTP_RELOADS
        .reloads
        .load(std::sync::atomic::Ordering::Relaxed);
    let old = dir.path().join("old.crt");
    std::fs::copy(&cert, &old).expect("copy");
    let (cert2, key2) = (dir.path().join("new.crt"), dir.path().join("new.key"));
    self_signed(&cert2, &key2);
    std::fs::copy(&cert2, &cert).expect("copy");
    std::fs::copy(&key2, dir.path().join("tls.key")).expect("copy");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        curl_status(&url, &cert2).await,
        "200",
        "the new certificate is served"
    );
    assert_eq!(curl_status(&url, &old).await, "", "the old one is not");
    assert_eq!(
        podflow_role::tls::HTTP_RELOADS
            .reloads
            .load(std::sync::atomic::Ordering::Relaxed),
        reloads + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_query_is_stopped_at_the_time_limit_and_frees_its_connection() {
    let _serial = SERIAL.lock().await;
    let limit = Duration::from_secs(1);
    // How long the slow query takes when nothing stops it: a bigger store on a machine
    // where it is too quick to test the limit.
    let mut tried = Vec::new();
    let (path, unbounded, _dir) = loop {
        let dir = tempfile::tempdir().expect("tmp");
        let n = 400_000 * (1 << tried.len());
        let path = big_store(dir.path(), n);
        let (free, _) = serve(Some(path.clone()), settings(Duration::from_secs(120))).await;
        let (a, unbounded) = timed(free, SLOW).await;
        assert_eq!(a.status, 200, "{a:?}");
        eprintln!("the slow query takes {unbounded:?} without a limit ({n} rows)");
        tried.push(unbounded);
        if unbounded > limit * 2 || tried.len() == 3 {
            break (path, unbounded, dir);
        }
    };
    assert!(
        unbounded > limit * 2,
        "the query is not slow enough to test: {unbounded:?}"
    );

    let (addr, state) = serve(Some(path), settings(limit)).await;
    let (a, took) = timed(addr, SLOW).await;
    eprintln!("stopped after {took:?} (limit {limit:?})");
    assert_eq!(a.status, 504, "{a:?}");
    assert_eq!(a.headers.get("retry-after").map(String::as_str), Some("5"));
    assert!(took < limit + Duration::from_millis(700), "{took:?}");
    // The one expensive lane and its connection are free at once: a small grouped query
    // answers right away, on the same connection.
    let (a, quick) = timed(addr, "/api/v1/query?from=1000&to=1010&group_by=observer").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(quick < Duration::from_millis(500), "{quick:?}");
    let StoreReader::Sqlite { pool, .. } = &state.store else {
        unreachable!()
    };
    assert_eq!(pool.idle(), 1, "one connection, back in the pool");

    // A client that goes away: its query is interrupted too, not left to run.
    let slow_client = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(s, "GET {SLOW} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
    });
    slow_client.await.expect("client");
    // Left 300 ms into a query the limit would stop at 1 s: were it still running, the
    // next one would wait about 600 ms for the lane.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (a, waited) = timed(addr, "/api/v1/query?from=1000&to=1010&group_by=observer").await;
    assert_eq!(a.status, 200);
    eprintln!("after a client left mid-query, the next query took {waited:?}");
    assert!(waited < Duration::from_millis(300), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expensive_queries_do_not_stall_listings_or_the_ui() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = big_store(dir.path(), 400_000);
    let (addr, _) = serve(Some(path), settings(Duration::from_secs(4))).await;
    let slow: Vec<_> = (0..8).map(|_| tokio::spawn(timed(addr, SLOW))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        for p in [
            "/api/v1/flows?from=1000&to=1010&limit=10",
            "/api/graph/fields",
            "/",
            "/live",
        ] {
            let (a, took) = timed(addr, p).await;
            assert_eq!(a.status, 200, "{p}: {a:?}");
            assert!(took < Duration::from_secs(1), "{p} took {took:?}");
            worst = worst.max(took);
        }
    }
    eprintln!("slowest listing or UI answer beside 8 expensive queries: {worst:?}");
    let mut statuses = Vec::new();
    for s in slow {
        statuses.push(s.await.expect("slow").0.status);
    }
    // One lane: the first runs until the limit, the others wait for it within theirs.
    assert!(
        statuses.iter().all(|s| [200, 503, 504].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&504), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_the_concurrency_limit_the_answer_is_503_with_retry_after() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = big_store(dir.path(), 400_000);
    let mut s = settings(Duration::from_secs(3));
    s.limits.max_concurrent = 2;
    let (addr, _) = serve(Some(path), s).await;
    let running: Vec<_> = (0..2).map(|_| tokio::spawn(timed(addr, SLOW))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a, took) = timed(addr, "/api/v1/flows?from=1000&to=1010&limit=10").await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.headers.get("retry-after").map(String::as_str), Some("1"));
    assert!(
        took < Duration::from_millis(300),
        "refused at once: {took:?}"
    );
    // The UI's static files and probes are not store queries: they still answer.
    assert_eq!(get(addr, "/").await.status, 200);
    // They held their slots meanwhile; each then ends as it may on this machine: done
    // within the limit, stopped at it, or (the second, behind the first in its lane)
    // refused.
    for r in running {
        let (a, _) = r.await.expect("slow");
        assert!([200, 503, 504].contains(&a.status), "{}", a.status);
    }
    // Once they are done, queries are admitted again.
    assert_eq!(
        get(addr, "/api/v1/flows?from=1000&to=1010&limit=10")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_and_do_not_stop_others() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = big_store(dir.path(), 1000);
    let mut s = settings(Duration::from_secs(5));
    s.header_read_timeout = Duration::from_secs(1);
    let (addr, _) = serve(Some(path), s).await;
    // 200 connections that send a header byte every 200 ms and never finish.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loris = Vec::new();
    for _ in 0..200 {
        let stop = Arc::clone(&stop);
        loris.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            let t = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(b"a").is_err() {
                    return Some(t.elapsed());
                }
                std::thread::sleep(Duration::from_millis(200));
                let mut b = [0u8; 64];
                s.set_nonblocking(true).ok();
                match s.read(&mut b) {
                    Ok(0) => return Some(t.elapsed()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Some(t.elapsed()),
                }
                s.set_nonblocking(false).ok();
            }
            None
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        let (a, took) = timed(addr, "/api/v1/flows?from=1000&to=1010&limit=10").await;
        assert_eq!(a.status, 200);
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    let cut: Vec<Option<Duration>> = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && loris.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        loris
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    })
    .await
    .expect("loris");
    let closed: Vec<Duration> = cut.iter().flatten().copied().collect();
    assert_eq!(closed.len(), 200, "every slow client was cut off");
    let worst = closed.iter().max().copied().unwrap_or_default();
    eprintln!("slow clients cut off after at most {worst:?}");
    assert!(worst < Duration::from_secs(3), "{worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_bodies_name_no_file_and_carry_a_request_id() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    // A store file that is not there: opening the reader fails with the path.
    let missing = dir.path().join("secret-place").join("podflow.sqlite");
    let (addr, _) = serve(Some(missing), settings(Duration::from_secs(5))).await;
    for p in [
        "/api/v1/flows?from=0&to=10",
        "/api/v1/query?from=0&to=10",
        "/api/v1/cost/services?from=0&to=10",
        "/api/graph/data?from=0&to=10000",
        "/transactions",
    ] {
        let a = get(addr, p).await;
        assert_eq!(a.status, 500, "{p}: {a:?}");
        let dirname = dir.path().display().to_string();
        for leak in [dirname.as_str(), "secret-place", "sqlite", "/tmp"] {
            assert!(!a.body.contains(leak), "{p}: {} leaks {leak}", a.body);
        }
        let v: serde_json::Value = serde_json::from_str(&a.body).expect("json");
        let id = v["request_id"].as_str().expect("request id");
        assert_eq!(a.headers.get("x-request-id").map(String::as_str), Some(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespace_parameters_filter_before_the_limit_or_are_refused() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("podflow.sqlite");
    let mut rows = Vec::new();
    // 30 large edges in `big`, 3 small ones from `small` to `big`.
    for i in 0..30 {
        rows.push(row(
            1000,
            i,
            ("big", &format!("w{i}")),
            ("big", "db"),
            1_000_000 + u64::from(i),
        ));
    }
    for i in 0..3 {
        rows.push(row(
            1000,
            100 + i,
            ("small", &format!("s{i}")),
            ("big", "db"),
            10,
        ));
    }
    SqliteStore::open(&path)
        .expect("open")
        .write(&rows)
        .expect("write");
    let (addr, _) = serve(Some(path), settings(Duration::from_secs(5))).await;

    let a = get(addr, "/api/v1/query?from=1000&to=1010&namespace=small").await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.body.contains("src_namespace"), "{}", a.body);
    for p in [
        "/api/v1/query?from=1000&to=1010&bogus=1",
        "/api/v1/flows?from=1000&to=1010&namespace=small",
        "/flows?namespace=small",
        "/transactions?namespace=small",
        "/api/graph/data?bogus=1",
    ] {
        let a = get(addr, p).await;
        assert_eq!(a.status, 400, "{p}: {a:?}");
        assert!(a.body.contains("error"), "{p}: {}", a.body);
    }

    // Node graph: the 3 small edges although the 30 large ones fill the limit.
    let a = get(
        addr,
        "/api/graph/data?from=1000000&to=1010000&limit=5&namespace=small",
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let v: serde_json::Value = serde_json::from_str(&a.body).expect("json");
    let edges = v["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 3, "{edges:?}");
    assert!(edges.iter().all(|e| {
        e["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("small/"))
    }));
    // Touching `big` on either side, the limit still holds: the 5 largest.
    let a = get(
        addr,
        "/api/graph/data?from=1000000&to=1010000&limit=5&namespace=big",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&a.body).expect("json");
    let edges = v["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 5, "{edges:?}");
    assert!(
        edges.iter().all(|e| e["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("big/w2"))),
        "{edges:?}"
    );
}

/// Writes batches of new rows into `path` until `stop`, as fast as it can.
fn writer(path: PathBuf, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut s = SqliteStore::open(&path).expect("open writer");
        let mut n = 0u64;
        let mut i = 10_000_000u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let rows: Vec<FlowRow> = (0..2000)
                .map(|_| {
                    i += 1;
                    row(
                        6000 + i64::from(i % 100) * 10,
                        i,
                        ("shop", "w"),
                        ("db", "d"),
                        1,
                    )
                })
                .collect();
            s.write(&rows).expect("write");
            n += rows.len() as u64;
        }
        n
    })
}

/// Samples the log's size every 100 ms for `d`: (largest, last).
async fn wal_over(pool: &ReadPool, d: Duration) -> (u64, u64) {
    let (mut max, mut last) = (0, 0);
    let end = Instant::now() + d;
    while Instant::now() < end {
        last = pool.wal_bytes();
        max = max.max(last);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (max, last)
}

const MIB: f64 = 1024.0 * 1024.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_write_ahead_log_stays_bounded_while_readers_run() {
    let _serial = SERIAL.lock().await;
    let run = Duration::from_secs(10);
    // Without bounds: one reader holding its snapshot while the writer goes on.
    let dir = tempfile::tempdir().expect("tmp");
    let held_path = big_store(dir.path(), 1000);
    let held = rusqlite::Connection::open_with_flags(
        &held_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("reader");
    held.execute_batch("BEGIN; SELECT count(*) FROM flows;")
        .expect("snapshot");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = writer(held_path.clone(), Arc::clone(&stop));
    let (held_max, held_last) = wal_over(&ReadPool::new(&held_path), run).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let held_rows = w.join().expect("writer");
    drop(held);

    // Through the API: slow queries back to back from 3 clients, each stopped at 1 s,
    // and new ones refused while the log is over 96 MiB (the writer truncates it to
    // 64 MiB when a checkpoint resets it).
    let dir2 = tempfile::tempdir().expect("tmp");
    let path = big_store(dir2.path(), 300_000);
    let mut s = settings(Duration::from_secs(1));
    s.limits.max_wal_bytes = 96 << 20;
    let wal_before = ReadPool::new(&path).wal_bytes();
    let (addr, _) = serve(Some(path.clone()), s).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = writer(path.clone(), Arc::clone(&stop));
    let statuses = Arc::new(std::sync::Mutex::new(HashMap::<u16, u32>::new()));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, statuses) = (Arc::clone(&stop), Arc::clone(&statuses));
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let a = get(addr, SLOW).await;
                    *statuses.lock().expect("lock").entry(a.status).or_default() += 1;
                    if a.status == 503 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    let (api_max, api_last) = wal_over(&ReadPool::new(&path), run).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let api_rows = w.join().expect("writer");
    for c in clients {
        c.await.expect("client");
    }
    let statuses = statuses.lock().expect("lock").clone();

    // The time limit alone: one client's slow queries back to back (each stopped at
    // 1 s), no log limit.
    let mut s = settings(Duration::from_secs(1));
    s.limits.max_wal_bytes = u64::MAX;
    let (serial_addr, _) = serve(Some(path.clone()), s).await;
    let serial_before = ReadPool::new(&path).wal_bytes();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = writer(path.clone(), Arc::clone(&stop));
    let st = Arc::clone(&stop);
    let client = tokio::spawn(async move {
        let mut n = 0u32;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            get(serial_addr, SLOW).await;
            n += 1;
        }
        n
    });
    let (serial_max, serial_last) = wal_over(&ReadPool::new(&path), run).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let serial_rows = w.join().expect("writer");
    let serial_queries = client.await.expect("client");
    eprintln!(
        "WAL with the time limit alone, one reader at a time ({serial_queries} queries back to back): \
         {:.1} MiB before, max {:.1} MiB, last {:.1} MiB ({serial_rows} rows written)",
        serial_before as f64 / MIB,
        serial_max as f64 / MIB,
        serial_last as f64 / MIB,
    );
    eprintln!(
        "WAL over {run:?} of writes: one reader held: max {:.1} MiB, last {:.1} MiB ({held_rows} rows written); \
         API readers bounded (1 s limit, 96 MiB pause; {:.1} MiB before): max {:.1} MiB, last {:.1} MiB ({api_rows} rows written), answers {statuses:?}",
        held_max as f64 / MIB,
        held_last as f64 / MIB,
        wal_before as f64 / MIB,
        api_max as f64 / MIB,
        api_last as f64 / MIB,
    );
    let admitted =
        statuses.get(&504).copied().unwrap_or(0) + statuses.get(&200).copied().unwrap_or(0);
    assert!(admitted > 0, "readers ran meanwhile: {statuses:?}");
    // A reader admitted just under the cap holds the log for up to one time limit (1 s)
    // while the writer goes on: the bound is the cap plus what the writer writes in two
    // time limits, at the rate measured with the held reader (the log only grew then).
    let per_second = held_max as f64 / run.as_secs_f64();
    let bound = (96u64 << 20) as f64 + 2.0 * per_second;
    assert!(
        (api_max as f64) < bound && api_max < held_max,
        "the log stayed under its limit plus two time limits of writes ({:.1} MiB): max {:.1} MiB (held: {:.1} MiB)",
        bound / MIB,
        api_max as f64 / MIB,
        held_max as f64 / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_queries_and_their_retries_end_at_the_time_limit() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let port = podflow_testkit::free_port();
    let Some(front) = podflow_testkit::clickhouse_front(dir.path(), port) else {
        podflow_testkit::skip(
            "clickhouse_queries_and_their_retries_end_at_the_time_limit",
            "python3 with chdb (pip install --no-deps chdb-core==26.9.0 lz4 clickhouse-cityhash)",
        );
        return;
    };
    let cfg = podflow_store::ClickHouseConfig {
        url: format!("http://127.0.0.1:{port}"),
        ..Default::default()
    };
    let reader = tokio::task::spawn_blocking(move || {
        let store = podflow_store::ClickHouseStore::open(cfg).expect("open");
        store.reader().expect("reader")
    })
    .await
    .expect("open");
    let state = Arc::new(AppState {
        exposition: Arc::new(Quiet),
        store: StoreReader::clickhouse(reader),
        interval_s: 10,
        probes: None,
        billing: None,
        on_demand: None,
    });
    let addr: SocketAddr = format!("127.0.0.1:{}", podflow_testkit::free_port())
        .parse()
        .expect("addr");
    let limit = Duration::from_secs(2);
    serve_http(addr, state, settings(limit), CancellationToken::new())
        .await
        .expect("serve");
    let (a, _) = timed(addr, "/api/v1/query?from=0&to=10&group_by=observer").await;
    assert_eq!(a.status, 200, "{a:?}");

    // The engine dies and something on its port accepts and never answers: each request
    // would wait its 30 s timeout, 6 times with backoff in between.
    drop(front);
    // Nothing listens: connection refused, retried with back-off until the next wait
    // would end past the limit; the error (which names the URL) stays in the log.
    let (a, took) = timed(addr, "/api/v1/query?from=0&to=10&group_by=observer").await;
    eprintln!(
        "with ClickHouse gone: {} after {took:?}: {}",
        a.status, a.body
    );
    assert!([500, 504].contains(&a.status), "{a:?}");
    assert!(took < limit + Duration::from_millis(700), "{took:?}");
    assert!(!a.body.contains("127.0.0.1"), "{}", a.body);
    let blackhole = std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in blackhole.incoming().flatten() {
            held.push(c);
        }
    });
    for p in [
        "/api/v1/query?from=0&to=10&group_by=observer",
        "/api/v1/flows?from=0&to=10",
    ] {
        let (a, took) = timed(addr, p).await;
        eprintln!("{p} with a silent ClickHouse: {} after {took:?}", a.status);
        // 504 at the limit, or 500 a little before it when the next retry would end past it.
        assert!([500, 504].contains(&a.status), "{a:?}");
        assert!(took < limit + Duration::from_millis(700), "{took:?}");
        assert!(!a.body.contains("127.0.0.1"), "{}", a.body);
    }
}
