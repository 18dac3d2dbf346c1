//! podflow: Kubernetes network flow observability in one binary.

mod client;
mod cost;
mod demo;
mod flows;
mod run;
mod tracking;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use podflow::cli::agent::{AgentArgs, ConntrackArgs};
use podflow::cli::duration;
use podflow::cli::runtime::{Globals, block_on, hostname, parse_allow};
use run::RunConfig;

/// podflow shows who talks to whom on a Kubernetes cluster, how many bytes cross nodes,
/// zones, regions and the internet, and what that costs, by reading the kernel's
/// connection tracking (conntrack) on every node. It never touches application traffic.
///
/// One binary plays every role: `run` (everything on one host, no cluster needed),
/// `agent` (one per node), `server` (attribution, storage, API) and `demo`.
#[derive(Debug, Parser)]
#[command(name = "podflow", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    globals: Globals,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Observe this host's connections and serve them: the conntrack source, per-interval
    /// aggregation, the embedded store and the HTTP endpoints, in one process.
    ///
    /// Needs root or CAP_NET_ADMIN (conntrack is read over netlink). Counters need
    /// net.netfilter.nf_conntrack_acct=1 (see --enable-accounting). Stop with Ctrl-C or
    /// SIGTERM: the last interval is flushed before exit.
    ///
    /// Endpoints: /metrics (Prometheus), /api/v1/flows?from=&to=&limit= (JSON),
    /// /live and /ready.
    Run(Box<RunArgs>),
    /// Print the top conversations of a running podflow as a table.
    Flows(FlowsArgs),
    /// Print what each namespace, workload or app costs over a range, from a running
    /// podflow's /api/v1/cost/showback: the bill as the price list has it (tiers,
    /// allowances, NAT gateways; count-once view), shared at each month's blended rate,
    /// with the month to date and its projection.
    Cost(CostArgs),
    /// Per-node agent: reads this node's conntrack and streams observations to a server
    /// over gRPC, keeping unacknowledged batches (memory, then a spill file) across server
    /// restarts. Needs CAP_NET_ADMIN (a DaemonSet on the host network). The binary
    /// `podflow-agent` (the agent image's) takes the same flags.
    Agent(Box<AgentArgs>),
    /// Receives the agents' observations, attributes them to pods, workloads, services,
    /// nodes and zones, aggregates and stores them, and serves /metrics and the HTTP API.
    Server(Box<ServerArgs>),
    /// A simulated cluster in network namespaces with real traffic: 3 nodes in 2 zones,
    /// 6 pods (a Deployment, a StatefulSet, a DaemonSet, a CronJob's Job), a kube-proxy-style
    /// ClusterIP/NodePort Service, an internet host and an S3 host, one `podflow agent` per
    /// node and a `podflow server` with the web UI. Needs root; everything it makes is named
    /// `pfd-*` and removed at exit.
    Demo(DemoArgs),
    /// Turn on the kernel's conntrack byte counters and timestamps
    /// (net.netfilter.nf_conntrack_acct=1, nf_conntrack_timestamp=1) in this network
    /// namespace, print what they were and are, and exit: the agent's optional privileged
    /// init step (an image without a shell has no `sysctl`; the agent image runs
    /// `podflow-agent sysctl`). Counters exist only for connections made after accounting
    /// is on. Needs CAP_NET_ADMIN.
    Sysctl(podflow::cli::sysctl::SysctlArgs),
    /// Probe a node's responder once, print the result and exit 2 if it failed:
    /// `podflow probe 10.0.1.7 --type udp` probes from here; `podflow probe NODE --server
    /// http://podflow:9469` asks the server to probe the node it knows by that name, from
    /// the server's host (POST /api/v1/probe). The peer runs `podflow agent --probes`
    /// (its responder).
    Probe(ProbeOnceArgs),
}

#[derive(Debug, Args)]
struct ProbeOnceArgs {
    /// The node's address (or a name this host resolves); with --server, the node's
    /// name as the server's inventory knows it.
    target: String,

    /// What to probe: udp (a burst: loss and RTT), tcp (connect), http (GET), icmp.
    #[arg(long = "type", default_value = "udp", value_parser = ["udp", "tcp", "http", "icmp"])]
    kind: String,

    /// Ask this podflow server (http://host:port) to run the probe from its host, to the
    /// node named TARGET.
    #[arg(long, conflicts_with_all = ["netns", "port"])]
    server: Option<String>,

    /// With --server: a file holding the server's HTTP API token, when it has one.
    #[arg(long, env = "PODFLOW_HTTP_TOKEN_FILE")]
    http_token_file: Option<PathBuf>,

    /// The responder's port (UDP echo and TCP accept; HTTP on the next port), as the
    /// agent's --probe-port [default: 9471].
    #[arg(long)]
    port: Option<u16>,

    /// Probe from inside this network namespace (a file such as /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Stop after this long (e.g. 60s); default: run until Ctrl-C.
    #[arg(long, value_parser = duration::parse)]
    duration: Option<Duration>,

    /// Address of the server's HTTP API and web UI.
    #[arg(long, default_value = "127.0.0.1:9469")]
    listen: SocketAddr,

    /// Where the inventory, store, logs and traffic counts (traffic.json) go; default: a
    /// temporary directory removed at exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// Aggregation and conntrack dump interval.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    interval: Duration,

    /// Stop the traffic after this long but keep running (the totals settle, e.g. to
    /// compare them with traffic.json); default: traffic until the end.
    #[arg(long, value_parser = duration::parse)]
    traffic_for: Option<Duration>,

    /// Only remove what a crashed demo left behind (`pfd-*` namespaces, its processes).
    #[arg(long)]
    cleanup: bool,

    /// Impair the links between a zone or node and the others, as `TARGET=DELAY,LOSS`
    /// (e.g. `us-east-1b=30ms,5%`; either part may be left out): the probes then show a
    /// sick pair in the UI, /api/v1/pairs and the metrics. Only node-to-node packets are
    /// touched, not the pods' traffic. Repeat for more.
    #[arg(long, value_parser = demo::Impairment::parse)]
    impair: Vec<demo::Impairment>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Address of the HTTP endpoints.
    #[arg(long, env = "PODFLOW_LISTEN", default_value = "127.0.0.1:9469")]
    listen: SocketAddr,

    /// Directory of the embedded store (one SQLite file, podflow.sqlite).
    #[arg(long, env = "PODFLOW_DATA_DIR", default_value = "/var/lib/podflow")]
    data_dir: PathBuf,

    /// Aggregation interval, also the conntrack dump interval (e.g. 10s, 1m).
    #[arg(long, env = "PODFLOW_INTERVAL", default_value = "10s", value_parser = duration::parse)]
    interval: Duration,

    /// How long stored rows are kept (e.g. 7d).
    #[arg(long, env = "PODFLOW_RETENTION", default_value = "7d", value_parser = duration::parse)]
    retention: Duration,

    /// Name of this node in stored rows (default: the host name).
    #[arg(long, env = "PODFLOW_NODE_NAME")]
    node_name: Option<String>,

    /// Make the kernel track connections in the observed namespace by adding a
    /// one-rule nftables table (`inet podflow_track`), removed at exit. Needed only on a
    /// host where no firewall or NAT rule uses conntrack (Kubernetes nodes always have one).
    #[arg(long, env = "PODFLOW_ENSURE_TRACKING")]
    ensure_tracking: bool,

    #[command(flatten)]
    conntrack: ConntrackArgs,

    /// Bound on distinct flow keys per interval; beyond it traffic is summed into a
    /// per-protocol overflow row (counted in podflow_aggregator_overflow_observations_total).
    #[arg(long, env = "PODFLOW_MAX_KEYS", default_value_t = 1_000_000)]
    max_keys: usize,

    #[command(flatten)]
    attribution: AttributionArgs,

    #[command(flatten)]
    metrics: MetricsArgs,

    #[command(flatten)]
    http: HttpArgs,

    /// Receive NetFlow v5/v9/IPFIX on this UDP address (repeat for more; IPv4 or IPv6,
    /// e.g. 0.0.0.0:2055 or [::]:4739). Records are attributed like conntrack's.
    #[arg(long, env = "PODFLOW_NETFLOW_LISTEN", value_delimiter = ',')]
    netflow_listen: Vec<SocketAddr>,

    /// Exporter networks allowed to send NetFlow/IPFIX (comma-separated CIDRs or
    /// addresses, e.g. 10.0.0.0/8,192.0.2.7); datagrams from other sources are dropped
    /// and counted (podflow_netflow_denied_datagrams_total). Unset: every source is
    /// decoded, with a warning at start.
    #[arg(long, env = "PODFLOW_NETFLOW_ALLOW", value_parser = parse_allow)]
    netflow_allow: Option<podflow_role::netflow::AllowList>,

    /// Per-exporter NetFlow series in /metrics (the exporter's address becomes a label).
    #[arg(long, env = "PODFLOW_NETFLOW_EXPORTER_LABELS")]
    netflow_exporter_labels: bool,

    /// Keep the full addresses of NetFlow/IPFIX flows with neither end in the cluster
    /// (no pod, node, Service or user network) instead of summing them per network
    /// (cloud prefix, else /24 or /48): one stored row per address pair and interval,
    /// which on a border router's stream is most of the store and of the CPU.
    #[arg(long, env = "PODFLOW_NETFLOW_KEEP_ADDRESSES")]
    netflow_keep_addresses: bool,
}

/// Who may read the HTTP API and how much each request may cost (docs/security.md).
#[derive(Debug, Args)]
struct HttpArgs {
    /// File holding the bearer token the HTTP API requires (`Authorization: Bearer
    /// <token>`); read again when it changes, so rotation needs no restart. Without it
    /// the API is open: bind it to a trusted network only.
    #[arg(long, env = "PODFLOW_HTTP_TOKEN_FILE")]
    http_token_file: Option<PathBuf>,

    /// The token guards /metrics too (/live and /ready always stay open).
    #[arg(
        long,
        env = "PODFLOW_HTTP_TOKEN_PROTECTS_METRICS",
        requires = "http_token_file"
    )]
    http_token_protects_metrics: bool,

    /// Certificate chain (PEM) of the HTTP listener; with --http-tls-key serves HTTPS.
    #[arg(long, env = "PODFLOW_HTTP_TLS_CERT", requires = "http_tls_key")]
    http_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of the HTTP listener.
    #[arg(long, env = "PODFLOW_HTTP_TLS_KEY", requires = "http_tls_cert")]
    http_tls_key: Option<PathBuf>,

    /// Time limit of one API request's store query; past it the query is stopped and
    /// the answer is 504.
    #[arg(long, env = "PODFLOW_QUERY_TIMEOUT", default_value = "30s", value_parser = duration::parse)]
    query_timeout: Duration,

    /// API requests running or waiting for the store at once; beyond, 503 with
    /// Retry-After.
    #[arg(long, env = "PODFLOW_MAX_CONCURRENT_QUERIES", default_value_t = 64)]
    max_concurrent_queries: usize,

    /// Grouped queries (the expensive ones) running at once (0: one less than the
    /// cores, at least 1); the others wait in line within the time limit.
    #[arg(long, env = "PODFLOW_MAX_EXPENSIVE_QUERIES", default_value_t = 0)]
    max_expensive_queries: usize,

    /// While the embedded store's write-ahead log is larger than this many MiB, API
    /// queries answer 503 until the writer's next checkpoint resets it (readers that
    /// always overlap would otherwise let it grow until the disk is full). At least 65:
    /// a reset truncates the log to 64 MiB.
    #[arg(long, env = "PODFLOW_QUERY_MAX_WAL_MIB", default_value_t = 512)]
    query_max_wal_mib: u64,
}

impl HttpArgs {
    fn settings(&self) -> podflow_role::HttpSettings {
        let mut limits = podflow_api::QueryLimits {
            timeout: self.query_timeout,
            max_concurrent: self.max_concurrent_queries.max(1),
            max_wal_bytes: self.query_max_wal_mib.max(65) << 20,
            ..Default::default()
        };
        if self.max_expensive_queries > 0 {
            limits.expensive_lane = self.max_expensive_queries;
        }
        podflow_role::HttpSettings {
            token_file: self.http_token_file.clone(),
            token_protects_metrics: self.http_token_protects_metrics,
            tls: self
                .http_tls_cert
                .clone()
                .zip(self.http_tls_key.clone())
                .map(|(cert, key)| podflow_role::HttpTls { cert, key }),
            limits,
            ..Default::default()
        }
    }
}

/// How the workload series in /metrics are bounded and counted.
#[derive(Debug, Args)]
struct MetricsArgs {
    /// Labels of the workload series in /metrics (comma-separated allow-list from:
    /// src_namespace, src_workload, src_kind, src_zone, dst_namespace, dst_workload,
    /// dst_kind, dst_zone, class, src_pod, dst_pod). Pod names are opt-in.
    #[arg(
        long,
        env = "PODFLOW_METRICS_LABELS",
        default_value = "src_namespace,src_workload,src_kind,src_zone,dst_namespace,dst_workload,dst_kind,dst_zone,class"
    )]
    metrics_labels: String,

    /// Workload series (and per-Service cross-zone series) kept per interval; smaller
    /// ones are summed into `other` series.
    #[arg(long, env = "PODFLOW_METRICS_TOP_K", default_value_t = 200)]
    metrics_top_k: usize,

    /// Workload and per-Service series that stop moving disappear after this long.
    #[arg(long, env = "PODFLOW_METRICS_EXPIRE", default_value = "10m", value_parser = duration::parse)]
    metrics_expire: Duration,

    /// Count every observer's row in the workload and per-Service series (the raw view:
    /// a connection between two observed nodes counts twice). Default: each connection
    /// once, from the initiator's node, so summing the series gives the bill (as the
    /// API's count-once view).
    #[arg(long, env = "PODFLOW_METRICS_PER_OBSERVER")]
    metrics_per_observer: bool,
}

impl MetricsArgs {
    fn config(&self) -> anyhow::Result<podflow_pipeline::workload_metrics::WorkloadMetricsConfig> {
        use podflow_pipeline::workload_metrics::WorkloadMetricsConfig;
        Ok(WorkloadMetricsConfig {
            dimensions: WorkloadMetricsConfig::parse_dimensions(&self.metrics_labels)
                .map_err(|e| anyhow::anyhow!("--metrics-labels: {e}"))?,
            top_k: self.metrics_top_k,
            expire_s: self.metrics_expire.as_secs() as i64,
            count_once: !self.metrics_per_observer,
        })
    }
}

/// Where pods, workloads, services and prices come from.
#[derive(Debug, Args)]
struct AttributionArgs {
    /// A file in Kubernetes List format (YAML or JSON, one or many documents; the output
    /// of `kubectl get pods,nodes,services,endpointslices,replicasets,jobs -A -o yaml`
    /// works as is), reloaded when it changes.
    #[arg(long, env = "PODFLOW_INVENTORY", conflicts_with_all = ["kube", "kubeconfig"])]
    inventory: Option<PathBuf>,

    /// Watch the Kubernetes API (in-cluster config, else the default kubeconfig).
    #[arg(long, env = "PODFLOW_KUBE")]
    kube: bool,

    /// Watch the Kubernetes API with this kubeconfig.
    #[arg(long, env = "PODFLOW_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,

    /// Pipeline config (YAML): the cluster's `cloud` and `region`, `app_labels`, and user
    /// CIDR rules (`networks`: VPC, NAT gateway, on-prem, peering). See docs/attribution.md.
    #[arg(long, env = "PODFLOW_CONFIG")]
    config: Option<PathBuf>,

    /// Directory with the providers' published ranges (AWS ip-ranges.json, GCP
    /// cloud.json, Google goog.json, Azure ServiceTags_Public_*.json), read locally.
    #[arg(long, env = "PODFLOW_CLOUD_RANGES")]
    cloud_ranges: Option<PathBuf>,

    /// Price table (YAML, USD per GB per cloud and class); default: the embedded list
    /// prices (docs/attribution.md says their source and date).
    #[arg(long, env = "PODFLOW_PRICES")]
    prices: Option<PathBuf>,

    /// Volume the same account or billing family already used this month elsewhere, as
    /// CLOUD:CLASS[:DIRECTION]=GB (e.g. aws:PUBLIC_INTERNET=5120; comma-separated or
    /// repeated): the cluster's bytes continue the price tiers after it. Added to the
    /// config's billing.prior_usage (docs/attribution.md, Cost).
    #[arg(long, env = "PODFLOW_PRIOR_USAGE", value_delimiter = ',', value_parser = parse_prior_usage)]
    prior_usage: Vec<podflow_enrich::PriorUsage>,
}

/// `--prior-usage CLOUD:CLASS[:DIRECTION]=GB`.
fn parse_prior_usage(s: &str) -> Result<podflow_enrich::PriorUsage, String> {
    let usage =
        || format!("`{s}`: expected CLOUD:CLASS[:DIRECTION]=GB, e.g. aws:PUBLIC_INTERNET=5120");
    let (what, gb) = s.trim().split_once('=').ok_or_else(usage)?;
    let gb: f64 = gb
        .trim()
        .parse()
        .ok()
        .filter(|g: &f64| g.is_finite() && *g >= 0.0)
        .ok_or_else(|| format!("`{s}`: {gb:?} is not a volume (GB, >= 0)"))?;
    let parts: Vec<&str> = what.split(':').collect();
    let (cloud, class, direction) = match parts[..] {
        [c, k] => (c, k, podflow_enrich::Direction::Out),
        [c, k, "out"] => (c, k, podflow_enrich::Direction::Out),
        [c, k, "in"] => (c, k, podflow_enrich::Direction::In),
        [_, _, d] => return Err(format!("`{s}`: direction {d:?} is not out or in")),
        _ => return Err(usage()),
    };
    if cloud.is_empty() || podflow_enrich::PriceKey::parse(class).is_none() {
        return Err(format!(
            "`{s}`: {class:?} is not a class or INTRA_REGION (or the cloud is empty)"
        ));
    }
    Ok(podflow_enrich::PriorUsage {
        cloud: cloud.to_string(),
        region: None,
        class: class.to_string(),
        direction,
        month: None,
        gb,
    })
}

impl AttributionArgs {
    fn settings(self) -> anyhow::Result<podflow_server::EnrichSettings> {
        use podflow_server::InventorySource;
        let inventory = match (self.inventory, self.kube, self.kubeconfig) {
            (Some(f), _, _) => InventorySource::File(f),
            (None, true, k) => InventorySource::Kube { kubeconfig: k },
            (None, false, Some(k)) => InventorySource::Kube {
                kubeconfig: Some(k),
            },
            (None, false, None) => InventorySource::None,
        };
        let config = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("--config {}", p.display()))?;
                podflow_enrich::EnrichConfig::from_yaml(&text, &p.display().to_string())?
            }
            None => podflow_enrich::EnrichConfig::default(),
        };
        let mut config = config;
        config.billing.prior_usage.extend(self.prior_usage);
        Ok(podflow_server::EnrichSettings {
            inventory,
            config,
            cloud_ranges: self.cloud_ranges,
            prices: self.prices,
        })
    }
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Address of /metrics, the HTTP API, /live and /ready.
    #[arg(long, env = "PODFLOW_LISTEN", default_value = "0.0.0.0:9469")]
    listen: SocketAddr,

    /// Address agents connect to (gRPC).
    #[arg(long, env = "PODFLOW_GRPC_LISTEN", default_value = "0.0.0.0:9470")]
    grpc_listen: SocketAddr,

    /// Directory of the embedded store.
    #[arg(long, env = "PODFLOW_DATA_DIR", default_value = "/var/lib/podflow")]
    data_dir: PathBuf,

    /// Aggregation interval.
    #[arg(long, env = "PODFLOW_INTERVAL", default_value = "10s", value_parser = duration::parse)]
    interval: Duration,

    /// How long stored rows are kept in the embedded store (ClickHouse: its TTL,
    /// --clickhouse-ttl-days).
    #[arg(long, env = "PODFLOW_RETENTION", default_value = "7d", value_parser = duration::parse)]
    retention: Duration,

    /// Bound on distinct flow keys per interval.
    #[arg(long, env = "PODFLOW_MAX_KEYS", default_value_t = 1_000_000)]
    max_keys: usize,

    /// Rows of closed intervals waiting for the store (it is down or slow) beyond which
    /// the server reads no more batches: agents' streams wait and they keep their
    /// batches. About 1 KB of memory per row.
    #[arg(long, env = "PODFLOW_MAX_PENDING_ROWS", default_value_t = podflow_server::MAX_PENDING_ROWS)]
    max_pending_rows: usize,

    /// Server certificate (PEM); with --tls-key turns TLS on for the gRPC port.
    #[arg(long, env = "PODFLOW_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Server key (PEM).
    #[arg(long, env = "PODFLOW_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require agents to present a certificate signed by this CA (PEM).
    #[arg(long, env = "PODFLOW_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// How agents prove who they are (docs/security.md): kubernetes (projected
    /// service-account tokens checked with the TokenReview API, bound to the pod's
    /// node), tokens (per-node tokens of --agent-tokens), mtls (client certificates
    /// naming the node, signed by --tls-client-ca), shared-token (the one token of
    /// --token-file, bound to no node), none. auto: mtls with --tls-client-ca, else
    /// tokens with --agent-tokens, else shared-token with --token-file, else none.
    #[arg(long, env = "PODFLOW_AGENT_AUTH", default_value = "auto", value_parser = ["auto", "kubernetes", "tokens", "mtls", "shared-token", "none"])]
    agent_auth: String,

    /// Per-node agent tokens: `<node> <token>` lines (`#` comments), re-read when the
    /// file changes.
    #[arg(long, env = "PODFLOW_AGENT_TOKENS")]
    agent_tokens: Option<PathBuf>,

    /// One bearer token every agent sends (shared-token: not bound to a node), re-read
    /// when the file changes.
    #[arg(long, env = "PODFLOW_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// The audience agents' service-account tokens are issued for (kubernetes).
    #[arg(long, env = "PODFLOW_TOKEN_AUDIENCE", default_value = "podflow")]
    token_audience: String,

    /// The agents' service account, `namespace/name` (kubernetes): tokens of any other
    /// account are refused.
    #[arg(long, env = "PODFLOW_AGENT_SERVICE_ACCOUNT")]
    agent_service_account: Option<String>,

    /// Accept unauthenticated agents on a non-loopback --grpc-listen (warned at start,
    /// shown in podflow_server_agent_auth_info).
    #[arg(long, env = "PODFLOW_INSECURE_NO_AGENT_AUTH")]
    insecure_no_agent_auth: bool,

    /// Serve gRPC without TLS on a non-loopback --grpc-listen (warned at start, shown in
    /// podflow_server_agent_auth_info).
    #[arg(long, env = "PODFLOW_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,

    /// What one node's agents may send, MiB/s of encoded batches (bursts of 4 s of it);
    /// beyond it their streams wait and they keep their batches. 0: no limit.
    #[arg(long, env = "PODFLOW_AGENT_RATE_LIMIT", default_value_t = 32)]
    agent_rate_limit: u64,

    /// The agents' responder port (their --probe-port: UDP echo and TCP; HTTP on the
    /// next), for on-demand probes from this host (POST /api/v1/probe).
    #[arg(long, env = "PODFLOW_PROBE_PORT", default_value_t = 9471)]
    probe_port: u16,

    /// On-demand probes a second, across all clients (more answer 429).
    #[arg(long, env = "PODFLOW_PROBE_RATE", default_value_t = 1.0)]
    probe_rate: f64,

    /// On-demand probes allowed at once before --probe-rate applies.
    #[arg(long, env = "PODFLOW_PROBE_BURST", default_value_t = 5)]
    probe_burst: u32,

    /// Write to ClickHouse at this URL (http:// or https://) instead of the embedded
    /// store; the table is created or migrated at start (docs/clickhouse.md).
    #[arg(long, env = "PODFLOW_CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,

    /// ClickHouse database.
    #[arg(long, env = "PODFLOW_CLICKHOUSE_DATABASE", default_value = "default")]
    clickhouse_database: String,

    /// ClickHouse table (kubenetmon-compatible columns plus podflow's).
    #[arg(
        long,
        env = "PODFLOW_CLICKHOUSE_TABLE",
        default_value = "network_flows_0"
    )]
    clickhouse_table: String,

    /// ClickHouse user.
    #[arg(long, env = "PODFLOW_CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,

    /// File holding the ClickHouse password (or set PODFLOW_CLICKHOUSE_PASSWORD).
    #[arg(long, env = "PODFLOW_CLICKHOUSE_PASSWORD_FILE")]
    clickhouse_password_file: Option<PathBuf>,

    /// Create the table ON CLUSTER with a Replicated engine.
    #[arg(long, env = "PODFLOW_CLICKHOUSE_CLUSTER")]
    clickhouse_cluster: Option<String>,

    /// Days rows are kept in ClickHouse (TTL; 0 = forever).
    #[arg(long, env = "PODFLOW_CLICKHOUSE_TTL_DAYS", default_value_t = 90)]
    clickhouse_ttl_days: u32,

    /// Receive NetFlow v5/v9/IPFIX on this UDP address (repeat for more; IPv4 or IPv6,
    /// e.g. 0.0.0.0:2055 or [::]:4739). Records are attributed like conntrack's.
    #[arg(long, env = "PODFLOW_NETFLOW_LISTEN", value_delimiter = ',')]
    netflow_listen: Vec<SocketAddr>,

    /// Exporter networks allowed to send NetFlow/IPFIX (comma-separated CIDRs or
    /// addresses, e.g. 10.0.0.0/8,192.0.2.7); datagrams from other sources are dropped
    /// and counted (podflow_netflow_denied_datagrams_total). Unset: every source is
    /// decoded, with a warning at start.
    #[arg(long, env = "PODFLOW_NETFLOW_ALLOW", value_parser = parse_allow)]
    netflow_allow: Option<podflow_role::netflow::AllowList>,

    /// Per-exporter NetFlow series in /metrics (the exporter's address becomes a label).
    #[arg(long, env = "PODFLOW_NETFLOW_EXPORTER_LABELS")]
    netflow_exporter_labels: bool,

    /// Keep the full addresses of NetFlow/IPFIX flows with neither end in the cluster
    /// (no pod, node, Service or user network) instead of summing them per network
    /// (cloud prefix, else /24 or /48): one stored row per address pair and interval,
    /// which on a border router's stream is most of the store and of the CPU.
    #[arg(long, env = "PODFLOW_NETFLOW_KEEP_ADDRESSES")]
    netflow_keep_addresses: bool,

    #[command(flatten)]
    metrics: MetricsArgs,

    #[command(flatten)]
    attribution: AttributionArgs,

    #[command(flatten)]
    http: HttpArgs,
}

/// The agent authentication `--agent-auth` and its companions ask for.
fn agent_auth(a: &ServerArgs) -> anyhow::Result<podflow_server::AgentAuth> {
    use podflow_server::AgentAuth;
    let need = |what: Option<&PathBuf>, flag: &str| {
        what.cloned()
            .ok_or_else(|| anyhow::anyhow!("--agent-auth {}: {flag} is required", a.agent_auth))
    };
    let kubeconfig = a.attribution.kubeconfig.clone();
    Ok(match a.agent_auth.as_str() {
        "none" => AgentAuth::None,
        "shared-token" => AgentAuth::SharedToken(need(a.token_file.as_ref(), "--token-file")?),
        "tokens" => AgentAuth::Tokens(need(a.agent_tokens.as_ref(), "--agent-tokens")?),
        "mtls" => AgentAuth::Mtls,
        "kubernetes" => AgentAuth::Kubernetes {
            audience: a.token_audience.clone(),
            service_account: a.agent_service_account.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--agent-auth kubernetes: --agent-service-account NAMESPACE/NAME is required"
                )
            })?,
            kubeconfig,
        },
        _ if a.tls_client_ca.is_some() => AgentAuth::Mtls,
        _ => match (&a.agent_tokens, &a.token_file) {
            (Some(t), _) => AgentAuth::Tokens(t.clone()),
            (None, Some(t)) => AgentAuth::SharedToken(t.clone()),
            (None, None) => AgentAuth::None,
        },
    })
}

fn server(a: ServerArgs) -> anyhow::Result<()> {
    let tls = a
        .tls_cert
        .clone()
        .zip(a.tls_key.clone())
        .map(|(cert, key)| podflow_server::ServerTls {
            cert,
            key,
            client_ca: a.tls_client_ca.clone(),
        });
    let agent_auth = agent_auth(&a)?;
    let cfg = podflow_server::ServerConfig {
        listen: a.listen,
        grpc_listen: a.grpc_listen,
        data_dir: a.data_dir,
        interval: a.interval,
        retention: a.retention,
        max_keys: a.max_keys,
        enrich: a.attribution.settings()?,
        metrics: a.metrics.config()?,
        tls,
        agent_auth,
        insecure_no_agent_auth: a.insecure_no_agent_auth,
        insecure_plaintext: a.insecure_plaintext,
        agent_rate_limit_mib: a.agent_rate_limit,
        max_pending_rows: a.max_pending_rows,
        http: a.http.settings(),
        netflow_listen: a.netflow_listen,
        netflow_allow: a.netflow_allow.unwrap_or_default(),
        netflow_exporter_labels: a.netflow_exporter_labels,
        netflow_keep_addresses: a.netflow_keep_addresses,
        clickhouse: a.clickhouse_url.map(|url| podflow_store::ClickHouseConfig {
            url,
            database: a.clickhouse_database,
            table: a.clickhouse_table,
            user: a.clickhouse_user,
            password: std::env::var("PODFLOW_CLICKHOUSE_PASSWORD").ok(),
            password_file: a.clickhouse_password_file,
            cluster: a.clickhouse_cluster,
            ttl_days: a.clickhouse_ttl_days,
            ..Default::default()
        }),
        on_demand: podflow_server::OnDemandConfig {
            ports: podflow_probe::Ports {
                udp: a.probe_port,
                tcp: a.probe_port,
                http: a.probe_port.saturating_add(1),
            },
            rate_per_s: a.probe_rate,
            burst: a.probe_burst,
        },
    };
    block_on(|token| async move { podflow_server::serve(cfg, token).await })
}

/// Runs a role on a multi-threaded runtime until SIGINT/SIGTERM.
#[derive(Debug, Args)]
struct FlowsArgs {
    /// Base URL of a running podflow.
    #[arg(long, env = "PODFLOW_URL", default_value = "http://127.0.0.1:9469")]
    url: String,
    /// How far back to look (e.g. 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = duration::parse)]
    since: Duration,
    /// Number of conversations, largest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CostArgs {
    /// Base URL of a running podflow (`run` or `server`).
    #[arg(
        long,
        alias = "url",
        env = "PODFLOW_URL",
        default_value = "http://127.0.0.1:9469"
    )]
    server: String,
    /// How far back to look (e.g. 30d, 7d, 24h).
    #[arg(long, default_value = "30d", value_parser = duration::parse)]
    since: Duration,
    /// What to charge: namespace, workload or label:app.
    #[arg(long, default_value = "namespace", value_parser = ["namespace", "workload", "label:app"])]
    by: String,
    /// table, csv (the API's, as is) or json.
    #[arg(long, value_enum, default_value_t = cost::Format::Table)]
    format: cost::Format,
    /// File holding the bearer token of a server run with --http-token-file.
    #[arg(long, env = "PODFLOW_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

fn cost_cmd(a: CostArgs) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let path = cost::path(now, a.since, &a.by, a.format);
    let body = cost::get(&a.server, &path, a.token_file.as_deref())?;
    match a.format {
        cost::Format::Csv => print!("{body}"),
        cost::Format::Json => {
            let v: serde_json::Value = serde_json::from_str(&body)
                .with_context(|| format!("{}{path}: unexpected JSON", a.server))?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        cost::Format::Table => {
            let v: serde_json::Value = serde_json::from_str(&body)
                .with_context(|| format!("{}{path}: unexpected JSON", a.server))?;
            print!("{}", cost::render(&v)?);
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let _tracking = if args.ensure_tracking {
        Some(tracking::Tracking::ensure(args.conntrack.netns()).context("--ensure-tracking")?)
    } else {
        None
    };
    let cfg = RunConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        interval: args.interval,
        retention: args.retention,
        observer: args.node_name.unwrap_or_else(hostname),
        source: args.conntrack.source(),
        source_options: args.conntrack.options(),
        max_keys: args.max_keys,
        enrich: args.attribution.settings()?,
        metrics: args.metrics.config()?,
        http: args.http.settings(),
        netflow_listen: args.netflow_listen,
        netflow_allow: args.netflow_allow.unwrap_or_default(),
        netflow_exporter_labels: args.netflow_exporter_labels,
        netflow_keep_addresses: args.netflow_keep_addresses,
    };
    block_on(|token| async move { run::run(cfg, token).await })
}

/// `podflow probe`: one probe, its result on stdout; `Ok(false)` when it failed.
fn probe_once(a: ProbeOnceArgs) -> anyhow::Result<bool> {
    use podflow_probe::{Outcome, ProbeKind};
    if let Some(server) = &a.server {
        return probe_via_server(server, &a);
    }
    let port = a.port.unwrap_or(9471);
    if let Some(ns) = &a.netns {
        podflow_conntrack::enter_netns(ns).with_context(|| format!("--netns {}", ns.display()))?;
    }
    let kind = ProbeKind::from_label(&a.kind)
        .ok_or_else(|| anyhow::anyhow!("--type {}: unknown kind", a.kind))?;
    let addr: std::net::IpAddr = match a.target.parse() {
        Ok(ip) => ip,
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(a.target.as_str(), port))
            .with_context(|| format!("resolving {}", a.target))?
            .next()
            .map(|s| s.ip())
            .ok_or_else(|| anyhow::anyhow!("{} resolves to no address", a.target))?,
    };
    let mut cfg = podflow_probe::MeshConfig::default();
    cfg.me.node = "podflow-probe".into();
    cfg.probe.ports = podflow_probe::Ports {
        udp: port,
        tcp: port,
        http: port.saturating_add(1),
    };
    let peer = podflow_probe::Peer::new(&a.target, "", vec![addr]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let r = rt.block_on(podflow_probe::probe_once(&cfg, &peer, kind));
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut rtts = r.rtt_ns.clone();
    rtts.sort_unstable();
    let rtt = match rtts.as_slice() {
        [] => "no RTT".to_string(),
        [one] => format!("rtt {:.3} ms", ms(*one)),
        all => format!(
            "rtt min {:.3} / median {:.3} / max {:.3} ms",
            ms(all[0]),
            ms(all[all.len() / 2]),
            ms(all[all.len() - 1])
        ),
    };
    println!(
        "{} {} {addr}: {}, {} sent, {} lost, {rtt}{}",
        kind.label(),
        a.target,
        r.outcome.label(),
        r.sent,
        r.lost,
        if r.error.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.error)
        }
    );
    Ok(r.outcome == Outcome::Ok)
}

/// `podflow probe NODE --server URL`: the server probes the node from its host.
fn probe_via_server(server: &str, a: &ProbeOnceArgs) -> anyhow::Result<bool> {
    let token = match &a.http_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--http-token-file {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let body = serde_json::json!({ "target": a.target, "type": a.kind }).to_string();
    let (status, text) = flows::post_json(server, "/api/v1/probe", &body, token.as_deref())?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{server}/api/v1/probe answered {status}: {text}"))?;
    if status != 200 {
        let why = v["error"].as_str().unwrap_or(text.as_str());
        anyhow::bail!("{server}/api/v1/probe answered {status}: {why}");
    }
    let a: podflow_api::ondemand::ProbeAnswer = serde_json::from_value(v)
        .with_context(|| format!("{server}/api/v1/probe: unexpected JSON: {text}"))?;
    let ms = |s: f64| s * 1e3;
    let rtt = match (a.rtt_min_seconds, a.rtt_seconds, a.rtt_max_seconds) {
        (Some(lo), Some(mid), Some(hi)) if a.sent > 1 => format!(
            "rtt min {:.3} / median {:.3} / max {:.3} ms",
            ms(lo),
            ms(mid),
            ms(hi)
        ),
        (_, Some(mid), _) => format!("rtt {:.3} ms", ms(mid)),
        _ => "no RTT".to_string(),
    };
    println!(
        "{} {} {} (from {server}): {}, {} sent, {} lost, {rtt}{}",
        a.kind,
        a.target,
        a.address,
        a.outcome,
        a.sent,
        a.lost,
        if a.error.is_empty() {
            String::new()
        } else {
            format!(" ({})", a.error)
        }
    );
    Ok(a.ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.globals.apply();
    let result = match cli.command {
        Command::Run(a) => run(*a),
        Command::Flows(a) => flows::fetch(&a.url, a.since, a.limit).map(|rows| {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
            } else {
                print!("{}", flows::render(&rows));
            }
        }),
        Command::Cost(a) => cost_cmd(a),
        Command::Agent(a) => podflow::cli::agent::run(*a),
        Command::Server(a) => server(*a),
        Command::Sysctl(a) => podflow::cli::sysctl::run(a),
        Command::Probe(a) => match probe_once(a) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(e) => Err(e),
        },
        Command::Demo(a) => demo::run(demo::Options {
            duration: a.duration,
            listen: a.listen,
            data_dir: a.data_dir,
            interval: a.interval,
            traffic_for: a.traffic_for,
            cleanup: a.cleanup,
            impair: a.impair,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podflow: {}", podflow_role::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod prior_usage {
    #[test]
    fn the_flag_reads_cloud_class_direction_and_gb() {
        let p = super::parse_prior_usage("aws:PUBLIC_INTERNET=5120").expect("valid");
        assert_eq!(
            (p.cloud.as_str(), p.class.as_str(), p.gb),
            ("aws", "PUBLIC_INTERNET", 5120.0)
        );
        assert_eq!(p.direction, podflow_enrich::Direction::Out);
        let p = super::parse_prior_usage("gcp:INTRA_REGION:in=1.5").expect("valid");
        assert_eq!((p.direction, p.gb), (podflow_enrich::Direction::In, 1.5));
        for bad in [
            "aws:PUBLIC_INTERNET",
            "aws:EGRESS=1",
            "aws:PUBLIC_INTERNET:up=1",
            "aws:PUBLIC_INTERNET=-1",
            ":PUBLIC_INTERNET=1",
        ] {
            let e = super::parse_prior_usage(bad).expect_err(bad);
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod docs {
    use clap::CommandFactory;

    /// The configuration reference, rendered from the clap definitions (the doc comments
    /// above are the reference text).
    fn config_reference() -> String {
        let mut out = String::from(
            "# Configuration reference\n\n\
             Every flag of every subcommand, with its environment variable and default.\n\
             Generated from the code by `UPDATE_DOCS=1 cargo test -p podflow docs`; a test \
             fails when this page and the code disagree.\n",
        );
        let cli = super::Cli::command();
        let global: Vec<_> = cli
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .collect();
        let section = |out: &mut String, title: &str, about: String, args: &[&clap::Arg]| {
            out.push_str(&format!(
                "\n## {title}\n\n{about}\n\n| flag | env | default | meaning |\n|---|---|---|---|\n"
            ));
            for a in args {
                let Some(long) = a.get_long() else { continue };
                let env = a
                    .get_env()
                    .map(|e| format!("`{}`", e.to_string_lossy()))
                    .unwrap_or_else(|| "—".into());
                let def: Vec<_> = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                let def = if def.is_empty() {
                    "—".into()
                } else {
                    format!("`{}`", def.join(","))
                };
                let help = a
                    .get_long_help()
                    .or(a.get_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                out.push_str(&format!(
                    "| `--{long}` | {env} | {def} | {} |\n",
                    help.replace('\n', " ")
                ));
            }
        };
        section(
            &mut out,
            "Global flags",
            "Accepted by every subcommand.".into(),
            &global,
        );
        for sub in cli.get_subcommands() {
            let args: Vec<_> = sub.get_arguments().filter(|a| !a.is_global_set()).collect();
            let about = sub
                .get_long_about()
                .or(sub.get_about())
                .map(|h| h.to_string())
                .unwrap_or_default();
            section(
                &mut out,
                &format!("`podflow {}`", sub.get_name()),
                about,
                &args,
            );
        }
        out
    }

    #[test]
    fn config_reference_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md");
        let want = config_reference();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).expect("write docs/config.md");
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/config.md is out of date: run UPDATE_DOCS=1 cargo test -p podflow docs"
        );
    }
}
