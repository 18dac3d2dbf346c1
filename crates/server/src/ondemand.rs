//! On-demand probes from the server's host (`POST /api/v1/probe`): the request names a
//! node; its address is the inventory's (InternalIP first) or, for a node only its agent
//! knows, the peer set's — never one the request gives.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use podflow_api::ondemand::{OnDemandError, OnDemandProber, ProbeAnswer, ProbeFuture};
use podflow_inventory::SharedIndex;
use podflow_probe::{MeshConfig, Outcome, Peer, Ports, ProbeKind};

use crate::peers::PeerBook;

/// Settings of on-demand probes.
#[derive(Debug, Clone)]
pub struct OnDemandConfig {
    /// The agents' responder ports (their `--probe-port`: UDP echo and TCP; HTTP on the
    /// next).
    pub ports: Ports,
    /// Probes a second across all clients.
    pub rate_per_s: f64,
    /// Probes at once before the rate applies.
    pub burst: u32,
}

impl Default for OnDemandConfig {
    fn default() -> Self {
        OnDemandConfig {
            // As the agents' --probe-port default: UDP and TCP on 9471, HTTP on 9472.
            ports: Ports {
                udp: 9471,
                tcp: 9471,
                http: 9472,
            },
            rate_per_s: 1.0,
            burst: 5,
        }
    }
}

/// Probes nodes the server knows, from here.
#[derive(Debug)]
pub struct ServerProber {
    cfg: MeshConfig,
    /// Set once the driver has loaded the inventory.
    pub(crate) inventory: OnceLock<SharedIndex>,
    peers: Arc<PeerBook>,
}

impl ServerProber {
    /// A prober with `ports` that finds nodes in the inventory (once set) and `peers`.
    pub fn new(ports: Ports, peers: Arc<PeerBook>) -> ServerProber {
        let mut cfg = MeshConfig::default();
        cfg.me.node = "podflow-server".into();
        cfg.probe.ports = ports;
        ServerProber {
            cfg,
            inventory: OnceLock::new(),
            peers,
        }
    }

    /// The zone and addresses of `node`: an inventory node that is not leaving, else a
    /// member of the peer set.
    fn resolve(&self, node: &str) -> Result<(String, Vec<IpAddr>), OnDemandError> {
        let Some(inv) = self.inventory.get() else {
            return Err(OnDemandError::NotReady(
                "the inventory is not loaded yet".into(),
            ));
        };
        let idx = inv.load();
        if let Some(n) = idx
            .node_list()
            .iter()
            .find(|n| n.name == node && !n.observed_only && !n.leaving && !n.addrs.is_empty())
        {
            return Ok((n.zone.clone(), n.addrs.clone()));
        }
        self.peers
            .lookup(node)
            .ok_or_else(|| OnDemandError::UnknownNode(node.to_string()))
    }
}

/// The answer's figures from what the prober measured.
fn answer(target: &str, addr: Option<IpAddr>, r: &podflow_probe::ProbeResult) -> ProbeAnswer {
    let mut rtts = r.rtt_ns.clone();
    rtts.sort_unstable();
    let s = |ns: u64| ns as f64 / 1e9;
    ProbeAnswer {
        target: target.to_string(),
        address: addr.map(|a| a.to_string()).unwrap_or_default(),
        kind: r.kind.label().to_string(),
        ok: r.outcome == Outcome::Ok,
        outcome: r.outcome.label().to_string(),
        rtt_seconds: rtts.get(rtts.len() / 2).copied().map(s),
        rtt_min_seconds: rtts.first().copied().map(s),
        rtt_max_seconds: rtts.last().copied().map(s),
        sent: r.sent,
        lost: r.lost,
        loss: r.loss_ratio(),
        error: r.error.clone(),
    }
}

impl OnDemandProber for ServerProber {
    fn probe<'a>(&'a self, node: &'a str, kind: &'a str) -> ProbeFuture<'a> {
        Box::pin(async move {
            let (zone, addrs) = self.resolve(node)?;
            let kind = ProbeKind::from_label(kind)
                .filter(|k| *k != ProbeKind::Dns)
                .unwrap_or(ProbeKind::Udp);
            let peer = Peer::new(node, &zone, addrs);
            let addr = peer.addr_like(self.cfg.probe.bind);
            let r = podflow_probe::probe_once(&self.cfg, &peer, kind).await;
            Ok(answer(node, addr, &r))
        })
    }
}
