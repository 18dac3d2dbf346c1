//! The web UI in headless Chromium, against the real router and a SQLite store with known
//! rows: the service map's nodes and edges, the top-talkers table (compared with
//! `/api/v1/query`), the summary tiles, the namespace filter, the raw view, a click-through
//! selection, a 500-workload graph, the zone × zone matrix with its node pairs and the
//! edges' probe health, and bytes over time by class. Screenshots go to `artifacts/` (gitignored);
//! `UPDATE_DOCS_SCREENSHOT=1` also writes `docs/ui.png` (the 6-workload page, nothing selected).
//!
//! Needs Debian's `chromium` (or `PODFLOW_CHROMIUM=/path`); skips loudly without it.
//! Chromium only ever talks to 127.0.0.1: no background networking, no component updates,
//! no sync, and every host name resolves to nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podflow_api::{AppState, StoreReader, router};
use podflow_model::{Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, Protocol};
use podflow_store::probes::{BUCKETS, ProbeRow};
use podflow_store::{FlowStore, ProbeStore, SqliteProbeStore, SqliteStore};
use serde_json::Value;

mod common;
use common::pod;

/// One row: `local` initiated the connection to `remote` iff `initiated`.
#[allow(clippy::too_many_arguments)]
fn row(
    observer: &str,
    t: i64,
    local: (&str, EndLabels),
    remote: (&str, EndLabels),
    initiated: bool,
    out_in: (u64, u64),
    class: Class,
    observed: bool,
    cost_usd: f64,
) -> FlowRow {
    FlowRow {
        interval_start: t,
        interval_s: 10,
        observer: observer.into(),
        key: FlowKey {
            proto: Protocol::TCP,
            local: local.0.parse().expect("ip"),
            remote: remote.0.parse().expect("ip"),
            responder_port: 443,
            local_initiated: initiated,
            service: None,
            prefixes: Default::default(),
        },
        totals: FlowTotals {
            bytes_out: out_in.0,
            packets_out: 10,
            bytes_in: out_in.1,
            packets_in: 20,
            opened: 2,
            closed: 1,
        },
        labels: Arc::new(FlowLabels {
            class,
            local: local.1,
            remote: remote.1,
            remote_observed: observed,
            ..Default::default()
        }),
        cost_usd,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Five minutes ago, on an interval boundary: inside every range the page offers.
fn recent() -> i64 {
    (now() - 300) / 10 * 10
}

/// Two namespaces; `shop/web -> shop/db` is seen by both nodes (counted once by default).
fn small_rows(t: i64) -> Vec<FlowRow> {
    let web = || ("10.1.0.5", pod("shop", "web", "node-a", "a"));
    let db = || ("10.2.0.7", pod("shop", "db", "node-b", "b"));
    let cache = || ("10.1.0.9", pod("shop", "cache", "node-a", "a"));
    let api = || ("10.3.0.4", pod("billing", "api", "node-c", "c"));
    let s3 = || {
        (
            "52.216.1.1",
            EndLabels {
                kind: "cloud_range",
                name: "S3".into(),
                cloud: "aws".into(),
                region: "us-east-1".into(),
                ..Default::default()
            },
        )
    };
    let internet = || {
        (
            "93.184.216.34",
            EndLabels {
                kind: "internet",
                ..Default::default()
            },
        )
    };
    use Class::*;
    vec![
        row(
            "node-a",
            t,
            web(),
            db(),
            true,
            (6000, 60_000),
            InterZone,
            true,
            0.25,
        ),
        row(
            "node-b",
            t,
            db(),
            web(),
            false,
            (60_000, 6000),
            InterZone,
            true,
            0.25,
        ),
        row(
            "node-a",
            t,
            web(),
            cache(),
            true,
            (100, 900),
            IntraNode,
            false,
            0.0,
        ),
        row(
            "node-a",
            t,
            web(),
            s3(),
            true,
            (2000, 30_000),
            IntraVpc,
            false,
            0.0,
        ),
        row(
            "node-c",
            t,
            api(),
            db(),
            true,
            (5000, 50_000),
            InterRegion,
            false,
            1.5,
        ),
        row(
            "node-c",
            t,
            api(),
            internet(),
            true,
            (700, 7000),
            PublicInternet,
            false,
            0.05,
        ),
    ]
}

/// 500 workloads in 10 namespaces, each talking to two others: 1000 edges.
fn big_rows(t: i64) -> Vec<FlowRow> {
    let w = |i: usize| {
        (
            format!("10.{}.{}.{}", 10 + i / 250, i % 250, 1 + i % 7),
            pod(&format!("ns{}", i % 10), &format!("w{i}"), "node-a", "a"),
        )
    };
    let classes = [
        Class::IntraZone,
        Class::InterZone,
        Class::InterRegion,
        Class::IntraNode,
    ];
    let mut rows = Vec::new();
    for i in 0..500 {
        for (n, j) in [(i + 1) % 500, (i * 37 + 11) % 500].into_iter().enumerate() {
            let (a, b) = (w(i), w(j));
            let bytes = 1000 * (1 + i as u64 % 50) * (1 + n as u64);
            rows.push(row(
                "node-a",
                t,
                (&a.0, a.1),
                (&b.0, b.1),
                true,
                (bytes, 10 * bytes),
                classes[(i + n) % 4],
                false,
                0.001 * n as f64,
            ));
        }
    }
    rows
}

/// Serves the router on 127.0.0.1 over a store holding `rows`.
async fn serve(rows: &[FlowRow]) -> (SocketAddr, tempfile::TempDir) {
    serve_with_probes(rows, None).await
}

/// As [`serve`], with a probe store holding `probes` when given.
async fn serve_with_probes(
    rows: &[FlowRow],
    probes: Option<&[ProbeRow]>,
) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("podflow.sqlite");
    SqliteStore::open(&path)
        .expect("open")
        .write(rows)
        .expect("write");
    let probes = probes.map(|p| {
        let path = dir.path().join("probes.sqlite");
        let mut w = SqliteProbeStore::open(&path).expect("open probes");
        w.write_probes(p).expect("write probes");
        let r: Box<dyn ProbeStore> = Box::new(SqliteProbeStore::open(&path).expect("open probes"));
        std::sync::Mutex::new(r)
    });
    let state = Arc::new(AppState {
        exposition: Arc::new(common::Quiet),
        store: StoreReader::sqlite(path),
        interval_s: 10,
        probes,
        billing: None,
        on_demand: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router(state).into_make_service()).await });
    (addr, dir)
}

/// A GET over HTTP/1.0: (status, headers lower-cased, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
        let mut r = Vec::new();
        s.read_to_end(&mut r).expect("read");
        let split = r
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers");
        let head = String::from_utf8_lossy(&r[..split]).to_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        (status, head, r[split + 4..].to_vec())
    })
    .await
    .expect("client")
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (s, _, body) = get(addr, path).await;
    assert_eq!(s, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json")
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PODFLOW_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// Headless, and 127.0.0.1 only: no background networking, updates or sync, and every
/// host name and every other address resolves to nothing.
const CHROMIUM_FLAGS: [&str; 14] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1400,900",
    "--hide-scrollbars",
    "--lang=en-US",
];

/// Runs headless Chromium on `url` with `extra` flags; returns stdout.
fn run_chromium(bin: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(bin)
        .args(CHROMIUM_FLAGS)
        .arg("--virtual-time-budget=10000")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.success(),
        "chromium failed on {url}: {status}\n{err}"
    );
    if std::env::var_os("PODFLOW_UI_TEST_VERBOSE").is_some() {
        eprintln!("chromium on {url}:\n{err}");
    }
    reader.join().expect("reader").expect("read stdout")
}

/// What the page rendered: its DOM, and the JSON it published in `#podflow-state`.
struct Page {
    dom: String,
    state: Value,
}

async fn load(bin: &Path, url: String, screenshot: Option<PathBuf>) -> Page {
    let bin = bin.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Some(path) = screenshot {
            run_chromium(&bin, &url, &[format!("--screenshot={}", path.display())]);
            assert!(
                std::fs::metadata(&path)
                    .map(|m| m.len() > 10_000)
                    .unwrap_or(false),
                "no screenshot at {}",
                path.display()
            );
        }
        let dom = run_chromium(&bin, &url, &["--dump-dom".to_string()]);
        assert!(
            dom.contains(r#"data-ready="true""#),
            "the page did not finish rendering {url}:\n{dom}"
        );
        let start = dom
            .find(r#"id="podflow-state">"#)
            .map(|i| i + r#"id="podflow-state">"#.len())
            .expect("#podflow-state");
        let end = start + dom[start..].find("</script>").expect("end of state");
        let state: Value = serde_json::from_str(&dom[start..end]).expect("state json");
        assert!(
            state["error"].is_null(),
            "the page reported: {}",
            state["error"]
        );
        Page { dom, state }
    })
    .await
    .expect("chromium task")
}

fn unescape(s: &str) -> String {
    s.replace("&gt;", ">")
        .replace("&lt;", "<")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the first tag at or after `from` in `html`.
fn attr(html: &str, name: &str) -> Option<String> {
    let pat = format!(" {name}=\"");
    let i = html.find(&pat)? + pat.len();
    let j = html[i..].find('"')?;
    Some(unescape(&html[i..i + j]))
}

/// The `#talkers` body rows as (data-src, data-dst, data-class, bytes src->dst, bytes dst->src).
fn talker_rows(dom: &str) -> Vec<(String, String, String, u64, u64)> {
    let table = &dom[dom.find(r#"id="talkers""#).expect("#talkers")..];
    let body =
        &table[table.find("<tbody>").expect("tbody")..table.find("</tbody>").expect("/tbody")];
    body.split("<tr ")
        .skip(1)
        .map(|tr| {
            // `attr` looks for ` name="`: give the first attribute its space back.
            let tr = &format!(" {tr}");
            let num = |field: &str| -> u64 {
                let at = tr.find(&format!(r#"data-field="{field}""#)).expect("field");
                attr(&tr[at..], "data-value")
                    .and_then(|v| v.parse().ok())
                    .expect("value")
            };
            (
                attr(tr, "data-src").expect("data-src"),
                attr(tr, "data-dst").expect("data-dst"),
                attr(tr, "data-class").expect("data-class"),
                num("bytes_src_to_dst"),
                num("bytes_dst_to_src"),
            )
        })
        .collect()
}

fn tile_bytes(dom: &str, id: &str) -> u64 {
    let at = dom.find(&format!(r#"id="tile-{id}""#)).expect("tile");
    attr(&dom[at..], "data-bytes")
        .and_then(|v| v.parse().ok())
        .expect("data-bytes")
}

fn ids(v: &Value, what: &str) -> BTreeSet<String> {
    v[what]
        .as_array()
        .expect(what)
        .iter()
        .map(|x| x["id"].as_str().expect("id").to_string())
        .collect()
}

fn edge<'a>(state: &'a Value, id: &str) -> &'a Value {
    state["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no edge {id} in {}", state["edges"]))
}

/// The page's talkers equal the API's rows (numbers compared as numbers: the page
/// round-trips them through JavaScript).
fn assert_same_rows(page: &Value, api: &Value) {
    let (p, a) = (
        page.as_array().expect("page rows"),
        api.as_array().expect("api rows"),
    );
    assert_eq!(p.len(), a.len(), "page {page}\napi {api}");
    for (p, a) in p.iter().zip(a) {
        assert_eq!(p["key"], a["key"]);
        for f in [
            "bytes_src_to_dst",
            "bytes_dst_to_src",
            "packets_src_to_dst",
            "packets_dst_to_src",
            "connections",
            "connections_closed",
            "cost_usd",
        ] {
            assert_eq!(p[f].as_f64(), a[f].as_f64(), "{f} of {}", a["key"]);
        }
    }
}

fn talkers_query(from: i64, extra: &str) -> String {
    format!(
        "/api/v1/query?group_by=src_namespace,src_workload,dst_namespace,dst_workload,class&limit=50&from={from}{extra}"
    )
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_types_and_cache_headers() {
    let (addr, _dir) = serve(&[]).await;
    for (path, ty, cache) in [
        ("/", "text/html; charset=utf-8", "no-cache"),
        (
            "/ui/app.js",
            "text/javascript; charset=utf-8",
            "max-age=300",
        ),
        ("/ui/app.css", "text/css; charset=utf-8", "max-age=300"),
        (
            "/ui/vendor/cytoscape-3.34.4.min.js",
            "text/javascript; charset=utf-8",
            "immutable",
        ),
    ] {
        let (s, head, body) = get(addr, path).await;
        assert_eq!(s, 200, "{path}");
        assert!(
            head.contains(&format!("content-type: {ty}")),
            "{path}: {head}"
        );
        assert!(
            head.contains("cache-control: ") && head.contains(cache),
            "{path}: {head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    let (_, _, page) = get(addr, "/").await;
    assert!(String::from_utf8_lossy(&page).contains(r#"<div id="map""#));
    let (_, _, lib) = get(addr, "/ui/vendor/cytoscape-3.34.4.min.js").await;
    let vendored =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/vendor/cytoscape.min.js"))
            .expect("vendored file");
    assert_eq!(lib, vendored);
    assert_eq!(get(addr, "/ui/nope.js").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_map_talkers_and_summary_from_the_api() {
    let Some(bin) = chromium() else {
        podflow_testkit::skip(
            "the web UI test",
            "needs Chromium (apt-get install -y chromium) or PODFLOW_CHROMIUM=/path/to/chromium",
        );
        return;
    };
    let t = recent();
    let (addr, _dir) = serve(&small_rows(t)).await;
    let base = format!("http://{addr}/");
    let from = now() - 3600;

    // Default view (last hour, count once), with an edge selected as if clicked.
    let shot = artifacts().join("ui.png");
    let page = load(
        &bin,
        format!("{base}?select=shop%2Fweb-%3Eshop%2Fdb"),
        Some(shot.clone()),
    )
    .await;
    let s = &page.state;
    assert_eq!(
        ids(s, "nodes"),
        [
            "S3",
            "billing/api",
            "internet",
            "shop/cache",
            "shop/db",
            "shop/web"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        ids(s, "edges"),
        [
            "billing/api->internet",
            "billing/api->shop/db",
            "shop/web->S3",
            "shop/web->shop/cache",
            "shop/web->shop/db",
        ]
        .map(String::from)
        .into()
    );
    for (id, out, back, class, color, conns, cost) in [
        (
            "shop/web->shop/db",
            6000,
            60_000,
            "INTER_ZONE",
            "#e8890c",
            2,
            0.25,
        ),
        (
            "shop/web->shop/cache",
            100,
            900,
            "INTRA_NODE",
            "#2e9e44",
            2,
            0.0,
        ),
        ("shop/web->S3", 2000, 30_000, "INTRA_VPC", "#e8890c", 2, 0.0),
        (
            "billing/api->shop/db",
            5000,
            50_000,
            "INTER_REGION",
            "#d62728",
            2,
            1.5,
        ),
        (
            "billing/api->internet",
            700,
            7000,
            "PUBLIC_INTERNET",
            "#d62728",
            2,
            0.05,
        ),
    ] {
        let e = edge(s, id);
        assert_eq!(e["bytes_src_to_dst"], out, "{id}");
        assert_eq!(e["bytes_dst_to_src"], back, "{id}");
        assert_eq!(e["class"], class, "{id}");
        assert_eq!(e["color"], color, "{id}");
        assert_eq!(e["connections"], conns, "{id}");
        assert_eq!(e["cost_usd"].as_f64(), Some(cost), "{id}");
    }
    assert_eq!(s["layout"], "cose");
    assert_eq!(s["namespaces"], serde_json::json!(["billing", "shop"]));
    // The map canvas exists: cytoscape drew into #map.
    let map = &page.dom[page.dom.find(r#"id="map""#).expect("#map")..];
    assert!(map[..map.find("</main>").expect("main")].contains("<canvas"));

    // The talkers table is /api/v1/query's answer, row for row, largest first.
    let api = get_json(addr, &talkers_query(from, "")).await;
    assert_same_rows(&s["talkers"], &api["rows"]);
    let rows = talker_rows(&page.dom);
    let want: Vec<_> = api["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let end = |side: &str| {
                format!(
                    "{}/{}",
                    r["key"][format!("{side}_namespace")].as_str().expect("ns"),
                    r["key"][format!("{side}_workload")].as_str().expect("wl")
                )
                .trim_start_matches('/')
                .to_string()
            };
            (
                end("src"),
                end("dst"),
                r["key"]["class"].as_str().expect("class").to_string(),
                r["bytes_src_to_dst"].as_u64().expect("bytes"),
                r["bytes_dst_to_src"].as_u64().expect("bytes"),
            )
        })
        .collect();
    assert_eq!(rows, want);
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows[0],
        (
            "shop/web".into(),
            "shop/db".into(),
            "INTER_ZONE".into(),
            6000,
            60_000
        )
    );

    // Summary tiles: bytes by class, and cloud services from dst_kind=cloud_range.
    for (tile, bytes) in [
        ("total", 66_000 + 1000 + 32_000 + 55_000 + 7700),
        ("same-zone", 1000),
        ("cross-zone", 66_000),
        ("inter-region", 55_000),
        ("internet", 7700),
        ("cloud-services", 32_000),
        ("vpc", 32_000),
        ("unknown", 0),
    ] {
        assert_eq!(tile_bytes(&page.dom, tile), bytes, "tile {tile}");
    }
    assert_eq!(
        s["summary"]["cloud_services"]["S3"]["bytes"].as_u64(),
        Some(32_000)
    );

    // The selected edge's details.
    let details = &page.dom[page.dom.find(r#"id="details""#).expect("#details")..];
    assert_eq!(
        attr(details, "data-selected").as_deref(),
        Some("shop/web->shop/db")
    );
    for (field, value) in [
        ("bytes_src_to_dst", "6000"),
        ("bytes_dst_to_src", "60000"),
        ("connections", "2"),
        ("cost_usd", "0.25"),
        ("class", "INTER_ZONE"),
    ] {
        let at = details
            .find(&format!(r#"data-field="{field}""#))
            .unwrap_or_else(|| panic!("details has no {field}"));
        assert_eq!(
            attr(&details[at..], "data-value").as_deref(),
            Some(value),
            "{field}"
        );
    }

    // Namespace filter: only edges touching `billing`.
    let page = load(&bin, format!("{base}?namespace=billing"), None).await;
    let s = &page.state;
    assert_eq!(
        ids(s, "nodes"),
        ["billing/api", "internet", "shop/db"]
            .map(String::from)
            .into()
    );
    assert_eq!(talker_rows(&page.dom).len(), 2);
    assert_eq!(tile_bytes(&page.dom, "total"), 55_000 + 7700);
    assert_eq!(tile_bytes(&page.dom, "cloud-services"), 0);
    let api_b = get_json(addr, &talkers_query(from, "&src_namespace=billing")).await;
    assert_same_rows(&s["talkers"], &api_b["rows"]);

    // Raw view: both nodes' reports of shop/web -> shop/db count.
    let page = load(&bin, format!("{base}?view=raw&range=900"), None).await;
    let s = &page.state;
    let e = edge(s, "shop/web->shop/db");
    assert_eq!(e["bytes_src_to_dst"], 12_000);
    assert_eq!(e["bytes_dst_to_src"], 120_000);
    assert_eq!(e["connections"], 4);
    assert_eq!(s["window"]["view"], "raw");
    let api_raw = get_json(addr, &talkers_query(now() - 900, "&view=raw")).await;
    assert_same_rows(&s["talkers"], &api_raw["rows"]);
    assert_eq!(tile_bytes(&page.dom, "cross-zone"), 132_000);
    eprintln!("screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_draws_500_workloads() {
    let Some(bin) = chromium() else {
        podflow_testkit::skip("the 500-workload UI test", "needs Chromium");
        return;
    };
    let (addr, _dir) = serve(&big_rows(recent())).await;
    let shot = artifacts().join("ui-500.png");
    let (small_addr, _small) = serve(&small_rows(recent())).await;
    let started = Instant::now();
    load(
        &bin,
        format!("http://{small_addr}/"),
        Some(artifacts().join("ui-small.png")),
    )
    .await;
    let small = started.elapsed();
    if std::env::var_os("UPDATE_DOCS_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ui.png");
        std::fs::copy(artifacts().join("ui-small.png"), docs).expect("docs/ui.png");
    }
    let started = Instant::now();
    let page = load(&bin, format!("http://{addr}/"), Some(shot)).await;
    let wall = started.elapsed();
    let s = &page.state;
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(500));
    assert_eq!(s["edges"].as_array().map(Vec::len), Some(1000));
    assert_eq!(s["layout"], "namespace-clusters");
    assert_eq!(talker_rows(&page.dom).len(), 50);
    assert_eq!(s["namespaces"].as_array().map(Vec::len), Some(10));
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    for e in s["edges"].as_array().expect("edges") {
        *by_class
            .entry(e["class"].as_str().expect("class"))
            .or_default() += 1;
    }
    assert_eq!(by_class.values().sum::<usize>(), 1000);
    assert_eq!(by_class.len(), 4, "{by_class:?}");
    // Chromium's virtual time also stops the page's clock (`render_ms` reads 0 there), so
    // the bound is on the wall time of the two runs, startup included.
    eprintln!(
        "500 workloads, 1000 edges: two Chromium runs (screenshot + DOM) took {wall:?}; \
         the 6-workload page took {small:?}"
    );
    assert!(
        wall < Duration::from_secs(60),
        "drawing 500 workloads took {wall:?}"
    );
}

/// A W3C WebDriver session on Debian's `chromedriver`, spoken over plain HTTP on 127.0.0.1.
struct Driver {
    child: std::process::Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// W3C's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Driver {
    fn find() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("PODFLOW_CHROMEDRIVER") {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("chromedriver"))
            .find(|p| p.is_file())
    }

    fn start(driver: &Path, chromium: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut d = Driver {
            child,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.http("GET", "/status", None).is_none() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", d._profile.path().display()));
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let r = d
            .http("POST", "/session", Some(&caps))
            .expect("new session");
        d.session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        d
    }

    /// One request; `None` when chromedriver is not listening (yet).
    fn http(&self, method: &str, path: &str, body: Option<&Value>) -> Option<Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .ok()?;
        // chromedriver may keep the connection open: read what Content-Length says.
        s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
        let mut r = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if let Some(at) = r.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&r[..at]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())?;
                if r.len() >= at + 4 + len {
                    return serde_json::from_slice(&r[at + 4..at + 4 + len]).ok();
                }
            }
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            r.extend_from_slice(&buf[..n]);
        }
    }

    /// A session command; panics with WebDriver's error message.
    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        if std::env::var_os("PODFLOW_UI_TEST_VERBOSE").is_some() {
            eprintln!("webdriver: {method} {path} {body}");
        }
        let r = self
            .http(method, &path, Some(&body))
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        if let Some(e) = r["value"]["error"].as_str() {
            panic!("{method} {path}: {e}: {}", r["value"]["message"]);
        }
        r["value"].clone()
    }

    fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            serde_json::json!({"script": script, "args": args}),
        )
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.exec(
            "return document.body.dataset.ready === 'true'",
            serde_json::json!([]),
        ) != Value::Bool(true)
        {
            assert!(Instant::now() < deadline, "the page never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let err = self.exec("return window.podflow.error", serde_json::json!([]));
        assert!(err.is_null(), "the page reported: {err}");
    }

    /// A real mouse click on the map element `id` (a node's centre, an edge's midpoint).
    fn click_map(&self, id: &str) {
        let p = self.exec(
            "return window.podflow.viewportPosition(arguments[0])",
            serde_json::json!([id]),
        );
        assert!(p.is_object(), "{id} is not drawn");
        let pointer = serde_json::json!({"actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "duration": 0, "origin": "viewport", "x": p["x"], "y": p["y"]},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0},
            ],
        }]});
        self.cmd("POST", "/actions", pointer);
    }

    fn click(&self, css: &str) {
        let e = self.cmd(
            "POST",
            "/element",
            serde_json::json!({"using": "css selector", "value": css}),
        );
        let id = e[ELEMENT].as_str().expect("element id").to_string();
        self.cmd(
            "POST",
            &format!("/element/{id}/click"),
            serde_json::json!({}),
        );
    }

    /// The details panel: (selected id, field -> value).
    fn details(&self) -> (String, BTreeMap<String, String>) {
        let v = self.exec(
            "const d = document.getElementById('details');
             return [d.dataset.selected ?? '',
                     [...d.querySelectorAll('dd')].map(e => [e.dataset.field, e.dataset.value])];",
            serde_json::json!([]),
        );
        let fields = v[1]
            .as_array()
            .expect("fields")
            .iter()
            .map(|f| {
                (
                    f[0].as_str().unwrap_or_default().to_string(),
                    f[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        (v[0].as_str().unwrap_or_default().to_string(), fields)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.http("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_in_chromium_show_details_and_the_controls_refetch() {
    let (Some(chromium), Some(driver)) = (chromium(), Driver::find()) else {
        podflow_testkit::skip(
            "the UI click test",
            "needs Chromium and chromedriver (apt-get install -y chromium chromium-driver)",
        );
        return;
    };
    let (addr, _dir) = serve(&small_rows(recent())).await;
    tokio::task::spawn_blocking(move || {
        let d = Driver::start(&driver, &chromium);
        d.cmd(
            "POST",
            "/url",
            serde_json::json!({"url": format!("http://{addr}/")}),
        );
        d.wait_ready();
        let field = |f: &BTreeMap<String, String>, k: &str| f.get(k).cloned().unwrap_or_default();

        // A workload: its totals over every edge it has.
        d.click_map("shop/web");
        let (sel, f) = d.details();
        assert_eq!(sel, "shop/web");
        assert_eq!(field(&f, "sent"), (6000 + 100 + 2000).to_string());
        assert_eq!(field(&f, "received"), (60_000 + 900 + 30_000).to_string());
        assert_eq!(field(&f, "connections"), "6");
        assert_eq!(field(&f, "cost_usd"), "0.25");
        assert_eq!(field(&f, "peers"), "3");

        // An edge: bytes each way, class, connections, cost.
        d.click_map("billing/api->shop/db");
        let (sel, f) = d.details();
        assert_eq!(sel, "billing/api->shop/db");
        assert_eq!(field(&f, "bytes_src_to_dst"), "5000");
        assert_eq!(field(&f, "bytes_dst_to_src"), "50000");
        assert_eq!(field(&f, "class"), "INTER_REGION");
        assert_eq!(field(&f, "connections"), "2");
        assert_eq!(field(&f, "cost_usd"), "1.5");

        // A top-talkers row selects its edge.
        d.click("#talkers tbody tr[data-src='shop/web'][data-dst='S3']");
        let (sel, f) = d.details();
        assert_eq!(sel, "shop/web->S3");
        assert_eq!(field(&f, "bytes_dst_to_src"), "30000");

        // The namespace filter refetches and redraws.
        d.click("#namespace option[value='billing']");
        d.wait_ready();
        let nodes = d.exec(
            "return window.podflow.nodes.map(n => n.id).sort()",
            serde_json::json!([]),
        );
        assert_eq!(
            nodes,
            serde_json::json!(["billing/api", "internet", "shop/db"])
        );
        let search = d.exec("return location.search", serde_json::json!([]));
        assert_eq!(search, "?namespace=billing");

        // The range picker: 15 minutes, still filtered.
        d.click("#range option[value='900']");
        d.wait_ready();
        let w = d.exec("return window.podflow.window", serde_json::json!([]));
        let span = w["to"].as_i64().expect("to") - w["from"].as_i64().expect("from");
        assert!((900..=902).contains(&span), "{w}");
        assert_eq!(w["namespace"], "billing");
        let rows = d.exec(
            "return document.querySelectorAll('#talkers tbody tr').length",
            serde_json::json!([]),
        );
        assert_eq!(rows, 2);
    })
    .await
    .expect("webdriver session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_once_and_sends_it() {
    let (Some(chromium), Some(driver)) = (chromium(), Driver::find()) else {
        podflow_testkit::skip(
            "the UI token test",
            "needs Chromium and chromedriver (apt-get install -y chromium chromium-driver)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("podflow.sqlite");
    SqliteStore::open(&path)
        .expect("open")
        .write(&small_rows(recent()))
        .expect("write");
    let token = dir.path().join("token");
    std::fs::write(&token, "ui-s3cret\n").expect("token");
    let state = Arc::new(AppState {
        exposition: Arc::new(common::Quiet),
        store: StoreReader::sqlite(path),
        interval_s: 10,
        probes: None,
        billing: None,
        on_demand: None,
    });
    let policy = podflow_api::HttpPolicy {
        token: Some(Arc::new(
            podflow_api::TokenFile::open(&token).expect("token file"),
        )),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = podflow_api::router_with(state, &policy);
    tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });
    tokio::task::spawn_blocking(move || {
        let d = Driver::start(&driver, &chromium);
        d.cmd(
            "POST",
            "/url",
            serde_json::json!({"url": format!("http://{addr}/")}),
        );
        // The page's first queries get 401: one prompt asks for the token.
        let alert = format!("/session/{}/alert/text", d.session);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = d.http("GET", &alert, None).unwrap_or_default();
            if let Some(t) = text["value"].as_str() {
                assert!(t.contains("bearer token"), "{t}");
                break;
            }
            assert!(Instant::now() < deadline, "no prompt for the token: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
        d.cmd(
            "POST",
            "/alert/text",
            serde_json::json!({"text": "ui-s3cret"}),
        );
        d.cmd("POST", "/alert/accept", serde_json::json!({}));
        d.wait_ready();
        let rows = d.exec(
            "return document.querySelectorAll('#talkers tbody tr').length",
            serde_json::json!([]),
        );
        assert!(rows.as_u64().is_some_and(|n| n > 0), "{rows}");
        let kept = d.exec(
            "return sessionStorage.getItem('podflow-token')",
            serde_json::json!([]),
        );
        assert_eq!(kept, "ui-s3cret");
    })
    .await
    .expect("webdriver session");
}

/// Probe history beside [`small_rows`]: node-a → node-b loses 10% of its UDP packets
/// (5 of 50), node-b → node-a none, node-c → node-b has TCP failures only (no UDP: no
/// loss figure), node-a → node-c has probes and no traffic.
fn probe_rows(t: i64) -> Vec<ProbeRow> {
    let row = |src: (&str, &str),
               dst: (&str, &str),
               kind: &str,
               count,
               failures,
               sent,
               lost,
               bucket: usize| {
        let mut buckets = vec![0; BUCKETS];
        let samples = sent - lost;
        buckets[bucket] = samples;
        ProbeRow {
            interval_start: t,
            interval_s: 10,
            src_node: src.0.into(),
            src_zone: src.1.into(),
            dst_node: dst.0.into(),
            dst_zone: dst.1.into(),
            kind: kind.into(),
            dns_name: String::new(),
            count,
            failures,
            unavailable: 0,
            sent,
            lost,
            rtt_count: samples,
            rtt_sum_ns: samples * 1_000_000,
            rtt_min_ns: 900_000,
            rtt_max_ns: 1_100_000,
            buckets,
        }
    };
    let (a, b, c) = (("node-a", "a"), ("node-b", "b"), ("node-c", "c"));
    vec![
        row(a, b, "udp", 10, 1, 50, 5, 6),
        row(b, a, "udp", 10, 0, 50, 0, 3),
        row(c, b, "tcp", 10, 2, 10, 2, 4),
        row(a, c, "udp", 10, 0, 50, 0, 5),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_matrix_and_the_edge_details_show_probe_health_beside_bytes_and_cost() {
    let (Some(chromium), Some(driver)) = (chromium(), Driver::find()) else {
        podflow_testkit::skip(
            "the UI zone matrix test",
            "needs Chromium and chromedriver (apt-get install -y chromium chromium-driver)",
        );
        return;
    };
    let t = recent();
    let (addr, _dir) = serve_with_probes(&small_rows(t), Some(&probe_rows(t))).await;
    let (page, window) = tokio::task::spawn_blocking(move || {
        let d = Driver::start(&driver, &chromium);
        d.cmd(
            "POST",
            "/url",
            serde_json::json!({"url": format!("http://{addr}/")}),
        );
        d.wait_ready();
        let cells = |sel: &str| {
            d.exec(
                "return [...document.querySelectorAll(arguments[0])].map(e => ({...e.dataset, text: e.innerText}))",
                serde_json::json!([sel]),
            )
        };
        let matrix = cells("#zone-matrix td.cell");
        let window = d.exec("return window.podflow.zones", serde_json::json!([]));
        d.click("#zone-matrix td.cell[data-src='a'][data-dst='b']");
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.exec(
            "return document.getElementById('zone-pairs').dataset.ready === 'true'",
            serde_json::json!([]),
        ) != Value::Bool(true)
        {
            assert!(Instant::now() < deadline, "the node pairs never showed");
            std::thread::sleep(Duration::from_millis(100));
        }
        let nodes = cells("#node-pairs tbody tr");
        let heading = d.exec(
            "return document.querySelector('#zone-pairs h3').innerText",
            serde_json::json!([]),
        );
        // Probe health in an edge's details: the node pairs its traffic crossed.
        let health = |edge: &str| {
            // The matrix click scrolled the page: the map back in view.
            d.exec("window.scrollTo(0, 0)", serde_json::json!([]));
            d.click_map(edge);
            let deadline = Instant::now() + Duration::from_secs(20);
            while d.exec(
                "const h = document.getElementById('edge-health');
                 return !!h && h.dataset.ready === 'true' && document.getElementById('details').dataset.selected === arguments[0]",
                serde_json::json!([edge]),
            ) != Value::Bool(true)
            {
                assert!(Instant::now() < deadline, "no probe health for {edge}");
                std::thread::sleep(Duration::from_millis(100));
            }
            (
                cells("#edge-health dd.probe-pair"),
                d.exec(
                    "return document.getElementById('edge-health').innerText",
                    serde_json::json!([]),
                ),
            )
        };
        let edges = [
            health("shop/web->shop/db"),
            health("billing/api->shop/db"),
            health("shop/web->S3"),
        ];
        ((matrix, nodes, heading, edges), window)
    })
    .await
    .expect("webdriver session");
    let (matrix, nodes, heading, edges) = page;
    let cell = |src: &str, dst: &str| -> &Value {
        matrix
            .as_array()
            .expect("cells")
            .iter()
            .find(|c| c["src"] == src && c["dst"] == dst)
            .unwrap_or_else(|| panic!("no cell {src} -> {dst}: {matrix}"))
    };
    // From the rows written: web -> db (zone a -> b) seen by both nodes, counted once.
    let ab = cell("a", "b");
    assert_eq!(ab["bytes"], "66000", "{ab}");
    assert_eq!(ab["cost"], "0.25", "{ab}");
    assert_eq!(ab["loss"], "0.1", "{ab}");
    assert_eq!(ab["failures"], "1", "{ab}");
    let text = ab["text"].as_str().expect("text");
    assert!(
        text.contains("64.5 KiB") && text.contains("$0.25") && text.contains("loss 10.0%"),
        "{text}"
    );
    let cb = cell("c", "b");
    assert_eq!(cb["bytes"], "55000", "{cb}");
    assert_eq!(cb["cost"], "1.5", "{cb}");
    assert_eq!(cb["loss"], "", "TCP only: no loss figure: {cb}");
    assert_eq!(cb["failures"], "2", "{cb}");
    assert_eq!(cell("a", "a")["bytes"], "1000");
    let ac = cell("a", "c");
    assert_eq!(
        (ac["bytes"].as_str(), ac["loss"].as_str()),
        (Some("0"), Some("0")),
        "{ac}"
    );
    assert_eq!(
        matrix.as_array().map(Vec::len),
        Some(5),
        "a-a, a-b, a-c, b-a, c-b: {matrix}"
    );
    // Every cell is the API's answer for the same window.
    let api = get_json(
        addr,
        &format!(
            "/api/v1/pairs?level=zone&from={}&to={}",
            window["from"], window["to"]
        ),
    )
    .await;
    let mut n = 0;
    for p in api["pairs"].as_array().expect("pairs") {
        let (src, dst) = (
            p["src"].as_str().expect("src"),
            p["dst"].as_str().expect("dst"),
        );
        if src.is_empty() || dst.is_empty() {
            continue;
        }
        n += 1;
        let c = cell(src, dst);
        let bytes =
            p["bytes_src_to_dst"].as_u64().expect("b") + p["bytes_dst_to_src"].as_u64().expect("b");
        assert_eq!(c["bytes"], bytes.to_string(), "{src}->{dst}");
        let num = |v: &Value| v.as_f64().map(|f| f.to_string()).unwrap_or_default();
        assert_eq!(
            c["rttP50"],
            num(&p["rtt_p50_seconds"]),
            "{src}->{dst}: {c} vs {p}"
        );
        assert_eq!(c["loss"], num(&p["loss"]), "{src}->{dst}");
    }
    assert_eq!(n, 5);
    assert!(
        ab["rttP50"]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0),
        "{ab}"
    );
    // The click: that zone pair's node pairs only.
    assert_eq!(heading, "a → b: node pairs");
    let rows = nodes.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{nodes}");
    let r = &rows[0];
    assert_eq!(
        (r["src"].as_str(), r["dst"].as_str()),
        (Some("node-a"), Some("node-b")),
        "{r}"
    );
    assert_eq!(r["bytes"], "66000");
    assert_eq!(r["loss"], "0.1");
    assert_eq!(r["failures"], "1");
    assert_eq!(
        r["rttP50"], ab["rttP50"],
        "one node pair: its RTT is the zone pair's"
    );
    // Edge details: web -> db crossed node-a -> node-b (10% loss, one failure).
    let (pairs, text) = &edges[0];
    let pairs = pairs.as_array().expect("pairs");
    assert_eq!(pairs.len(), 1, "{text}");
    let p = &pairs[0];
    assert_eq!(
        (p["src"].as_str(), p["dst"].as_str(), p["level"].as_str()),
        (Some("node-a"), Some("node-b"), Some("node")),
        "{p}"
    );
    assert_eq!(p["loss"], "0.1");
    assert_eq!(p["failures"], "1");
    assert_eq!(p["rttP50"], ab["rttP50"]);
    assert!(
        text.as_str()
            .is_some_and(|t| t.contains("loss 10.0%") && t.contains("1 failed")),
        "{text}"
    );
    // api -> db: node-c -> node-b has TCP failures only: no loss figure.
    let (pairs, text) = &edges[1];
    let p = &pairs.as_array().expect("pairs")[0];
    assert_eq!(
        (p["src"].as_str(), p["dst"].as_str()),
        (Some("node-c"), Some("node-b")),
        "{text}"
    );
    assert_eq!(p["loss"], "");
    assert_eq!(p["failures"], "2");
    // web -> S3: no node at the other end, no zone pair with probes.
    let (pairs, text) = &edges[2];
    assert_eq!(pairs.as_array().map(Vec::len), Some(0), "{text}");
    assert!(
        text.as_str().is_some_and(|t| t.contains("No probe data")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_over_time_by_class_are_drawn_per_minute_from_the_rows() {
    let Some(chromium) = chromium() else {
        podflow_testkit::skip(
            "the UI time-series test",
            "needs Chromium (apt-get install -y chromium)",
        );
        return;
    };
    // The same traffic in two intervals three minutes apart.
    let t = recent();
    let mut rows = small_rows(t);
    rows.extend(small_rows(t - 180));
    let (addr, _dir) = serve(&rows).await;
    let page = load(&chromium, format!("http://{addr}/"), None).await;
    let series = &page.state["series"];
    assert_eq!(series["dim"], "time_1m", "{series}");
    let buckets = series["buckets"].as_array().expect("buckets");
    let starts: Vec<i64> = buckets
        .iter()
        .map(|b| b["t"].as_i64().expect("t"))
        .collect();
    assert_eq!(starts, [(t - 180) / 60 * 60, t / 60 * 60], "{series}");
    for b in buckets {
        // Counted once: web -> db 66000, web -> cache 1000, web -> S3 32000, api -> db
        // 55000, api -> internet 7700.
        assert_eq!(b["total"], 161_700, "{b}");
        assert_eq!(b["by_class"]["INTER_ZONE"], 66_000, "{b}");
        assert_eq!(b["by_class"]["INTER_REGION"], 55_000, "{b}");
        assert_eq!(b["by_class"]["PUBLIC_INTERNET"], 7700, "{b}");
    }
    // The drawn bars: one per bucket and class, each with the API's bytes.
    let api = get_json(
        addr,
        &format!(
            "/api/v1/query?group_by=time_1m,class&from={}&limit=10000",
            page.state["window"]["from"]
        ),
    )
    .await;
    let mut want: Vec<(String, String, String)> = api["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let b = r["bytes_src_to_dst"].as_u64().expect("b")
                + r["bytes_dst_to_src"].as_u64().expect("b");
            (
                r["key"]["time_1m"].as_str().expect("t").to_string(),
                r["key"]["class"].as_str().expect("class").to_string(),
                b.to_string(),
            )
        })
        .collect();
    want.sort();
    let mut drawn = Vec::new();
    let mut rest = page.dom.as_str();
    while let Some(i) = rest.find("<rect ") {
        rest = &rest[i + 6..];
        let tag = &rest[..rest.find('>').expect("end of rect")];
        if let (Some(t), Some(c), Some(b)) = (
            attr(tag, "data-t"),
            attr(tag, "data-class"),
            attr(tag, "data-bytes"),
        ) {
            drawn.push((t, c, b));
        }
    }
    drawn.sort();
    assert_eq!(drawn.len(), 10, "two minutes, five classes: {drawn:?}");
    assert_eq!(drawn, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hide_probe_traffic_leaves_the_probes_own_flows_out_of_the_page() {
    let Some(chromium) = chromium() else {
        podflow_testkit::skip(
            "the UI probe-traffic switch test",
            "needs Chromium (apt-get install -y chromium)",
        );
        return;
    };
    let t = recent();
    let mut rows = small_rows(t);
    // The probes' own traffic: node-a -> node-b, both ends labelled podflow-probe.
    let node = |name: &str, zone: &str| EndLabels {
        kind: "node",
        name: name.into(),
        node: name.into(),
        zone: zone.into(),
        app: podflow_model::PROBE_APP.into(),
        ..Default::default()
    };
    rows.push(row(
        "node-a",
        t,
        ("10.0.0.1", node("node-a", "a")),
        ("10.0.0.2", node("node-b", "b")),
        true,
        (4000, 4000),
        Class::InterZone,
        true,
        0.01,
    ));
    let (addr, _dir) = serve(&rows).await;
    let ids = |s: &Value| {
        let mut v: Vec<String> = s["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["id"].as_str().expect("id").to_string())
            .collect();
        v.sort();
        v
    };
    let shown = load(&chromium, format!("http://{addr}/"), None).await;
    let hidden = load(&chromium, format!("http://{addr}/?probes=hide"), None).await;
    assert!(
        ids(&shown.state).contains(&"node-a".to_string()),
        "{:?}",
        ids(&shown.state)
    );
    assert!(
        !ids(&hidden.state).iter().any(|n| n.starts_with("node-")),
        "{:?}",
        ids(&hidden.state)
    );
    assert_eq!(hidden.state["window"]["hide_probes"], true);
    let total = |p: &Page| tile_bytes(&p.dom, "total");
    assert_eq!(total(&shown) - total(&hidden), 8000);
    assert_eq!(total(&hidden), 161_700);
}

/// Traffic through Services from shop/web (zone a), all in the last five minutes: api
/// half across zones with a backend in zone a (avoidable), pay across with none Ready in
/// zone a, cart asking for PreferClose and still crossing, two headless Services.
fn service_rows(t: i64) -> Vec<FlowRow> {
    let web = || ("10.1.0.5", pod("shop", "web", "node-a", "a"));
    let backend = |ip: &'static str, ns: &str, w: &str, zone: &str| {
        (ip, pod(ns, w, &format!("node-{zone}"), zone))
    };
    // (namespace, name, ClusterIP or headless, prefers close, zone local)
    let via = |mut r: FlowRow,
               ns: &str,
               svc: &str,
               cluster_ip: Option<&str>,
               prefers: bool,
               local: Option<bool>| {
        r.key.service = cluster_ip.map(|a| (a.parse().expect("ip"), 80));
        r.labels = Arc::new(FlowLabels {
            service_namespace: ns.into(),
            service_name: svc.into(),
            service_headless: cluster_ip.is_none(),
            service_prefers_close: prefers,
            service_zone_local: local,
            ..FlowLabels::clone(&r.labels)
        });
        r
    };
    use Class::*;
    let r = |remote, out_in, class, cost| {
        row("node-a", t, web(), remote, true, out_in, class, false, cost)
    };
    let (api, pay, cart) = (Some("10.96.0.10"), Some("10.96.0.11"), Some("10.96.0.12"));
    vec![
        via(
            r(
                backend("10.1.0.3", "shop", "api", "a"),
                (100, 900),
                IntraNode,
                0.0,
            ),
            "shop",
            "api",
            api,
            false,
            Some(true),
        ),
        via(
            r(
                backend("10.2.0.3", "shop", "api", "b"),
                (100, 900),
                InterZone,
                0.5,
            ),
            "shop",
            "api",
            api,
            false,
            Some(true),
        ),
        via(
            r(
                backend("10.2.0.4", "shop", "pay", "b"),
                (300, 2700),
                InterZone,
                1.5,
            ),
            "shop",
            "pay",
            pay,
            false,
            Some(false),
        ),
        via(
            r(
                backend("10.2.0.5", "shop", "cart", "b"),
                (40, 360),
                InterZone,
                0.2,
            ),
            "shop",
            "cart",
            cart,
            true,
            Some(true),
        ),
        via(
            r(
                backend("10.1.0.6", "shop", "cart", "a"),
                (60, 540),
                IntraZone,
                0.0,
            ),
            "shop",
            "cart",
            cart,
            true,
            Some(true),
        ),
        via(
            r(
                backend("10.2.0.7", "shop", "db", "b"),
                (200, 1800),
                InterZone,
                1.0,
            ),
            "shop",
            "db",
            None,
            false,
            Some(true),
        ),
        via(
            r(
                backend("10.2.0.8", "kafka", "kafka", "b"),
                (10, 90),
                InterZone,
                0.05,
            ),
            "kafka",
            "kafka",
            None,
            false,
            None,
        ),
    ]
}

/// The `#avoidable` body's Service rows: (group, Service, cross-zone cost, avoidable
/// share, projected monthly saving, prefers close, prefers close but crosses).
fn avoidable_rows(dom: &str) -> Vec<(String, String, f64, f64, f64, bool, bool)> {
    let table = &dom[dom.find(r#"id="avoidable""#).expect("#avoidable")..];
    let body =
        &table[table.find("<tbody>").expect("tbody")..table.find("</tbody>").expect("/tbody")];
    body.split("<tr ")
        .skip(1)
        .map(|tr| format!(" {tr}"))
        .filter(|tr| tr.contains("data-service="))
        .map(|tr| {
            let field = |f: &str, a: &str| -> String {
                let at = tr.find(&format!(r#"data-field="{f}""#)).expect("field");
                attr(&tr[at..], a).expect("value")
            };
            let num = |f: &str| field(f, "data-value").parse::<f64>().expect("number");
            (
                attr(&tr, "data-group").expect("group"),
                attr(&tr, "data-service").expect("service"),
                num("cross_zone_cost_usd"),
                num("avoidable_share"),
                num("projected_monthly_saving_usd"),
                field("prefers_close", "data-value") == "true",
                field("prefers_close", "data-crosses") == "true",
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_avoidable_cross_zone_traffic_per_service() {
    let Some(bin) = chromium() else {
        podflow_testkit::skip("the avoidable-traffic UI test", "needs Chromium");
        return;
    };
    let (addr, _dir) = serve(&service_rows(recent())).await;
    let base = format!("http://{addr}/");
    let page = load(
        &bin,
        base.clone(),
        Some(artifacts().join("ui-avoidable.png")),
    )
    .await;
    let s = &page.state;
    // The saving is scaled from the range the API saw (about the page's hour).
    let range = s["avoidable"]["range_seconds"].as_f64().expect("range");
    assert!((3600.0..3700.0).contains(&range), "{}", s["avoidable"]);
    let month = |cost: f64| cost * 30.0 * 86_400.0 / range;
    let rows = avoidable_rows(&page.dom);
    let want =
        |g: &str, svc: &str, cost: f64, share: f64, saving: f64, close: bool, crosses: bool| {
            (
                g.to_string(),
                svc.to_string(),
                cost,
                share,
                saving,
                close,
                crosses,
            )
        };
    // Most cross-zone cost first, headless Services in their own group.
    assert_eq!(
        rows,
        vec![
            want("services", "shop/pay", 1.5, 0.0, 0.0, false, false),
            want("services", "shop/api", 0.5, 0.5, month(0.5), false, false),
            want("services", "shop/cart", 0.2, 0.4, month(0.2), true, true),
            want("headless", "shop/db", 1.0, 1.0, month(1.0), false, false),
            want("headless", "kafka/kafka", 0.05, 0.0, 0.0, false, false),
        ]
    );
    // The table is the API's answer for the page's window.
    let w = &s["avoidable"];
    let api = get_json(
        addr,
        &format!("/api/v1/cost/services?from={}&to={}", w["from"], w["to"]),
    )
    .await;
    for list in ["services", "headless"] {
        let page_list = w[list].as_array().expect("page list");
        let api_list = api[list].as_array().expect("api list");
        assert_eq!(page_list.len(), api_list.len(), "{list}");
        for (p, a) in page_list.iter().zip(api_list) {
            for f in ["name", "namespace", "headless", "prefers_close_but_crosses"] {
                assert_eq!(p[f], a[f], "{f} of {a}");
            }
            for f in [
                "cross_zone_cost_usd",
                "avoidable_share",
                "avoidable_bytes",
                "bytes",
            ] {
                assert_eq!(p[f].as_f64(), a[f].as_f64(), "{f} of {a}");
            }
        }
    }
    // The group headers, and the default sort shown on its column.
    assert!(page.dom.contains(r#"data-group="headless""#));
    let head = &page.dom[page
        .dom
        .find(r#"data-sort="cross_zone_cost_usd""#)
        .expect("th")..];
    assert_eq!(attr(head, "aria-sort").as_deref(), Some("descending"));

    // Sorted by avoidable share, ascending (from the URL); each group on its own.
    let page = load(
        &bin,
        format!("{base}?avoid_sort=avoidable_share&avoid_dir=ascending"),
        None,
    )
    .await;
    let order: Vec<(String, String)> = avoidable_rows(&page.dom)
        .into_iter()
        .map(|r| (r.0, r.1))
        .collect();
    let pair = |g: &str, s: &str| (g.to_string(), s.to_string());
    assert_eq!(
        order,
        vec![
            pair("services", "shop/pay"),
            pair("services", "shop/cart"),
            pair("services", "shop/api"),
            pair("headless", "kafka/kafka"),
            pair("headless", "shop/db"),
        ]
    );
    // The namespace filter is the Service's.
    let page = load(&bin, format!("{base}?namespace=kafka"), None).await;
    let rows = avoidable_rows(&page.dom);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "kafka/kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicking_a_column_of_the_avoidable_table_sorts_it() {
    let (Some(chromium), Some(driver)) = (chromium(), Driver::find()) else {
        podflow_testkit::skip(
            "the avoidable-table click test",
            "needs Chromium and chromedriver (apt-get install -y chromium chromium-driver)",
        );
        return;
    };
    let (addr, _dir) = serve(&service_rows(recent())).await;
    tokio::task::spawn_blocking(move || {
        let d = Driver::start(&driver, &chromium);
        d.cmd("POST", "/url", serde_json::json!({"url": format!("http://{addr}/")}));
        d.wait_ready();
        let order = || {
            d.exec(
                "return [...document.querySelectorAll('#avoidable tbody tr[data-service]')].map(r => r.dataset.service)",
                serde_json::json!([]),
            )
        };
        let sorted = || {
            d.exec(
                "const th = document.querySelector('#avoidable th[aria-sort]'); return [th.dataset.sort, th.getAttribute('aria-sort')]",
                serde_json::json!([]),
            )
        };
        assert_eq!(order(), serde_json::json!(["shop/pay", "shop/api", "shop/cart", "shop/db", "kafka/kafka"]));
        d.click("#avoidable th[data-sort='avoidable_share']");
        assert_eq!(sorted(), serde_json::json!(["avoidable_share", "descending"]));
        assert_eq!(order(), serde_json::json!(["shop/api", "shop/cart", "shop/pay", "shop/db", "kafka/kafka"]));
        d.click("#avoidable th[data-sort='avoidable_share']");
        assert_eq!(sorted(), serde_json::json!(["avoidable_share", "ascending"]));
        assert_eq!(order(), serde_json::json!(["shop/pay", "shop/cart", "shop/api", "kafka/kafka", "shop/db"]));
        d.click("#avoidable th[data-sort='service']");
        assert_eq!(order(), serde_json::json!(["shop/api", "shop/cart", "shop/pay", "kafka/kafka", "shop/db"]));
        d.click("#avoidable th[data-sort='projected_monthly_saving_usd']");
        assert_eq!(order(), serde_json::json!(["shop/api", "shop/cart", "shop/pay", "shop/db", "kafka/kafka"]));
        let search = d.exec("return location.search", serde_json::json!([]));
        assert_eq!(search, "?avoid_sort=projected_monthly_saving_usd");
    })
    .await
    .expect("webdriver session");
}
