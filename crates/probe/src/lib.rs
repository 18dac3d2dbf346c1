//! Node-to-node connectivity probes.
//!
//! Pure cores: the probe packet ([`wire`]), the DNS codec ([`dns`]), ICMP echo
//! ([`icmp`]), burst bookkeeping ([`burst`]), peer selection ([`peers`]), interval
//! stats ([`stats`]) and Prometheus rendering ([`metrics`]). Thin tokio shells around
//! them: the [`responder`], the [`prober`] functions and the [`mesh`] runner.

pub mod burst;
pub mod dns;
mod error;
pub mod icmp;
pub mod mesh;
pub mod metrics;
pub mod peers;
pub mod prober;
pub mod responder;
pub mod result;
pub mod stats;
mod sys;
pub mod tsock;
pub mod wire;

pub use error::{DnsError, Error, WireError};
pub use result::{Outcome, ProbeKind, ProbeResult};

pub use mesh::{DnsTarget, Mesh, MeshConfig, MeshStats, probe_once};
pub use metrics::{KCONMON_METRICS, METRICS, MetricDef, Metrics, MetricsConfig};
pub use peers::{Peer, PeerState, TopologyConfig};
pub use prober::{Me, ProbeConfig};
pub use responder::{Ports, Responder, ResponderConfig, ResponderStats};
pub use stats::{Aggregator, IntervalStats, PairKey, PairStats};
