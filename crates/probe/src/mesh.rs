//! The runner (thin tokio shell): probes the peers [`crate::peers::select`] picks,
//! one task per peer, every interval, and sends each [`ProbeResult`] down a bounded
//! channel (a full channel drops the result and counts it).
//!
//! Per peer, rounds start on a fixed monotonic schedule (interval, with the peer's own
//! phase spread over the interval and a small random jitter per round); a round never
//! overlaps the previous one — a round still running at its next start skips that
//! start (counted). A peer set is replaced as a whole through the watch channel; a peer
//! that leaves it is cancelled at once: its probe in flight is dropped and no result of
//! it is sent afterwards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dns::QType;
use crate::metrics::RunnerStats;
use crate::peers::{self, Peer, TopologyConfig};
use crate::prober::{self, Me, PeerSockets, ProbeConfig};
use crate::result::{Outcome, ProbeKind, ProbeResult};
use crate::tsock::TsSocket;
use crate::tsock::now_ns;

/// A DNS name to look up at a resolver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsTarget {
    /// The resolver (`10.96.0.10:53`).
    pub resolver: SocketAddr,
    /// The name.
    pub name: String,
    /// A or AAAA.
    #[serde(default = "default_qtype")]
    pub qtype: QType,
}

fn default_qtype() -> QType {
    QType::A
}

/// Runner settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// This node.
    pub me: Me,
    /// How each probe is done.
    pub probe: ProbeConfig,
    /// Which peers are probed.
    pub topology: TopologyConfig,
    /// Round interval per peer, ms.
    pub interval_ms: u64,
    /// Random extra delay of each round's start, up to this, ms.
    pub jitter_ms: u64,
    /// Kinds probed each round.
    pub kinds: Vec<ProbeKind>,
    /// The full-MTU probe runs every this many rounds (1: every round).
    pub mtu_every: u32,
    /// ICMP echo runs every this many rounds (1: every round), and in any round whose
    /// UDP burst lost packets (right after it), to tell a UDP-only fault from a host
    /// fault. Without `udp` among the kinds, ICMP runs every round.
    pub icmp_every: u32,
    /// The HTTP GET (and the TCP connect, which shares its connection) runs every this
    /// many rounds (1: every round).
    pub http_every: u32,
    /// Length of a peer-selection epoch, s (the rotation advances once per epoch).
    pub epoch_s: u64,
    /// DNS lookups, each every interval.
    pub dns: Vec<DnsTarget>,
    /// The most rounds running at once (bounds sockets and memory).
    pub max_concurrent: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            me: Me {
                node: String::new(),
                zone: String::new(),
            },
            probe: ProbeConfig::default(),
            topology: TopologyConfig::default(),
            interval_ms: 5000,
            jitter_ms: 250,
            kinds: vec![
                ProbeKind::Udp,
                ProbeKind::UdpMtu,
                ProbeKind::Tcp,
                ProbeKind::Http,
                ProbeKind::Icmp,
            ],
            mtu_every: 12,
            icmp_every: 4,
            http_every: 2,
            epoch_s: 60,
            dns: Vec::new(),
            max_concurrent: 128,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    peers: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    overrun: AtomicU64,
    rounds: AtomicU64,
}

/// A running mesh; stops when its token is cancelled.
#[derive(Debug)]
pub struct Mesh {
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

/// What the runner did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshStats {
    /// Peers probed now.
    pub peers: u64,
    /// Results sent.
    pub results_sent: u64,
    /// Results dropped on a full channel.
    pub results_dropped: u64,
    /// Round starts skipped because the previous round still ran.
    pub rounds_overrun: u64,
    /// Rounds run.
    pub rounds: u64,
}

impl MeshStats {
    /// The part [`crate::metrics::Metrics::render`] shows.
    pub fn runner(&self) -> RunnerStats {
        RunnerStats {
            peers: self.peers,
            results_dropped: self.results_dropped,
            rounds_overrun: self.rounds_overrun,
        }
    }
}

struct Shared {
    cfg: MeshConfig,
    /// The latest peer set: a result for a node no longer in it is not sent, even
    /// when its task has not yet seen the cancellation.
    peers: watch::Receiver<Vec<Peer>>,
    results: mpsc::Sender<ProbeResult>,
    counters: Arc<Counters>,
    slots: Semaphore,
}

impl Shared {
    /// Sends unless cancelled; a full channel drops and counts.
    fn emit(&self, token: &CancellationToken, r: ProbeResult) {
        if token.is_cancelled() {
            return;
        }
        if r.kind != ProbeKind::Dns && !self.peers.borrow().iter().any(|p| p.node == r.dst_node) {
            return;
        }
        match self.results.try_send(r) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Mesh {
    /// Starts probing on the current runtime.
    pub fn start(
        cfg: MeshConfig,
        peers: watch::Receiver<Vec<Peer>>,
        results: mpsc::Sender<ProbeResult>,
        cancel: CancellationToken,
    ) -> Mesh {
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            slots: Semaphore::new(cfg.max_concurrent.max(1)),
            peers: peers.clone(),
            cfg,
            results,
            counters: counters.clone(),
        });
        let task = tokio::spawn(schedule(shared, peers, cancel));
        Mesh { counters, task }
    }

    /// What it did so far.
    pub fn stats(&self) -> MeshStats {
        Self::read(&self.counters)
    }

    /// A reader of [`Mesh::stats`] that outlives no one (for a metrics registry).
    pub fn stats_handle(&self) -> impl Fn() -> MeshStats + Send + Sync + 'static {
        let c = Arc::clone(&self.counters);
        move || Self::read(&c)
    }

    fn read(c: &Counters) -> MeshStats {
        MeshStats {
            peers: c.peers.load(Ordering::Relaxed),
            results_sent: c.sent.load(Ordering::Relaxed),
            results_dropped: c.dropped.load(Ordering::Relaxed),
            rounds_overrun: c.overrun.load(Ordering::Relaxed),
            rounds: c.rounds.load(Ordering::Relaxed),
        }
    }

    /// Waits for the runner to end (after its token is cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// One probe now, outside the schedule (`podflow probe NODE`).
pub async fn probe_once(cfg: &MeshConfig, peer: &Peer, kind: ProbeKind) -> ProbeResult {
    prober::probe(&cfg.probe, &cfg.me, peer, kind).await
}

fn epoch_now(epoch_s: u64) -> u64 {
    now_ns() / 1_000_000_000 / epoch_s.max(1)
}

/// The peer's phase within the interval: spread by a hash of the pair, the same on
/// every restart.
fn phase(me: &str, peer: &str, interval: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(peer.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h % ms)
}

/// The kinds round `round` of a peer runs on schedule (pure): every configured kind
/// but DNS (not a peer probe), the full-MTU probe every `mtu_every` rounds, HTTP and
/// TCP every `http_every`, ICMP every `icmp_every` (every round when UDP is not
/// probed). Round 0, a peer's first, runs them all.
pub fn round_kinds(cfg: &MeshConfig, round: u32) -> Vec<ProbeKind> {
    let due = |every: u32| round.is_multiple_of(every.max(1));
    let udp = cfg.kinds.contains(&ProbeKind::Udp);
    cfg.kinds
        .iter()
        .copied()
        .filter(|&k| match k {
            ProbeKind::Dns => false,
            ProbeKind::UdpMtu => due(cfg.mtu_every),
            ProbeKind::Tcp | ProbeKind::Http => due(cfg.http_every),
            ProbeKind::Icmp => !udp || due(cfg.icmp_every),
            ProbeKind::Udp => true,
        })
        .collect()
}

/// Whether a round that did not schedule ICMP (`planned` is [`round_kinds`]) sends it
/// after its UDP burst `udp` (pure): when ICMP is configured and the burst lost
/// packets or failed outright (no socket, no route).
pub fn icmp_after_udp(cfg: &MeshConfig, planned: &[ProbeKind], udp: &ProbeResult) -> bool {
    cfg.kinds.contains(&ProbeKind::Icmp)
        && !planned.contains(&ProbeKind::Icmp)
        && udp.kind == ProbeKind::Udp
        && (udp.lost > 0 || udp.outcome == Outcome::Fail)
}

struct Running {
    peer: Peer,
    token: CancellationToken,
}

async fn schedule(
    shared: Arc<Shared>,
    mut peers: watch::Receiver<Vec<Peer>>,
    cancel: CancellationToken,
) {
    let cfg = &shared.cfg;
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut watching = true;
    for t in &cfg.dns {
        tokio::spawn(dns_task(shared.clone(), t.clone(), cancel.child_token()));
    }
    loop {
        let set = peers.borrow_and_update().clone();
        let epoch = epoch_now(cfg.epoch_s);
        let chosen: BTreeMap<String, Peer> =
            peers::select((&cfg.me.node, &cfg.me.zone), &set, &cfg.topology, epoch)
                .into_iter()
                .map(|p| (p.node.clone(), p.clone()))
                .collect();
        running.retain(|node, r| {
            let keep = chosen
                .get(node)
                .is_some_and(|p| p.addrs == r.peer.addrs && p.zone == r.peer.zone);
            if !keep {
                r.token.cancel();
            }
            keep
        });
        for (node, p) in chosen {
            if running.contains_key(&node) {
                continue;
            }
            let token = cancel.child_token();
            tokio::spawn(peer_task(shared.clone(), p.clone(), token.clone()));
            running.insert(node, Running { peer: p, token });
        }
        shared
            .counters
            .peers
            .store(running.len() as u64, Ordering::Relaxed);
        let next_epoch_ns = (epoch + 1) * cfg.epoch_s.max(1) * 1_000_000_000;
        let until_epoch =
            Duration::from_nanos(next_epoch_ns.saturating_sub(now_ns())) + Duration::from_millis(1);
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = peers.changed(), if watching => {
                // The sender is gone: keep probing the last set until cancelled.
                if r.is_err() {
                    watching = false;
                }
            }
            _ = tokio::time::sleep(until_epoch) => {}
        }
    }
    for r in running.values() {
        r.token.cancel();
    }
}

async fn peer_task(shared: Arc<Shared>, peer: Peer, token: CancellationToken) {
    let cfg = &shared.cfg;
    let interval = Duration::from_millis(cfg.interval_ms.max(1));
    let mut next = Instant::now() + phase(&cfg.me.node, &peer.node, interval);
    let mut round: u32 = 0;
    let mut socks = PeerSockets::default();
    loop {
        let jitter =
            Duration::from_millis(fastrand::u64(0..=cfg.jitter_ms.min(cfg.interval_ms / 2)));
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(next + jitter) => {}
        }
        let kinds = round_kinds(cfg, round);
        let both = kinds.contains(&ProbeKind::Tcp) && kinds.contains(&ProbeKind::Http);
        let run = async {
            let _slot = shared.slots.acquire().await;
            let PeerSockets { udp, mtu, icmp } = &mut socks;
            let (mut udp, mut mtu, mut icmp) = (Some(udp), Some(mtu), Some(icmp));
            let probes: Vec<_> = kinds
                .iter()
                .filter(|&&k| !(both && k == ProbeKind::Tcp))
                .map(|&k| {
                    let slot = match k {
                        // The UDP burst takes the ICMP socket too when a loss may
                        // call for an ICMP echo right after it.
                        ProbeKind::Udp
                            if cfg.kinds.contains(&ProbeKind::Icmp)
                                && !kinds.contains(&ProbeKind::Icmp) =>
                        {
                            match (udp.take(), icmp.take()) {
                                (Some(u), Some(i)) => Some(Slot::UdpThenIcmp(u, i)),
                                (u, _) => u.map(Slot::Udp),
                            }
                        }
                        ProbeKind::Udp => udp.take().map(Slot::Udp),
                        ProbeKind::UdpMtu => mtu.take().map(Slot::Udp),
                        ProbeKind::Icmp => icmp.take().map(Slot::Icmp),
                        _ => None,
                    };
                    round_probe(cfg, &peer, k, both, &kinds, slot)
                })
                .collect();
            futures_join(probes.into_iter())
                .await
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        };
        let results = tokio::select! {
            _ = token.cancelled() => return,
            r = run => r,
        };
        shared.counters.rounds.fetch_add(1, Ordering::Relaxed);
        for r in results {
            shared.emit(&token, r);
        }
        round = round.wrapping_add(1);
        next += interval;
        let now = Instant::now();
        while next + Duration::from_millis(cfg.jitter_ms) < now {
            next += interval;
            shared.counters.overrun.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The socket a probe of a round reuses.
enum Slot<'a> {
    Udp(&'a mut Option<TsSocket>),
    Icmp(&'a mut Option<(TsSocket, bool)>),
    /// The UDP burst, then ICMP when [`icmp_after_udp`] says so.
    UdpThenIcmp(&'a mut Option<TsSocket>, &'a mut Option<(TsSocket, bool)>),
}

async fn round_probe(
    cfg: &MeshConfig,
    peer: &Peer,
    kind: ProbeKind,
    both: bool,
    planned: &[ProbeKind],
    slot: Option<Slot<'_>>,
) -> Vec<ProbeResult> {
    let (p, me) = (&cfg.probe, &cfg.me);
    let Some(addr) = peer.addr_like(p.bind) else {
        return vec![prober::probe(p, me, peer, kind).await];
    };
    match (kind, slot) {
        // With both on, one HTTP connection gives the TCP connect result too.
        (ProbeKind::Http, _) if both => {
            let (t, h) = prober::http_and_connect(p, me, peer, addr).await;
            vec![t, h]
        }
        (ProbeKind::Udp, Some(Slot::UdpThenIcmp(s, i))) => {
            let u = prober::udp_burst(p, me, peer, addr, false, s).await;
            if icmp_after_udp(cfg, planned, &u) {
                let e = prober::icmp_echo(p, me, peer, addr, i).await;
                vec![u, e]
            } else {
                vec![u]
            }
        }
        (ProbeKind::Udp | ProbeKind::UdpMtu, Some(Slot::Udp(s))) => {
            vec![prober::udp_burst(p, me, peer, addr, kind == ProbeKind::UdpMtu, s).await]
        }
        (ProbeKind::Icmp, Some(Slot::Icmp(s))) => {
            vec![prober::icmp_echo(p, me, peer, addr, s).await]
        }
        _ => vec![prober::probe(p, me, peer, kind).await],
    }
}

/// Runs futures concurrently on this task and collects their outputs in order.
async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    // The probes borrow the config and the peer, so they are polled in place rather
    // than spawned.
    let mut out: Vec<Option<F::Output>> = Vec::new();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.map(Box::pin).collect();
    out.resize_with(pinned.len(), || None);
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_some() {
                continue;
            }
            match f.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => out[i] = Some(v),
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

async fn dns_task(shared: Arc<Shared>, t: DnsTarget, token: CancellationToken) {
    let cfg = &shared.cfg;
    let interval = Duration::from_millis(cfg.interval_ms.max(1));
    let mut next = Instant::now() + phase(&cfg.me.node, &t.name, interval);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let r = tokio::select! {
            _ = token.cancelled() => return,
            r = prober::dns_lookup(&cfg.probe, &cfg.me, t.resolver, &t.name, t.qtype) => r,
        };
        shared.emit(&token, r);
        next += interval;
        while next < Instant::now() {
            next += interval;
            shared.counters.overrun.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_spread_over_the_interval() {
        let i = Duration::from_secs(5);
        let ps: Vec<Duration> = (0..100)
            .map(|n| phase("a", &format!("node-{n}"), i))
            .collect();
        assert!(ps.iter().all(|p| *p < i));
        let early = ps
            .iter()
            .filter(|p| **p < Duration::from_millis(2500))
            .count();
        assert!(
            (30..=70).contains(&early),
            "{early} of 100 in the first half"
        );
        assert_eq!(phase("a", "b", i), phase("a", "b", i));
    }

    fn udp_result(sent: u32, lost: u32, outcome: Outcome) -> ProbeResult {
        let mut r = ProbeResult::new(ProbeKind::Udp, ("a", "z1"), ("b", "z2"), 0);
        (r.sent, r.lost, r.outcome) = (sent, lost, outcome);
        r
    }

    #[test]
    fn default_schedule_icmp_every_4th_http_every_2nd_mtu_every_12th() {
        use ProbeKind::*;
        let cfg = MeshConfig::default();
        let plan: Vec<Vec<ProbeKind>> = (0..13).map(|r| round_kinds(&cfg, r)).collect();
        assert_eq!(plan[0], vec![Udp, UdpMtu, Tcp, Http, Icmp]);
        assert_eq!(plan[1], vec![Udp]);
        assert_eq!(plan[2], vec![Udp, Tcp, Http]);
        assert_eq!(plan[3], vec![Udp]);
        assert_eq!(plan[4], vec![Udp, Tcp, Http, Icmp]);
        assert_eq!(plan[12], vec![Udp, UdpMtu, Tcp, Http, Icmp]);
        let count = |k| plan[..12].iter().filter(|p| p.contains(&k)).count();
        assert_eq!(
            (
                count(Udp),
                count(Http),
                count(Tcp),
                count(Icmp),
                count(UdpMtu)
            ),
            (12, 6, 6, 3, 1)
        );
    }

    #[test]
    fn every_one_is_every_round_and_icmp_without_udp_is_every_round() {
        use ProbeKind::*;
        let cfg = MeshConfig {
            icmp_every: 1,
            http_every: 1,
            mtu_every: 1,
            ..MeshConfig::default()
        };
        for r in [0, 1, 2, 3, 7, u32::MAX] {
            assert_eq!(round_kinds(&cfg, r), vec![Udp, UdpMtu, Tcp, Http, Icmp]);
        }
        // 0 reads as 1, never a division by zero.
        let zero = MeshConfig {
            icmp_every: 0,
            http_every: 0,
            ..MeshConfig::default()
        };
        assert_eq!(round_kinds(&zero, 3), vec![Udp, Tcp, Http, Icmp]);
        let no_udp = MeshConfig {
            kinds: vec![Http, Icmp, Dns],
            ..MeshConfig::default()
        };
        assert_eq!(round_kinds(&no_udp, 1), vec![Icmp]);
        assert_eq!(round_kinds(&no_udp, 2), vec![Http, Icmp]);
    }

    #[test]
    fn icmp_follows_a_udp_burst_that_lost_packets() {
        let cfg = MeshConfig::default();
        let plan1 = round_kinds(&cfg, 1);
        assert!(!plan1.contains(&ProbeKind::Icmp));
        // Clean burst: no ICMP. One lost, all lost, or no burst at all (socket error): ICMP.
        assert!(!icmp_after_udp(
            &cfg,
            &plan1,
            &udp_result(5, 0, Outcome::Ok)
        ));
        assert!(icmp_after_udp(
            &cfg,
            &plan1,
            &udp_result(5, 1, Outcome::Fail)
        ));
        assert!(icmp_after_udp(
            &cfg,
            &plan1,
            &udp_result(5, 5, Outcome::Fail)
        ));
        assert!(icmp_after_udp(
            &cfg,
            &plan1,
            &udp_result(0, 0, Outcome::Fail)
        ));
        // Not twice in a round that already runs ICMP.
        let plan4 = round_kinds(&cfg, 4);
        assert!(!icmp_after_udp(
            &cfg,
            &plan4,
            &udp_result(5, 5, Outcome::Fail)
        ));
        // Not when ICMP is not configured, and not after a full-MTU burst.
        let no_icmp = MeshConfig {
            kinds: vec![ProbeKind::Udp, ProbeKind::Http],
            ..MeshConfig::default()
        };
        assert!(!icmp_after_udp(
            &no_icmp,
            &round_kinds(&no_icmp, 1),
            &udp_result(5, 5, Outcome::Fail)
        ));
        let mut mtu = udp_result(2, 2, Outcome::Fail);
        mtu.kind = ProbeKind::UdpMtu;
        assert!(!icmp_after_udp(&cfg, &plan1, &mtu));
    }

    #[tokio::test]
    async fn join_keeps_order() {
        let fs = (0..4u64).map(|i| async move {
            tokio::time::sleep(Duration::from_millis(20 - 5 * i)).await;
            i
        });
        assert_eq!(futures_join(fs).await, vec![0, 1, 2, 3]);
    }
}
