//! The agent's probes (`podflow_probe`): the responder every peer probes, and the mesh
//! that probes the peers the server pushes, its results summed per interval into
//! batches (delivered and stored like observations) and into `/metrics`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podflow_probe::{
    Aggregator, IntervalStats, Me, Mesh, MeshConfig, Metrics, MetricsConfig, Peer, Ports,
    ProbeConfig, ProbeKind, ProbeResult, Responder, ResponderConfig,
};
use podflow_proto::{PeerSet, ProbeStats, ip_from};
use podflow_role::{Registry, RoleError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Results queued between the probers and the collector (beyond: dropped, counted by
/// the mesh).
const RESULTS_QUEUE: usize = 4096;
/// Node pairs × kinds held for one interval.
const MAX_PAIRS: usize = 50_000;

/// How the agent probes.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// The responder's port: UDP echo and TCP accept on it, HTTP on the next one.
    pub port: u16,
    /// Address the responder binds and probes leave from (the node's; `None`: all).
    pub bind: Option<IpAddr>,
    /// Round interval per peer.
    pub interval: Duration,
    /// Kinds probed each round.
    pub kinds: Vec<ProbeKind>,
    /// Path MTU the full-MTU probe checks (0: off).
    pub mtu: usize,
    /// ICMP every this many rounds, and after a UDP burst that lost packets.
    pub icmp_every: u32,
    /// HTTP GET (and the TCP connect it gives) every this many rounds.
    pub http_every: u32,
    /// DNS names looked up at resolvers each round.
    pub dns: Vec<podflow_probe::DnsTarget>,
    /// Metric bounds and the kconmon compatibility prefix.
    pub metrics: MetricsConfig,
    /// Peer selection: full mesh up to a node count, then a bounded set.
    pub topology: podflow_probe::TopologyConfig,
    /// Results are summed and stored per this interval (the live metrics follow every
    /// result).
    pub store_interval: Duration,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            port: 9471,
            bind: None,
            interval: Duration::from_secs(5),
            kinds: MeshConfig::default().kinds,
            mtu: 1500,
            icmp_every: MeshConfig::default().icmp_every,
            http_every: MeshConfig::default().http_every,
            dns: Vec::new(),
            metrics: MetricsConfig::default(),
            topology: Default::default(),
            store_interval: Duration::from_secs(60),
        }
    }
}

impl ProbeSettings {
    /// The responder's ports.
    pub fn ports(&self) -> Ports {
        Ports {
            udp: self.port,
            tcp: self.port,
            http: self.port.saturating_add(1),
        }
    }
}

/// A running set of probes.
#[derive(Debug)]
pub(crate) struct Probes {
    peers: watch::Sender<Vec<Peer>>,
    zone: Arc<Mutex<Option<String>>>,
}

impl Probes {
    /// Replaces the peers with those of a set the server pushed; the agent's own zone
    /// comes from its entry in the set.
    pub(crate) fn set_peers(&self, node: &str, set: &PeerSet) {
        let mut peers = Vec::new();
        for p in &set.peers {
            if p.node == node {
                if let Ok(mut z) = self.zone.lock() {
                    *z = Some(p.zone.clone());
                }
                continue;
            }
            let addrs: Vec<IpAddr> = p.addrs.iter().filter_map(|a| ip_from(a)).collect();
            if !addrs.is_empty() {
                peers.push(Peer::new(&p.node, &p.zone, addrs));
            }
        }
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        self.peers.send_if_modified(|have| {
            let changed = *have != peers;
            *have = peers;
            changed
        });
    }
}

/// A closed interval's rows in the wire form.
pub(crate) fn to_pb(s: &IntervalStats) -> Vec<ProbeStats> {
    s.rows
        .iter()
        .map(|(k, v)| ProbeStats {
            src_node: k.src_node.clone(),
            dst_node: k.dst_node.clone(),
            src_zone: k.src_zone.clone(),
            dst_zone: k.dst_zone.clone(),
            kind: k.kind.label().to_string(),
            dns_name: k.dns_name.clone(),
            interval_start: s.start_unix_s as i64,
            interval_s: s.len_s as u32,
            count: v.count,
            failures: v.failures,
            unavailable: v.unavailable,
            sent: v.sent,
            lost: v.lost,
            duplicates: v.duplicates,
            late: v.late,
            rtt_count: v.rtt_count,
            rtt_sum_ns: v.rtt_sum_ns,
            rtt_min_ns: v.rtt_min_ns,
            rtt_max_ns: v.rtt_max_ns,
            buckets: v.buckets.clone(),
        })
        .collect()
}

/// Starts the probes on a thread of their own, inside the observed network namespace
/// (`netns`, as the conntrack source; none on a node's host network): the responder at
/// once, the mesh once the server has said which zone this node is in (its first peer
/// set). Closed intervals' stats go to `out`.
pub(crate) async fn start(
    s: &ProbeSettings,
    node: &str,
    netns: Option<std::path::PathBuf>,
    registry: &Arc<Registry>,
    out: mpsc::Sender<Vec<ProbeStats>>,
    cancel: CancellationToken,
) -> Result<Probes, RoleError> {
    let (peers_tx, peers_rx) = watch::channel(Vec::new());
    let zone = Arc::new(Mutex::new(None::<String>));
    let metrics = Arc::new(Mutex::new(Metrics::new(s.metrics.clone())));
    let mesh: Arc<Mutex<Option<MeshStatsFn>>> = Arc::new(Mutex::new(None));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<Responder, String>>();
    let (s2, node, zone2, metrics2, mesh2) = (
        s.clone(),
        node.to_string(),
        Arc::clone(&zone),
        Arc::clone(&metrics),
        Arc::clone(&mesh),
    );
    std::thread::Builder::new()
        .name("probes".into())
        .spawn(move || {
            let rt = match (|| {
                if let Some(ns) = &netns {
                    podflow_conntrack::enter_netns(ns).map_err(|e| e.to_string())?;
                }
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("probe runtime: {e}"))
            })() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(run(
                s2, node, peers_rx, zone2, metrics2, mesh2, out, ready_tx, cancel,
            ));
        })
        .map_err(|e| RoleError::Task(format!("probe thread: {e}")))?;
    let responder = ready_rx
        .await
        .map_err(|_| RoleError::Task("probe thread ended at start".into()))?
        .map_err(RoleError::Config)?;
    // The families render from the live state at each scrape.
    registry.add_families(move |text| {
        let runner = mesh.lock().ok().and_then(|g| g.as_ref().map(|f| f()));
        if let Ok(m) = metrics.lock() {
            m.render(text, Some(&responder.stats()), runner.as_ref());
        }
    });
    Ok(Probes {
        peers: peers_tx,
        zone,
    })
}

/// Reads the mesh's counters for the metrics.
type MeshStatsFn = Box<dyn Fn() -> podflow_probe::metrics::RunnerStats + Send>;

/// The probes' life on their thread.
#[allow(clippy::too_many_arguments)]
async fn run(
    s: ProbeSettings,
    node: String,
    peers_rx: watch::Receiver<Vec<Peer>>,
    zone: Arc<Mutex<Option<String>>>,
    metrics: Arc<Mutex<Metrics>>,
    mesh_stats: Arc<Mutex<Option<MeshStatsFn>>>,
    out: mpsc::Sender<Vec<ProbeStats>>,
    ready: tokio::sync::oneshot::Sender<Result<Responder, String>>,
    cancel: CancellationToken,
) {
    let bind = s
        .bind
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let started = Responder::start(
        &ResponderConfig {
            bind,
            ports: s.ports(),
            ..Default::default()
        },
        cancel.clone(),
    );
    match started {
        Ok(r) => {
            let _ = ready.send(Ok(r));
        }
        Err(e) => {
            let _ = ready.send(Err(format!(
                "probe responder on {bind} port {}: {e}",
                s.port
            )));
            return;
        }
    }
    let (res_tx, mut res_rx) = mpsc::channel::<ProbeResult>(RESULTS_QUEUE);
    let interval_s = s.store_interval.as_secs().max(1);
    let mut mesh_cfg = Some(MeshConfig {
        me: Me {
            node: node.clone(),
            zone: String::new(),
        },
        probe: ProbeConfig {
            ports: s.ports(),
            bind: s.bind,
            mtu: s.mtu,
            ..Default::default()
        },
        topology: s.topology,
        interval_ms: s.interval.as_millis() as u64,
        kinds: s.kinds.clone(),
        icmp_every: s.icmp_every,
        http_every: s.http_every,
        dns: s.dns.clone(),
        ..Default::default()
    });
    let mut res_tx = Some(res_tx);
    let mut peers_seen = peers_rx.clone();
    let mut agg = Aggregator::new(interval_s, MAX_PAIRS);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut mesh: Option<Mesh> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            // The mesh starts with the first peer set (this node's zone is known then).
            changed = peers_seen.changed(), if mesh.is_none() => {
                if changed.is_err() {
                    break;
                }
                let Some(z) = zone.lock().ok().and_then(|z| z.clone()) else {
                    continue;
                };
                if let (Some(mut cfg), Some(tx)) = (mesh_cfg.take(), res_tx.take()) {
                    cfg.me.zone = z;
                    let m = Mesh::start(cfg, peers_rx.clone(), tx, cancel.clone());
                    let counters = m.stats_handle();
                    if let Ok(mut g) = mesh_stats.lock() {
                        *g = Some(Box::new(move || counters().runner()));
                    }
                    mesh = Some(m);
                }
            }
            r = res_rx.recv() => {
                let Some(r) = r else { break };
                if let Ok(mut m) = metrics.lock() {
                    m.observe(&r);
                }
                agg.record(&r);
            }
            _ = tick.tick() => {
                let now = podflow_inventory::now_ns() / 1_000_000_000;
                let rows: Vec<ProbeStats> = agg.flush(now).iter().flat_map(to_pb).collect();
                if !rows.is_empty() && out.send(rows).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(m) = mesh {
        m.join().await;
    }
}
