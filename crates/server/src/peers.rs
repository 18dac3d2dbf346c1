//! The probes' peer set, pushed to every agent on its stream: the nodes whose agents have
//! connected, with zones and addresses from the inventory.
//!
//! A node joins when its agent first sends a batch. It leaves at once when its Node
//! object is gone from the inventory or is leaving (deletion timestamp, the cluster
//! autoscaler's `ToBeDeletedByClusterAutoscaler` taint) — no failure is recorded for it
//! after that. A node that goes NotReady, or whose agent disconnects, stays: a partition
//! is what probes are for.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use podflow_inventory::NodeInfo;
use podflow_proto::{PbPeer, PeerSet, ip_bytes, ip_from};
use tokio::sync::watch;

/// Nodes with agents kept (the rest are not probed; bounded like the agents' series).
pub const MAX_NODES: usize = 10_000;

/// Which nodes agents probe.
#[derive(Debug)]
pub struct PeerBook {
    /// Nodes whose agents connected, with the addresses they claim.
    agents: Mutex<BTreeMap<String, Vec<IpAddr>>>,
    /// The inventory's nodes as last refreshed.
    nodes: Mutex<Vec<NodeInfo>>,
    set: watch::Sender<PeerSet>,
}

impl Default for PeerBook {
    fn default() -> Self {
        PeerBook {
            agents: Mutex::new(BTreeMap::new()),
            nodes: Mutex::new(Vec::new()),
            set: watch::channel(PeerSet::default()).0,
        }
    }
}

impl PeerBook {
    /// Notes a batch from `node`'s agent; `addrs` are the addresses it claims.
    pub fn seen(&self, node: &str, addrs: &[IpAddr]) {
        if let Ok(mut a) = self.agents.lock() {
            let room = a.len() < MAX_NODES;
            match a.get_mut(node) {
                Some(have) if !addrs.is_empty() && have.as_slice() != addrs => {
                    *have = addrs.to_vec();
                }
                Some(_) => {}
                None if room => {
                    a.insert(node.to_string(), addrs.to_vec());
                }
                None => {}
            }
        }
    }

    /// The zone and addresses of `node` in the set now.
    pub fn lookup(&self, node: &str) -> Option<(String, Vec<IpAddr>)> {
        let set = self.set.borrow();
        let p = set.peers.iter().find(|p| p.node == node)?;
        let addrs: Vec<IpAddr> = p.addrs.iter().filter_map(|b| ip_from(b)).collect();
        (!addrs.is_empty()).then(|| (p.zone.clone(), addrs))
    }

    /// The set now, and its changes.
    pub fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.set.subscribe()
    }

    /// Rebuilds the set from the inventory's nodes; tells the agents when it changed.
    pub fn refresh(&self, nodes: &[NodeInfo]) {
        if let Ok(mut n) = self.nodes.lock()
            && n.as_slice() != nodes
        {
            *n = nodes.to_vec();
        }
        self.refresh_now();
    }

    /// Rebuilds the set from the nodes last seen (an agent just connected).
    pub fn refresh_now(&self) {
        let (Ok(agents), Ok(nodes)) = (self.agents.lock(), self.nodes.lock()) else {
            return;
        };
        let peers = build(&nodes, &agents);
        drop((agents, nodes));
        self.set.send_if_modified(|have| {
            if have.peers == peers {
                return false;
            }
            have.peers = peers;
            have.version += 1;
            true
        });
    }
}

/// The peers: nodes with an agent, known to the inventory and not leaving. Nodes known
/// only from their agents' reports count only when the inventory names no node at all
/// (no inventory); else a node deleted from it would come back through its agent.
fn build(nodes: &[NodeInfo], agents: &BTreeMap<String, Vec<IpAddr>>) -> Vec<PbPeer> {
    let inventory_has_nodes = nodes.iter().any(|n| !n.observed_only);
    let mut out = Vec::new();
    for (name, claimed) in agents {
        let Some(n) = nodes
            .iter()
            .find(|n| n.name == *name && !(inventory_has_nodes && n.observed_only))
        else {
            continue; // deleted from the inventory (or never in it)
        };
        if n.leaving {
            continue;
        }
        let usable = |a: &&IpAddr| !a.is_loopback() && !a.is_unspecified();
        // The inventory's addresses (InternalIP first); the agent's own claim else.
        let addrs: Vec<Vec<u8>> = if n.addrs.iter().any(|a| usable(&a)) {
            n.addrs
                .iter()
                .filter(usable)
                .map(|a| ip_bytes(*a))
                .collect()
        } else {
            claimed
                .iter()
                .filter(usable)
                .map(|a| ip_bytes(*a))
                .collect()
        };
        if addrs.is_empty() {
            continue;
        }
        out.push(PbPeer {
            node: name.clone(),
            zone: n.zone.clone(),
            addrs,
            not_ready: n.ready == Some(false),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: &str, ip: &str, leaving: bool, ready: Option<bool>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            zone: zone.into(),
            addrs: vec![ip.parse().expect("ip")],
            leaving,
            ready,
            observed_only: false,
        }
    }

    #[test]
    fn agents_join_leaving_and_deleted_nodes_go_not_ready_ones_stay() {
        let book = PeerBook::default();
        let mut rx = book.subscribe();
        let mut nodes = vec![
            node("a", "z1", "10.0.0.1", false, Some(true)),
            node("b", "z2", "10.0.0.2", false, Some(true)),
            node("c", "z2", "10.0.0.3", false, Some(true)),
        ];
        book.refresh(&nodes);
        assert!(!rx.has_changed().expect("open"), "no agent yet: no peer");
        book.seen("a", &[]);
        book.seen("b", &["10.9.9.9".parse().expect("ip")]);
        book.refresh(&nodes);
        let names = |rx: &mut watch::Receiver<PeerSet>| {
            let s = rx.borrow_and_update();
            s.peers
                .iter()
                .map(|p| (p.node.clone(), p.not_ready))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&mut rx), [("a".into(), false), ("b".into(), false)]);
        let set = rx.borrow().clone();
        assert_eq!(
            set.peers[1].addrs,
            vec![vec![10, 0, 0, 2]],
            "the inventory's address"
        );
        nodes[1].ready = Some(false);
        nodes[0].leaving = true;
        book.refresh(&nodes);
        assert_eq!(names(&mut rx), [("b".into(), true)]);
        nodes.remove(1);
        book.refresh(&nodes);
        assert!(names(&mut rx).is_empty(), "deleted from the inventory");
        assert!(rx.borrow().version >= 3);
    }
}
