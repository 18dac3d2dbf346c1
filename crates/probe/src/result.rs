//! What one probe measured: a plain value the agent sends to the server as is.

use serde::{Deserialize, Serialize};

/// The kinds of probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// A burst of small UDP echo packets: loss, RTT, jitter.
    Udp,
    /// A burst of full-MTU UDP echo packets with Don't Fragment set.
    UdpMtu,
    /// A TCP connect.
    Tcp,
    /// An HTTP GET over a fresh connection.
    Http,
    /// A burst of ICMP echo requests.
    Icmp,
    /// A DNS lookup of a configured name at a configured resolver.
    Dns,
}

impl ProbeKind {
    /// Every kind, in label order.
    pub const ALL: [ProbeKind; 6] = [
        ProbeKind::Udp,
        ProbeKind::UdpMtu,
        ProbeKind::Tcp,
        ProbeKind::Http,
        ProbeKind::Icmp,
        ProbeKind::Dns,
    ];

    /// The metric label value (`type="udp"`).
    pub fn label(self) -> &'static str {
        match self {
            ProbeKind::Udp => "udp",
            ProbeKind::UdpMtu => "udp_mtu",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Http => "http",
            ProbeKind::Icmp => "icmp",
            ProbeKind::Dns => "dns",
        }
    }

    /// Parses a label value back.
    pub fn from_label(s: &str) -> Option<ProbeKind> {
        ProbeKind::ALL.into_iter().find(|k| k.label() == s)
    }

    /// Whether the kind sends a burst of counted packets.
    pub fn is_burst(self) -> bool {
        matches!(self, ProbeKind::Udp | ProbeKind::UdpMtu | ProbeKind::Icmp)
    }
}

impl std::fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked (a burst: at least one packet answered and none lost).
    Ok,
    /// It failed; `error` says why.
    Fail,
    /// This node cannot run it (ICMP without CAP_NET_RAW and no ping socket): not a
    /// failure of the path.
    Unavailable,
}

impl Outcome {
    /// The metric label value (`result="ok"`).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// One probe of one kind from one node to one peer (or, for DNS, to one resolver).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The probing node.
    pub src_node: String,
    /// Its zone.
    pub src_zone: String,
    /// The probed node; for DNS the resolver's address (`10.96.0.10:53`).
    pub dst_node: String,
    /// The probed node's zone; empty for DNS.
    pub dst_zone: String,
    /// For DNS, the name asked for; empty otherwise.
    pub dns_name: String,
    /// What kind of probe.
    pub kind: ProbeKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall-clock start, ns since the Unix epoch.
    pub started_unix_ns: u64,
    /// Packets (bursts) or attempts (1 for TCP, HTTP, DNS) sent.
    pub sent: u32,
    /// Of those, not answered in time.
    pub lost: u32,
    /// Extra replies to packets already answered.
    pub duplicates: u32,
    /// Replies that came after their timeout (also in `lost`).
    pub late: u32,
    /// RTT samples, ns: one per answered packet for bursts; the connect time for TCP;
    /// the whole request for HTTP; the lookup for DNS.
    pub rtt_ns: Vec<u64>,
    /// Times taken from the user-space clock because the kernel gave no stamp.
    pub timestamp_fallbacks: u32,
    /// Why it failed (or why it is unavailable); empty when it worked.
    pub error: String,
}

impl ProbeResult {
    /// A result with nothing measured yet.
    pub fn new(
        kind: ProbeKind,
        src: (&str, &str),
        dst: (&str, &str),
        started_unix_ns: u64,
    ) -> Self {
        ProbeResult {
            src_node: src.0.to_string(),
            src_zone: src.1.to_string(),
            dst_node: dst.0.to_string(),
            dst_zone: dst.1.to_string(),
            dns_name: String::new(),
            kind,
            outcome: Outcome::Fail,
            started_unix_ns,
            sent: 0,
            lost: 0,
            duplicates: 0,
            late: 0,
            rtt_ns: Vec::new(),
            timestamp_fallbacks: 0,
            error: String::new(),
        }
    }

    /// Smallest, mean and largest RTT, ns.
    pub fn rtt_min_avg_max(&self) -> Option<(u64, u64, u64)> {
        let min = *self.rtt_ns.iter().min()?;
        let max = *self.rtt_ns.iter().max()?;
        let avg = self.rtt_ns.iter().sum::<u64>() / self.rtt_ns.len() as u64;
        Some((min, avg, max))
    }

    /// The burst's jitter (mean difference of consecutive RTTs), ns.
    pub fn jitter_ns(&self) -> Option<u64> {
        crate::burst::jitter_ns(&self.rtt_ns)
    }

    /// Loss as a fraction of the packets sent (0 when nothing was sent).
    pub fn loss_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            f64::from(self.lost) / f64::from(self.sent)
        }
    }
}
