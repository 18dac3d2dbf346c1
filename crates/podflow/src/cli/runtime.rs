//! What every role's process shares: logging, the async runtime, the shutdown signal.

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

/// The flags every subcommand takes.
#[derive(Debug, Args)]
pub struct Globals {
    /// Log format.
    #[arg(long, global = true, env = "PODFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `podflow_conntrack=debug`).
    #[arg(long, global = true, env = "PODFLOW_LOG", default_value = "info")]
    pub log: String,

    /// Threads of the async runtime (0: one per core). Tie it to the container's CPU
    /// request (the Helm chart does): more threads than the CPU the pod may use only adds
    /// context switches.
    #[arg(
        long,
        global = true,
        env = "PODFLOW_WORKER_THREADS",
        default_value_t = 0
    )]
    pub worker_threads: usize,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl Globals {
    /// Installs the logger and remembers the runtime's thread count for [`block_on`].
    pub fn apply(&self) {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let b = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Human => b.init(),
            LogFormat::Json => b.json().init(),
        }
        WORKER_THREADS.store(self.worker_threads, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `--worker-threads`, for [`block_on`].
static WORKER_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs a role on the async runtime until it ends or SIGTERM/Ctrl-C cancels it.
pub fn block_on<F, Fut>(role: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), podflow_role::RoleError>>,
{
    let mut b = tokio::runtime::Builder::new_multi_thread();
    let threads = WORKER_THREADS.load(std::sync::atomic::Ordering::Relaxed);
    if threads > 0 {
        b.worker_threads(threads);
    }
    let rt = b.enable_all().build()?;
    rt.block_on(async move {
        let token = CancellationToken::new();
        tokio::spawn(shutdown_signal(token.clone()));
        role(token).await
    })?;
    Ok(())
}

/// This host's name (`localhost` when it has none).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Cancels `token` at SIGTERM or Ctrl-C.
pub async fn shutdown_signal(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: flushing the last interval");
    token.cancel();
}

/// `--netflow-allow`: the CIDRs, or the entry that is wrong.
pub fn parse_allow(s: &str) -> Result<podflow_role::netflow::AllowList, String> {
    podflow_role::netflow::AllowList::parse(s).map_err(|e| e.to_string())
}
