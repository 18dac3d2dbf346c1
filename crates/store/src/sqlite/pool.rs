//! A pool of read-only connections on the store's file: WAL lets readers run side by
//! side (and beside the writer), so a long query holds one connection, not the store.
//! Every query can be stopped from another thread ([`Interrupter`]), which is what makes
//! a time limit real: dropping the future that waits for a query leaves SQLite running.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::SqliteStore;
use crate::error::StoreError;

/// What the write-ahead log shrinks back to after a checkpoint reset it, bytes.
pub const WAL_KEEP_BYTES: i64 = 64 << 20;

/// Idle read-only connections on one file, opened on demand; callers bound how many are
/// out at once (the HTTP API's lanes), the pool only keeps the idle ones.
#[derive(Debug)]
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<SqliteStore>>,
}

/// A connection out of a [`ReadPool`]; it goes back when dropped.
#[derive(Debug)]
pub struct PooledReader<'a> {
    pool: &'a ReadPool,
    store: Option<SqliteStore>,
}

/// Stops the statement running on a connection, from any thread (SQLite's
/// `sqlite3_interrupt`): the query returns an "interrupted" error at once. A call while
/// nothing runs does nothing.
#[derive(Clone)]
pub struct Interrupter(std::sync::Arc<rusqlite::InterruptHandle>);

impl std::fmt::Debug for Interrupter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupter")
    }
}

impl Interrupter {
    /// Interrupts the connection's running statement.
    pub fn interrupt(&self) {
        self.0.interrupt();
    }
}

impl ReadPool {
    /// A pool on the store file `path` (nothing is opened yet).
    pub fn new(path: &Path) -> ReadPool {
        ReadPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An idle connection, or a new one (blocking: it may open the file).
    pub fn get(&self) -> Result<PooledReader<'_>, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let store = match idle {
            Some(s) => s,
            None => SqliteStore::open_reader(&self.path)?,
        };
        Ok(PooledReader {
            pool: self,
            store: Some(store),
        })
    }

    /// Connections open and idle.
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |v| v.len())
    }

    /// Size of the write-ahead log beside the file, bytes (0 when there is none): it
    /// grows while a reader keeps an old snapshot and checkpoints cannot reset it.
    pub fn wal_bytes(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len())
    }
}

impl PooledReader<'_> {
    /// What stops this connection's running statement from another thread.
    pub fn interrupter(&self) -> Option<Interrupter> {
        self.store
            .as_ref()
            .map(|s| Interrupter(std::sync::Arc::new(s.conn.get_interrupt_handle())))
    }
}

impl std::ops::Deref for PooledReader<'_> {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
        // Always Some until dropped.
        self.store.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let (Some(s), Ok(mut idle)) = (self.store.take(), self.pool.idle.lock()) {
            // A connection that was interrupted is as good as new: no transaction stays
            // open once its statements are reset.
            idle.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FlowStore;
    use crate::query::{GroupQuery, View};

    #[test]
    fn an_interrupted_query_fails_and_the_connection_serves_the_next() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f.sqlite");
        let mut w = SqliteStore::open(&path).expect("open");
        let rows: Vec<_> = (0..2000u32)
            .map(|i| {
                crate::testing::row(
                    100,
                    &format!("10.0.{}.{}", i / 250, i % 250),
                    u64::from(i) + 1,
                )
            })
            .collect();
        w.write(&rows).expect("write");
        let pool = ReadPool::new(&path);
        let r = pool.get().expect("reader");
        let stop = r.interrupter().expect("handle");
        // A query that runs for minutes: a cross join of the rows with themselves, twice.
        let slow = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            stop.interrupt();
        });
        let t = std::time::Instant::now();
        let e = r
            .conn
            .query_row(
                "SELECT count(*) FROM flows a, flows b, flows c",
                [],
                |row| row.get::<_, i64>(0),
            )
            .expect_err("interrupted");
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{e}");
        assert!(e.to_string().contains("interrupt"), "{e}");
        slow.join().expect("thread");
        let q = GroupQuery {
            from: 0,
            to: 1000,
            group_by: Vec::new(),
            filters: Vec::new(),
            limit: 10,
            view: View::Raw,
        };
        let total = r.group(&q).expect("next query");
        assert_eq!(total.len(), 1);
        drop(r);
        assert_eq!(pool.idle(), 1);
        assert!(pool.wal_bytes() > 0);
    }
}
