//! Bearer-token access to the API: the token lives in a file (a mounted Secret) that is
//! read again whenever it changes, so rotating it needs no restart; the comparison takes
//! the same time wherever the presented token differs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// What tells a changed file from the one read: modification time, size, inode.
type Stamp = (i64, i64, u64, u64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    (m.mtime(), m.mtime_nsec(), m.len(), m.ino())
}

/// The bearer token clients must send, from a file.
pub struct TokenFile {
    path: PathBuf,
    current: Mutex<(Stamp, Vec<u8>)>,
}

impl std::fmt::Debug for TokenFile {
    // Never the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<(Stamp, Vec<u8>), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{}: a token is one word (no spaces or control characters)",
            path.display()
        ));
    }
    Ok((stamp(&m), token.as_bytes().to_vec()))
}

impl TokenFile {
    /// Reads the token in `path` (one word; surrounding whitespace is ignored).
    pub fn open(path: &Path) -> Result<TokenFile, String> {
        Ok(TokenFile {
            path: path.to_path_buf(),
            current: Mutex::new(read(path)?),
        })
    }

    /// Whether `presented` is the token, reading the file again if it changed. A file
    /// that cannot be read (mid-rotation) keeps the last token, with a warning.
    pub fn check(&self, presented: &[u8]) -> bool {
        let Ok(mut cur) = self.current.lock() else {
            return false;
        };
        match std::fs::metadata(&self.path) {
            Ok(m) if stamp(&m) != cur.0 => match read(&self.path) {
                Ok(new) => {
                    tracing::info!(file = %self.path.display(), "HTTP API token file changed: using the new token");
                    *cur = new;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP API token file unreadable: keeping the last token")
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "HTTP API token file unreadable: keeping the last token")
            }
        }
        bool::from(cur.1.as_slice().ct_eq(presented))
    }
}

/// Middleware: 401 unless the request carries `Authorization: Bearer <token>`.
pub(crate) async fn require_token(
    State(token): State<Arc<TokenFile>>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|p| token.check(p.as_bytes())) {
        return next.run(req).await;
    }
    crate::limits::STATS
        .unauthorized
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "error": "a valid bearer token is required" })),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"podflow\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_again_when_the_file_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("token");
        std::fs::write(&p, "first-token\n").expect("write");
        let t = TokenFile::open(&p).expect("open");
        assert!(t.check(b"first-token"));
        assert!(!t.check(b"first-toke"));
        assert!(!t.check(b""));
        // Rotation the way a Secret volume does it: a new file renamed over the old.
        let tmp = dir.path().join("token.new");
        std::fs::write(&tmp, "second-token").expect("write");
        std::fs::rename(&tmp, &p).expect("rename");
        assert!(t.check(b"second-token"));
        assert!(!t.check(b"first-token"));
        // Gone mid-rotation: the last token still works.
        std::fs::remove_file(&p).expect("rm");
        assert!(t.check(b"second-token"));
        std::fs::write(&p, " \n").expect("write");
        assert!(
            TokenFile::open(&p).is_err(),
            "an empty token file is refused"
        );
        assert!(
            t.check(b"second-token"),
            "an empty file keeps the last token"
        );
    }
}
