//! Where the handlers read flows: the writer's store, through a connection of its own,
//! always on a blocking thread.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use podflow_store::query::{GroupQuery, GroupRow};
use podflow_store::{ClickHouseStore, FlowStore, SqliteStore, StoreError};

use crate::AppState;

/// Where the HTTP handlers read flows: the writer's store, through a connection of its own.
#[derive(Debug)]
pub enum StoreReader {
    /// No store: the agent role.
    None,
    /// The embedded store's file; a read-only connection is opened on first use.
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The connection, once opened.
        conn: Mutex<Option<SqliteStore>>,
    },
    /// ClickHouse, through a handle beside the writer's ([`ClickHouseStore::reader`]).
    ClickHouse(Box<Mutex<ClickHouseStore>>),
}

impl StoreReader {
    /// Reads the embedded store at `path`.
    pub fn sqlite(path: PathBuf) -> StoreReader {
        StoreReader::Sqlite {
            path,
            conn: Mutex::new(None),
        }
    }

    /// Reads ClickHouse through `store` (call from a blocking thread).
    pub fn clickhouse(store: ClickHouseStore) -> StoreReader {
        StoreReader::ClickHouse(Box::new(Mutex::new(store)))
    }

    /// Runs `f` on the store (blocking); `None` without a store.
    fn run<T>(
        &self,
        f: impl FnOnce(&dyn FlowStore) -> Result<T, StoreError>,
    ) -> Option<Result<T, String>> {
        let poisoned = || "store reader lock poisoned".to_string();
        Some(match self {
            StoreReader::None => return None,
            StoreReader::Sqlite { path, conn } => (|| {
                let mut guard = conn.lock().map_err(|_| poisoned())?;
                if guard.is_none() {
                    *guard = Some(SqliteStore::open_reader(path).map_err(|e| e.to_string())?);
                }
                let reader = guard.as_ref().ok_or("no reader")?;
                f(reader).map_err(|e| e.to_string())
            })(),
            StoreReader::ClickHouse(store) => match store.lock() {
                Ok(s) => f(&*s).map_err(|e| e.to_string()),
                Err(_) => Err(poisoned()),
            },
        })
    }
}

/// Runs `f` on the state's store on a blocking thread; the error answer is 404 where
/// there is no store (an agent) and 500 when the store fails.
pub(crate) async fn with_store<T: Send + 'static>(
    s: &Arc<AppState>,
    f: impl FnOnce(&dyn FlowStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    let st = Arc::clone(s);
    let error =
        |status, e: String| (status, Json(serde_json::json!({ "error": e }))).into_response();
    match tokio::task::spawn_blocking(move || st.store.run(f)).await {
        Ok(Some(Ok(v))) => Ok(v),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "this process is an agent: flows are served by the server".into(),
        )),
        Ok(Some(Err(e))) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Runs a grouped query on the store's reader connection.
pub(crate) async fn group(s: &Arc<AppState>, q: GroupQuery) -> Result<Vec<GroupRow>, Response> {
    with_store(s, move |st| st.group(&q)).await
}
