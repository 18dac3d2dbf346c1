//! `podflow agent`'s flags, shared by the multi-role `podflow` binary and the agent-only
//! `podflow-agent` (whose smaller text keeps the agent's base memory low).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use podflow_conntrack::{SourceConfig, SourceOptions};

use super::duration;
use super::runtime::{block_on, hostname, parse_allow};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The server's gRPC URL (http://host:9470, or https:// with --tls-ca).
    #[arg(long, env = "PODFLOW_SERVER")]
    server: String,

    /// This node's name (from the downward API: spec.nodeName; default: the host name).
    #[arg(long, env = "PODFLOW_NODE_NAME")]
    node_name: Option<String>,

    /// Stable id of this agent (default: the node name).
    #[arg(long, env = "PODFLOW_AGENT_ID")]
    agent_id: Option<String>,

    /// Address of the agent's own /metrics, /live and /ready.
    #[arg(long, env = "PODFLOW_LISTEN", default_value = "127.0.0.1:9469")]
    listen: SocketAddr,

    /// Directory of the spill file of unacknowledged batches.
    #[arg(long, env = "PODFLOW_DATA_DIR", default_value = "/var/lib/podflow")]
    data_dir: PathBuf,

    /// Conntrack dump interval (e.g. 10s).
    #[arg(long, env = "PODFLOW_INTERVAL", default_value = "10s", value_parser = duration::parse)]
    interval: Duration,

    #[command(flatten)]
    conntrack: ConntrackArgs,

    /// Memory for batches not yet acknowledged, bytes.
    #[arg(long, env = "PODFLOW_BUFFER_MEMORY", default_value_t = 64 << 20)]
    buffer_memory: usize,

    /// Spill file size for unacknowledged batches beyond memory, bytes (the oldest are
    /// dropped and counted beyond it).
    #[arg(long, env = "PODFLOW_BUFFER_SPILL", default_value_t = 1 << 30)]
    buffer_spill: u64,

    /// Reconnect after this long so agents spread over server replicas.
    #[arg(long, env = "PODFLOW_MAX_CONNECTION_AGE", default_value = "30m", value_parser = duration::parse)]
    max_connection_age: Duration,

    /// CA certificate (PEM) that signed the server's certificate (https:// servers).
    #[arg(long, env = "PODFLOW_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for servers that require one.
    #[arg(long, env = "PODFLOW_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Client key (PEM).
    #[arg(long, env = "PODFLOW_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Server name to verify (default: the URL's host).
    #[arg(long, env = "PODFLOW_TLS_DOMAIN")]
    tls_domain: Option<String>,

    /// File holding the bearer token the server expects.
    #[arg(long, env = "PODFLOW_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// Receive NetFlow v5/v9/IPFIX on this UDP address and forward the records to the
    /// server (repeat or comma-separate for more).
    #[arg(long, env = "PODFLOW_NETFLOW_LISTEN", value_delimiter = ',')]
    netflow_listen: Vec<SocketAddr>,

    /// Exporter networks allowed to send NetFlow/IPFIX (comma-separated CIDRs or
    /// addresses, e.g. 10.0.0.0/8,192.0.2.7); datagrams from other sources are dropped
    /// and counted (podflow_netflow_denied_datagrams_total). Unset: every source is
    /// decoded, with a warning at start.
    #[arg(long, env = "PODFLOW_NETFLOW_ALLOW", value_parser = parse_allow)]
    netflow_allow: Option<podflow_role::netflow::AllowList>,

    #[command(flatten)]
    probes: ProbeArgs,
}

/// Conntrack source options shared by `agent` and `run`.
#[derive(Debug, Args)]
pub struct ConntrackArgs {
    /// Turn on net.netfilter.nf_conntrack_acct and nf_conntrack_timestamp in the observed
    /// network namespace at start (without them: no byte counters, no durations).
    #[arg(long, env = "PODFLOW_ENABLE_ACCOUNTING")]
    enable_accounting: bool,

    /// Receive buffer of the conntrack event socket, bytes. Larger absorbs bigger bursts
    /// of short connections before events are lost (counted, then recovered by a dump).
    #[arg(long, env = "PODFLOW_EVENT_BUFFER", default_value_t = 16 << 20)]
    event_buffer: usize,

    /// Measure each connection's time to first reply (per-Service histogram
    /// podflow_service_first_reply_seconds) from conntrack UPDATE events. Raises event
    /// volume: a short TCP connection sends 7 events instead of 2 (nftables
    /// `ct event set new,reply,destroy` brings that to 3). Needs nf_conntrack_timestamp.
    #[arg(long, env = "PODFLOW_FIRST_REPLY")]
    first_reply: bool,

    /// Observe another network namespace (a file such as /run/netns/NAME).
    #[arg(long, env = "PODFLOW_NETNS")]
    netns: Option<PathBuf>,

    /// Reliable DESTROY delivery (conntrackd's NetlinkEventsReliable): the kernel keeps a
    /// closed connection whose DESTROY event it could not deliver and sends it again, so no
    /// final bytes are lost to an event overflow. WARNING: while podflow does not read its
    /// events (stalled, starved of CPU, stopped) closed connections stay in the table,
    /// which can fill up (nf_conntrack_max); the kernel then drops new connections.
    #[arg(long, env = "PODFLOW_RELIABLE_EVENTS")]
    reliable_events: bool,

    /// Keep table dumps under this fraction of one core (e.g. 0.05 = 5%): the dump
    /// interval in force becomes max(--interval, last dump's CPU time / budget), shown by
    /// podflow_conntrack_dump_interval_seconds. Unset: always --interval.
    #[arg(long, env = "PODFLOW_DUMP_CPU_BUDGET", value_parser = parse_budget)]
    dump_cpu_budget: Option<f64>,

    /// Do not subscribe to NEW events: DESTROY carries the tuple, both timestamps and the
    /// final counters, so nothing is lost, a short connection costs one event instead of
    /// two, and `opened` is reported at the next dump or the close. Ignored with
    /// --first-reply (which needs NEW events).
    #[arg(long, env = "PODFLOW_NO_NEW_EVENTS")]
    no_new_events: bool,
}

impl ConntrackArgs {
    /// The namespace observed (`None`: this one).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// The source: these flags, with events on.
    pub fn source(&self) -> SourceConfig {
        SourceConfig {
            netns: self.netns.clone(),
            event_buffer: self.event_buffer,
            events: true,
            enable_features: self.enable_accounting,
            first_reply: self.first_reply,
        }
    }

    pub fn options(&self) -> SourceOptions {
        SourceOptions {
            new_events: !self.no_new_events,
            reliable_events: self.reliable_events,
            cpu_budget: self.dump_cpu_budget,
            ..SourceOptions::default()
        }
    }
}

/// A CPU budget: a fraction of one core in (0, 1].
fn parse_budget(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number (a fraction of one core, e.g. 0.05)"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "{v} is outside (0, 1] (a fraction of one core, e.g. 0.05)"
        ))
    }
}

/// Node-to-node probes (the agent's responder and prober).
#[derive(Debug, Args)]
struct ProbeArgs {
    /// Probe the other nodes the server names (UDP bursts, TCP connect, HTTP GET, ICMP,
    /// full-MTU UDP, DNS) and answer their probes.
    #[arg(long, env = "PODFLOW_PROBES")]
    probes: bool,

    /// The responder's port on the host network: UDP echo and TCP accept on it, HTTP on
    /// the next port.
    #[arg(long, env = "PODFLOW_PROBE_PORT", default_value_t = 9471)]
    probe_port: u16,

    /// Address the responder binds and probes leave from (default: every address).
    #[arg(long, env = "PODFLOW_PROBE_BIND")]
    probe_bind: Option<std::net::IpAddr>,

    /// How often each peer is probed.
    #[arg(long, env = "PODFLOW_PROBE_INTERVAL", default_value = "5s", value_parser = duration::parse)]
    probe_interval: Duration,

    /// Kinds probed each round (comma-separated: udp, udp_mtu, tcp, http, icmp). ICMP
    /// needs CAP_NET_RAW; without it ICMP results say `unavailable`.
    #[arg(
        long,
        env = "PODFLOW_PROBE_KINDS",
        default_value = "udp,udp_mtu,tcp,http,icmp"
    )]
    probe_kinds: String,

    /// Path MTU the full-MTU probe checks (IP packet size; 0: off).
    #[arg(long, env = "PODFLOW_PROBE_MTU", default_value_t = 1500)]
    probe_mtu: usize,

    /// ICMP echo runs every this many rounds of a peer (1: every round), and right
    /// after any UDP burst that lost packets (a UDP-only fault or the host?).
    #[arg(long, env = "PODFLOW_PROBE_ICMP_EVERY", default_value_t = 4)]
    probe_icmp_every: u32,

    /// The HTTP GET, whose connection also gives the TCP connect time, runs every this
    /// many rounds of a peer (1: every round).
    #[arg(long, env = "PODFLOW_PROBE_HTTP_EVERY", default_value_t = 2)]
    probe_http_every: u32,

    /// DNS lookups each round: `RESOLVER=NAME` (e.g. 10.96.0.10:53=kubernetes.default.svc.cluster.local), comma-separated.
    #[arg(long, env = "PODFLOW_PROBE_DNS", value_delimiter = ',')]
    probe_dns: Vec<String>,

    /// Full mesh up to this many nodes; beyond, each node probes a bounded set that still
    /// covers every zone pair (see docs/probes.md).
    #[arg(long, env = "PODFLOW_PROBE_FULL_MESH_MAX", default_value_t = 50)]
    probe_full_mesh_max: usize,

    /// Probe series carry node labels while the node pairs seen are at most this many
    /// (zone labels always).
    #[arg(long, env = "PODFLOW_PROBE_NODE_LABEL_PAIRS", default_value_t = 2500)]
    probe_node_label_pairs: usize,

    /// Probe results are summed and stored per this interval (the live metrics follow
    /// every result): one row per node pair and kind each time.
    #[arg(long, env = "PODFLOW_PROBE_STORE_INTERVAL", default_value = "60s", value_parser = duration::parse)]
    probe_store_interval: Duration,

    /// Also expose kconmon's metric names and labels with this prefix (e.g. `kconmon`),
    /// so its dashboards and alerts work unchanged (one set of per-pair series more).
    #[arg(long, env = "PODFLOW_PROBE_KCONMON_PREFIX")]
    probe_kconmon_prefix: Option<String>,
}

impl ProbeArgs {
    fn settings(&self) -> anyhow::Result<Option<podflow_agent::ProbeSettings>> {
        if !self.probes {
            return Ok(None);
        }
        let kinds = self
            .probe_kinds
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                podflow_probe::ProbeKind::from_label(k)
                    .filter(|k| *k != podflow_probe::ProbeKind::Dns)
                    .ok_or_else(|| anyhow::anyhow!("--probe-kinds: unknown kind `{k}`"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut dns = Vec::new();
        for d in &self.probe_dns {
            let (resolver, name) = d
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--probe-dns {d:?}: want RESOLVER=NAME"))?;
            dns.push(podflow_probe::DnsTarget {
                resolver: resolver
                    .parse()
                    .with_context(|| format!("--probe-dns {d:?}: resolver"))?,
                name: name.to_string(),
                qtype: podflow_probe::dns::QType::A,
            });
        }
        Ok(Some(podflow_agent::ProbeSettings {
            port: self.probe_port,
            bind: self.probe_bind,
            interval: self.probe_interval,
            kinds,
            mtu: self.probe_mtu,
            icmp_every: self.probe_icmp_every,
            http_every: self.probe_http_every,
            dns,
            metrics: podflow_probe::MetricsConfig {
                node_label_max_pairs: self.probe_node_label_pairs,
                kconmon_prefix: self.probe_kconmon_prefix.clone(),
                ..Default::default()
            },
            topology: podflow_probe::TopologyConfig {
                full_mesh_max: self.probe_full_mesh_max,
                ..Default::default()
            },
            store_interval: self.probe_store_interval,
        }))
    }
}

impl AgentArgs {
    /// The agent's configuration from its flags.
    pub fn config(self) -> anyhow::Result<podflow_agent::AgentConfig> {
        let a = self;
        let node = a.node_name.unwrap_or_else(hostname);
        let tls = (a.tls_ca.is_some() || a.tls_cert.is_some()).then(|| podflow_agent::ClientTls {
            ca: a.tls_ca.clone(),
            identity: a.tls_cert.clone().zip(a.tls_key.clone()),
            domain: a.tls_domain.clone(),
        });
        let cfg = podflow_agent::AgentConfig {
            server: a.server,
            agent_id: a.agent_id.unwrap_or_else(|| node.clone()),
            node,
            listen: a.listen,
            data_dir: a.data_dir,
            interval: a.interval,
            source: a.conntrack.source(),
            source_options: a.conntrack.options(),
            tls,
            token_file: a.token_file,
            max_memory: a.buffer_memory,
            max_spill: a.buffer_spill,
            max_connection_age: a.max_connection_age,
            probes: a.probes.settings()?,
            http: podflow_role::HttpSettings::default(),
            netflow_listen: a.netflow_listen,
            netflow_allow: a.netflow_allow.unwrap_or_default(),
        };
        Ok(cfg)
    }
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub fn run(a: AgentArgs) -> anyhow::Result<()> {
    let cfg = a.config()?;
    block_on(|token| async move { podflow_agent::agent(cfg, token).await })
}
