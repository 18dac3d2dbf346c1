//! `/api/v1/cost/*` over a real embedded store written through its normal write path,
//! against a hand-computed bill: tiers continuing a prior volume across a month
//! boundary, a NAT gateway on one subnet for its classes in both directions, the
//! count-once view, showback at the blended rate summing to the bill, CSV summing to
//! the JSON.

use std::io::{Read, Write};
use std::sync::Arc;

use podflow_api::{AppState, StoreReader, router};
use podflow_enrich::{Biller, EnrichConfig, PriceTable};
use podflow_model::{Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, Protocol};
use podflow_store::{FlowStore, SqliteStore};

mod common;

const GB: u64 = 1 << 30;
const TB: u64 = 1 << 40;
/// 2025-01-01T00:00:00Z and 2025-02-01, 2025-03-01.
const JAN: i64 = 1_735_689_600;
const FEB: i64 = 1_738_368_000;
const MAR: i64 = 1_740_787_200;
const DAY: i64 = 86_400;

fn pod(ns: &str, workload: &str, node: &str, zone: &str) -> EndLabels {
    EndLabels {
        region: "us-east-1".into(),
        cloud: "aws".into(),
        ..common::pod(ns, workload, node, zone)
    }
}

struct Row<'a> {
    t: i64,
    observer: &'a str,
    local: (&'a str, EndLabels),
    remote: (&'a str, EndLabels),
    initiated: bool,
    out_in: (u64, u64),
    class: Class,
    observed: bool,
}

fn row(r: Row<'_>) -> FlowRow {
    FlowRow {
        interval_start: r.t,
        interval_s: 10,
        observer: r.observer.into(),
        key: FlowKey {
            proto: Protocol::TCP,
            local: r.local.0.parse().expect("ip"),
            remote: r.remote.0.parse().expect("ip"),
            responder_port: 443,
            local_initiated: r.initiated,
            service: None,
            prefixes: Default::default(),
        },
        totals: FlowTotals {
            bytes_out: r.out_in.0,
            packets_out: 1,
            bytes_in: r.out_in.1,
            packets_in: 1,
            opened: 1,
            closed: 1,
        },
        labels: Arc::new(FlowLabels {
            class: r.class,
            local: r.local.1,
            remote: r.remote.1,
            remote_observed: r.observed,
            ..Default::default()
        }),
        cost_usd: 0.0,
    }
}

fn rows() -> Vec<FlowRow> {
    let web = || ("10.0.1.5", pod("shop", "web", "node-a", "us-east-1a"));
    let db = || ("10.0.40.7", pod("shop", "db", "node-b", "us-east-1b"));
    let batch = || ("10.2.0.9", pod("jobs", "batch", "node-c", "us-east-1a"));
    let internet = || {
        (
            "203.0.113.9",
            EndLabels {
                kind: "internet",
                ..Default::default()
            },
        )
    };
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
    let out = |t, observer, local, remote, out_in, class| {
        row(Row {
            t,
            observer,
            local,
            remote,
            initiated: true,
            out_in,
            class,
            observed: false,
        })
    };
    vec![
        // January: web (in the NAT subnet) sends 8 TB to the internet and gets 1 GB.
        out(
            JAN + 9 * DAY,
            "node-a",
            web(),
            internet(),
            (8 * TB, GB),
            Class::PublicInternet,
        ),
        // batch (outside it) sends 4 TB.
        out(
            JAN + 19 * DAY,
            "node-c",
            batch(),
            internet(),
            (4 * TB, 0),
            Class::PublicInternet,
        ),
        // web to S3 in its region through the NAT gateway, 100 GB each way.
        out(
            JAN + 14 * DAY,
            "node-a",
            web(),
            s3(),
            (100 * GB, 100 * GB),
            Class::IntraVpc,
        ),
        // web -> db across zones, seen by both nodes: counted once (node-a's row).
        row(Row {
            t: JAN + 3 * DAY,
            observer: "node-a",
            local: web(),
            remote: db(),
            initiated: true,
            out_in: (TB, TB),
            class: Class::InterZone,
            observed: true,
        }),
        row(Row {
            t: JAN + 3 * DAY,
            observer: "node-b",
            local: db(),
            remote: web(),
            initiated: false,
            out_in: (TB, TB),
            class: Class::InterZone,
            observed: true,
        }),
        // February: web sends 3 TB to the internet.
        out(
            FEB + 4 * DAY,
            "node-a",
            web(),
            internet(),
            (3 * TB, 0),
            Class::PublicInternet,
        ),
    ]
}

const CONFIG: &str = "cloud: aws\nregion: us-east-1\nbilling:\n  prior_usage:\n    - {cloud: aws, class: PUBLIC_INTERNET, month: 2025-01, gb: 5120}\n  nat_gateways:\n    - {name: nat-a, subnets: [10.0.0.0/19], usd_per_gb: 0.045}\n";

async fn serve(dir: &std::path::Path) -> std::net::SocketAddr {
    let path = dir.join("podflow.sqlite");
    SqliteStore::open(&path)
        .expect("open")
        .write(&rows())
        .expect("write");
    let cfg = EnrichConfig::from_yaml(CONFIG, "test.yaml").expect("config");
    let biller = Biller::new(PriceTable::defaults(), &cfg, "test.yaml").expect("biller");
    let state = Arc::new(AppState {
        exposition: Arc::new(common::Quiet),
        store: StoreReader::sqlite(path),
        interval_s: 10,
        probes: None,
        billing: Some(Arc::new(biller)),
        on_demand: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router(state).into_make_service()).await });
    addr
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
        let mut r = String::new();
        s.read_to_string(&mut r).expect("read");
        let (head, body) = r.split_once("\r\n\r\n").expect("http");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        (status, head.to_lowercase(), body.to_string())
    })
    .await
    .expect("client")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * b.abs().max(1.0)
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

// The hand-computed bill.
// January, PUBLIC_INTERNET out: 12 TB after 5 TB used elsewhere = [5,120, 17,408) GB:
//   5,120 GB at 0.09 (460.80) + 7,168 GB at 0.085 (609.28) = 1,070.08.
// January, INTER_ZONE: 1,024 GB each way at 0.01 = 20.48 (counted once).
// January, NAT gateway: web's internet bytes 8,193 GB × 0.045 = 368.685, its S3 bytes
//   200 GB × 0.045 = 9.00 (avoidable: a gateway endpoint is free). batch is outside the
//   subnet; the cross-zone bytes are not a class the gateway carries.
// February, PUBLIC_INTERNET out: 3,072 GB, 100 free, 2,972 at 0.09 = 267.48; NAT
//   3,072 × 0.045 = 138.24.
const JAN_INTERNET: f64 = 1_070.08;
const JAN_TOTAL: f64 = 1_070.08 + 20.48 + 368.685 + 9.0;
const FEB_TOTAL: f64 = 267.48 + 138.24;

#[tokio::test]
async fn the_bill_follows_the_tiers_and_the_nat_gateway() {
    let dir = tempfile::tempdir().expect("tmp");
    let addr = serve(dir.path()).await;
    let (s, _, body) = get(addr, &format!("/api/v1/cost/bill?from={JAN}&to={MAR}")).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let months = v["months"].as_array().expect("months");
    assert_eq!(months.len(), 2);
    let (jan, feb) = (&months[0], &months[1]);
    assert_eq!(jan["month"], "2025-01");
    assert!(close(f(&jan["total_usd"]), JAN_TOTAL), "{jan}");
    assert!(close(f(&feb["total_usd"]), FEB_TOTAL), "{feb}");
    assert!(close(f(&v["total_usd"]), JAN_TOTAL + FEB_TOTAL), "{v}");
    let line = |m: &serde_json::Value, key: &str, dir: &str| {
        m["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .find(|l| l["key"] == key && l["direction"] == dir)
            .cloned()
            .unwrap_or_else(|| panic!("no line {key} {dir} in {m}"))
    };
    let internet = line(jan, "PUBLIC_INTERNET", "out");
    assert_eq!(internet["cloud"], "aws");
    assert_eq!(internet["region"], "us-east-1");
    assert_eq!(internet["bytes"], 12 * TB);
    assert_eq!(internet["prior_gb"], 5120.0);
    assert!(close(f(&internet["usd"]), JAN_INTERNET), "{internet}");
    let tiers = internet["tiers"].as_array().expect("tiers");
    assert_eq!(tiers.len(), 2);
    assert!(close(f(&tiers[0]["usd"]), 460.8) && close(f(&tiers[1]["usd"]), 609.28));
    let iz_out = line(jan, "INTER_ZONE", "out");
    assert_eq!(iz_out["bytes"], TB, "counted once: {iz_out}");
    assert!(close(f(&line(jan, "INTER_ZONE", "in")["usd"]), 10.24));
    assert_eq!(line(jan, "INTRA_REGION", "in")["bytes"], 100 * GB);
    let feb_internet = line(feb, "PUBLIC_INTERNET", "out");
    assert_eq!(feb_internet["allowance_used_gb"], 100.0);
    assert_eq!(feb_internet["prior_gb"], 0.0);
    // The NAT gateway: both directions, its classes only, its subnet only.
    let nat: Vec<(String, String, u64)> = jan["processing"]
        .as_array()
        .expect("processing")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["key"].as_str().unwrap_or("").to_string(),
                p["bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        nat,
        [
            ("nat-a".into(), "PUBLIC_INTERNET".into(), 8 * TB + GB),
            ("nat-a".into(), "INTRA_REGION".into(), 200 * GB)
        ]
    );
    assert!(close(f(&jan["processing_usd"]), 368.685 + 9.0), "{jan}");
    let avoidable = &jan["avoidable"][0];
    assert_eq!(avoidable["service"], "S3");
    assert_eq!(avoidable["gateway_endpoint"], true);
    assert!(close(f(&avoidable["usd"]), 9.0));
    assert_eq!(v["prices"]["as_of"], "2025-01-15");
}

#[tokio::test]
async fn showback_sums_to_the_bill_and_the_csv_to_the_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let addr = serve(dir.path()).await;
    let q = format!("/api/v1/cost/showback?from={JAN}&to={MAR}&by=namespace");
    let (s, _, body) = get(addr, &q).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let rows = v["rows"].as_array().expect("rows");
    let cost = |ns: &str| {
        rows.iter()
            .find(|r| r["key"]["namespace"] == ns)
            .map(|r| f(&r["cost_usd"]))
            .unwrap_or_else(|| panic!("no {ns} in {v}"))
    };
    // batch's 4 TB at January's blended internet rate: a third of 1,070.08.
    assert!(close(cost("jobs"), JAN_INTERNET / 3.0), "{v}");
    assert!(
        close(cost("shop"), JAN_TOTAL + FEB_TOTAL - JAN_INTERNET / 3.0),
        "{v}"
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["key"]["namespace"], "shop", "largest first");
    let total = f(&v["totals"]["cost_usd"]);
    assert!(
        close(total, JAN_TOTAL + FEB_TOTAL),
        "the parts sum to the bill: {v}"
    );
    assert_eq!(v["month_to_date"]["month"], "2025-02");
    assert!(close(f(&v["month_to_date"]["cost_usd"]), FEB_TOTAL), "{v}");
    assert_eq!(v["months"][0]["month"], "2025-01");

    // The CSV: a header, the same rows, summing to the JSON's totals.
    let (s, head, csv) = get(addr, &format!("{q}&format=csv")).await;
    assert_eq!(s, 200, "{csv}");
    assert!(head.contains("content-type: text/csv"), "{head}");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    assert_eq!(
        header,
        [
            "namespace",
            "bytes",
            "bytes_out",
            "bytes_in",
            "transfer_usd",
            "processing_usd",
            "cost_usd",
            "share"
        ]
    );
    let col = |name: &str| header.iter().position(|h| *h == name).expect("column");
    let (mut usd, mut bytes, mut n) = (0.0, 0u64, 0);
    for l in lines {
        let cells: Vec<&str> = l.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{l}");
        usd += cells[col("cost_usd")].parse::<f64>().expect("cost");
        bytes += cells[col("bytes")].parse::<u64>().expect("bytes");
        n += 1;
    }
    assert_eq!(n, rows.len());
    assert!(close(usd, total), "CSV {usd} vs JSON {total}");
    assert_eq!(bytes, v["totals"]["bytes"].as_u64().expect("bytes"));

    // By workload: namespace and workload columns.
    let (_, _, body) = get(
        addr,
        &format!("/api/v1/cost/showback?from={JAN}&to={MAR}&by=workload"),
    )
    .await;
    let w: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(w["rows"][0]["key"]["workload"], "web", "{w}");
    assert!(close(f(&w["totals"]["cost_usd"]), total));

    // Half of January: its rows at the whole month's blended rate.
    let (_, _, body) = get(
        addr,
        &format!("/api/v1/cost/showback?from={}&to={FEB}", JAN + 15 * DAY),
    )
    .await;
    let h: serde_json::Value = serde_json::from_str(&body).expect("json");
    let only: Vec<&str> = h["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["key"]["namespace"].as_str())
        .collect();
    assert_eq!(only, ["jobs"], "{h}");
    assert!(
        close(f(&h["totals"]["cost_usd"]), JAN_INTERNET / 3.0),
        "{h}"
    );
    assert!(close(f(&h["months"][0]["bill_usd"]), JAN_TOTAL), "{h}");
}

#[tokio::test]
async fn bad_parameters_are_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let addr = serve(dir.path()).await;
    for (q, word) in [
        ("by=label:team", "label:app"),
        ("by=pod", "`by`"),
        ("format=xml", "`format`"),
        ("from=10&to=5", "`from`"),
        ("from=0&to=99999999", "at most 400 days"),
        ("view=raw", "unknown parameter `view`"),
    ] {
        let (s, _, body) = get(addr, &format!("/api/v1/cost/showback?{q}")).await;
        assert_eq!(s, 400, "{q}: {body}");
        assert!(body.contains(word), "{q}: {body}");
    }
    let (s, _, body) = get(addr, "/api/v1/cost/bill?by=namespace").await;
    assert_eq!(s, 400, "{body}");
    // A range far beyond any time a row can have answers at once, empty.
    let far = i64::MAX;
    let (s, _, body) = get(
        addr,
        &format!("/api/v1/cost/bill?from={}&to={far}", far - 86_400),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"months\":[]"), "{body}");
}
