//! Sizing past one machine (issue 17 §4): simulated clusters of N nodes against one real
//! `podflow server` (the binary, a child process, so its CPU and memory are its own),
//! with the embedded store and with ClickHouse (chdb behind the test front).
//!
//! ```text
//! cargo bench -p podflow --bench sizing -- [--nodes 100,300,1000,2000,5000]
//!     [--seconds 30] [--store sqlite|clickhouse|both] [--profile FILE]
//! ```
//!
//! Every step is a cluster of its own: a fresh server whose inventory holds N nodes and
//! their pods (`podflow_testkit::cluster`), and N simulated agents in this process, each
//! with its own identity, sequence and gRPC stream, sending one batch per interval at its
//! own phase. What a node's agent sends follows the node profile
//! (benches/data/sizing-node.conf): long-lived connections whose counters move in a
//! share of the intervals, and short connections opened and closed within one. After
//! one interval of warm-up the step measures a window of `--seconds`: the server's CPU
//! time (utime + stime from /proc), its memory, the observations and rows it stored (its
//! own /metrics) and whether it kept up (every batch sent in the window acked within two
//! intervals). Steps go up until the server does not keep up.
//!
//! Last line: `server_obs_per_core=<observations per second of server CPU time>` with the
//! embedded store, at the largest step it kept up with.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use podflow_model::{Counters, Observation, Protocol, Tuple};
use podflow_proto::{IngestClient, ObservationBatch, VERSION, observation_pb};
use podflow_testkit::cluster::{
    Cluster, INTERNET_POOL, Rng, S3_BASE, cloud_ranges, internet_ip, node_ip, node_name,
};
use podflow_testkit::{ChildGuard, cpu_seconds, memory_kib, metric_sum as metric};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// What one node's agent sends (benches/data/sizing-node.conf).
#[derive(Debug, Clone)]
struct Profile {
    pods_per_node: usize,
    connections_per_pod: usize,
    active_share: f64,
    short_per_second: f64,
    interval_s: u64,
}

impl Profile {
    fn read(path: &Path) -> Result<Profile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut kv = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("{}:{}: not `key = value`", path.display(), i + 1))?;
            let v: f64 = v.trim().parse().map_err(|_| {
                format!(
                    "{}:{}: {:?} is not a number",
                    path.display(),
                    i + 1,
                    v.trim()
                )
            })?;
            kv.insert(k.trim().to_string(), v);
        }
        let get = |k: &str| {
            kv.get(k)
                .copied()
                .ok_or_else(|| format!("{}: `{k}` is missing", path.display()))
        };
        let p = Profile {
            pods_per_node: get("pods_per_node")? as usize,
            connections_per_pod: get("connections_per_pod")? as usize,
            active_share: get("active_share")?,
            short_per_second: get("short_per_second")?,
            interval_s: get("interval_s")? as u64,
        };
        if !(1..=240).contains(&p.pods_per_node)
            || !(0.0..=1.0).contains(&p.active_share)
            || p.interval_s == 0
        {
            return Err(format!(
                "{}: pods_per_node 1..=240, active_share 0..=1, interval_s > 0",
                path.display()
            ));
        }
        Ok(p)
    }
}

/// One live connection as the client's node's conntrack holds it (IPv4, TCP).
#[derive(Debug, Clone, Copy)]
struct Conn {
    src: Ipv4Addr,
    sport: u16,
    /// Where the client dialled (a ClusterIP, a pod, an internet address).
    dst: Ipv4Addr,
    dport: u16,
    /// Who answers: the Service's backend when `dst` is a ClusterIP, else `dst`.
    reply_src: Ipv4Addr,
    /// The node address the reply goes to when the connection leaves the cluster
    /// (masquerade), else the client.
    reply_dst: Ipv4Addr,
}

/// Every node's live connections: each pod's [`Profile::connections_per_pod`], in the
/// pattern of the NetFlow cluster stream, listed at every node whose conntrack sees it.
fn live_connections(c: &Cluster, per_pod: usize, rng: &mut Rng) -> Vec<Vec<Conn>> {
    let mut out = vec![Vec::new(); c.nodes];
    for (p, &(node, ip)) in c.pods.iter().enumerate() {
        let mut port = 32768u16;
        let mut conn = |dst: Ipv4Addr, dport: u16, reply_src: Ipv4Addr, masq: bool| {
            port = port.wrapping_add(1);
            Conn {
                src: ip,
                sport: port,
                dst,
                dport,
                reply_src,
                reply_dst: if masq { node_ip(node) } else { ip },
            }
        };
        for k in 0..per_pod {
            match k % 16 {
                0..6 => {
                    let q = c.remote_pod(node, rng);
                    let (qnode, qip) = c.pods[q];
                    let x = conn(qip, 8080, qip, false);
                    out[node].push(x);
                    out[qnode].push(x);
                }
                6..12 => {
                    let (cip, backends) = &c.services[(p * 7 + k * 13) % c.services.len()];
                    let (bnode, bip) = c.pods[backends[k % backends.len()]];
                    if k % 2 == 0 {
                        out[node].push(conn(*cip, 80, bip, false));
                    } else {
                        let x = conn(bip, 80, bip, false);
                        out[node].push(x);
                        if bnode != node {
                            out[bnode].push(x);
                        }
                    }
                }
                12..14 => {
                    let dst = internet_ip(rng.below(INTERNET_POOL));
                    out[node].push(conn(dst, 443, dst, true));
                }
                _ => {
                    let dst = Ipv4Addr::from(u32::from(S3_BASE) + rng.below(1 << 17) as u32);
                    out[node].push(conn(dst, 443, dst, true));
                }
            }
        }
    }
    out
}

/// A hash of three numbers (SplitMix64 of their mix): which connections move when.
fn mix(a: u64, b: u64, c: u64) -> u64 {
    Rng(a.wrapping_mul(0x1000_0000_01b3) ^ b.wrapping_mul(0x9e37_79b9) ^ c).next_u64()
}

fn observation(x: &Conn, h: u64, opened: bool, closed: bool) -> Observation {
    let req = 1 + h % 8;
    let resp = 1 + (h >> 8) % 24;
    Observation {
        proto: Protocol::TCP,
        orig: Tuple {
            src: x.src.into(),
            dst: x.dst.into(),
            src_port: x.sport,
            dst_port: x.dport,
        },
        reply: Tuple {
            src: x.reply_src.into(),
            dst: x.reply_dst.into(),
            src_port: x.dport,
            dst_port: x.sport,
        },
        delta_orig: Counters {
            bytes: req * 140,
            packets: req,
        },
        delta_reply: Counters {
            bytes: resp * 900,
            packets: resp,
        },
        opened,
        closed,
        ..Default::default()
    }
}

/// Node `n`'s batch of interval `t`: its moving live connections and its short ones.
fn batch(
    n: usize,
    seq: u64,
    t: u64,
    live: &[Conn],
    c: &Cluster,
    p: &Profile,
    per_node_pods: &[usize],
) -> ObservationBatch {
    let threshold = (p.active_share * 1_000_000.0) as u64;
    let mut observations: Vec<_> = live
        .iter()
        .enumerate()
        .filter_map(|(j, x)| {
            let h = mix(n as u64, j as u64, t);
            (h % 1_000_000 < threshold).then(|| observation_pb(&observation(x, h, false, false)))
        })
        .collect();
    let shorts = (p.short_per_second * p.interval_s as f64).round() as u64;
    for k in 0..shorts {
        let h = mix(n as u64, k, t ^ 0x5eed);
        let ip = c.pods[per_node_pods[h as usize % per_node_pods.len()]].1;
        let (cip, backends) = &c.services[(h >> 16) as usize % c.services.len()];
        let bip = c.pods[backends[(h >> 32) as usize % backends.len()]].1;
        let x = Conn {
            src: ip,
            sport: 40_000 + ((t * shorts + k) % 20_000) as u16,
            dst: *cip,
            dport: 80,
            reply_src: bip,
            reply_dst: ip,
        };
        observations.push(observation_pb(&observation(&x, h, true, true)));
    }
    ObservationBatch {
        version: VERSION,
        agent_id: format!("sim-{}", node_name(n)),
        seq,
        node: node_name(n),
        observed_at_ms: now_ms(),
        observations,
        local_addrs: vec![node_ip(n).octets().to_vec()],
        probes: Vec::new(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the simulated agents did, summed over all of them.
#[derive(Debug, Default)]
struct Tally {
    sent_obs: AtomicU64,
    sent_bytes: AtomicU64,
    /// Batches acked later than two intervals after they were sent, or not at all by then.
    late: AtomicU64,
    refused: AtomicU64,
    max_ack_ms: AtomicU64,
}

/// One simulated agent: connects, then sends a batch every interval at `phase` into it
/// until `stop`; counts what is acked and how late.
#[allow(clippy::too_many_arguments)]
async fn agent(
    n: usize,
    grpc: String,
    live: Arc<Vec<Vec<Conn>>>,
    cluster: Arc<Cluster>,
    per_node_pods: Arc<Vec<Vec<usize>>>,
    p: Profile,
    phase: Duration,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut client = loop {
        match IngestClient::connect(grpc.clone()).await {
            Ok(c) => break c.max_decoding_message_size(64 << 20),
            Err(_) if !stop.is_cancelled() => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(_) => return,
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<ObservationBatch>(64);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Ok(v) = format!("sim-{}", node_name(n)).parse() {
        req.metadata_mut()
            .insert(podflow_server::AGENT_ID_HEADER, v);
    }
    let Ok(resp) = client.push(req).await else {
        tally.refused.fetch_add(1, Relaxed);
        return;
    };
    let mut acks = resp.into_inner();
    let in_flight: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let late_after = Duration::from_secs(2 * p.interval_s);
    let reader = {
        let (in_flight, tally) = (in_flight.clone(), tally.clone());
        tokio::spawn(async move {
            while let Ok(Some(ack)) = acks.message().await {
                if ack.seq == 0 {
                    continue;
                }
                if !ack.error.is_empty() {
                    tally.refused.fetch_add(1, Relaxed);
                    continue;
                }
                let Some(sent) = in_flight.lock().expect("in flight").remove(&ack.seq) else {
                    continue;
                };
                let waited = sent.elapsed();
                tally
                    .max_ack_ms
                    .fetch_max(waited.as_millis() as u64, Relaxed);
                if waited > late_after {
                    tally.late.fetch_add(1, Relaxed);
                }
            }
        })
    };
    let interval = Duration::from_secs(p.interval_s);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        seq += 1;
        let t = now_ms() as u64 / 1000 / p.interval_s;
        let b = batch(n, seq, t, &live[n], &cluster, &p, &per_node_pods[n]);
        let obs = b.observations.len() as u64;
        tally.sent_bytes.fetch_add(b.encoded_len() as u64, Relaxed);
        in_flight
            .lock()
            .expect("in flight")
            .insert(seq, Instant::now());
        if tx.send(b).await.is_err() {
            break;
        }
        tally.sent_obs.fetch_add(obs, Relaxed);
    }
    drop(tx);
    reader.abort();
    // Batches still waiting for their ack past the limit are late too.
    let waiting = in_flight.lock().expect("in flight");
    let unacked = waiting.values().filter(|t| t.elapsed() > late_after);
    tally.late.fetch_add(unacked.count() as u64, Relaxed);
}

/// A running `podflow server` of one step.
struct Server {
    child: ChildGuard,
    http: u16,
    grpc: u16,
}

impl Server {
    fn start(dir: &Path, interval_s: u64, store: &Store, nodes: usize) -> Server {
        let (http, grpc) = (podflow_testkit::free_port(), podflow_testkit::free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_podflow"));
        cmd.arg("server")
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--interval", &format!("{interval_s}s")])
            .args(["--agent-auth", "none", "--log", "warn"])
            .arg("--inventory")
            .arg(dir.join("inventory.yaml"))
            .arg("--cloud-ranges")
            .arg(dir.join("cloud"));
        if let Store::ClickHouse { port, .. } = store {
            cmd.args(["--clickhouse-url", &format!("http://127.0.0.1:{port}")])
                .args(["--clickhouse-table", &format!("sizing_{nodes}")]);
        }
        let log = std::fs::File::create(dir.join("server.log")).expect("server log");
        let child = ChildGuard(
            cmd.stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start podflow server"),
        );
        let s = Server { child, http, grpc };
        let t = Instant::now();
        while podflow_testkit::http_get(http, "/ready").map(|r| r.0) != Some(200) {
            if t.elapsed() > Duration::from_secs(600) {
                panic!(
                    "podflow server not ready after 10 min; its log: {}",
                    dir.join("server.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn metrics(&self) -> String {
        podflow_testkit::http_get(self.http, "/metrics").map_or_else(String::new, |r| r.1)
    }
}

enum Store {
    Sqlite,
    ClickHouse { port: u16, front: ChildGuard },
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::ClickHouse { .. } => "clickhouse",
        }
    }
}

/// The counters a step reads at both ends of its window.
struct Snapshot {
    at: Instant,
    server_cpu: f64,
    stored_obs: f64,
    rows: f64,
    write_s: f64,
    clickhouse_cpu: Option<f64>,
    sent_obs: u64,
    sent_bytes: u64,
}

/// What one step measured.
#[derive(Debug)]
struct Step {
    nodes: usize,
    pods: usize,
    offered_obs_s: f64,
    stored_obs_s: f64,
    server_cpu_cores: f64,
    obs_per_core: f64,
    store_busy: f64,
    rows_per_day: f64,
    disk_bytes_per_row: Option<f64>,
    agent_kib_s_per_node: f64,
    rss_mib: f64,
    peak_mib: f64,
    ready_s: f64,
    clickhouse_cpu_cores: Option<f64>,
    kept_up: bool,
    max_ack_s: f64,
}

fn step(nodes: usize, p: &Profile, store: &Store, seconds: u64, root: &Path) -> Step {
    let dir = root.join(format!("{}-{nodes}", store.name()));
    std::fs::create_dir_all(dir.join("cloud")).expect("step dir");
    let mut rng = Rng(17);
    let pods = nodes * p.pods_per_node;
    let cluster = Cluster::new(nodes, pods, &mut rng);
    std::fs::write(dir.join("inventory.yaml"), cluster.inventory()).expect("inventory");
    std::fs::write(dir.join("cloud/ip-ranges.json"), cloud_ranges()).expect("ranges");
    let live = live_connections(&cluster, p.connections_per_pod, &mut rng);
    let mut per_node_pods = vec![Vec::new(); nodes];
    for (i, &(n, _)) in cluster.pods.iter().enumerate() {
        per_node_pods[n].push(i);
    }

    let t_ready = Instant::now();
    let server = Server::start(&dir, p.interval_s, store, nodes);
    let ready_s = t_ready.elapsed().as_secs_f64();

    // The agents run on one thread of their own: the server keeps the rest of the machine.
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("agents' runtime");
    let (live, cluster, per_node_pods) =
        (Arc::new(live), Arc::new(cluster), Arc::new(per_node_pods));
    let url = format!("http://127.0.0.1:{}", server.grpc);
    let interval = Duration::from_secs(p.interval_s);
    let agents: Vec<_> = (0..nodes)
        .map(|n| {
            let phase = interval.mul_f64(n as f64 / nodes as f64);
            rt.spawn(agent(
                n,
                url.clone(),
                live.clone(),
                cluster.clone(),
                per_node_pods.clone(),
                p.clone(),
                phase,
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let ch_pid = match store {
        Store::ClickHouse { front, .. } => Some(front.0.id()),
        Store::Sqlite => None,
    };

    let snapshot = |server: &Server| {
        let page = server.metrics();
        Snapshot {
            at: Instant::now(),
            server_cpu: cpu_seconds(server.pid()).expect("the podflow server exited"),
            stored_obs: metric(&page, "podflow_server_observations_total"),
            rows: metric(&page, "podflow_store_rows_written_total"),
            write_s: metric(&page, "podflow_store_write_seconds_total"),
            clickhouse_cpu: ch_pid.and_then(cpu_seconds),
            sent_obs: tally.sent_obs.load(Relaxed),
            sent_bytes: tally.sent_bytes.load(Relaxed),
        }
    };
    // Warm-up: every agent connected and through its first two intervals.
    wait(&rt, interval * 2);
    let a = snapshot(&server);
    let late0 = tally.late.load(Relaxed);
    wait(&rt, Duration::from_secs(seconds));
    let b = snapshot(&server);
    // What was sent in the window is acked within two intervals when the server keeps up.
    let sent_in_window = b.sent_obs - a.sent_obs;
    wait(&rt, interval * 2);
    let (rss_kib, peak_kib) = memory_kib(server.pid());
    let rows_total = metric(&server.metrics(), "podflow_store_rows_written_total");
    stop.cancel();
    rt.block_on(async {
        for a in agents {
            let _ = a.await;
        }
    });
    let late = tally.late.load(Relaxed) - late0;
    let window_s = b.at.duration_since(a.at).as_secs_f64();
    let server_cpu = b.server_cpu - a.server_cpu;
    let stored_obs = b.stored_obs - a.stored_obs;
    let refused = tally.refused.load(Relaxed);
    let kept_up = late == 0 && refused == 0;
    drop(server);
    // The embedded store's file (with its log) per row written, rollups included.
    let disk: u64 = ["podflow.sqlite", "podflow.sqlite-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join("data").join(f)).ok())
        .map(|m| m.len())
        .sum();
    let _ = std::fs::remove_dir_all(dir.join("data"));
    Step {
        disk_bytes_per_row: (disk > 0).then(|| disk as f64 / rows_total.max(1.0)),
        nodes,
        pods,
        offered_obs_s: sent_in_window as f64 / window_s,
        stored_obs_s: stored_obs / window_s,
        server_cpu_cores: server_cpu / window_s,
        obs_per_core: stored_obs / server_cpu.max(1e-9),
        store_busy: (b.write_s - a.write_s) / window_s,
        rows_per_day: (b.rows - a.rows) / window_s * 86_400.0,
        agent_kib_s_per_node: (b.sent_bytes - a.sent_bytes) as f64
            / 1024.0
            / window_s
            / nodes as f64,
        rss_mib: rss_kib as f64 / 1024.0,
        peak_mib: peak_kib as f64 / 1024.0,
        ready_s,
        clickhouse_cpu_cores: match (a.clickhouse_cpu, b.clickhouse_cpu) {
            (Some(x), Some(y)) => Some((y - x) / window_s),
            _ => None,
        },
        kept_up,
        max_ack_s: tally.max_ack_ms.load(Relaxed) as f64 / 1000.0,
    }
}

/// Lets the agents on `rt` run for `d`.
fn wait(rt: &tokio::runtime::Runtime, d: Duration) {
    rt.block_on(async move { tokio::time::sleep(d).await });
}

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
}

fn main() {
    let nodes: Vec<usize> = arg("--nodes")
        .unwrap_or_else(|| "100,300,1000,2000,5000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("--nodes: {s:?} is not a number"))
        })
        .collect();
    let seconds: u64 = arg("--seconds").map_or(30, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("--seconds: {s:?} is not a number"))
    });
    let which = arg("--store").unwrap_or_else(|| "both".into());
    let profile_path = arg("--profile").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/data/sizing-node.conf"
            ))
        },
        PathBuf::from,
    );
    let p = Profile::read(&profile_path).unwrap_or_else(|e| panic!("profile: {e}"));
    let root = tempfile::tempdir().expect("tmp");
    println!(
        "sizing: profile {} ({p:?}); window {seconds} s after {} s of warm-up per step",
        profile_path.display(),
        2 * p.interval_s
    );

    let mut stores = Vec::new();
    if which == "sqlite" || which == "both" {
        stores.push(Store::Sqlite);
    }
    if which == "clickhouse" || which == "both" {
        let ch_dir = root.path().join("clickhouse");
        std::fs::create_dir_all(&ch_dir).expect("dir");
        let port = podflow_testkit::free_port();
        match podflow_testkit::clickhouse_front(&ch_dir, port) {
            Some(front) => stores.push(Store::ClickHouse { port, front }),
            None => panic!(
                "ClickHouse: python3 with chdb cannot run the test front (pip install --no-deps chdb-core==26.9.0 lz4 clickhouse-cityhash), or pass --store sqlite"
            ),
        }
    }
    let mut best: HashMap<&'static str, Step> = HashMap::new();
    for store in &stores {
        println!(
            "\n{:>6} {:>7} {:>10} {:>10} {:>8} {:>10} {:>6} {:>12} {:>6} {:>9} {:>8} {:>8} {:>7} {:>6} {:>8}",
            "nodes",
            "pods",
            "offered/s",
            "stored/s",
            "cpu",
            "obs/cpu-s",
            "store",
            "rows/day",
            "B/row",
            "KiB/s/nd",
            "RSS MiB",
            "peak",
            "ready",
            "ch cpu",
            "kept up"
        );
        for &n in &nodes {
            let s = step(n, &p, store, seconds, root.path());
            println!(
                "{:>6} {:>7} {:>10.0} {:>10.0} {:>8.2} {:>10.0} {:>6.2} {:>12.0} {:>6} {:>9.1} {:>8.0} {:>8.0} {:>6.0}s {:>6} {:>8}",
                s.nodes,
                s.pods,
                s.offered_obs_s,
                s.stored_obs_s,
                s.server_cpu_cores,
                s.obs_per_core,
                s.store_busy,
                s.rows_per_day,
                s.disk_bytes_per_row
                    .map_or("-".into(), |b| format!("{b:.0}")),
                s.agent_kib_s_per_node,
                s.rss_mib,
                s.peak_mib,
                s.ready_s,
                s.clickhouse_cpu_cores
                    .map_or("-".into(), |c| format!("{c:.2}")),
                if s.kept_up {
                    "yes".to_string()
                } else {
                    format!("no ({:.0}s)", s.max_ack_s)
                },
            );
            let kept_up = s.kept_up;
            if kept_up {
                best.insert(store.name(), s);
            } else {
                println!(
                    "  {}: the server did not keep up at {n} nodes; larger steps skipped",
                    store.name()
                );
                break;
            }
        }
    }
    let per_core = |name: &str| best.get(name).map_or(0.0, |s| s.obs_per_core);
    for name in ["clickhouse", "sqlite"] {
        if let Some(s) = best.get(name) {
            println!(
                "{name}: largest step kept up with: {} nodes, {:.0} obs/s stored on {:.2} cores of server CPU",
                s.nodes, s.stored_obs_s, s.server_cpu_cores
            );
        }
    }
    if which != "sqlite" {
        println!(
            "server_obs_per_core_clickhouse={:.0}",
            per_core("clickhouse")
        );
    }
    if which != "clickhouse" {
        println!("server_obs_per_core={:.0}", per_core("sqlite"));
    }
}
