//! The agent's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use podflow_conntrack::{SourceConfig, SourceOptions};

/// TLS settings of the connection to the server.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA that signed the server's certificate (PEM); `None` = the system roots are not
    /// used, so set it for https.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), when the server asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name to verify the server's certificate against (default: the URL's host).
    pub domain: Option<String>,
}

/// Settings of `podflow agent`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server URL (`http://host:9470` or `https://...`).
    pub server: String,
    /// This agent's id (default: the node name).
    pub agent_id: String,
    /// This node's name.
    pub node: String,
    /// HTTP listen address (metrics, health).
    pub listen: SocketAddr,
    /// Directory of the durable buffer (locked while the agent runs).
    pub data_dir: PathBuf,
    /// Dump interval.
    pub interval: Duration,
    /// The conntrack source.
    pub source: SourceConfig,
    /// Further conntrack options: NEW events, reliable delivery, a dump CPU budget.
    pub source_options: SourceOptions,
    /// TLS.
    pub tls: Option<ClientTls>,
    /// File holding the bearer token, read afresh for every connection (projected
    /// service-account tokens rotate).
    pub token_file: Option<PathBuf>,
    /// Memory for unacked batches (a cache of the log; the only copy when the disk fails).
    pub max_memory: usize,
    /// Size bound of the buffer's log on disk.
    pub max_spill: u64,
    /// Reconnect after this long, so agents spread over server replicas.
    pub max_connection_age: Duration,
    /// The HTTP listener (metrics, health): token, TLS, limits.
    pub http: podflow_role::HttpSettings,
    /// NetFlow/IPFIX listen addresses (none: no listener).
    pub netflow_listen: Vec<SocketAddr>,
    /// The exporters whose datagrams are decoded (`--netflow-allow`; default: all).
    pub netflow_allow: podflow_role::netflow::AllowList,
    /// Node-to-node probes (none: off).
    pub probes: Option<crate::probes::ProbeSettings>,
}
