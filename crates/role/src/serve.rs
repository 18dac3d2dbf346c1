//! What `run` and `server` open: the data directory and the embedded store.

use std::path::{Path, PathBuf};

use podflow_store::SqliteStore;

use crate::error::RoleError;

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
