//! Where the handlers read flows: the writer's store through connections of their own,
//! always on a blocking thread and within the request's limits ([`crate::limits`]).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use axum::response::Response;
use podflow_store::query::{GroupQuery, GroupRow};
use podflow_store::{ClickHouseStore, FlowStore, ReadPool, StoreError};

use crate::limits::{Cancel, Failure, Lane, bounded};

/// Where the HTTP handlers read flows: the writer's store, through connections of its own.
#[derive(Debug)]
pub enum StoreReader {
    /// No store: the agent role.
    None,
    /// The embedded store's file, read through a pool of read-only connections (WAL
    /// lets them run side by side and beside the writer).
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The connections.
        pool: ReadPool,
    },
    /// ClickHouse, through a handle beside the writer's ([`ClickHouseStore::reader`]).
    ClickHouse(Box<Mutex<ClickHouseStore>>),
}

impl StoreReader {
    /// Reads the embedded store at `path`.
    pub fn sqlite(path: PathBuf) -> StoreReader {
        StoreReader::Sqlite {
            pool: ReadPool::new(&path),
            path,
        }
    }

    /// Reads ClickHouse through `store` (call from a blocking thread).
    pub fn clickhouse(store: ClickHouseStore) -> StoreReader {
        StoreReader::ClickHouse(Box::new(Mutex::new(store)))
    }

    /// Size of the embedded store's write-ahead log, bytes (`None`: not SQLite).
    pub fn wal_bytes(&self) -> Option<u64> {
        match self {
            StoreReader::Sqlite { pool, .. } => Some(pool.wal_bytes()),
            _ => None,
        }
    }

    /// Runs `f` on the store (blocking), stoppable through `cancel` and bounded by
    /// `deadline`.
    fn run<T>(
        &self,
        deadline: Instant,
        cancel: &Cancel,
        f: impl FnOnce(&dyn FlowStore) -> Result<T, StoreError>,
    ) -> Result<T, Failure> {
        let store = |e: StoreError| Failure::Store(e.to_string());
        match self {
            StoreReader::None => Err(Failure::NotServed(
                "this process is an agent: flows are served by the server",
            )),
            StoreReader::Sqlite { pool, .. } => {
                let conn = pool.get().map_err(store)?;
                if !cancel.arm(conn.interrupter()) {
                    return Err(Failure::Cancelled);
                }
                let r = f(&*conn);
                cancel.disarm();
                r.map_err(store)
            }
            StoreReader::ClickHouse(ch) => {
                let mut s = ch
                    .lock()
                    .map_err(|_| Failure::Store("store reader lock poisoned".into()))?;
                // Retries and waits end at the deadline too.
                s.set_deadline(Some(deadline));
                let r = f(&*s);
                s.set_deadline(None);
                r.map_err(store)
            }
        }
    }
}

/// Runs `f` on the state's store in `lane`, within the request's limits; the error
/// answer is 404 where there is no store (an agent), 503 when busy, 504 past the time
/// limit and a generic 500 when the store fails.
pub(crate) async fn with_store<T: Send + 'static>(
    s: &std::sync::Arc<crate::AppState>,
    lane: Lane,
    f: impl FnOnce(&dyn FlowStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    if let Some(busy) = crate::limits::refuse_for_wal(s.store.wal_bytes()) {
        return Err(busy);
    }
    let st = std::sync::Arc::clone(s);
    bounded(lane, move |deadline, cancel| {
        st.store.run(deadline, cancel, f)
    })
    .await
}

/// Runs a grouped query (the expensive lane).
pub(crate) async fn group(
    s: &std::sync::Arc<crate::AppState>,
    q: GroupQuery,
) -> Result<Vec<GroupRow>, Response> {
    with_store(s, Lane::Expensive, move |st| st.group(&q)).await
}
