//! Which peers a node probes (pure).
//!
//! Up to [`TopologyConfig::full_mesh_max`] nodes every node probes every other. Beyond
//! that each node probes at most K = [`TopologyConfig::peers_per_node`] peers, so the
//! probe traffic and the series stay linear in the node count:
//!
//! - a **mandated** part, computed identically by every node from the same peer list:
//!   for every ordered zone pair (intra-zone included) at least M =
//!   [`TopologyConfig::per_zone_pair`] node pairs, spread over the sources by load and
//!   over the destinations by rendezvous hash (so a broken zone link is seen every
//!   epoch, whatever the rotation does); at most K/2 per source;
//! - a **rotating** part: the remaining K - K/2 slots walk a per-source order of all
//!   other nodes (a stable rendezvous order), one window per epoch, so every ordered
//!   pair is probed within [`rotation_bound`] epochs.
//!
//! Input order does not matter (nodes are sorted by name first), and the same input and
//! epoch always give the same choice. Draining peers are not probed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Whether a peer should be probed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Probe it.
    #[default]
    Ready,
    /// Leaving (node drained, agent shutting down): not probed, so a rolling restart
    /// does not write failures.
    Draining,
}

/// A node to probe, as the server pushes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// Node name.
    pub node: String,
    /// Zone (topology.kubernetes.io/zone), empty when unknown.
    pub zone: String,
    /// Addresses its agent's responder listens on (the first is probed).
    pub addrs: Vec<IpAddr>,
    /// Whether to probe it.
    pub state: PeerState,
}

impl Peer {
    /// A ready peer.
    pub fn new(node: &str, zone: &str, addrs: Vec<IpAddr>) -> Peer {
        Peer {
            node: node.to_string(),
            zone: zone.to_string(),
            addrs,
            state: PeerState::Ready,
        }
    }

    /// The address to probe: the first of the same family as `like`, else the first.
    pub fn addr_like(&self, like: Option<IpAddr>) -> Option<IpAddr> {
        match like {
            Some(l) if !l.is_unspecified() => self
                .addrs
                .iter()
                .copied()
                .find(|a| a.is_ipv6() == l.is_ipv6())
                .or_else(|| self.addrs.first().copied()),
            _ => self.addrs.first().copied(),
        }
    }
}

/// Peer-selection settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologyConfig {
    /// Full mesh up to this many (ready) nodes, this node included.
    pub full_mesh_max: usize,
    /// Beyond the full mesh: the most peers one node probes (K).
    pub peers_per_node: usize,
    /// Beyond the full mesh: node pairs per ordered zone pair and epoch (M).
    pub per_zone_pair: usize,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            full_mesh_max: 50,
            peers_per_node: 20,
            per_zone_pair: 3,
        }
    }
}

impl TopologyConfig {
    /// Slots per source kept for the mandated zone coverage.
    pub fn mandated_cap(&self) -> usize {
        (self.peers_per_node / 2).max(1).min(self.peers_per_node)
    }

    /// Slots per source for the rotation.
    pub fn rotating(&self) -> usize {
        self.peers_per_node
            .saturating_sub(self.mandated_cap())
            .max(1)
    }
}

/// The most epochs before every ordered pair among `nodes` nodes has been probed.
pub fn rotation_bound(nodes: usize, cfg: &TopologyConfig) -> u64 {
    if nodes <= cfg.full_mesh_max {
        return 1;
    }
    (nodes.saturating_sub(1)).div_ceil(cfg.rotating()) as u64
}

/// FNV-1a over the parts, then a splitmix64 finalizer: fixed across processes and
/// versions (every node must compute the same plan).
fn hash(parts: &[&[u8]], epoch: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Nodes<'a> {
    names: Vec<&'a str>,
    zones: Vec<&'a str>,
    by_zone: BTreeMap<&'a str, Vec<usize>>,
}

impl<'a> Nodes<'a> {
    /// Ready nodes plus `me`, sorted by name, one entry per name.
    fn new(me: (&'a str, &'a str), peers: &'a [Peer]) -> Nodes<'a> {
        let mut all: BTreeMap<&str, &str> = BTreeMap::new();
        for p in peers.iter().filter(|p| p.state == PeerState::Ready) {
            // The first entry of a duplicated name wins, whatever the input order:
            // keep the smallest zone so the choice does not depend on order.
            let z = all.entry(p.node.as_str()).or_insert(p.zone.as_str());
            if p.zone.as_str() < *z {
                *z = p.zone.as_str();
            }
        }
        all.insert(me.0, me.1);
        let names: Vec<&str> = all.keys().copied().collect();
        let zones: Vec<&str> = all.values().copied().collect();
        let mut by_zone: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, z) in zones.iter().enumerate() {
            by_zone.entry(z).or_default().push(i);
        }
        Nodes {
            names,
            zones,
            by_zone,
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.binary_search(&name).ok()
    }

    /// The mandated pairs, per source (identical on every node).
    fn mandated(&self, cfg: &TopologyConfig, epoch: u64) -> Vec<Vec<usize>> {
        let n = self.names.len();
        let cap = cfg.mandated_cap();
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut inload = vec![0usize; n];
        for (za, srcs) in &self.by_zone {
            for (zb, dsts) in &self.by_zone {
                let mut cands: Vec<(usize, u64, usize)> = srcs
                    .iter()
                    .map(|&s| {
                        (
                            0,
                            hash(
                                &[
                                    b"src",
                                    za.as_bytes(),
                                    zb.as_bytes(),
                                    self.names[s].as_bytes(),
                                ],
                                epoch,
                            ),
                            s,
                        )
                    })
                    .collect();
                let mut got = 0;
                let mut rounds = 0;
                // Up to M pairs; a source may serve twice when the zone is small.
                while got < cfg.per_zone_pair && rounds < cfg.per_zone_pair.max(1) * 2 {
                    rounds += 1;
                    for c in cands.iter_mut() {
                        c.0 = out[c.2].len();
                    }
                    cands.sort_unstable();
                    let mut progressed = false;
                    for &(load, _, s) in cands.iter() {
                        if got >= cfg.per_zone_pair {
                            break;
                        }
                        if load >= cap {
                            continue;
                        }
                        let best = dsts
                            .iter()
                            .copied()
                            .filter(|&d| d != s && !out[s].contains(&d))
                            .min_by_key(|&d| {
                                (
                                    inload[d],
                                    hash(
                                        &[
                                            b"dst",
                                            self.names[s].as_bytes(),
                                            self.names[d].as_bytes(),
                                        ],
                                        epoch,
                                    ),
                                )
                            });
                        if let Some(d) = best {
                            out[s].push(d);
                            inload[d] += 1;
                            got += 1;
                            progressed = true;
                        }
                    }
                    if !progressed {
                        break;
                    }
                }
            }
        }
        out
    }

    fn select(
        &self,
        me: usize,
        cfg: &TopologyConfig,
        epoch: u64,
        mandated: Option<&[Vec<usize>]>,
    ) -> Vec<usize> {
        let n = self.names.len();
        if n <= cfg.full_mesh_max || n < 2 {
            return (0..n).filter(|&i| i != me).collect();
        }
        let mut chosen = match mandated {
            Some(m) => m.get(me).cloned().unwrap_or_default(),
            None => self.mandated(cfg, epoch).swap_remove(me),
        };
        let taken: BTreeSet<usize> = chosen.iter().copied().collect();
        // The rotation: a stable order of all others, one window of W per epoch.
        let mut order: Vec<(u64, usize)> = (0..n)
            .filter(|&i| i != me)
            .map(|i| {
                (
                    hash(
                        &[b"perm", self.names[me].as_bytes(), self.names[i].as_bytes()],
                        0,
                    ),
                    i,
                )
            })
            .collect();
        order.sort_unstable();
        let w = cfg.rotating();
        let start = ((epoch % order.len() as u64) as usize * w) % order.len();
        let mut picked = 0;
        for k in 0..order.len() {
            if picked >= w || chosen.len() >= cfg.peers_per_node {
                break;
            }
            let d = order[(start + k) % order.len()].1;
            if !taken.contains(&d) {
                chosen.push(d);
                picked += 1;
            }
        }
        chosen.sort_unstable();
        chosen
    }
}

/// The peers `me` (node, zone) probes in `epoch`, sorted by node name.
pub fn select<'a>(
    me: (&str, &str),
    peers: &'a [Peer],
    cfg: &TopologyConfig,
    epoch: u64,
) -> Vec<&'a Peer> {
    let nodes = Nodes::new(me, peers);
    let Some(i) = nodes.index(me.0) else {
        return Vec::new();
    };
    let names: BTreeSet<&str> = nodes
        .select(i, cfg, epoch, None)
        .into_iter()
        .map(|d| nodes.names[d])
        .collect();
    let mut out: Vec<&Peer> = Vec::new();
    for p in peers {
        if p.state == PeerState::Ready
            && names.contains(p.node.as_str())
            && !out.iter().any(|q| q.node == p.node)
        {
            out.push(p);
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// Every node's choice in `epoch` (source -> destinations): what the whole cluster
/// probes. For the server (expected pairs) and tests.
pub fn plan(peers: &[Peer], cfg: &TopologyConfig, epoch: u64) -> BTreeMap<String, Vec<String>> {
    let Some(first) = peers.iter().find(|p| p.state == PeerState::Ready) else {
        return BTreeMap::new();
    };
    let nodes = Nodes::new((first.node.as_str(), first.zone.as_str()), peers);
    let mandated = if nodes.names.len() > cfg.full_mesh_max {
        Some(nodes.mandated(cfg, epoch))
    } else {
        None
    };
    (0..nodes.names.len())
        .map(|s| {
            let d = nodes.select(s, cfg, epoch, mandated.as_deref());
            (
                nodes.names[s].to_string(),
                d.into_iter().map(|d| nodes.names[d].to_string()).collect(),
            )
        })
        .collect()
}

/// Zone of each node in `peers` (ready ones), for checking a plan.
pub fn zones(peers: &[Peer]) -> BTreeMap<String, String> {
    let Some(first) = peers.iter().find(|p| p.state == PeerState::Ready) else {
        return BTreeMap::new();
    };
    let nodes = Nodes::new((first.node.as_str(), first.zone.as_str()), peers);
    nodes
        .names
        .iter()
        .zip(&nodes.zones)
        .map(|(n, z)| (n.to_string(), z.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cluster(zones: &[usize]) -> Vec<Peer> {
        let mut v = Vec::new();
        for (z, &count) in zones.iter().enumerate() {
            for i in 0..count {
                v.push(Peer::new(
                    &format!("node-{z}-{i:03}"),
                    &format!("zone-{z}"),
                    vec![IpAddr::from([
                        10,
                        z as u8,
                        (i / 250) as u8,
                        (i % 250) as u8 + 1,
                    ])],
                ));
            }
        }
        v
    }

    #[test]
    fn full_mesh_up_to_the_limit() {
        let peers = cluster(&[20, 20, 10]);
        let cfg = TopologyConfig::default();
        let s = select(("node-0-000", "zone-0"), &peers, &cfg, 7);
        assert_eq!(s.len(), 49);
        assert!(s.iter().all(|p| p.node != "node-0-000"));
    }

    #[test]
    fn draining_peers_are_not_probed() {
        let mut peers = cluster(&[3]);
        peers[1].state = PeerState::Draining;
        let s = select(
            ("node-0-000", "zone-0"),
            &peers,
            &TopologyConfig::default(),
            0,
        );
        assert_eq!(
            s.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(),
            vec!["node-0-002"]
        );
    }

    #[test]
    fn beyond_the_mesh_k_bounded_and_zones_covered() {
        let peers = cluster(&[60, 40, 30]);
        let cfg = TopologyConfig::default();
        let plan = plan(&peers, &cfg, 3);
        let zone = zones(&peers);
        let mut per_zone_pair: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (s, ds) in &plan {
            assert!(ds.len() <= cfg.peers_per_node, "{s} probes {}", ds.len());
            assert!(!ds.is_empty());
            for d in ds {
                *per_zone_pair
                    .entry((zone[s].clone(), zone[d].clone()))
                    .or_default() += 1;
            }
        }
        assert_eq!(per_zone_pair.len(), 9);
        assert!(per_zone_pair.values().all(|&c| c >= cfg.per_zone_pair));
        // 130 nodes x 20 = 2600 pairs instead of 16770.
        assert!(plan.values().map(Vec::len).sum::<usize>() <= 130 * 20);
    }

    fn arb_cluster() -> impl Strategy<Value = (Vec<usize>, TopologyConfig)> {
        (
            proptest::collection::vec(1usize..30, 1..5),
            (5usize..40, 2usize..12, 1usize..4),
        )
            .prop_map(|(z, (mesh, k, m))| {
                (
                    z,
                    TopologyConfig {
                        full_mesh_max: mesh,
                        peers_per_node: k,
                        per_zone_pair: m,
                    },
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn k_bound_and_zone_coverage((sizes, cfg) in arb_cluster(), epoch in 0u64..1000) {
            let peers = cluster(&sizes);
            let n = peers.len();
            let plan = plan(&peers, &cfg, epoch);
            let zone = zones(&peers);
            let mut cover: BTreeMap<(&str, &str), usize> = BTreeMap::new();
            for (s, ds) in &plan {
                if n > cfg.full_mesh_max {
                    prop_assert!(ds.len() <= cfg.peers_per_node);
                } else {
                    prop_assert_eq!(ds.len(), n - 1);
                }
                prop_assert!(!ds.contains(s));
                for d in ds {
                    *cover.entry((zone[s].as_str(), zone[d].as_str())).or_default() += 1;
                }
            }
            // Coverage holds when every zone has the sources for it: each zone's nodes
            // together have mandated slots for M pairs towards every zone.
            let zcount = sizes.len();
            for (a, &na) in sizes.iter().enumerate() {
                if na * cfg.mandated_cap() < zcount * cfg.per_zone_pair {
                    continue;
                }
                for (b, &nb) in sizes.iter().enumerate() {
                    let possible = if a == b { na * (na - 1) } else { na * nb };
                    let want = cfg.per_zone_pair.min(possible);
                    let za = format!("zone-{a}");
                    let zb = format!("zone-{b}");
                    let got = cover.get(&(za.as_str(), zb.as_str())).copied().unwrap_or(0);
                    prop_assert!(got >= want, "{} -> {}: {} pairs, want {}", za, zb, got, want);
                }
            }
        }

        #[test]
        fn every_pair_within_the_bound((sizes, cfg) in arb_cluster(), e0 in 0u64..10_000) {
            let peers = cluster(&sizes);
            let bound = rotation_bound(peers.len(), &cfg);
            let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
            for e in e0..e0 + bound {
                for (s, ds) in plan(&peers, &cfg, e) {
                    for d in ds {
                        seen.insert((s.clone(), d));
                    }
                }
            }
            let n = peers.len();
            prop_assert_eq!(seen.len(), n * (n - 1), "bound {} epochs", bound);
        }

        #[test]
        fn stable_for_unchanged_input((sizes, cfg) in arb_cluster(), epoch in 0u64..100, seed: u64) {
            let peers = cluster(&sizes);
            let mut shuffled = peers.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            let me = (peers[0].node.as_str(), peers[0].zone.as_str());
            let a: Vec<&str> = select(me, &peers, &cfg, epoch).iter().map(|p| p.node.as_str()).collect();
            let b: Vec<&str> = select(me, &shuffled, &cfg, epoch).iter().map(|p| p.node.as_str()).collect();
            prop_assert_eq!(&a, &b);
            let c: Vec<&str> = select(me, &peers, &cfg, epoch).iter().map(|p| p.node.as_str()).collect();
            prop_assert_eq!(a, c);
        }
    }
}
