//! Probes end to end, as child processes: two `podflow agent`s whose probes live in the
//! node namespaces this test creates, a `podflow server` that pushes them their peers
//! from an inventory file and stores what they measure. One direction loses 20% of its
//! packets and is delayed by 20 ms: the server's probe history and the agents' metrics
//! show exactly that pair as lossy and slow; removing a node from the inventory takes it
//! out of the other agent's peers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use podflow_impair::{Backend, DelaySpec, Delayer, Direction, LossRule};
use podflow_testkit::{ChildGuard, Pair, free_port, http_get as get, wait_until};
use serde_json::Value;

fn inventory(path: &Path, nodes: &[(&str, &str, &str)]) {
    let mut text = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for (name, zone, ip) in nodes {
        text.push_str(&format!(
            "- kind: Node\n  metadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\n  status: {{addresses: [{{type: InternalIP, address: {ip}}}], conditions: [{{type: Ready, status: \"True\"}}]}}\n"
        ));
    }
    // Written whole, then renamed: the server never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write inventory");
    std::fs::rename(&tmp, path).expect("rename inventory");
}

fn json(port: u16, path: &str) -> Value {
    let (status, body) = get(port, path).expect("the server answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

fn metric_sum(port: u16, prefix: &str) -> f64 {
    get(port, "/metrics")
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0)
}

#[test]
fn probes_between_agents_show_the_impaired_pair_and_follow_the_inventory() {
    let test = "probes_between_agents_show_the_impaired_pair_and_follow_the_inventory";
    if !podflow_testkit::can_run(test) || !podflow_testkit::have(test, "iptables") {
        return;
    }
    let pair = Pair::new("prob").expect("namespaces");
    let dir = tempfile::tempdir().expect("tmp");
    let inv = dir.path().join("inventory.yaml");
    inventory(
        &inv,
        &[
            ("node-a", "zone-1", Pair::A4),
            ("node-b", "zone-2", Pair::B4),
        ],
    );
    let (http, grpc) = (free_port(), free_port());
    let server = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["server", "--interval", "1s", "--listen"])
            .arg(format!("127.0.0.1:{http}"))
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--data-dir")
            .arg(dir.path().join("server"))
            .arg("--inventory")
            .arg(&inv)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start server"),
    );
    wait_until("the server", Duration::from_secs(20), || {
        get(http, "/ready").is_some_and(|(s, _)| s == 200)
    });
    let agent = |name: &str, ns: &podflow_testkit::Netns, port: u16| {
        ChildGuard(
            Command::new(env!("CARGO_BIN_EXE_podflow"))
                .args(["agent", "--interval", "1s", "--node-name", name, "--server"])
                .arg(format!("http://127.0.0.1:{grpc}"))
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .arg("--netns")
                .arg(ns.path())
                .args([
                    "--probes",
                    "--probe-interval",
                    "500ms",
                    "--probe-store-interval",
                    "2s",
                    "--probe-kinds",
                    "udp,tcp,http",
                ])
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start agent"),
        )
    };
    // The impairments come first, so that every sample stored is an impaired one.
    // 20% of what A sends B is lost where B receives it; what B sends A is delayed 20 ms
    // on its way out of B: after the responder's own times, so it is the network's (a
    // delay in a responder's receive path counts as the responder's and is subtracted,
    // as TWAMP does).
    let _loss = LossRule::add(
        pair.b.name(),
        Pair::A4.parse().expect("ip"),
        Direction::FromPeer,
        0.2,
        Backend::Iptables,
    )
    .expect("loss rule");
    let _delay = Delayer::start(
        pair.b.name(),
        Pair::A4.parse().expect("ip"),
        Direction::ToPeer,
        DelaySpec {
            base: Duration::from_millis(20),
            jitter: Duration::ZERO,
        },
    )
    .expect("delayer");
    let (pa, pb) = (free_port(), free_port());
    let _a = agent("node-a", &pair.a, pa);
    let _b = agent("node-b", &pair.b, pb);

    // Peers arrive from the server and both agents probe each other.
    wait_until("probes from both agents", Duration::from_secs(30), || {
        metric_sum(pa, "podflow_probe_results_total") > 0.0
            && metric_sum(pb, "podflow_probe_results_total") > 0.0
    });
    // Enough UDP packets stored for the loss to be measurable (each burst is 5 packets).
    let udp = |src: &str, dst: &str| -> Option<Value> {
        let v = json(
            http,
            "/api/v1/probes?group_by=src_node,dst_node&kind=udp&from=0",
        );
        v["rows"]
            .as_array()?
            .iter()
            .find(|r| r["key"]["src_node"] == src && r["key"]["dst_node"] == dst)
            .cloned()
    };
    wait_until(
        "300 UDP packets a→b stored",
        Duration::from_secs(90),
        || udp("node-a", "node-b").is_some_and(|r| r["packets_sent"].as_u64() >= Some(300)),
    );
    let ab = udp("node-a", "node-b").expect("a→b");
    let ba = udp("node-b", "node-a").expect("b→a");
    let (sent, lost) = (
        ab["packets_sent"].as_u64().expect("sent"),
        ab["packets_lost"].as_u64().expect("lost"),
    );
    // 20% loss, binomial, 99.9% band.
    let p = lost as f64 / sent as f64;
    let sd = (0.2 * 0.8 / sent as f64).sqrt();
    assert!((p - 0.2).abs() < 3.3 * sd, "a→b lost {lost} of {sent}");
    let p50 = ab["rtt_p50_seconds"].as_f64().expect("rtt");
    assert!((0.018..0.024).contains(&p50), "a→b median RTT {p50}");
    // b→a: its probes' replies are what B receives from A, lost 20% too.
    let p_ba = ba["packets_lost"].as_u64().expect("lost") as f64
        / ba["packets_sent"].as_u64().expect("sent") as f64;
    assert!(p_ba > 0.1 && p_ba < 0.3, "b→a loss {p_ba}");
    // The zone pair view joins traffic (none here) with the same health.
    let pairs = json(http, "/api/v1/pairs?level=zone&from=0");
    let z = pairs["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .find(|r| r["src"] == "zone-1" && r["dst"] == "zone-2")
        .cloned()
        .expect("zone-1 → zone-2");
    assert!(z["loss"].as_f64().expect("loss") > 0.1, "{z}");

    // node-b leaves the inventory: node-a stops probing it within a couple of intervals.
    inventory(&inv, &[("node-a", "zone-1", Pair::A4)]);
    wait_until(
        "node-b out of node-a's peers",
        Duration::from_secs(20),
        || metric_sum(pa, "podflow_probe_peers") == 0.0,
    );
    let before = metric_sum(pa, "podflow_probe_results_total");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        metric_sum(pa, "podflow_probe_results_total"),
        before,
        "no probe (and no failure) recorded for a node that left"
    );
    drop(server);
}

/// `podflow probe ADDR --type KIND --netns A`: its exit status and what it printed.
fn probe_cli(ns: &podflow_testkit::Netns, target: &str, kind: &str, port: u16) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args([
            "probe",
            target,
            "--type",
            kind,
            "--port",
            &port.to_string(),
            "--netns",
        ])
        .arg(ns.path())
        .output()
        .expect("podflow probe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn podflow_probe_prints_one_result_and_exits_2_when_it_fails() {
    let test = "podflow_probe_prints_one_result_and_exits_2_when_it_fails";
    if !podflow_testkit::can_run(test) || !podflow_testkit::have(test, "iptables") {
        return;
    }
    let pair = Pair::new("pcli").expect("namespaces");
    let dir = tempfile::tempdir().expect("tmp");
    // B's responder: an agent with probes (its server need not exist).
    let (http, port) = (free_port(), 9471);
    let _agent = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["agent", "--node-name", "node-b", "--server"])
            .arg(format!("http://127.0.0.1:{}", free_port()))
            .arg("--listen")
            .arg(format!("127.0.0.1:{http}"))
            .arg("--data-dir")
            .arg(dir.path().join("b"))
            .arg("--netns")
            .arg(pair.b.path())
            .args(["--probes", "--probe-port", &port.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .expect("start agent"),
    );
    wait_until("B's responder", Duration::from_secs(20), || {
        probe_cli(&pair.a, Pair::B4, "tcp", port).0 == 0
    });
    let (code, out) = probe_cli(&pair.a, Pair::B4, "udp", port);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("udp {b} {b}: ok,", b = Pair::B4)),
        "{out}"
    );
    assert!(out.contains(" 0 lost, rtt min "), "{out}");
    let (code, out) = probe_cli(&pair.a, Pair::B4, "http", port);
    assert_eq!(code, 0, "{out}");
    // Nothing listens there: a failure, exit 2.
    let (code, out) = probe_cli(&pair.a, Pair::B4, "tcp", port + 10);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(": fail,"), "{out}");
    // Every packet from A lost where B receives it.
    let _loss = LossRule::add(
        pair.b.name(),
        Pair::A4.parse().expect("ip"),
        Direction::FromPeer,
        1.0,
        Backend::Iptables,
    )
    .expect("loss rule");
    let (code, out) = probe_cli(&pair.a, Pair::B4, "udp", port);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(": fail,") && !out.contains(" 0 lost"), "{out}");
}

/// `podflow probe NODE --server URL` against a real `podflow server` whose inventory
/// names two nodes on 127.0.0.0/8: a real responder on 127.0.0.1 (ok, with an RTT) and,
/// on 127.0.0.3, a socket that reads every probe and answers none (100% loss: exit 2).
/// Needs no root: everything is on the loopback interface.
#[test]
fn podflow_probe_node_through_the_server_prints_its_result_and_exits_2_on_total_loss() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = tokio_util::sync::CancellationToken::new();
    let responder = rt
        .block_on(async {
            podflow_probe::Responder::start(
                &podflow_probe::ResponderConfig {
                    bind: [127, 0, 0, 1].into(),
                    ports: podflow_probe::Ports {
                        udp: port,
                        tcp: port,
                        http: port + 1,
                    },
                    ..Default::default()
                },
                stop.clone(),
            )
        })
        .expect("responder");
    let _dark = std::net::UdpSocket::bind(("127.0.0.3", port)).expect("bind 127.0.0.3");
    let inv = dir.path().join("inventory.yaml");
    inventory(
        &inv,
        &[
            ("node-lo", "zone-1", "127.0.0.1"),
            ("node-dark", "zone-2", "127.0.0.3"),
        ],
    );
    let token = dir.path().join("token");
    std::fs::write(&token, "cli-s3cret\n").expect("token");
    let (http, grpc) = (free_port(), free_port());
    let _server = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["server", "--listen"])
            .arg(format!("127.0.0.1:{http}"))
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--data-dir")
            .arg(dir.path().join("server"))
            .arg("--inventory")
            .arg(&inv)
            .arg("--http-token-file")
            .arg(&token)
            .args(["--probe-port", &port.to_string()])
            .env_remove("PODFLOW_HTTP_TOKEN_FILE")
            .stderr(Stdio::null())
            .spawn()
            .expect("start server"),
    );
    wait_until("the server", Duration::from_secs(20), || {
        get(http, "/ready").is_some_and(|(s, _)| s == 200)
    });
    let url = format!("http://127.0.0.1:{http}");
    let cli = |node: &str, kind: &str, token: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_podflow"));
        c.args(["probe", node, "--type", kind, "--server", &url])
            .env_remove("PODFLOW_HTTP_TOKEN_FILE");
        if let Some(t) = token {
            c.arg("--http-token-file").arg(t);
        }
        let out = c.output().expect("podflow probe");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli("node-lo", "udp", Some(&token));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!(
            "udp node-lo 127.0.0.1 (from {url}): ok, 5 sent, 0 lost, rtt min "
        )),
        "{out}"
    );
    let (code, out, err) = cli("node-lo", "tcp", Some(&token));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok, 1 sent, 0 lost, rtt "), "{out}");
    let (code, out, err) = cli("node-dark", "udp", Some(&token));
    assert_eq!(code, 2, "100% loss exits 2: {out}{err}");
    assert!(
        out.starts_with(&format!(
            "udp node-dark 127.0.0.3 (from {url}): fail, 5 sent, 5 lost, no RTT"
        )),
        "{out}"
    );
    // Refusals are errors (exit 1) naming why, not probe failures.
    let (code, _, err) = cli("node-nope", "udp", Some(&token));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("404") && err.contains("unknown node `node-nope`"),
        "{err}"
    );
    let (code, _, err) = cli("node-lo", "udp", None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401"), "{err}");
    rt.block_on(responder.stop());
}
