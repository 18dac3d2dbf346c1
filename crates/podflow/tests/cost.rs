//! `podflow cost` against a served API over a real embedded store (behind a bearer
//! token): the table, the CSV summing to the hand-computed bill, and the 401 without
//! the token.

use std::process::Command;
use std::sync::Arc;

use podflow_api::{AppState, Exposition, StoreReader};
use podflow_enrich::{Biller, EnrichConfig, PriceTable};
use podflow_model::{Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, Protocol};
use podflow_store::{FlowStore, SqliteStore};
use tokio_util::sync::CancellationToken;

const GB: u64 = 1 << 30;

#[derive(Debug)]
struct Quiet;

impl Exposition for Quiet {
    fn metrics(&self) -> String {
        String::new()
    }
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

fn internet_row(t: i64, local: &str, ns: &str, workload: &str, bytes_out: u64) -> FlowRow {
    FlowRow {
        interval_start: t,
        interval_s: 10,
        observer: "node-a".into(),
        key: FlowKey {
            proto: Protocol::TCP,
            local: local.parse().expect("ip"),
            remote: "203.0.113.9".parse().expect("ip"),
            responder_port: 443,
            local_initiated: true,
            service: None,
            prefixes: Default::default(),
        },
        totals: FlowTotals {
            bytes_out,
            packets_out: 1,
            bytes_in: 0,
            packets_in: 0,
            opened: 1,
            closed: 1,
        },
        labels: Arc::new(FlowLabels {
            class: Class::PublicInternet,
            local: EndLabels {
                kind: "pod",
                namespace: ns.into(),
                name: format!("{workload}-0").into(),
                workload: workload.into(),
                cloud: "aws".into(),
                region: "us-east-1".into(),
                ..Default::default()
            },
            remote: EndLabels {
                kind: "internet",
                ..Default::default()
            },
            ..Default::default()
        }),
        cost_usd: bytes_out as f64 / GB as f64 * 0.09,
    }
}

fn podflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(args)
        .output()
        .expect("run podflow")
}

#[tokio::test]
async fn podflow_cost_prints_the_showback() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("podflow.sqlite");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    // A minute ago, but in this month (the month to date counts from its first second).
    let t = (now - now.rem_euclid(10) - 60).max(podflow_enrich::Month::of(now).start());
    // 200 GB to the internet this month: 100 free, 100 at 0.09 = 9.00; shop sent a
    // quarter of it, jobs three quarters.
    SqliteStore::open(&path)
        .expect("open")
        .write(&[
            internet_row(t, "10.0.1.5", "shop", "web", 50 * GB),
            internet_row(t, "10.0.1.6", "jobs", "batch", 150 * GB),
        ])
        .expect("write");
    let cfg = EnrichConfig::from_yaml("cloud: aws\n", "test").expect("config");
    let state = Arc::new(AppState {
        exposition: Arc::new(Quiet),
        store: StoreReader::sqlite(path),
        interval_s: 10,
        probes: None,
        billing: Some(Arc::new(
            Biller::new(PriceTable::defaults(), &cfg, "test").expect("biller"),
        )),
        on_demand: None,
    });
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let stop = CancellationToken::new();
    let settings = podflow_role::HttpSettings {
        token_file: Some(token.clone()),
        ..Default::default()
    };
    let http = podflow_role::serve_http(listen, state, settings, stop.clone())
        .await
        .expect("serve");
    let server = format!("http://{listen}");
    let token = token.display().to_string();
    let (table, csv, refused) = tokio::task::spawn_blocking(move || {
        let base = ["cost", "--server", server.as_str(), "--since", "2d"];
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            a.extend(["--token-file", token.as_str()]);
            podflow(&a)
        };
        (
            with(&["--by", "namespace"]),
            with(&["--format", "csv"]),
            podflow(&base),
        )
    })
    .await
    .expect("cli");
    stop.cancel();
    let _ = http.await;

    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let t = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE"), "{t}");
    assert!(
        lines[1].starts_with("jobs") && lines[1].ends_with("$6.75  75.0%"),
        "{t}"
    );
    assert!(
        lines[2].starts_with("shop") && lines[2].ends_with("$2.25  25.0%"),
        "{t}"
    );
    assert!(t.contains("TOTAL") && t.contains("$9.00"), "{t}");
    assert!(t.contains("to date: $9.00"), "{t}");

    assert!(
        csv.status.success(),
        "{}",
        String::from_utf8_lossy(&csv.stderr)
    );
    let c = String::from_utf8_lossy(&csv.stdout);
    let mut rows = c.lines();
    let header: Vec<&str> = rows.next().expect("header").split(',').collect();
    let at = header
        .iter()
        .position(|h| *h == "cost_usd")
        .expect("cost_usd");
    let sum: f64 = rows
        .map(|l| {
            l.split(',')
                .nth(at)
                .and_then(|v| v.parse::<f64>().ok())
                .expect("cost")
        })
        .sum();
    assert!((sum - 9.0).abs() < 1e-9, "{c}");

    assert!(!refused.status.success(), "no token: refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}
