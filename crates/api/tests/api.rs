//! The HTTP API on a store with known rows, compared with golden JSON files
//! (`UPDATE_GOLDEN=1 cargo test -p podflow-api --test api` rewrites them; review the diff).

use std::io::{Read, Write};
use std::sync::Arc;

use podflow_api::{AppState, StoreReader, router};
use podflow_model::{Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, Protocol};
use podflow_store::{FlowStore, SqliteStore};

mod common;
use common::pod;

#[allow(clippy::too_many_arguments)]
fn row(
    observer: &str,
    t: i64,
    local: (&str, EndLabels),
    remote: (&str, EndLabels),
    port: u16,
    initiated: bool,
    out_in: (u64, u64),
    class: Class,
    observed: bool,
) -> FlowRow {
    FlowRow {
        interval_start: t,
        interval_s: 10,
        observer: observer.into(),
        key: FlowKey {
            proto: Protocol::TCP,
            local: local.0.parse().expect("ip"),
            remote: remote.0.parse().expect("ip"),
            responder_port: port,
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
        cost_usd: if class == Class::InterZone { 0.25 } else { 0.0 },
    }
}

fn rows() -> Vec<FlowRow> {
    let web = || ("10.1.0.5", pod("shop", "web", "node-a", "a"));
    let db = || ("10.2.0.7", pod("shop", "db", "node-b", "b"));
    let cache = || ("10.1.0.9", pod("shop", "cache", "node-a", "a"));
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
    vec![
        // web -> db across zones, seen by both nodes (count once: node-a's row).
        row(
            "node-a",
            1000,
            web(),
            db(),
            5432,
            true,
            (6000, 60_000),
            Class::InterZone,
            true,
        ),
        row(
            "node-b",
            1000,
            db(),
            web(),
            5432,
            false,
            (60_000, 6000),
            Class::InterZone,
            true,
        ),
        // web -> cache on the same node.
        row(
            "node-a",
            1000,
            web(),
            cache(),
            6379,
            true,
            (100, 900),
            Class::IntraNode,
            false,
        ),
        // web -> S3, next interval.
        row(
            "node-a",
            1010,
            web(),
            s3(),
            443,
            true,
            (2000, 30_000),
            Class::IntraVpc,
            false,
        ),
    ]
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
        let mut r = String::new();
        s.read_to_string(&mut r).expect("read");
        let (head, body) = r.split_once("\r\n\r\n").expect("http");
        (
            head.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .expect("status"),
            body.to_string(),
        )
    })
    .await
    .expect("client")
}

fn golden(name: &str, body: &str) {
    let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    let pretty = serde_json::to_string_pretty(&v).expect("pretty") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &pretty).expect("write golden");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        pretty, want,
        "{name}: the answer differs from tests/golden/{name}.json"
    );
}

#[tokio::test]
async fn query_and_nodegraph_answers_match_the_golden_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("podflow.sqlite");
    SqliteStore::open(&path)
        .expect("open")
        .write(&rows())
        .expect("write");
    let state = Arc::new(AppState {
        exposition: Arc::new(common::Quiet),
        store: StoreReader::sqlite(path),
        interval_s: 10,
        probes: None,
        billing: None,
        on_demand: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router(state).into_make_service()).await });

    let (s, body) = get(
        addr,
        "/api/v1/query?from=1000&to=1020&group_by=src_workload,dst_workload,class",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    golden("query-once", &body);
    let (_, raw) = get(
        addr,
        "/api/v1/query?from=1000&to=1020&group_by=observer&view=raw",
    )
    .await;
    golden("query-raw-by-observer", &raw);
    let (_, f) = get(
        addr,
        "/api/v1/query?from=1000&to=1020&group_by=dst_name&dst_kind=cloud_range",
    )
    .await;
    golden("query-filter-cloud", &f);

    // Grafana's Node Graph datasource: health, fields, data (epoch ms).
    assert_eq!(get(addr, "/api/health").await.0, 200);
    let (_, fields) = get(addr, "/api/graph/fields").await;
    golden("graph-fields", &fields);
    let (_, data) = get(addr, "/api/graph/data?from=1000000&to=1019999").await;
    golden("graph-data", &data);
    // Every edge has an id, and its ends are nodes.
    let d: serde_json::Value = serde_json::from_str(&data).expect("json");
    let ids: Vec<&str> = d["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["id"].as_str().expect("id"))
        .collect();
    for e in d["edges"].as_array().expect("edges") {
        assert!(e["id"].is_string());
        assert!(
            ids.contains(&e["source"].as_str().expect("s"))
                && ids.contains(&e["target"].as_str().expect("t")),
            "{e}"
        );
    }
    let (_, ns) = get(
        addr,
        "/api/graph/data?from=1000000&to=1019999&namespace=nope",
    )
    .await;
    assert_eq!(ns, r#"{"edges":[],"nodes":[]}"#);

    // Errors name the parameter.
    let (s, e) = get(addr, "/api/v1/query?group_by=ip_of_doom").await;
    assert_eq!(s, 400);
    assert!(e.contains("ip_of_doom"), "{e}");
    let (s, e) = get(addr, "/api/v1/query?colour=blue").await;
    assert_eq!(s, 400);
    assert!(e.contains("colour"), "{e}");
}

/// A row through Service `shop/<svc>` (`headless`, `prefers` close, a Ready backend in
/// the client's zone: `local`), from web in zone a to `backend`.
#[allow(clippy::too_many_arguments)]
fn service_row(
    t: i64,
    backend: (&str, EndLabels),
    svc: &str,
    (headless, prefers, local): (bool, bool, Option<bool>),
    out_in: (u64, u64),
    class: Class,
    cost_usd: f64,
) -> FlowRow {
    let web = ("10.1.0.5", pod("shop", "web", "node-a", "a"));
    let mut r = row("node-a", t, web, backend, 8080, true, out_in, class, false);
    // Each Service its own ClusterIP (rows of one key and interval are one row).
    let cluster_ip = match svc {
        "api" => "10.96.0.10",
        "pay" => "10.96.0.11",
        _ => "10.96.0.12",
    };
    r.key.service = (!headless).then(|| (cluster_ip.parse().expect("ip"), 80));
    r.cost_usd = cost_usd;
    r.labels = Arc::new(FlowLabels {
        service_namespace: "shop".into(),
        service_name: svc.into(),
        service_headless: headless,
        service_prefers_close: prefers,
        service_zone_local: local,
        ..FlowLabels::clone(&r.labels)
    });
    r
}

/// `/api/v1/cost/services` on a real SQLite store against hand-computed values: what
/// crossed zones per Service, what of it was avoidable (a Ready backend in the client's
/// zone), the projection to 30 days, the flags, headless Services apart; the
/// responder's copy of an observed connection counted once.
#[tokio::test]
async fn avoidable_cross_zone_traffic_per_service_on_a_real_store() {
    let a = || ("10.1.0.3", pod("shop", "api", "node-a", "a"));
    let b = || ("10.2.0.3", pod("shop", "api", "node-b", "b"));
    let no = (false, false, Some(false));
    let yes = (false, false, Some(true));
    let mut rows = vec![
        // api: half its bytes to the local backend, half across (avoidable).
        service_row(1000, a(), "api", yes, (100, 900), Class::IntraNode, 0.0),
        service_row(1000, b(), "api", yes, (100, 900), Class::InterZone, 0.25),
        service_row(1010, b(), "api", yes, (200, 1800), Class::InterZone, 0.5),
        // pay: across, with no Ready backend in zone a.
        service_row(1000, b(), "pay", no, (50, 450), Class::InterZone, 0.125),
        // cart asks for PreferClose and still crosses.
        service_row(
            1000,
            b(),
            "cart",
            (false, true, Some(true)),
            (10, 90),
            Class::InterZone,
            0.03125,
        ),
        // db is headless: dialled by its pod's address.
        service_row(
            1010,
            ("10.2.0.6", pod("shop", "db", "node-b", "b")),
            "db",
            (true, false, Some(true)),
            (1000, 9000),
            Class::InterZone,
            2.0,
        ),
        // Not through a Service: left out.
        row(
            "node-a",
            1000,
            ("10.1.0.5", pod("shop", "web", "node-a", "a")),
            b(),
            8080,
            true,
            (7, 7),
            Class::InterZone,
            false,
        ),
    ];
    // node-b's copy of the second api connection (both ends observed): not counted.
    let mut copy = service_row(1000, b(), "api", yes, (900, 100), Class::InterZone, 0.25);
    copy.observer = "node-b".into();
    copy.key.local_initiated = false;
    Arc::make_mut(&mut copy.labels).remote_observed = true;
    Arc::make_mut(&mut rows[1].labels).remote_observed = true;
    rows.push(copy);

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("podflow.sqlite");
    SqliteStore::open(&path)
        .expect("open")
        .write(&rows)
        .expect("write");
    let state = Arc::new(AppState {
        exposition: Arc::new(common::Quiet),
        store: StoreReader::sqlite(path),
        interval_s: 10,
        probes: None,
        billing: None,
        on_demand: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router(state).into_make_service()).await });

    let (s, body) = get(addr, "/api/v1/cost/services?from=1000&to=1020").await;
    assert_eq!(s, 200, "{body}");
    golden("cost-services", &body);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["range_seconds"].as_i64(), v["view"].as_str()),
        (Some(20), Some("once"))
    );
    let names = |list: &str| -> Vec<&str> {
        v[list]
            .as_array()
            .expect("list")
            .iter()
            .map(|s| s["name"].as_str().expect("name"))
            .collect()
    };
    // Most cross-zone cost first: api 0.75, pay 0.125, cart 0.03125.
    assert_eq!(names("services"), ["api", "pay", "cart"]);
    assert_eq!(names("headless"), ["db"]);
    let svc = |list: &str, i: usize| v[list][i].clone();
    let api = svc("services", 0);
    let n = |x: &serde_json::Value, f: &str| x[f].as_f64().unwrap_or_else(|| panic!("{f}: {x}"));
    assert_eq!(n(&api, "bytes"), 4000.0);
    assert_eq!(n(&api, "cross_zone_bytes"), 3000.0);
    assert_eq!(n(&api, "avoidable_bytes"), 3000.0);
    assert_eq!(n(&api, "avoidable_cost_usd"), 0.75);
    assert_eq!(n(&api, "avoidable_share"), 0.75);
    assert_eq!(n(&api, "avoidable_cross_zone_share"), 1.0);
    assert_eq!(
        n(&api, "connections"),
        6.0,
        "2 per row, node-b's copy not counted"
    );
    // 0.75 USD in 20 s is 0.75 * 2,592,000 / 20 in 30 days.
    assert_eq!(n(&api, "projected_monthly_saving_usd"), 97_200.0);
    assert_eq!(api["prefers_close_but_crosses"], false);
    let pay = svc("services", 1);
    assert_eq!(
        (
            n(&pay, "cross_zone_bytes"),
            n(&pay, "avoidable_bytes"),
            n(&pay, "projected_monthly_saving_usd")
        ),
        (500.0, 0.0, 0.0)
    );
    let cart = svc("services", 2);
    assert_eq!(
        (
            cart["prefers_close"].as_bool(),
            cart["prefers_close_but_crosses"].as_bool()
        ),
        (Some(true), Some(true))
    );
    let db = svc("headless", 0);
    assert_eq!(
        (db["headless"].as_bool(), n(&db, "avoidable_bytes")),
        (Some(true), 10_000.0)
    );

    // The limit cuts each list; the namespace filters by the Service's.
    let (_, body) = get(addr, "/api/v1/cost/services?from=1000&to=1020&limit=1").await;
    let one: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(one["services"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["headless"].as_array().map(Vec::len), Some(1));
    let (_, body) = get(
        addr,
        "/api/v1/cost/services?from=1000&to=1020&namespace=billing",
    )
    .await;
    let none: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(none["services"], serde_json::json!([]));
    // Errors name the parameter.
    for (q, word) in [
        ("colour=blue", "colour"),
        ("limit=0", "limit"),
        ("from=9&to=1", "from"),
    ] {
        let (s, e) = get(addr, &format!("/api/v1/cost/services?{q}")).await;
        assert_eq!(s, 400, "{q}: {e}");
        assert!(e.contains(word), "{q}: {e}");
    }
}
