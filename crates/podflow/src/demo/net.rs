//! The demo's simulated cluster: network namespaces, veth pairs, bridges, routes and
//! kube-proxy-style DNAT, built by shelling out to `ip`, `iptables-restore`, `nft` and
//! `sysctl`. Every name starts with `pfd-`, so a crashed run's leftovers can be found.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Prefix of every namespace the demo makes.
pub const PREFIX: &str = "pfd-";

/// One simulated node.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    /// Short letter: `a`, `b`, `c`.
    pub letter: &'static str,
    /// Index: the third octet of the pod CIDR and the last digit of the node address.
    pub idx: u8,
    /// Availability zone.
    pub zone: &'static str,
}

impl Node {
    /// Kubernetes node name.
    pub fn name(&self) -> String {
        format!("node-{}", self.letter)
    }
    /// Namespace name.
    pub fn netns(&self) -> String {
        format!("{PREFIX}node-{}", self.letter)
    }
    /// The node's address on the fabric (its InternalIP).
    pub fn ip(&self) -> String {
        format!("172.30.0.{}", 10 + self.idx)
    }
    /// The node's pod CIDR.
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.idx)
    }
    /// The pod gateway (the bridge's address).
    pub fn gateway(&self) -> String {
        format!("10.244.{}.1", self.idx)
    }
}

/// One simulated pod.
#[derive(Debug, Clone, Copy)]
pub struct Pod {
    /// Kubernetes namespace.
    pub namespace: &'static str,
    /// Pod name.
    pub name: &'static str,
    /// Short tag for the network namespace and link names (≤ 6 characters).
    pub tag: &'static str,
    /// Node (index into [`NODES`]).
    pub node: usize,
    /// Last octet of the pod address.
    pub host: u8,
    /// Owner kind and name (`ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`).
    pub owner: (&'static str, &'static str),
    /// `app` label.
    pub app: &'static str,
}

impl Pod {
    /// Pod address.
    pub fn ip(&self) -> String {
        format!("10.244.{}.{}", NODES[self.node].idx, self.host)
    }
    /// Namespace name: `pfd-<node>-<tag>`.
    pub fn netns(&self) -> String {
        format!("{PREFIX}{}-{}", NODES[self.node].letter, self.tag)
    }
}

/// The three nodes: a and b in us-east-1a, c in us-east-1b.
pub const NODES: [Node; 3] = [
    Node {
        letter: "a",
        idx: 1,
        zone: "us-east-1a",
    },
    Node {
        letter: "b",
        idx: 2,
        zone: "us-east-1a",
    },
    Node {
        letter: "c",
        idx: 3,
        zone: "us-east-1b",
    },
];

/// Region of every node.
pub const REGION: &str = "us-east-1";

/// Six pods: web and an api backend on node-a, db on node-b, the report job, node-dns and
/// the other api backend on node-c.
pub const PODS: [Pod; 6] = [
    Pod {
        namespace: "shop",
        name: "web-5d8f7c9b6-h2x9k",
        tag: "web",
        node: 0,
        host: 2,
        owner: ("ReplicaSet", "web-5d8f7c9b6"),
        app: "web",
    },
    Pod {
        namespace: "shop",
        name: "api-6b9c4d7f8-k7p2m",
        tag: "api",
        node: 0,
        host: 3,
        owner: ("ReplicaSet", "api-6b9c4d7f8"),
        app: "api",
    },
    // The Service's second backend is in the other zone: web (zone a) reaches it through
    // the ClusterIP half the time, crossing zones while its own zone has a Ready backend
    // (the avoidable cross-zone traffic).
    Pod {
        namespace: "shop",
        name: "api-6b9c4d7f8-w4n8q",
        tag: "api",
        node: 2,
        host: 4,
        owner: ("ReplicaSet", "api-6b9c4d7f8"),
        app: "api",
    },
    Pod {
        namespace: "shop",
        name: "db-0",
        tag: "db",
        node: 1,
        host: 3,
        owner: ("StatefulSet", "db"),
        app: "db",
    },
    Pod {
        namespace: "batch",
        name: "report-29334720-x7k2p",
        tag: "report",
        node: 2,
        host: 2,
        owner: ("Job", "report-29334720"),
        app: "report",
    },
    Pod {
        namespace: "kube-system",
        name: "node-dns-q8z4r",
        tag: "dns",
        node: 2,
        host: 3,
        owner: ("DaemonSet", "node-dns"),
        app: "node-dns",
    },
];

/// The fabric: a bridge joining the nodes, and the router to the outside hosts.
pub const FABRIC: &str = "pfd-fabric";
/// The "internet" host.
pub const INTERNET: &str = "pfd-internet";
/// Its address.
pub const INTERNET_IP: &str = "203.0.113.10";
/// The "S3" host.
pub const S3: &str = "pfd-s3";
/// Its address (inside the S3 prefix of the demo's ip-ranges.json).
pub const S3_IP: &str = "52.216.8.8";
/// The S3 prefix written to ip-ranges.json.
pub const S3_PREFIX: &str = "52.216.0.0/15";
/// The ClusterIP of the `shop/api` Service.
pub const SERVICE_IP: &str = "10.96.0.10";
/// Its port.
pub const SERVICE_PORT: u16 = 80;
/// Its NodePort.
pub const NODE_PORT: u16 = 30080;
/// The backends' port.
pub const API_PORT: u16 = 8080;

/// Runs a command; the error names the command and carries its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?} could not start"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` inside the namespace `ns`.
pub fn exec(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args))
}

/// Runs a shell script inside the namespace `ns`.
fn sh(ns: &str, script: &str) -> anyhow::Result<String> {
    exec(ns, "sh", &["-ec", script])
}

/// Feeds `input` to `program args` inside `ns`.
fn exec_stdin(ns: &str, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?} could not start"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(input.as_bytes())
            .with_context(|| format!("{cmd:?}: writing its input"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Namespaces made so far, removed by [`Topology::remove`] (also on failure).
#[derive(Debug, Default)]
pub struct Topology {
    made: Vec<String>,
}

impl Topology {
    fn add_ns(&mut self, name: &str) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        self.made.push(name.to_string());
        sh(
            name,
            "ip link set lo up
             sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 \
               net.ipv4.conf.all.accept_redirects=0 net.ipv4.conf.default.accept_redirects=0 \
               net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
        )?;
        Ok(())
    }

    /// A veth pair from `a` (named `a_dev`) to `b` (named `b_dev`), created directly in
    /// the namespaces so nothing is ever left in the host's namespace.
    fn veth(a: &str, a_dev: &str, b: &str, b_dev: &str) -> anyhow::Result<()> {
        run(Command::new("ip").args([
            "link", "add", a_dev, "netns", a, "type", "veth", "peer", "name", b_dev, "netns", b,
        ]))?;
        Ok(())
    }

    /// Builds the whole cluster. On error the namespaces made so far stay listed in
    /// `self` for [`Topology::remove`].
    pub fn build(&mut self) -> anyhow::Result<()> {
        // The fabric: a bridge for the node network (172.30.0.0/24, gateway .1) and routed
        // links to the internet and S3 hosts.
        self.add_ns(FABRIC)?;
        sh(
            FABRIC,
            "sysctl -qw net.ipv4.ip_forward=1
             ip link add br0 type bridge mcast_snooping 0
             ip link set br0 multicast off
             ip addr add 172.30.0.1/24 dev br0
             ip link set br0 up",
        )?;
        for (ns, dev, ip) in [(INTERNET, "inet0", INTERNET_IP), (S3, "s3-0", S3_IP)] {
            self.add_ns(ns)?;
            Self::veth(FABRIC, dev, ns, "eth0")?;
            let gw = ip.rsplit_once('.').map(|(n, _)| n).unwrap_or(ip);
            sh(
                FABRIC,
                &format!("ip addr add {gw}.1/24 dev {dev}\nip link set {dev} up"),
            )?;
            sh(
                ns,
                &format!(
                    "ip addr add {ip}/24 dev eth0\nip link set eth0 up\nip route add default via {gw}.1"
                ),
            )?;
        }
        for n in &NODES {
            self.node(n)?;
            sh(
                FABRIC,
                &format!("ip route add {} via {}", n.pod_cidr(), n.ip()),
            )?;
        }
        for p in &PODS {
            self.pod(p)?;
        }
        Ok(())
    }

    fn node(&mut self, n: &Node) -> anyhow::Result<()> {
        let ns = n.netns();
        self.add_ns(&ns)?;
        let up = format!("up-{}", n.letter);
        Self::veth(&ns, "eth0", FABRIC, &up)?;
        sh(
            FABRIC,
            &format!("ip link set {up} master br0\nip link set {up} up"),
        )?;
        let mut routes = String::new();
        for o in NODES.iter().filter(|o| o.idx != n.idx) {
            routes.push_str(&format!("ip route add {} via {}\n", o.pod_cidr(), o.ip()));
        }
        sh(
            &ns,
            &format!(
                "sysctl -qw net.ipv4.ip_forward=1 \
                   net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1
                 ip addr add {ip}/24 dev eth0
                 ip link set eth0 up
                 ip route add default via 172.30.0.1
                 {routes}
                 ip link add cbr0 type bridge mcast_snooping 0
                 ip link set cbr0 multicast off
                 ip addr add {gw}/24 dev cbr0
                 ip link set cbr0 up
                 for s in tcp_timeout_time_wait tcp_timeout_close tcp_timeout_fin_wait \
                   tcp_timeout_close_wait tcp_timeout_last_ack udp_timeout udp_timeout_stream; do \
                   sysctl -qw net.netfilter.nf_conntrack_$s=1; done",
                ip = n.ip(),
                gw = n.gateway(),
            ),
        )
        .with_context(|| format!("setting up node namespace {ns}"))?;
        // Conntrack is only active in a namespace when some rule needs it: one counting
        // rule makes it track everything, as on a real node.
        exec_stdin(
            &ns,
            "nft",
            &["-f", "-"],
            "table inet pfd_track {
  chain pre { type filter hook prerouting priority -300; ct state new counter; }
  chain out { type filter hook output priority -300; ct state new counter; }
}
",
        )
        .with_context(|| format!("conntrack rule in {ns}"))?;
        exec_stdin(
            &ns,
            "iptables-restore",
            &["--noflush"],
            &kube_proxy_rules(n),
        )
        .with_context(|| format!("kube-proxy-style DNAT rules in {ns}"))?;
        Ok(())
    }

    fn pod(&mut self, p: &Pod) -> anyhow::Result<()> {
        let n = &NODES[p.node];
        let ns = p.netns();
        self.add_ns(&ns)?;
        let host_dev = format!("v-{}", p.tag);
        Self::veth(&ns, "eth0", &n.netns(), &host_dev)?;
        sh(
            &n.netns(),
            &format!("ip link set {host_dev} master cbr0\nip link set {host_dev} up"),
        )?;
        // A /32 with the bridge as gateway: even traffic between pods on the same node is
        // routed (not bridged) through the node, so its conntrack and DNAT see it, as with
        // routed CNIs, without needing br_netfilter.
        sh(
            &ns,
            &format!(
                "ip addr add {ip}/32 dev eth0
                 ip link set eth0 up
                 ip route add {gw} dev eth0 scope link
                 ip route add default via {gw} dev eth0",
                ip = p.ip(),
                gw = n.gateway(),
            ),
        )
        .with_context(|| format!("setting up pod namespace {ns}"))?;
        Ok(())
    }

    /// Removes every namespace made (links inside go with them). Returns what failed.
    pub fn remove(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        for ns in self.made.drain(..).rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", &ns])) {
                failed.push(format!("{e:#}"));
            }
        }
        failed
    }
}

/// kube-proxy's iptables mode, reduced to one Service (`shop/api`, ClusterIP and NodePort,
/// two endpoints, one per zone, chosen at random: no topology-aware routing).
fn kube_proxy_rules(_n: &Node) -> String {
    let backends: Vec<String> = PODS
        .iter()
        .filter(|p| p.app == "api")
        .map(|p| format!("{}:{API_PORT}", p.ip()))
        .collect();
    let mut r = String::from(
        "*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-SHOP-API - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
",
    );
    r.push_str(&format!(
        "-A KUBE-SERVICES -d {SERVICE_IP}/32 -p tcp --dport {SERVICE_PORT} -j KUBE-SVC-SHOP-API\n\
         -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         -A KUBE-NODEPORTS -p tcp --dport {NODE_PORT} -j KUBE-MARK-MASQ\n\
         -A KUBE-NODEPORTS -p tcp --dport {NODE_PORT} -j KUBE-SVC-SHOP-API\n"
    ));
    let k = backends.len();
    for (i, b) in backends.iter().enumerate() {
        r.push_str(&format!(":KUBE-SEP-SHOP-API-{i} - [0:0]\n"));
        let left = k - i;
        if left > 1 {
            r.push_str(&format!(
                "-A KUBE-SVC-SHOP-API -m statistic --mode random --probability {:.5} -j KUBE-SEP-SHOP-API-{i}\n",
                1.0 / left as f64
            ));
        } else {
            r.push_str(&format!("-A KUBE-SVC-SHOP-API -j KUBE-SEP-SHOP-API-{i}\n"));
        }
        r.push_str(&format!(
            "-A KUBE-SEP-SHOP-API-{i} -p tcp -j DNAT --to-destination {b}\n"
        ));
    }
    r.push_str("COMMIT\n");
    r
}

/// The `pfd-*` namespaces that exist now.
pub fn leftover_namespaces() -> anyhow::Result<Vec<String>> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect())
}

/// Links in the host's namespace whose name starts with `pfd` (the demo makes none there,
/// but an interrupted `ip link add` could leave one).
pub fn leftover_links() -> anyhow::Result<Vec<String>> {
    let out = run(Command::new("ip").args(["-o", "link", "show"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("pfd"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_the_cleanup() {
        for p in &PODS {
            assert!(p.netns().starts_with(PREFIX), "{}", p.netns());
            // Link names are at most 15 bytes (IFNAMSIZ - 1).
            assert!(format!("v-{}", p.tag).len() <= 15);
        }
        for n in &NODES {
            assert!(n.netns().starts_with(PREFIX));
        }
        let mut all: Vec<String> = PODS.iter().map(Pod::netns).collect();
        all.extend(NODES.iter().map(Node::netns));
        all.extend([FABRIC, INTERNET, S3].map(String::from));
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "namespace names are unique");
    }

    #[test]
    fn kube_proxy_rules_split_evenly_over_the_api_backends() {
        let r = kube_proxy_rules(&NODES[0]);
        assert!(r.contains(
            "-A KUBE-SVC-SHOP-API -m statistic --mode random --probability 0.50000 -j KUBE-SEP-SHOP-API-0\n"
        ));
        assert!(r.contains("-A KUBE-SVC-SHOP-API -j KUBE-SEP-SHOP-API-1\n"));
        assert!(r.contains("--to-destination 10.244.1.3:8080"));
        assert!(r.contains("--to-destination 10.244.3.4:8080"));
        assert!(r.contains("-d 10.96.0.10/32 -p tcp --dport 80 -j KUBE-SVC-SHOP-API"));
        assert!(r.ends_with("COMMIT\n"));
    }
}
