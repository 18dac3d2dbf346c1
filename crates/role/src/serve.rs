//! What every role opens: its HTTP endpoints and, for `run` and `server`, the embedded
//! store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use podflow_api::AppState;
use podflow_store::SqliteStore;
use tokio_util::sync::CancellationToken;

use crate::error::RoleError;

/// Serves the HTTP endpoints of `state` on `listen` until `shutdown`, under the
/// process's [`crate::http::http_settings`].
pub async fn serve_http(
    listen: SocketAddr,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), RoleError>>, RoleError> {
    crate::http::serve_http_with(listen, state, crate::http::http_settings(), shutdown).await
}

/// Creates `data_dir` if needed.
pub fn data_dir(data_dir: &Path) -> Result<(), RoleError> {
    std::fs::create_dir_all(data_dir).map_err(|source| RoleError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })
}

/// Opens the embedded store under `data_dir` (created if needed).
pub fn open_store(data_dir: &Path) -> Result<(SqliteStore, PathBuf), RoleError> {
    self::data_dir(data_dir)?;
    let path = data_dir.join("podflow.sqlite");
    Ok((SqliteStore::open(&path)?, path))
}
