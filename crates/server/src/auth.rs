//! Who an agent is: each stream is authenticated once, when it opens, and bound to a
//! node; the intake then accepts its batches only for that node and lets it advance only
//! its own marks.
//!
//! | mode | an agent proves | bound to |
//! |---|---|---|
//! | `kubernetes` | its pod's projected service-account token (audience `--token-audience`), checked with the TokenReview API | the token's node claim (Kubernetes 1.30+) |
//! | `tokens` | a token from `--agent-tokens` (`<node> <token>` lines) | that line's node |
//! | `mtls` | a client certificate signed by `--tls-client-ca` | its CN (or first DNS name) |
//! | `shared-token` | the one token of `--token-file` | nothing (any node: legacy) |
//! | `none` | nothing (only with `--insecure-no-agent-auth`, or on a loopback address) | nothing |

#[cfg(feature = "kube")]
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tonic::Status;
use tonic::metadata::MetadataMap;

/// How agents authenticate (see the module's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAuth {
    /// Nothing.
    None,
    /// One bearer token for every agent, from a file (not bound to a node).
    SharedToken(PathBuf),
    /// A token per node, from a file of `<node> <token>` lines.
    Tokens(PathBuf),
    /// A client certificate naming the node.
    Mtls,
    /// A projected service-account token checked with the TokenReview API.
    Kubernetes {
        /// The audience agents' tokens are issued for.
        audience: String,
        /// The agents' service account, `namespace/name`; other accounts are refused.
        service_account: String,
        /// Kubeconfig (default: in-cluster).
        kubeconfig: Option<PathBuf>,
    },
}

impl AgentAuth {
    /// The mode's name, for logs and the `podflow_server_agent_auth_info` metric.
    pub fn name(&self) -> &'static str {
        match self {
            AgentAuth::None => "none",
            AgentAuth::SharedToken(_) => "shared-token",
            AgentAuth::Tokens(_) => "tokens",
            AgentAuth::Mtls => "mtls",
            AgentAuth::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// Who a stream's agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node it may write for; `None`: not bound (shared token, none), or known only
    /// through its pod.
    pub node: Option<String>,
    /// Its pod `(namespace, name)`, when the credentials name the pod but not the node
    /// (service-account tokens before Kubernetes 1.30): the node is the pod's.
    pub pod: Option<(String, String)>,
    /// How it was established (the mode's name).
    pub how: &'static str,
}

/// Compares in time independent of where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A file re-read when it changes (tokens rotate without a restart).
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    state: Mutex<Read>,
}

/// What a [`Watched`] file held when last read.
#[derive(Debug)]
struct Read {
    /// Its mtime and size then.
    stamp: Option<(SystemTime, u64)>,
    text: String,
    /// When it was last looked at.
    checked: Instant,
}

impl Watched {
    fn new(path: PathBuf) -> Watched {
        Watched {
            path,
            // Never read: the first look reads it.
            state: Mutex::new(Read {
                stamp: None,
                text: String::new(),
                checked: Instant::now(),
            }),
        }
    }

    /// The file's text, re-read at most every 2 s when its mtime or size changed.
    fn text(&self) -> Result<String, String> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| "token file lock".to_string())?;
        if st.checked.elapsed() > Duration::from_secs(2) || st.stamp.is_none() {
            st.checked = Instant::now();
            let meta = std::fs::metadata(&self.path)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if st.stamp != Some(stamp) {
                st.text = std::fs::read_to_string(&self.path)
                    .map_err(|e| format!("{}: {e}", self.path.display()))?;
                st.stamp = Some(stamp);
            }
        }
        Ok(st.text.clone())
    }
}

/// The node a per-node tokens file gives `token` (`<node> <token>` lines, `#` comments).
fn node_of(tokens: &str, token: &str) -> Option<String> {
    let mut found = None;
    for line in tokens.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        if let (Some(node), Some(t)) = (parts.next(), parts.next())
            && ct_eq(t.as_bytes(), token.as_bytes())
        {
            // Every line is compared: the time does not tell which matched.
            found = Some(node.to_string());
        }
    }
    found
}

/// The node a client certificate names: its subject CN, else its first DNS name.
pub fn node_of_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}

fn bearer(meta: &MetadataMap) -> Option<&str> {
    meta.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Reviews kept: a valid one for this long, and while the API server is unreachable
/// for up to [`STALE_OK`] (an outage does not lock agents out).
#[cfg(feature = "kube")]
const REVIEW_FRESH: Duration = Duration::from_secs(300);
#[cfg(feature = "kube")]
const STALE_OK: Duration = Duration::from_secs(3600);
/// Tokens whose reviews are remembered.
/// How long a review may take (the client's own retries included) before the agent is
/// told to come back later.
#[cfg(feature = "kube")]
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
#[cfg(feature = "kube")]
const MAX_REVIEWS: usize = 20_000;

/// Authenticates streams.
#[derive(Debug)]
pub struct Authenticator {
    mode: AgentAuth,
    file: Option<Watched>,
    #[cfg(feature = "kube")]
    reviewer: Option<podflow_inventory::kube::TokenReviewer>,
    /// Reviews by the token's hash under a per-process random key (no one can aim a
    /// token at another's entry).
    #[cfg(feature = "kube")]
    reviews: Mutex<HashMap<u64, (Identity, Instant)>>,
    #[cfg(feature = "kube")]
    keyed: std::collections::hash_map::RandomState,
}

impl Authenticator {
    /// Sets up `mode` (Kubernetes: a client for the TokenReview API).
    pub async fn new(mode: AgentAuth) -> Result<Authenticator, String> {
        let file = match &mode {
            AgentAuth::SharedToken(p) | AgentAuth::Tokens(p) => {
                let w = Watched::new(p.clone());
                w.text()?;
                Some(w)
            }
            _ => None,
        };
        #[cfg(feature = "kube")]
        let reviewer = match &mode {
            AgentAuth::Kubernetes { kubeconfig, .. } => {
                Some(podflow_inventory::kube::TokenReviewer::new(
                    podflow_inventory::kube::client(kubeconfig.as_deref())
                        .await
                        .map_err(|e| e.to_string())?,
                ))
            }
            _ => None,
        };
        #[cfg(not(feature = "kube"))]
        if matches!(mode, AgentAuth::Kubernetes { .. }) {
            return Err("--agent-auth kubernetes: this podflow was built without the Kubernetes API client (feature `kube`)".into());
        }
        Ok(Authenticator {
            mode,
            file,
            #[cfg(feature = "kube")]
            reviewer,
            #[cfg(feature = "kube")]
            reviews: Mutex::new(HashMap::new()),
            #[cfg(feature = "kube")]
            keyed: std::collections::hash_map::RandomState::new(),
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> &AgentAuth {
        &self.mode
    }

    /// Who opened a stream with these metadata and client certificates.
    pub async fn identify(
        &self,
        meta: &MetadataMap,
        certs: Option<&[tonic::transport::CertificateDer<'static>]>,
    ) -> Result<Identity, Status> {
        let how = self.mode.name();
        let token =
            || bearer(meta).ok_or_else(|| Status::unauthenticated("a bearer token is required"));
        match &self.mode {
            AgentAuth::None => Ok(Identity {
                node: None,
                pod: None,
                how,
            }),
            AgentAuth::SharedToken(_) => {
                let want = self.file_text()?;
                if ct_eq(token()?.as_bytes(), want.trim().as_bytes()) {
                    Ok(Identity {
                        node: None,
                        pod: None,
                        how,
                    })
                } else {
                    Err(Status::unauthenticated("wrong bearer token"))
                }
            }
            AgentAuth::Tokens(_) => {
                let tokens = self.file_text()?;
                match node_of(&tokens, token()?) {
                    Some(node) => Ok(Identity {
                        node: Some(node),
                        pod: None,
                        how,
                    }),
                    None => Err(Status::unauthenticated("unknown agent token")),
                }
            }
            AgentAuth::Mtls => {
                let cert = certs
                    .and_then(|c| c.first())
                    .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
                let node = node_of_certificate(cert.as_ref()).ok_or_else(|| {
                    Status::unauthenticated("the client certificate names no node (CN or DNS name)")
                })?;
                Ok(Identity {
                    node: Some(node),
                    pod: None,
                    how,
                })
            }
            AgentAuth::Kubernetes {
                audience,
                service_account,
                ..
            } => self.review(token()?, audience, service_account).await,
        }
    }

    fn file_text(&self) -> Result<String, Status> {
        let f = self
            .file
            .as_ref()
            .ok_or_else(|| Status::internal("no token file"))?;
        f.text().map_err(|e| {
            tracing::error!(error = %e, "agent token file unreadable");
            Status::unavailable("the server cannot read its agent tokens")
        })
    }

    #[cfg(not(feature = "kube"))]
    async fn review(&self, _: &str, _: &str, _: &str) -> Result<Identity, Status> {
        Err(Status::unavailable("no Kubernetes API client"))
    }

    #[cfg(feature = "kube")]
    async fn review(
        &self,
        token: &str,
        audience: &str,
        service_account: &str,
    ) -> Result<Identity, Status> {
        use std::hash::BuildHasher;
        let key = self.keyed.hash_one(token);
        let cached = self.reviews.lock().ok().and_then(|r| r.get(&key).cloned());
        if let Some((id, at)) = &cached
            && at.elapsed() < REVIEW_FRESH
        {
            return Ok(id.clone());
        }
        let reviewer = self
            .reviewer
            .as_ref()
            .ok_or_else(|| Status::internal("no TokenReview client"))?;
        let outcome = tokio::time::timeout(REVIEW_TIMEOUT, reviewer.review(token, audience))
            .await
            .unwrap_or_else(|_| {
                Err(podflow_inventory::InventoryError::Kube {
                    message: format!("TokenReview: no answer within {REVIEW_TIMEOUT:?}"),
                })
            });
        let reviewed = match outcome {
            Ok(r) => r,
            Err(e) => {
                // The API server is away: a token reviewed within the hour still counts.
                tracing::warn!(error = %e, "TokenReview failed");
                return match cached {
                    Some((id, at)) if at.elapsed() < STALE_OK => Ok(id),
                    _ => Err(Status::unavailable("cannot review the agent's token now")),
                };
            }
        };
        let want_user = match service_account.split_once('/') {
            Some((ns, name)) => format!("system:serviceaccount:{ns}:{name}"),
            None => service_account.to_string(),
        };
        if !reviewed.authenticated || reviewed.username != want_user {
            return Err(Status::unauthenticated(format!(
                "token refused: {}",
                reviewed
                    .error
                    .unwrap_or_else(|| format!("not {want_user}'s"))
            )));
        }
        if reviewed.node.is_none() && reviewed.pod.is_none() {
            return Err(Status::unauthenticated(
                "the token names neither a node nor a pod (a projected service-account token is needed, not a long-lived secret)",
            ));
        }
        let id = Identity {
            node: reviewed.node,
            pod: reviewed.pod,
            how: "kubernetes",
        };
        if let Ok(mut r) = self.reviews.lock() {
            if r.len() >= MAX_REVIEWS {
                r.retain(|_, (_, at)| at.elapsed() < STALE_OK);
                if r.len() >= MAX_REVIEWS {
                    r.clear();
                }
            }
            r.insert(key, (id.clone(), Instant::now()));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_node_tokens_name_their_node_and_nothing_else() {
        let file = "# node token\nnode-a s3cret-a\n\nnode-b s3cret-b extra\n";
        assert_eq!(node_of(file, "s3cret-b").as_deref(), Some("node-b"));
        assert_eq!(node_of(file, "s3cret-a").as_deref(), Some("node-a"));
        assert_eq!(node_of(file, "s3cret"), None);
        assert_eq!(node_of(file, ""), None);
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }
}
