//! `podflow run` end to end: the real binary observing a namespace this test creates,
//! checked against the kernel's own counters (conntrack-tools) and promtool.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podflow_store::{FlowQuery, FlowStore, SqliteStore};
use podflow_testkit::{ChildGuard, Pair, connect, exchange, free_port, http_get, serve};

fn get(port: u16, path: &str) -> (u16, String) {
    http_get(port, path).expect("podflow answers")
}

/// `promtool check metrics` accepts the exposition (lint included).
fn promtool_check(metrics: &str) {
    if !podflow_testkit::have("promtool", "promtool") {
        return;
    }
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

/// Starts `podflow run` observing `pair.a` as node-a (1 s intervals), with `extra`
/// arguments, and waits until it is ready.
fn start_run(pair: &Pair, data: &Path, port: u16, extra: &[String]) -> ChildGuard {
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
        .arg(data)
        .arg("--netns")
        .arg(pair.a.path())
        .args(extra)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start podflow");
    let pf = ChildGuard(child);
    podflow_testkit::wait_until("podflow to be ready", Duration::from_secs(20), || {
        http_get(port, "/ready").is_some_and(|(s, _)| s == 200)
    });
    pf
}

/// [`start_run`] with the test inventory (written into `data`) and `extra` arguments.
fn start_run_with_inventory(pair: &Pair, data: &Path, port: u16, extra: &[&str]) -> ChildGuard {
    let inv = data.join("inventory.yaml");
    std::fs::write(&inv, INVENTORY).expect("inventory");
    let mut args = vec!["--inventory".to_string(), inv.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    start_run(pair, data, port, &args)
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
    let mut pf = start_run(&pair, data.path(), port, &[]);
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
    promtool_check(&metrics);

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
            .any(|l| l.starts_with("node-a (10.99.0.1)") && l.contains("10.99.0.2:5101")),
        "{table}"
    );

    // Bytes sent right before SIGTERM are flushed by the last dump.
    exchange(&mut c, 3_000, 7_000);
    let (k_out, k_in) = kernel_bytes(&pair, sport);
    pf.signal(nix::sys::signal::Signal::SIGTERM);
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

const INVENTORY: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: node-a
    labels: {topology.kubernetes.io/zone: us-east-1a, topology.kubernetes.io/region: us-east-1}
  spec: {providerID: "aws:///us-east-1a/i-0aaa"}
  status: {addresses: [{type: InternalIP, address: 10.99.0.1}]}
- apiVersion: v1
  kind: Node
  metadata:
    name: node-b
    labels: {topology.kubernetes.io/zone: us-east-1b, topology.kubernetes.io/region: us-east-1}
  spec: {providerID: "aws:///us-east-1b/i-0bbb"}
  status: {addresses: [{type: InternalIP, address: 10.99.1.1}]}
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata:
    name: web-7d9f
    namespace: shop
    ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: d1, controller: true}]
- apiVersion: v1
  kind: Pod
  metadata:
    name: web-7d9f-abcde
    namespace: shop
    uid: p1
    labels: {app.kubernetes.io/name: web}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f, uid: r1, controller: true}]
  spec: {nodeName: node-a}
  status: {phase: Running, podIP: 10.99.0.1, podIPs: [{ip: 10.99.0.1}, {ip: "fd99::1"}]}
- apiVersion: v1
  kind: Pod
  metadata:
    name: db-0
    namespace: shop
    uid: p2
    labels: {app: db}
    ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: s1, controller: true}]
  spec: {nodeName: node-b}
  status: {phase: Running, podIP: 10.99.0.2, podIPs: [{ip: 10.99.0.2}, {ip: "fd99::2"}]}
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: shop}
  spec:
    type: ClusterIP
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10]
    selector: {app: db}
    ports: [{port: 80, targetPort: 5201, protocol: TCP}]
"#;

#[test]
fn run_attributes_flows_to_workloads_services_zones_and_cost() {
    if !podflow_testkit::can_run("run_attribution")
        || !podflow_testkit::have("run_attribution", "iptables")
    {
        return;
    }
    let pair = Pair::new("att").expect("namespaces");
    // kube-proxy style: the ClusterIP 10.96.0.10:80 is DNATed to the backend in B.
    pair.a
        .sh("ip route add default via 10.99.0.2 && \
             iptables -t nat -A OUTPUT -d 10.96.0.10 -p tcp --dport 80 -j DNAT --to-destination 10.99.0.2:5201")
        .expect("DNAT rule");
    pair.a.short_tcp_timeouts().expect("timeouts");
    serve(&pair, 5201);
    let data = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let _pf = start_run_with_inventory(&pair, data.path(), port, &[]);
    let mut c = connect(&pair, "10.96.0.10", 80);
    let sport = c.local_addr().expect("addr").port();
    exchange(&mut c, 50_000, 400_000);
    let (k_out, k_in) = kernel_bytes(&pair, sport);
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let (_, body) = get(port, "/api/v1/flows?limit=50");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        let row = row_for(&json, 5201);
        if let Some(r) = row
            .as_ref()
            .filter(|r| r["bytes_out"] == k_out && r["bytes_in"] == k_in)
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "row never reached the kernel's counters: {row:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(row["service"], "10.96.0.10:80", "{row}");
    assert_eq!(row["service_name"], "shop/db", "{row}");
    assert_eq!(row["class"], "INTER_ZONE", "{row}");
    let l = &row["local_meta"];
    assert_eq!(
        (
            l["kind"].as_str(),
            l["workload_kind"].as_str(),
            l["workload"].as_str()
        ),
        (Some("pod"), Some("Deployment"), Some("web")),
        "{row}"
    );
    assert_eq!(
        (l["name"].as_str(), l["app"].as_str(), l["zone"].as_str()),
        (Some("web-7d9f-abcde"), Some("web"), Some("us-east-1a"))
    );
    let r = &row["remote_meta"];
    assert_eq!(
        (
            r["name"].as_str(),
            r["workload_kind"].as_str(),
            r["workload"].as_str()
        ),
        (Some("db-0"), Some("StatefulSet"), Some("db")),
        "{row}"
    );
    assert_eq!(
        (r["node"].as_str(), r["zone"].as_str(), r["cloud"].as_str()),
        (Some("node-b"), Some("us-east-1b"), Some("aws"))
    );
    // The workload series: web -> db across zones, with exactly these bytes.
    let (_, metrics) = get(port, "/metrics");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("podflow_workload_bytes_total{")
                && l.contains("src_namespace=\"shop\",src_workload=\"web\",src_kind=\"pod\",src_zone=\"us-east-1a\"")
                && l.contains("dst_workload=\"db\"")
                && l.contains("class=\"INTER_ZONE\"")
        })
        .unwrap_or_else(|| panic!("no web->db series in\n{metrics}"));
    assert!(line.ends_with(&format!(" {}", k_out + k_in)), "{line}");
    assert!(!metrics.contains("10.99.0."), "no address is ever a label");
    promtool_check(&metrics);
    // AWS cross-AZ list price: 0.01 USD per GB each way (1 GB = 2^30 bytes).
    let want = (k_out + k_in) as f64 * 0.01 / 1_073_741_824.0;
    let cost = row["cost_usd"].as_f64().expect("cost");
    assert!((cost - want).abs() < 1e-12, "cost {cost} vs {want}");

    // K8sConntrack-style views: per Service endpoint, and recent flows.
    let (_, tx) = get(port, "/transactions?window=600");
    let tx: serde_json::Value = serde_json::from_str(&tx).expect("json");
    let svc = &tx["services"][0];
    assert_eq!(
        (svc["namespace"].as_str(), svc["name"].as_str()),
        (Some("shop"), Some("db")),
        "{tx}"
    );
    let ep = &svc["endpoints"][0];
    assert_eq!(
        (
            ep["pod"].as_str(),
            ep["ip"].as_str(),
            ep["port"].as_u64(),
            ep["connections"].as_u64()
        ),
        (Some("db-0"), Some("10.99.0.2"), Some(5201), Some(1)),
        "{tx}"
    );
    let bps = ep["bytes_per_sec"].as_f64().expect("rate");
    assert!((bps - (k_out + k_in) as f64 / 600.0).abs() < 1e-6, "{bps}");
    let (_, recent) = get(port, "/flows?window=600");
    assert!(
        row_for(&serde_json::from_str(&recent).expect("json"), 5201).is_some(),
        "{recent}"
    );

    // Closing the connection gives the Service's duration histogram one observation.
    let opened = Instant::now();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(15);
    let count = "podflow_service_connection_duration_seconds_count{service_namespace=\"shop\",service=\"db\"} 1";
    loop {
        let (_, m) = get(port, "/metrics");
        if m.contains(count) {
            let sum: f64 = m
                .lines()
                .find(|l| l.starts_with("podflow_service_connection_duration_seconds_sum{service_namespace=\"shop\",service=\"db\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .expect("sum");
            // The entry lives until TIME_WAIT (1 s here) expires and a dump reaps it.
            assert!(
                sum > 0.0 && sum < opened.elapsed().as_secs_f64() + 30.0,
                "duration {sum}"
            );
            promtool_check(&m);
            break;
        }
        assert!(Instant::now() < deadline, "no duration observed:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of the sample `name{labels}` in an exposition, if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn run_measures_time_to_first_reply_per_service() {
    if !podflow_testkit::can_run("run_first_reply")
        || !podflow_testkit::have("run_first_reply", "iptables")
    {
        return;
    }
    const DELAY: Duration = Duration::from_millis(150);
    let pair = Pair::new("frr").expect("namespaces");
    // The Service 10.96.0.10 (shop/db): TCP 80 and UDP 53, DNATed to the backend in B.
    pair.a
        .sh("ip route add default via 10.99.0.2 && \
             iptables -t nat -A OUTPUT -d 10.96.0.10 -p tcp --dport 80 -j DNAT --to-destination 10.99.0.2:5202 && \
             iptables -t nat -A OUTPUT -d 10.96.0.10 -p udp --dport 53 -j DNAT --to-destination 10.99.0.2:6202")
        .expect("DNAT rules");
    serve(&pair, 5202);
    podflow_testkit::serve_udp_delayed(&pair, Pair::B4, 6202, DELAY);
    let data = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let _pf = start_run_with_inventory(&pair, data.path(), port, &["--first-reply"]);
    // A UDP question the backend answers after DELAY; a TCP connection (its first reply
    // is the SYN-ACK, at once).
    podflow_testkit::udp_ask(&pair, "10.96.0.10", 53);
    let mut c = connect(&pair, "10.96.0.10", 80);
    exchange(&mut c, 1_000, 2_000);
    let labels = "{service_namespace=\"shop\",service=\"db\"}";
    let count = format!("podflow_service_first_reply_seconds_count{labels}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let m = loop {
        let (_, m) = get(port, "/metrics");
        if sample(&m, &count) == Some(2.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "no first replies:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let bucket = |le: &str| {
        let series = format!(
            "podflow_service_first_reply_seconds_bucket{{service_namespace=\"shop\",service=\"db\",le=\"{le}\"}}"
        );
        sample(&m, &series).unwrap_or_else(|| panic!("no {series} in\n{m}"))
    };
    assert_eq!(bucket("0.1"), 1.0, "TCP: the SYN-ACK");
    assert_eq!(bucket("0.25"), 2.0, "UDP: the answer after {DELAY:?}");
    let sum = sample(
        &m,
        &format!("podflow_service_first_reply_seconds_sum{labels}"),
    )
    .expect("sum");
    assert!(
        (DELAY.as_secs_f64()..DELAY.as_secs_f64() + 0.1).contains(&sum),
        "sum {sum}"
    );
    assert_eq!(
        sample(&m, "podflow_conntrack_first_replies_total"),
        Some(2.0),
        "{m}"
    );
    assert!(
        sample(&m, "podflow_conntrack_events_total{type=\"update\"}").is_some_and(|n| n >= 2.0)
    );
    promtool_check(&m);
}

#[test]
fn run_takes_netflow_records_through_the_same_attribution_with_sampling() {
    use podflow_netflow::encode::{V5Flow, V5Header, v5};
    if !podflow_testkit::can_run("run_netflow") {
        return;
    }
    let pair = Pair::new("nf").expect("namespaces");
    let data = tempfile::tempdir().expect("tmp");
    let inv = data.path().join("inventory.yaml");
    std::fs::write(&inv, INVENTORY).expect("inventory");
    let ranges = data.path().join("ranges");
    std::fs::create_dir(&ranges).expect("dir");
    std::fs::write(
        ranges.join("ip-ranges.json"),
        r#"{"syncToken":"1","createDate":"2025-01-01-00-00-00","prefixes":[
            {"ip_prefix":"52.216.0.0/15","region":"us-east-1","service":"AMAZON","network_border_group":"us-east-1"},
            {"ip_prefix":"52.216.0.0/15","region":"us-east-1","service":"S3","network_border_group":"us-east-1"}],
            "ipv6_prefixes":[]}"#,
    )
    .expect("ranges");
    let config = data.path().join("podflow.yaml");
    std::fs::write(&config, "cloud: aws\nregion: us-east-1\n").expect("config");
    let (port, nf_port) = (free_port(), free_port());
    let _pf = start_run(
        &pair,
        data.path(),
        port,
        &[
            "--netflow-listen".to_string(),
            format!("127.0.0.1:{nf_port}"),
            "--inventory".to_string(),
            inv.display().to_string(),
            "--cloud-ranges".to_string(),
            ranges.display().to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ],
    );
    // An exporter sampling 1 in 10 (mode 01, interval 10) sends two flows of web-... (10.99.0.1).
    let flow = |dst: [u8; 4], dport: u16, bytes: u32, packets: u32| V5Flow {
        src: [10, 99, 0, 1].into(),
        dst: dst.into(),
        input: 1,
        output: 2,
        packets,
        bytes,
        first: 1_000,
        last: 2_000,
        src_port: 40_001,
        dst_port: dport,
        tcp_flags: 0x1b,
        proto: 6,
    };
    let header = V5Header {
        sys_uptime: 5_000,
        unix_secs: 1_800_000_000,
        flow_sequence: 0,
        engine_type: 1,
        engine_id: 2,
        sampling: (1 << 14) | 10,
        ..Default::default()
    };
    let datagram = v5(
        &header,
        &[
            flow([52, 216, 10, 10], 443, 1_000, 2),
            flow([10, 99, 0, 2], 5432, 500, 3),
        ],
    );
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.send_to(&datagram, ("127.0.0.1", nf_port))
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let (_, body) = get(port, "/api/v1/flows?limit=50");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        let rows: Vec<_> = json
            .as_array()
            .expect("rows")
            .iter()
            .filter(|r| r["observer"] == "127.0.0.1/258")
            .cloned()
            .collect();
        if rows.len() == 2 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "NetFlow rows never arrived: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let s3 = rows
        .iter()
        .find(|r| r["remote"] == "52.216.10.10")
        .expect("S3 row");
    assert_eq!(
        (
            s3["bytes_out"].as_u64(),
            s3["packets_out"].as_u64(),
            s3["bytes_in"].as_u64()
        ),
        (Some(10_000), Some(20), Some(0)),
        "{s3}"
    );
    assert_eq!(s3["remote_meta"]["kind"], "cloud_range");
    assert_eq!(
        s3["remote_meta"]["name"], "S3",
        "S3 beats AMAZON for the same prefix"
    );
    assert_eq!(s3["class"], "INTRA_VPC", "S3 in the cluster's own region");
    assert_eq!(s3["local_meta"]["workload"], "web");
    assert_eq!(s3["connections_closed"], 1, "the FIN flag ends the flow");
    let db = rows
        .iter()
        .find(|r| r["remote"] == "10.99.0.2")
        .expect("db row");
    assert_eq!(
        (db["bytes_out"].as_u64(), db["responder_port"].as_u64()),
        (Some(5_000), Some(5432))
    );
    assert_eq!(db["class"], "INTER_ZONE");
    assert_eq!(db["remote_meta"]["workload"], "db");
    let (_, metrics) = get(port, "/metrics");
    assert!(
        metrics.contains("podflow_netflow_records_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("podflow_netflow_datagrams_total 1"));
    assert!(
        !metrics.contains("podflow_netflow_exporter_records_total{"),
        "exporter labels are opt-in"
    );
    promtool_check(&metrics);
}

/// `podflow sysctl --netns` and `podflow-agent sysctl --netns` (the agent image's init
/// container): accounting and timestamps go from off to on in that namespace only, and
/// each says so.
#[test]
fn sysctl_turns_accounting_and_timestamps_on_in_the_namespace() {
    if !podflow_testkit::can_run("sysctl_turns_accounting_and_timestamps_on_in_the_namespace") {
        return;
    }
    let ns = podflow_testkit::Netns::new("sysctl").expect("netns");
    ns.enable_conntrack().expect("conntrack in the namespace");
    let read = |key: &str| {
        ns.sh(&format!("cat /proc/sys/net/netfilter/{key}"))
            .expect("read")
            .trim()
            .to_string()
    };
    for bin in [
        env!("CARGO_BIN_EXE_podflow"),
        env!("CARGO_BIN_EXE_podflow-agent"),
    ] {
        ns.sh(
            "sysctl -qw net.netfilter.nf_conntrack_acct=0 net.netfilter.nf_conntrack_timestamp=0",
        )
        .expect("off first");
        let out = Command::new(bin)
            .args(["sysctl", "--netns"])
            .arg(ns.path())
            .output()
            .expect("sysctl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{bin}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("nf_conntrack_acct: off -> on"),
            "{bin}: {text}"
        );
        assert!(
            text.contains("nf_conntrack_timestamp: off -> on"),
            "{bin}: {text}"
        );
        assert_eq!(read("nf_conntrack_acct"), "1", "{bin}");
        assert_eq!(read("nf_conntrack_timestamp"), "1", "{bin}");
    }
}

#[test]
fn netflow_from_outside_the_allow_list_is_dropped_and_counted() {
    use podflow_netflow::encode::{V5Flow, V5Header, v5};
    if !podflow_testkit::can_run("run_netflow_allow") {
        return;
    }
    let pair = Pair::new("nfa").expect("namespaces");
    let data = tempfile::tempdir().expect("tmp");
    let (port, nf_port) = (free_port(), free_port());
    let _pf = start_run(
        &pair,
        data.path(),
        port,
        &[
            "--netflow-listen".to_string(),
            format!("127.0.0.1:{nf_port}"),
            "--netflow-allow".to_string(),
            "127.0.0.2/32,192.0.2.0/24".to_string(),
        ],
    );
    let flow = V5Flow {
        src: [10, 99, 0, 1].into(),
        dst: [10, 99, 0, 2].into(),
        input: 1,
        output: 2,
        packets: 3,
        bytes: 777,
        first: 1_000,
        last: 2_000,
        src_port: 40_002,
        dst_port: 5432,
        tcp_flags: 0x1b,
        proto: 6,
    };
    let header = V5Header {
        sys_uptime: 5_000,
        unix_secs: 1_800_000_000,
        engine_type: 1,
        engine_id: 2,
        ..Default::default()
    };
    let datagram = v5(&header, &[flow]);
    for (from, n) in [("127.0.0.3", 2), ("127.0.0.2", 1)] {
        let sock = std::net::UdpSocket::bind((from, 0)).expect("udp");
        for _ in 0..n {
            sock.send_to(&datagram, ("127.0.0.1", nf_port))
                .expect("send");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = get(port, "/metrics");
        if sample(&m, "podflow_netflow_datagrams_total") == Some(3.0)
            && sample(&m, "podflow_netflow_records_total") == Some(1.0)
        {
            assert_eq!(
                sample(&m, "podflow_netflow_denied_datagrams_total"),
                Some(2.0)
            );
            assert_eq!(sample(&m, "podflow_netflow_allow_all"), Some(0.0));
            break;
        }
        assert!(Instant::now() < deadline, "datagrams never counted: {m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(port, "/api/v1/flows?limit=50");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        let rows = json.as_array().expect("rows");
        let of = |o: &str| rows.iter().filter(|r| r["observer"] == o).count();
        if of("127.0.0.2/258") == 1 {
            assert_eq!(of("127.0.0.3/258"), 0, "nothing from the denied exporter");
            let r = rows
                .iter()
                .find(|r| r["observer"] == "127.0.0.2/258")
                .expect("row");
            assert_eq!(r["bytes_out"], 777);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the allowed record never arrived: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_bad_netflow_allow_list_stops_startup_naming_the_entry() {
    let out = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(["server", "--netflow-allow", "10.0.0.0/8,10.1.2.3/16"])
        .output()
        .expect("podflow");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"10.1.2.3/16\" is not a CIDR: bits set after the prefix length"),
        "{err}"
    );
}
