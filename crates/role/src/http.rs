//! The HTTP server every role runs: optional TLS, the API's token and limits
//! ([`podflow_api::HttpPolicy`]), and a time limit on reading a request's headers so
//! slow clients (slowloris) hold no connection for long.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use podflow_api::{AppState, HttpPolicy, QueryLimits, TokenFile, router_with};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::RoleError;
use crate::tls::{ReloadingTls, TlsFiles};

/// How long a client may take to send a request's headers (and a TLS handshake).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(5);

/// Certificate and key of the HTTP listener (PEM files).
#[derive(Debug, Clone)]
pub struct HttpTls {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Settings of the HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// File holding the bearer token the data endpoints require (`None`: open).
    pub token_file: Option<PathBuf>,
    /// The token guards `/metrics` too.
    pub token_protects_metrics: bool,
    /// TLS; `None` = plain HTTP.
    pub tls: Option<HttpTls>,
    /// Query time limit, lanes, admission.
    pub limits: QueryLimits,
    /// Time a client may take to send a request's headers.
    pub header_read_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            token_file: None,
            token_protects_metrics: false,
            tls: None,
            limits: QueryLimits::default(),
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// The listener's TLS, reloading its files when they change (HTTP/1.1).
pub fn reloading_tls(tls: &HttpTls) -> Result<ReloadingTls, RoleError> {
    ReloadingTls::new(
        TlsFiles {
            cert: (tls.cert.clone(), "--http-tls-cert"),
            key: (tls.key.clone(), "--http-tls-key"),
            client_ca: None,
            alpn: vec![b"http/1.1".to_vec()],
        },
        &crate::tls::HTTP_RELOADS,
    )
}

/// Serves the HTTP endpoints of `state` on `listen` under `settings` until `shutdown`.
pub async fn serve_http(
    listen: SocketAddr,
    state: Arc<AppState>,
    settings: HttpSettings,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), RoleError>>, RoleError> {
    let token = match &settings.token_file {
        Some(p) => {
            Some(Arc::new(TokenFile::open(p).map_err(|e| {
                RoleError::Config(format!("--http-token-file {e}"))
            })?))
        }
        None => None,
    };
    let tls = settings
        .tls
        .as_ref()
        .map(reloading_tls)
        .transpose()?
        .map(Arc::new);
    let policy = HttpPolicy {
        token,
        token_protects_metrics: settings.token_protects_metrics,
        limits: settings.limits.clone(),
    };
    let app = router_with(state, &policy);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RoleError::Listen {
            addr: listen,
            source,
        })?;
    let header_timeout = settings.header_read_timeout;
    Ok(tokio::spawn(async move {
        let conns = TaskTracker::new();
        loop {
            let (tcp, _peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment, go on.
                        tracing::warn!(listen = %listen, error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let svc = TowerToHyperService::new(app.clone());
            let tls = tls.clone();
            let stop = shutdown.clone();
            conns.spawn(async move {
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                match tls {
                    None => serve_conn(http.serve_connection(TokioIo::new(tcp), svc), stop).await,
                    Some(tls) => {
                        let acceptor = tls.acceptor();
                        match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => {
                                serve_conn(http.serve_connection(TokioIo::new(s), svc), stop).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        conns.close();
        if tokio::time::timeout(DRAIN, conns.wait()).await.is_err() {
            tracing::warn!(listen = %listen, "HTTP connections still open at shutdown: closing them");
        }
        Ok(())
    }))
}

/// Serves one connection; on shutdown, finishes the request in flight and closes.
async fn serve_conn<I, S>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    stop: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
