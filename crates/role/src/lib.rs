//! What every podflow role composes: its errors, its HTTP endpoints, the embedded store,
//! the metrics registry and readiness, and the NetFlow intake.

pub mod error;
pub mod health;
pub mod http;
pub mod netflow;
pub mod serve;
pub mod telemetry;
pub mod tls;

pub use error::{RoleError, read_file};
pub use health::Health;
pub use http::{HttpSettings, HttpTls, serve_http};
pub use serve::{data_dir, open_store};
pub use telemetry::{AgentStats, METRICS, Outcome, Refusal, Registry};
