//! A simulated cluster for benchmarks: nodes in three zones of us-east-1, pods on them
//! (a /24 of pod addresses per node), Services with backends, an internet address pool
//! and an S3 prefix, plus the matching inventory (Kubernetes List YAML) and cloud ranges
//! (an AWS ip-ranges.json). Deterministic: the same seed and sizes give the same cluster.
//!
//! Used by the NetFlow cluster stream (crates/netflow/examples/cluster_stream.rs) and the
//! server sizing benchmark (crates/podflow/benches/sizing.rs).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// A small deterministic generator (SplitMix64): no dependency, same stream everywhere.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The zones nodes are spread over, round-robin.
pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
/// Services in the cluster, 3 backends each.
pub const SERVICES: usize = 200;
/// Namespaces pods are spread over.
pub const NAMESPACES: usize = 20;
/// Deployments the pods are replicas of (pod `p` is one of `app-{p % DEPLOYMENTS}`'s, in
/// namespace `ns-{p % NAMESPACES}`: each Deployment in one namespace).
pub const DEPLOYMENTS: usize = 400;
/// Distinct internet addresses pods talk to.
pub const INTERNET_POOL: usize = 5000;
/// The S3 prefix of the generated ip-ranges.json.
pub const S3_PREFIX: &str = "52.216.0.0/15";
/// The first address of [`S3_PREFIX`].
pub const S3_BASE: Ipv4Addr = Ipv4Addr::new(52, 216, 0, 0);
/// Most nodes the address plan holds (node addresses in 10.0.0.0/16, a /24 of pod
/// addresses per node from 10.100.0.0 to 10.199.255.0).
pub const MAX_NODES: usize = 25_000;
/// Most pods on one node (a /24 of pod addresses).
pub const MAX_PODS_PER_NODE: usize = 250;

/// Node `n`'s InternalIP.
pub fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// Pod `i`'s address on node `n`.
pub fn pod_ip(n: usize, i: usize) -> Ipv4Addr {
    // A /24 per node (10.100.n.0/24), like a per-node pod CIDR.
    Ipv4Addr::new(10, 100 + (n / 250) as u8, (n % 250) as u8, (i + 2) as u8)
}

/// The `i`th address of the internet pool.
pub fn internet_ip(i: usize) -> Ipv4Addr {
    // Spread over many /24s of public space (not documentation or private ranges).
    let x = (i as u32).wrapping_mul(2_654_435_761);
    Ipv4Addr::new(
        (x >> 24) as u8 % 60 + 100,
        (x >> 16) as u8,
        (x >> 8) as u8,
        x as u8 | 1,
    )
}

/// Node `n`'s name.
pub fn node_name(n: usize) -> String {
    format!("node-{n:02}")
}

/// The simulated cluster's addresses.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Number of nodes.
    pub nodes: usize,
    /// (node, address) of each pod.
    pub pods: Vec<(usize, Ipv4Addr)>,
    /// ClusterIP and backend pods (indices into `pods`) of each Service.
    pub services: Vec<(Ipv4Addr, Vec<usize>)>,
}

impl Cluster {
    /// `pods` pods spread evenly over `nodes` nodes, and [`SERVICES`] Services whose
    /// backends `rng` picks. Panics when the sizes exceed the address plan
    /// ([`MAX_NODES`], [`MAX_PODS_PER_NODE`]).
    pub fn new(nodes: usize, pods: usize, rng: &mut Rng) -> Cluster {
        let per_node = pods.div_ceil(nodes.max(1));
        assert!(
            nodes <= MAX_NODES && per_node <= MAX_PODS_PER_NODE,
            "{nodes} nodes with {per_node} pods each exceed the address plan"
        );
        let pods: Vec<(usize, Ipv4Addr)> = (0..pods)
            .map(|p| (p / per_node, pod_ip(p / per_node, p % per_node)))
            .collect();
        let services = (0..SERVICES)
            .map(|s| {
                let ip = Ipv4Addr::new(10, 96, (s / 250) as u8, (s % 250 + 1) as u8);
                let backends = (0..3).map(|_| rng.below(pods.len())).collect();
                (ip, backends)
            })
            .collect();
        Cluster {
            nodes,
            pods,
            services,
        }
    }

    /// A pod on a node other than `node` (any pod in a one-node cluster).
    pub fn remote_pod(&self, node: usize, rng: &mut Rng) -> usize {
        loop {
            let p = rng.below(self.pods.len());
            if self.pods[p].0 != node || self.nodes < 2 {
                return p;
            }
        }
    }

    /// The inventory: nodes (zones of us-east-1), pods (each a replica of one of
    /// [`DEPLOYMENTS`] Deployments, owned by its ReplicaSet `app-NNN-<hash>` as the
    /// Deployment controller makes them; the ReplicaSets themselves are not listed, as a
    /// server that sees only pods meets them), Services with their EndpointSlices, as one
    /// Kubernetes List (YAML).
    pub fn inventory(&self) -> String {
        let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
        for n in 0..self.nodes {
            let _ = write!(
                y,
                "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: {name}\n    labels:\n      \
                 topology.kubernetes.io/zone: {}\n      topology.kubernetes.io/region: us-east-1\n  \
                 spec:\n    providerID: aws:///{}/i-{n:08x}\n  status:\n    addresses:\n    \
                 - type: InternalIP\n      address: {}\n",
                ZONES[n % ZONES.len()],
                ZONES[n % ZONES.len()],
                node_ip(n),
                name = node_name(n),
            );
        }
        let app = |p: usize| format!("app-{:03}", p % DEPLOYMENTS);
        // A pod-template-hash per Deployment (the controller's are 9-10 characters).
        let hash = |p: usize| format!("{:08x}", 0x5d8f_c000_u32 + (p % DEPLOYMENTS) as u32);
        let ns = |p: usize| format!("ns-{:02}", p % NAMESPACES);
        for (p, (n, ip)) in self.pods.iter().enumerate() {
            let _ = write!(
                y,
                "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: {a}-{p:05}\n    namespace: {ns}\n    \
                 creationTimestamp: \"2026-01-01T00:00:00Z\"\n    labels:\n      app: {a}\n      \
                 pod-template-hash: {h}\n    ownerReferences:\n    - apiVersion: apps/v1\n      \
                 kind: ReplicaSet\n      name: {a}-{h}\n      controller: true\n  \
                 spec:\n    nodeName: {node}\n  status:\n    phase: Running\n    podIP: {ip}\n    \
                 podIPs:\n    - ip: {ip}\n",
                a = app(p),
                h = hash(p),
                ns = ns(p),
                node = node_name(*n),
            );
        }
        for (s, (cip, backends)) in self.services.iter().enumerate() {
            let ns0 = ns(backends[0]);
            let _ = write!(
                y,
                "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: svc-{s:03}\n    namespace: {ns0}\n  \
                 spec:\n    clusterIP: {cip}\n    ports:\n    - port: 80\n      protocol: TCP\n      \
                 targetPort: 80\n    type: ClusterIP\n\
                 - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  addressType: IPv4\n  \
                 metadata:\n    name: svc-{s:03}-x\n    namespace: {ns0}\n    labels:\n      \
                 kubernetes.io/service-name: svc-{s:03}\n  ports:\n  - port: 80\n    protocol: TCP\n  \
                 endpoints:\n"
            );
            for &b in backends {
                let (n, ip) = self.pods[b];
                let _ = write!(
                    y,
                    "  - addresses: [{ip}]\n    conditions: {{ready: true}}\n    nodeName: {node}\n    \
                     zone: {}\n",
                    ZONES[n % ZONES.len()],
                    node = node_name(n),
                );
            }
        }
        y
    }
}

/// An AWS ip-ranges.json holding [`S3_PREFIX`] (S3, us-east-1).
pub fn cloud_ranges() -> String {
    format!(
        "{{\"syncToken\": \"1\", \"createDate\": \"2026-01-01-00-00-00\", \"prefixes\": [\
         {{\"ip_prefix\": \"{S3_PREFIX}\", \"region\": \"us-east-1\", \"service\": \"S3\", \
         \"network_border_group\": \"us-east-1\"}}], \"ipv6_prefixes\": []}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_distinct_across_the_plan() {
        let mut seen = std::collections::HashSet::new();
        for n in (0..MAX_NODES).step_by(7) {
            assert!(seen.insert(node_ip(n)), "node {n}: {}", node_ip(n));
        }
        assert_eq!(node_ip(0), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(node_ip(59), Ipv4Addr::new(10, 0, 0, 60));
        assert_eq!(pod_ip(4999, 0), Ipv4Addr::new(10, 119, 249, 2));
        assert_ne!(pod_ip(250, 0), pod_ip(0, 0));
    }

    #[test]
    fn the_inventory_names_every_pod_and_node() {
        let c = Cluster::new(3, 10, &mut Rng(1));
        let y = c.inventory();
        assert_eq!(y.matches("\n  kind: Node\n").count(), 3);
        assert_eq!(y.matches("\n  kind: Pod\n").count(), 10);
        assert_eq!(y.matches("\n  kind: Service\n").count(), SERVICES);
        assert!(y.contains("podIP: 10.100.2.3\n"), "the last pod on node-02");
        assert_eq!(y.matches("\n      kind: ReplicaSet\n").count(), 10);
        assert!(
            y.contains("name: app-009-5d8fc009\n      controller: true"),
            "{y}"
        );
    }
}
