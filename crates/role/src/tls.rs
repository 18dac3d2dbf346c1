//! TLS for the roles' listeners, with certificates that reload without a restart.
//!
//! cert-manager and the chart's generated Secrets rotate the files under a running pod
//! (a Secret volume swaps them atomically). Each handshake asks [`ReloadingTls::acceptor`]
//! for the acceptor; at most once a second it compares the files' modification times and
//! sizes with those it loaded, and builds a new acceptor when they changed. A file that
//! does not parse (half written, a key that does not match) keeps the previous acceptor
//! in force, logged and counted, and is tried again at the next change.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::{RoleError, read_file};

/// How often the files are looked at, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The PEM files of a listener and the flags that named them (for errors).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, and its flag.
    pub cert: (PathBuf, &'static str),
    /// Private key, and its flag.
    pub key: (PathBuf, &'static str),
    /// CA whose certificates clients must present (`None`: no client certificates).
    pub client_ca: Option<(PathBuf, &'static str)>,
    /// ALPN protocols offered (`h2` for gRPC, `http/1.1` for the HTTP API).
    pub alpn: Vec<Vec<u8>>,
}

/// Reloads and rebuilds so far, per listener.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// New certificates taken into use.
    pub reloads: AtomicU64,
    /// Changed files that did not load (the previous ones stay in force).
    pub errors: AtomicU64,
}

impl ReloadStats {
    const fn new() -> ReloadStats {
        ReloadStats {
            reloads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

/// The HTTP listeners' reloads (counted for the whole process: one series per listener kind).
pub static HTTP_RELOADS: ReloadStats = ReloadStats::new();
/// The server's gRPC listener's reloads.
pub static GRPC_RELOADS: ReloadStats = ReloadStats::new();

type Stamp = Option<(SystemTime, u64)>;

struct Current {
    acceptor: TlsAcceptor,
    stamps: Vec<Stamp>,
    checked: Instant,
}

/// A TLS acceptor that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    current: Mutex<Current>,
    stats: &'static ReloadStats,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn config_err(flag: &str, path: &Path, e: impl std::fmt::Display) -> RoleError {
    RoleError::Config(format!("{flag} {}: {e}", path.display()))
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.0.as_path(), self.key.0.as_path()];
        v.extend(self.client_ca.as_ref().map(|c| c.0.as_path()));
        v
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.paths().into_iter().map(stamp).collect()
    }

    /// Reads the files and builds an acceptor (ring, TLS 1.2 and 1.3).
    pub fn acceptor(&self) -> Result<TlsAcceptor, RoleError> {
        let (cert_path, cert_flag) = (&self.cert.0, self.cert.1);
        let pem = read_file(cert_flag, cert_path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config_err(cert_flag, cert_path, e))?;
        if certs.is_empty() {
            return Err(config_err(
                cert_flag,
                cert_path,
                "no certificate in the file",
            ));
        }
        let (key_path, key_flag) = (&self.key.0, self.key.1);
        let pem = read_file(key_flag, key_path)?;
        let key =
            PrivateKeyDer::from_pem_slice(&pem).map_err(|e| config_err(key_flag, key_path, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| RoleError::Config(format!("TLS: {e}")))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some((ca_path, ca_flag)) => {
                let pem = read_file(ca_flag, ca_path)?;
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| config_err(ca_flag, ca_path, e))?;
                    roots.add(c).map_err(|e| config_err(ca_flag, ca_path, e))?;
                }
                if roots.is_empty() {
                    return Err(config_err(ca_flag, ca_path, "no certificate in the file"));
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .map_err(|e| config_err(ca_flag, ca_path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| config_err(key_flag, key_path, e))?;
        cfg.alpn_protocols = self.alpn.clone();
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }
}

impl ReloadingTls {
    /// Loads `files` (an error names the file and its flag); reloads count in `stats`.
    pub fn new(files: TlsFiles, stats: &'static ReloadStats) -> Result<ReloadingTls, RoleError> {
        let stamps = files.stamps();
        let acceptor = files.acceptor()?;
        Ok(ReloadingTls {
            files,
            current: Mutex::new(Current {
                acceptor,
                stamps,
                checked: Instant::now(),
            }),
            stats,
        })
    }

    /// The acceptor for a new connection: rebuilt first if the files changed.
    pub fn acceptor(&self) -> TlsAcceptor {
        // Nothing panics while the lock is held; a poisoned lock's state is still whole.
        let mut cur = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cur.checked.elapsed() >= CHECK_EVERY {
            cur.checked = Instant::now();
            let stamps = self.files.stamps();
            if stamps != cur.stamps {
                cur.stamps = stamps;
                match self.files.acceptor() {
                    Ok(a) => {
                        cur.acceptor = a;
                        self.stats.reloads.fetch_add(1, Relaxed);
                        tracing::info!(cert = %self.files.cert.0.display(), "TLS certificates reloaded");
                    }
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, "TLS files changed but did not load; the previous certificates stay in force");
                    }
                }
            }
        }
        cur.acceptor.clone()
    }
}

/// A TCP connection after its TLS handshake.
pub type TlsTcpStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
