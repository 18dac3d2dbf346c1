//! The embedded backend: one SQLite file (WAL) whose upserts add, like ClickHouse's
//! SummingMergeTree.

use std::path::Path;

use podflow_model::{AgentMark, FlowRow};
use rusqlite::{Connection, OpenFlags};

use crate::error::StoreError;
use crate::flow_store::{FlowQuery, FlowStore, FlowSummary, JobWrite};
use crate::query::{GroupQuery, GroupRow};

mod marks;
mod pool;
mod read;
mod rollup;
mod schema;
mod sql;
mod write;

pub use pool::{Interrupter, PooledReader, ReadPool};
use schema::SCHEMA_VERSION;

/// The embedded store: one SQLite file in WAL mode.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: String,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let p = path.display().to_string();
        let err = |op| sqlite_err(&p, op);
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("enable WAL"))?;
        // FULL: a transaction is on disk when COMMIT returns, so an acknowledged batch
        // survives a power failure too (NORMAL in WAL mode may lose the last
        // transactions). Its cost is measured in docs/reliability.md.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("set synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("set busy timeout"))?;
        // 32 MiB of page cache (the default is 2 MiB): an interval's new rows and the
        // rollups' recent buckets stay in memory while they are written.
        conn.pragma_update(None, "cache_size", -32_768)
            .map_err(err("set cache size"))?;
        // Once readers let a checkpoint reset the log, it shrinks back to this size
        // instead of keeping its high-water mark (docs/security.md, "HTTP API").
        conn.pragma_update(None, "journal_size_limit", pool::WAL_KEEP_BYTES)
            .map_err(err("set journal size limit"))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err("read schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt {
                path: p.clone(),
                column: "user_version (written by a newer podflow)",
                value: version.to_string(),
            });
        }
        conn.execute_batch(schema::SCHEMA)
            .map_err(err("create schema"))?;
        conn.execute_batch(schema::WRITTEN_CHUNKS)
            .map_err(err("create the chunk tokens"))?;
        let rollups: usize = conn
            .query_row(&schema::count_rollups(), [], |r| r.get(0))
            .map_err(err("look for the rollups"))?;
        let have: Vec<String> = {
            let mut st = conn
                .prepare(schema::FLOWS_COLUMNS)
                .map_err(err("read columns"))?;
            st.query_map([], |r| r.get(0))
                .map_err(err("read columns"))?
                .collect::<Result<_, _>>()
                .map_err(err("read columns"))?
        };
        for (op, sql) in schema::add_columns(&have) {
            conn.execute_batch(&sql).map_err(err(op))?;
        }
        if !have.iter().any(|c| c == schema::PREFIX_COLUMNS[0]) {
            let info: Vec<(String, String, bool, Option<String>)> = {
                let mut st = conn
                    .prepare(schema::FLOWS_TABLE_INFO)
                    .map_err(err("read columns"))?;
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(err("read columns"))?
                    .collect::<Result<_, _>>()
                    .map_err(err("read columns"))?
            };
            let tx = conn.transaction().map_err(err("begin migration"))?;
            for (op, sql) in schema::add_prefix_columns(&info) {
                tx.execute_batch(&sql).map_err(err(op))?;
            }
            tx.commit().map_err(err("commit migration"))?;
        }
        let have: Vec<String> = {
            let mut st = conn
                .prepare(schema::MARKS_COLUMNS)
                .map_err(err("read mark columns"))?;
            st.query_map([], |r| r.get(0))
                .map_err(err("read mark columns"))?
                .collect::<Result<_, _>>()
                .map_err(err("read mark columns"))?
        };
        for (op, sql) in schema::add_mark_columns(&have) {
            conn.execute_batch(&sql).map_err(err(op))?;
        }
        let mut stale = false;
        for (table, _) in rollup::LEVELS {
            let have: Vec<String> = {
                let mut st = conn
                    .prepare(&schema::rollup_columns(table))
                    .map_err(err("read rollup columns"))?;
                st.query_map([], |r| r.get(0))
                    .map_err(err("read rollup columns"))?
                    .collect::<Result<_, _>>()
                    .map_err(err("read rollup columns"))?
            };
            stale |= !have.is_empty() && schema::rollup_is_stale(&have);
        }
        if rollups < rollup::LEVELS.len() || stale {
            let tx = conn.transaction().map_err(err("begin migration"))?;
            for (op, sql) in schema::add_rollups() {
                tx.execute_batch(&sql).map_err(err(op))?;
            }
            tx.commit().map_err(err("commit migration"))?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err("set schema version"))?;
        Ok(SqliteStore { conn, path: p })
    }

    /// Opens the same file read-only (for a query connection beside the writer).
    pub fn open_reader(path: &Path) -> Result<SqliteStore, StoreError> {
        let p = path.display().to_string();
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_err(&p, "open reader"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite_err(&p, "set busy timeout"))?;
        Ok(SqliteStore { conn, path: p })
    }
}

/// Turns a SQLite error into the store's, naming the file and what podflow was doing.
fn sqlite_err<'a>(path: &'a str, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + 'a {
    move |source| StoreError::Sqlite {
        path: path.to_string(),
        op,
        source,
    }
}

impl FlowStore for SqliteStore {
    fn write(&mut self, rows: &[FlowRow]) -> Result<(), StoreError> {
        self.write_rows(&[(None, rows)], &[])
    }

    /// The rows and the marks (with their pending chunks) in one transaction; a chunk
    /// whose token was written before is skipped (the intents are not needed).
    fn write_job(&mut self, job: &JobWrite<'_>) -> Result<(), StoreError> {
        let chunks: Vec<(Option<&str>, &[FlowRow])> = job
            .chunks
            .iter()
            .map(|c| (Some(c.id.token.as_str()), c.rows))
            .collect();
        self.write_rows(&chunks, job.marks)
    }

    fn flows(&self, q: &FlowQuery) -> Result<Vec<FlowSummary>, StoreError> {
        self.read_flows(q)
    }

    fn group(&self, q: &GroupQuery) -> Result<Vec<GroupRow>, StoreError> {
        self.read_group(q)
    }

    fn agents(&self) -> Result<Vec<AgentMark>, StoreError> {
        self.read_marks()
    }

    fn expire(&mut self, before: i64) -> Result<u64, StoreError> {
        self.expire_rows(before)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;
    use std::sync::Arc;

    use podflow_model::{ChunkId, Class, EndLabels, FlowLabels, Protocol};

    use super::schema::SCHEMA;
    use super::sql::UPSERT;
    use super::*;
    use crate::testing::row;

    /// The 44 columns of `r` as the table should hold them.
    fn stored(r: &FlowRow) -> Vec<rusqlite::types::Value> {
        use rusqlite::types::Value::{Integer as I, Real, Text as T};
        let (k, t, l) = (&r.key, &r.totals, &r.labels);
        let mut v = vec![
            I(r.interval_start),
            I(i64::from(r.interval_s)),
            T(r.observer.clone()),
            I(i64::from(k.proto.0)),
            T(k.local.to_string()),
            T(k.remote.to_string()),
            I(i64::from(k.responder_port)),
            I(i64::from(k.local_initiated)),
            T(k.service.map(|(a, _)| a.to_string()).unwrap_or_default()),
            I(k.service.map_or(0, |(_, p)| i64::from(p))),
        ];
        for c in t.columns() {
            v.push(I(c as i64));
        }
        v.push(Real(r.cost_usd));
        v.push(T(l.class.as_str().into()));
        for c in l.local.columns().iter().chain(l.remote.columns().iter()) {
            v.push(T(c.to_string()));
        }
        v.push(T(l.service_namespace.to_string()));
        v.push(T(l.service_name.to_string()));
        v.push(T(l.service_headless_str().into()));
        v.push(T(l.service_prefers_close_str().into()));
        v.push(T(l.service_zone_local_str().into()));
        v.push(I(i64::from(l.remote_observed)));
        v
    }

    #[test]
    fn every_column_is_stored_when_each_row_changes_one() {
        // The writer binds only the parameters that differ from the row before (in key
        // order). Here each row differs from the one before in its remote address (the
        // key order) and in one other column, in turn every column; some rows share the
        // labels of the row before, by address.
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("open");
        let mut rows: Vec<FlowRow> = Vec::new();
        for i in 0..99u32 {
            let mut r = rows
                .last()
                .cloned()
                .unwrap_or_else(|| row(100, "10.0.1.0", 5));
            r.key.remote = IpAddr::from([10, 0, 1, i as u8]);
            let n = u64::from(i) + 1000;
            let mut l = FlowLabels::clone(&r.labels);
            let name = || podflow_model::Name::from(format!("v{i}"));
            match i % 33 {
                0 => r.interval_s = 10 + i,
                1 => r.key.proto = Protocol(17 - (i % 2) as u8 * 11),
                2 => r.key.responder_port = i as u16,
                3 => r.key.local_initiated = !r.key.local_initiated,
                4 => r.key.service = Some((IpAddr::from([10, 96, 0, i as u8]), 53)),
                5 => r.key.service = None,
                6 => r.totals.bytes_out = n,
                7 => r.totals.packets_out = n,
                8 => r.totals.bytes_in = n,
                9 => r.totals.packets_in = n,
                10 => r.totals.opened = n,
                11 => r.totals.closed = n,
                12 => r.cost_usd = f64::from(i) / 8.0,
                13 => l.class = Class::PublicInternet,
                14 => l.local.kind = "service",
                15 => l.local.namespace = name(),
                16 => l.local.name = name(),
                17 => l.local.workload_kind = name(),
                18 => l.local.workload = name(),
                19 => l.local.app = name(),
                20 => l.local.node = name(),
                21 => l.local.zone = name(),
                22 => l.local.region = name(),
                23 => l.local.cloud = name(),
                24 => l.remote.kind = "internet",
                25 => l.remote.zone = name(),
                26 => l.service_namespace = name(),
                27 => l.service_name = name(),
                28 => l.remote_observed = !l.remote_observed,
                29 => l.service_headless = !l.service_headless,
                30 => l.service_prefers_close = !l.service_prefers_close,
                31 => {
                    l.service_zone_local = match l.service_zone_local {
                        Some(true) => Some(false),
                        Some(false) => None,
                        None => Some(true),
                    }
                }
                _ => r.key.local = IpAddr::from([10, 0, 0, i as u8]),
            }
            if l != *r.labels {
                r.labels = Arc::new(l);
            }
            rows.push(r);
        }
        // Handed over in another order than the key order.
        let mut shuffled = rows.clone();
        shuffled.reverse();
        shuffled.rotate_left(17);
        s.write(&shuffled).expect("write");
        let mut got: Vec<Vec<rusqlite::types::Value>> = {
            // The upsert's column list, in its order.
            let cols = UPSERT
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(c, _)| c.split_whitespace().collect::<String>())
                .expect("column list");
            let sql = format!("SELECT {cols} FROM flows");
            let mut st = s.conn.prepare(&sql).expect("prepare");
            st.query_map([], |r| (0..44).map(|i| r.get(i)).collect())
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        let mut want: Vec<_> = rows.iter().map(stored).collect();
        let by_text = |a: &Vec<rusqlite::types::Value>, b: &Vec<rusqlite::types::Value>| {
            format!("{a:?}").cmp(&format!("{b:?}"))
        };
        got.sort_by(by_text);
        want.sort_by(by_text);
        assert_eq!(got.len(), 99);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
    }

    #[test]
    fn upserts_add_and_queries_sum_over_the_range() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("open");
        s.write(&[row(100, "10.0.0.2", 10), row(110, "10.0.0.2", 5)])
            .expect("write");
        s.write(&[row(100, "10.0.0.2", 1), row(100, "10.0.0.3", 1000)])
            .expect("write again");
        let got = s
            .flows(&FlowQuery {
                from: 0,
                to: 1000,
                limit: 10,
            })
            .expect("query");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].key.remote.to_string(), "10.0.0.3");
        assert_eq!(got[1].totals.bytes_out, 16);
        assert_eq!(got[1].totals.bytes_in, 21);
        assert_eq!(got[1].totals.opened, 3);
        assert_eq!((got[1].first, got[1].last), (100, 120));
        assert_eq!(
            got[1].key.service,
            Some(("fd00::10".parse().expect("ip"), 80))
        );
        // The range is half-open and the limit holds.
        let got = s
            .flows(&FlowQuery {
                from: 110,
                to: 111,
                limit: 10,
            })
            .expect("query");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].totals.bytes_out, 5);
        assert_eq!(
            s.flows(&FlowQuery {
                from: 0,
                to: 1000,
                limit: 1
            })
            .expect("q")
            .len(),
            1
        );
        assert_eq!(s.expire(110).expect("expire"), 2);
    }

    fn mark(agent: &str, seq: u64, node: &str, last_seen: i64) -> AgentMark {
        AgentMark {
            agent: agent.into(),
            seq,
            node: node.into(),
            last_seen,
            pending: Vec::new(),
        }
    }

    fn job_write(
        s: &mut SqliteStore,
        chunks: &[(ChunkId, Vec<FlowRow>)],
        marks: &[AgentMark],
    ) -> Result<(), StoreError> {
        let cw: Vec<crate::ChunkWrite<'_>> = chunks
            .iter()
            .map(|(id, rows)| crate::ChunkWrite { id, rows })
            .collect();
        s.write_job(&JobWrite {
            intents: &[],
            chunks: &cw,
            marks,
        })
    }

    fn chunk(token: &str, seqs: &[u64]) -> ChunkId {
        ChunkId {
            token: token.into(),
            agent: Some("a".into()),
            seqs: seqs.to_vec(),
            day: 0,
        }
    }

    #[test]
    fn marks_are_written_with_the_rows_and_only_go_up() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f.sqlite");
        let mut s = SqliteStore::open(&p).expect("open");
        let mut a = mark("a", 5, "node-a", 100);
        a.pending = vec![chunk("T", &[6, 7])];
        job_write(
            &mut s,
            &[(chunk("T0", &[5]), vec![row(100, "10.0.0.2", 1)])],
            &[a.clone(), mark("b", 2, "node-b", 50)],
        )
        .expect("write");
        job_write(&mut s, &[], &[mark("a", 3, "", 90)]).expect("older mark");
        let mut m = SqliteStore::open(&p)
            .expect("reopen")
            .agents()
            .expect("marks");
        m.sort_by(|x, y| x.agent.cmp(&y.agent));
        a.pending.clear();
        assert_eq!(
            m,
            vec![a, mark("b", 2, "node-b", 50)],
            "the latest pending chunks"
        );
    }

    #[test]
    fn sums_of_huge_counters_saturate_instead_of_failing_the_queries() {
        use crate::query::{GroupQuery, View};
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("open");
        // Rows past any bound (the aggregator rejects such observations; a store written
        // by another tool, or an older podflow, may still hold them): stored clamped at
        // i64::MAX, summed over three intervals and twice into one.
        let mut rows: Vec<FlowRow> = (0..3)
            .map(|i| {
                let mut r = row(100 + 10 * i, "10.0.0.2", u64::MAX);
                r.totals.packets_out = u64::MAX;
                r
            })
            .collect();
        rows.push(row(100, "10.0.0.3", 5));
        s.write(&rows).expect("write");
        s.write(&rows[..1]).expect("write into the same row again");
        let flows = s
            .flows(&FlowQuery {
                from: i64::MIN,
                to: i64::MAX,
                limit: 10,
            })
            .expect("flows over the widest range");
        assert_eq!(flows.len(), 2);
        assert_eq!(
            flows[0].totals.bytes_out,
            u64::MAX,
            "saturated, not wrapped"
        );
        assert_eq!(flows[1].totals.bytes_out, 5, "the other key stays exact");
        let q = |from, to| GroupQuery {
            from,
            to,
            group_by: Vec::new(),
            filters: Vec::new(),
            limit: 10,
            view: View::Raw,
        };
        for (from, to) in [(0, 1000), (i64::MIN, i64::MAX), (i64::MAX - 5, i64::MAX)] {
            let g = s.group(&q(from, to)).expect("grouped query");
            if from == i64::MAX - 5 {
                assert!(g.is_empty());
                continue;
            }
            assert_eq!(g[0].bytes_src_to_dst, u64::MAX);
            assert_eq!(g[0].bytes_dst_to_src, 5 * 7, "the small sums stay exact");
        }
    }

    /// The cost of `synchronous=FULL` against NORMAL, as a ratio in one run (machines
    /// here are noisy): jobs of 1,000 rows, one transaction each, as the driver writes
    /// them. `cargo test -p podflow-store --release --lib synchronous_cost -- --ignored
    /// --nocapture` (docs/reliability.md records a run).
    #[test]
    #[ignore]
    fn synchronous_cost() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut per_mode = Vec::new();
        for (i, mode) in ["NORMAL", "FULL", "NORMAL", "FULL"].iter().enumerate() {
            let mut s = SqliteStore::open(&dir.path().join(format!("{i}.sqlite"))).expect("open");
            s.conn
                .pragma_update(None, "synchronous", mode)
                .expect("synchronous");
            let t = std::time::Instant::now();
            for j in 0..200u32 {
                let rows: Vec<FlowRow> = (0..1000u32)
                    .map(|k| {
                        let mut r = row(100 + 10 * i64::from(j), "10.0.0.2", 1);
                        r.key.remote = IpAddr::from(k.to_be_bytes());
                        r
                    })
                    .collect();
                s.write(&rows).expect("write");
            }
            per_mode.push((*mode, t.elapsed().as_secs_f64() / 200.0));
        }
        for (m, secs) in &per_mode {
            println!(
                "synchronous={m}: {:.2} ms per job of 1,000 rows",
                secs * 1e3
            );
        }
        let avg = |m: &str| {
            per_mode
                .iter()
                .filter(|(x, _)| *x == m)
                .map(|(_, s)| s)
                .sum::<f64>()
                / 2.0
        };
        println!("FULL / NORMAL = {:.2}", avg("FULL") / avg("NORMAL"));
    }

    #[test]
    fn a_chunk_written_again_under_its_token_is_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("open");
        let c = (chunk("T", &[1]), vec![row(100, "10.0.0.2", 10)]);
        job_write(&mut s, std::slice::from_ref(&c), &[]).expect("write");
        // Again, and beside a new chunk: only the new one is added.
        let d = (chunk("U", &[2]), vec![row(100, "10.0.0.2", 5)]);
        job_write(&mut s, &[c, d], &[]).expect("write again");
        let got = s
            .flows(&FlowQuery {
                from: 0,
                to: 1000,
                limit: 10,
            })
            .expect("query");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].totals.bytes_out, 15);
    }

    /// Rows summed per network keep their prefix lengths, stay apart from rows of the
    /// same addresses in full, and an exact-address filter matches only the full ones.
    #[test]
    fn network_rows_never_match_an_exact_address() {
        use crate::query::{GroupQuery, View, dim, local_dim};
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("open");
        let at = |local: &str, remote: &str, bytes, lens: Option<(u8, u8)>| {
            let mut r = row(100, remote, bytes);
            r.key.local = local.parse().expect("ip");
            r.key.service = None;
            if let Some((l, m)) = lens {
                r.key = r.key.with_prefix_lens(l, m);
            }
            r
        };
        s.write(&[
            at("203.0.113.0", "198.51.100.0", 1000, None),
            at("203.0.113.0", "198.51.100.0", 70, Some((24, 24))),
            at("2001:db8:1::", "2001:db8:2::", 5, Some((48, 48))),
        ])
        .expect("write");
        let mut got: Vec<(String, String, u64)> = s
            .flows(&FlowQuery {
                from: 0,
                to: 1000,
                limit: 10,
            })
            .expect("flows")
            .iter()
            .map(|f| (f.key.local_text(), f.key.remote_text(), f.totals.bytes_out))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("2001:db8:1::/48".into(), "2001:db8:2::/48".into(), 5),
                ("203.0.113.0".into(), "198.51.100.0".into(), 1000),
                ("203.0.113.0/24".into(), "198.51.100.0/24".into(), 70),
            ]
        );
        let bytes = |d: crate::query::Dim, v: &str| -> u64 {
            s.group(&GroupQuery {
                from: 0,
                to: 1000,
                group_by: Vec::new(),
                filters: vec![(d, v.to_string())],
                limit: 10,
                view: View::Raw,
            })
            .expect("group")
            .iter()
            .map(|g| g.bytes_src_to_dst)
            .sum()
        };
        let d = |n| dim(n).expect("dim");
        let l = |n| local_dim(n).expect("dim");
        assert_eq!(bytes(d("src_ip"), "203.0.113.0"), 1000, "the full row only");
        assert_eq!(bytes(d("dst_ip"), "198.51.100.0"), 1000);
        assert_eq!(bytes(l("local_ip"), "203.0.113.0"), 1000);
        assert_eq!(bytes(l("remote_ip"), "198.51.100.0"), 1000);
        assert_eq!(bytes(d("src_ip"), "203.0.113.0/24"), 70, "the network");
        assert_eq!(bytes(d("dst_ip"), "2001:db8:2::/48"), 5);
        assert_eq!(bytes(d("dst_ip"), "2001:db8:2::"), 0);
    }

    #[test]
    fn grouped_queries_orient_by_initiator_filter_and_count_once() {
        use crate::query::{GroupQuery, View, dim};
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("open");
        let mut a = row(100, "10.0.0.2", 1000);
        a.observer = "node-a".into();
        // The same connection seen from the responder's node, both ends observed.
        let mut b = row(100, "10.0.0.2", 7);
        b.observer = "node-b".into();
        b.key.local_initiated = false;
        for r in [&mut a, &mut b] {
            Arc::make_mut(&mut r.labels).remote_observed = true;
        }
        s.write(&[a, b]).expect("write");
        let q = |view, group: &[&str], filters: &[(&str, &str)]| GroupQuery {
            from: 0,
            to: 1000,
            group_by: group.iter().map(|g| dim(g).expect("dim")).collect(),
            filters: filters
                .iter()
                .map(|(d, v)| (dim(d).expect("dim"), v.to_string()))
                .collect(),
            limit: 10,
            view,
        };
        let raw = s.group(&q(View::Raw, &["observer"], &[])).expect("raw");
        assert_eq!(raw.len(), 2);
        let once = s.group(&q(View::Once, &[], &[])).expect("once");
        assert_eq!(once.len(), 1);
        assert_eq!(
            (
                once[0].bytes_src_to_dst,
                once[0].bytes_dst_to_src,
                once[0].connections
            ),
            (1000, 7, 1)
        );
        // Source is the initiator: for node-b's row the remote end (node-b's view) initiated.
        let by_src = s
            .group(&q(
                View::Raw,
                &["src_kind", "dst_port", "class"],
                &[("observer", "node-b")],
            ))
            .expect("q");
        assert_eq!(
            by_src[0].key,
            vec!["node".to_string(), "443".into(), "INTER_ZONE".into()]
        );
        assert_eq!(
            by_src[0].bytes_src_to_dst, 7,
            "node-b's bytes_in is the initiator's sending"
        );
        assert!(
            s.group(&q(View::Raw, &[], &[("class", "INTRA_NODE")]))
                .expect("q")
                .is_empty()
        );
    }

    #[test]
    fn reopening_keeps_rows_and_a_reader_sees_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f.sqlite");
        SqliteStore::open(&p)
            .expect("open")
            .write(&[row(100, "10.0.0.2", 10)])
            .expect("write");
        let s = SqliteStore::open(&p).expect("reopen");
        let r = SqliteStore::open_reader(&p).expect("reader");
        let q = FlowQuery {
            from: 0,
            to: 1000,
            limit: 10,
        };
        assert_eq!(s.flows(&q).expect("q"), r.flows(&q).expect("q"));
    }

    #[test]
    fn a_version_1_file_is_migrated_in_place() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f.sqlite");
        let c = Connection::open(&p).expect("open");
        c.execute_batch(SCHEMA).expect("v1 schema");
        c.execute(
            "INSERT INTO flows VALUES (100, 10, 'n', 6, '10.0.0.1', '10.0.0.2', 80, 1, '', 0, 5, 1, 6, 1, 1, 0)",
            [],
        )
        .expect("v1 row");
        c.pragma_update(None, "user_version", 1).expect("v1");
        drop(c);
        let mut s = SqliteStore::open(&p).expect("migrates");
        s.write(&[row(100, "10.0.0.2", 10)])
            .expect("write after migration");
        let got = s
            .flows(&FlowQuery {
                from: 0,
                to: 1000,
                limit: 10,
            })
            .expect("query");
        assert_eq!(got.len(), 2, "the v1 row (no service) and the new one");
        let old = got
            .iter()
            .find(|r| r.key.service.is_none())
            .expect("v1 row");
        assert_eq!(
            (old.totals.bytes_out, old.labels.class),
            (5, Class::Unknown)
        );
        assert_eq!(
            (old.key.local_prefix_len(), old.key.prefixes),
            (32, Default::default()),
            "rows from before the prefix lengths are full addresses"
        );
    }

    /// A version-4 file (the flows and rollups of before the Service zone columns),
    /// made from a current one: the columns dropped, the rollups recreated without them.
    fn version_4_file(p: &Path, rows: &[FlowRow]) {
        use crate::columns::SERVICE_ZONE_COLUMNS;
        SqliteStore::open(p)
            .expect("open")
            .write(rows)
            .expect("write");
        let c = Connection::open(p).expect("open");
        for col in SERVICE_ZONE_COLUMNS {
            c.execute_batch(&format!("ALTER TABLE flows DROP COLUMN {col}"))
                .expect("drop column");
        }
        for (table, _) in rollup::LEVELS {
            let mut ddl = schema::rollup_table(table);
            for col in SERVICE_ZONE_COLUMNS {
                ddl = ddl
                    .replace(&format!("    {col} TEXT NOT NULL,\n"), "")
                    .replace(&format!(", {col}"), "");
            }
            assert!(!ddl.contains("service_zone"), "{ddl}");
            c.execute_batch(&format!("DROP TABLE {table}; {ddl}"))
                .expect("v4 rollup");
        }
        c.pragma_update(None, "user_version", 4).expect("v4");
    }

    #[test]
    fn a_version_4_file_is_migrated_in_place() {
        use crate::query::{GroupQuery, View, dim};
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f.sqlite");
        // Two hours of a row through shop/db: whole hours are read from the rollups.
        let old: Vec<FlowRow> = (0..720).map(|i| row(i * 10, "10.0.0.2", 10)).collect();
        version_4_file(&p, &old);
        let mut s = SqliteStore::open(&p).expect("migrates");
        let version: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        // The old rows: their Service, flags of unknown (empty) value.
        let got = s
            .flows(&FlowQuery {
                from: 0,
                to: 7200,
                limit: 10,
            })
            .expect("query");
        assert_eq!(got.len(), 1);
        let l = &got[0].labels;
        assert_eq!(
            (
                &*l.service_name,
                l.service_zone_local_str(),
                l.service_headless
            ),
            ("db", "", false)
        );
        // New rows carry the flags; the rebuilt rollups hold the old rows and the new.
        let mut new = row(7200, "10.0.0.2", 1000);
        Arc::make_mut(&mut new.labels).service_zone_local = Some(true);
        s.write(&[new]).expect("write after migration");
        let q = GroupQuery {
            from: 0,
            to: 3 * 3600,
            group_by: vec![
                dim("service_name").expect("dim"),
                dim("service_zone_local").expect("dim"),
            ],
            filters: Vec::new(),
            limit: 10,
            view: View::Once,
        };
        let g = s.group(&q).expect("group");
        assert_eq!(g, s.group_from_flows(&q));
        let brief: Vec<(Vec<&str>, u64)> = g
            .iter()
            .map(|r| (r.key.iter().map(String::as_str).collect(), r.bytes()))
            .collect();
        assert_eq!(
            brief,
            [(vec!["db", ""], 720 * 17), (vec!["db", "yes"], 1007)]
        );
        let hourly: i64 = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM flows_hourly WHERE service_zone_local = ''",
                [],
                |r| r.get(0),
            )
            .expect("rollup");
        assert_eq!(hourly, 2, "the old rows' two hours, rebuilt");
        // Opening again changes nothing.
        drop(s);
        let s = SqliteStore::open(&p).expect("reopen");
        assert_eq!(s.group(&q).expect("group"), g);
    }

    mod rollup_props {
        use super::*;
        use crate::query::{GroupQuery, View, dim};
        use proptest::prelude::*;

        const NAMES: [&str; 3] = ["", "a", "b"];
        const KINDS: [&str; 3] = ["pod", "node", "internet"];

        fn end(k: usize, ns: usize, w: usize, n: usize, z: usize) -> EndLabels {
            EndLabels {
                kind: KINDS[k],
                namespace: NAMES[ns].into(),
                workload: NAMES[w].into(),
                name: NAMES[n].into(),
                zone: NAMES[z].into(),
                ..Default::default()
            }
        }

        fn arb_row() -> impl Strategy<Value = FlowRow> {
            let e = || (0..3usize, 0..3usize, 0..3usize, 0..3usize, 0..3usize);
            (
                (0..6 * 3600i64, any::<bool>(), any::<bool>(), 0..3usize),
                (e(), e()),
                (0..1000u64, 0..1000u64, 0..3u64, 0..8u32, 0..12u8),
            )
                .prop_map(
                    |((t, init, ro, class), (l, r), (out, inn, opened, cost, flags))| {
                        let mut row = super::row(t, "10.0.0.2", out);
                        row.key.local_initiated = init;
                        row.totals.bytes_in = inn;
                        row.totals.opened = opened;
                        // Quarters add exactly in floating point, in any order.
                        row.cost_usd = f64::from(cost) * 0.25;
                        row.observer = format!("node-{}", t % 2);
                        row.labels = Arc::new(FlowLabels {
                            class: [Class::InterZone, Class::IntraZone, Class::PublicInternet]
                                [class],
                            local: end(l.0, l.1, l.2, l.3, l.4),
                            remote: end(r.0, r.1, r.2, r.3, r.4),
                            service_namespace: NAMES[l.1].into(),
                            service_name: NAMES[r.2].into(),
                            service_headless: flags & 1 == 1,
                            service_prefers_close: flags & 2 == 2,
                            service_zone_local: [None, Some(true), Some(false)]
                                [usize::from(flags / 4)],
                            remote_observed: ro,
                        });
                        row
                    },
                )
        }

        fn arb_query() -> impl Strategy<Value = GroupQuery> {
            let dims = prop::sample::subsequence(
                &[
                    "src_kind",
                    "dst_workload",
                    "src_workload",
                    "class",
                    "dst_zone",
                    "service_name",
                    "service_zone_local",
                    "service_headless",
                    // Not in the rollup: such queries read flows alone.
                    "observer",
                ][..],
                0..=3,
            );
            (
                dims,
                prop::option::of((0..5usize, 0..3usize)),
                (0..7 * 3600i64, 0..7 * 3600i64),
                1..20usize,
                any::<bool>(),
            )
                .prop_map(|(dims, filter, (a, b), limit, once)| GroupQuery {
                    from: a.min(b),
                    to: a.max(b),
                    group_by: dims.iter().filter_map(|d| dim(d)).collect(),
                    filters: filter
                        .map(|(d, v)| {
                            let d = [
                                "src_namespace",
                                "dst_kind",
                                "src_zone",
                                "observer",
                                "service_prefers_close",
                            ][d];
                            let v = match d {
                                "dst_kind" => KINDS[v],
                                "service_prefers_close" => ["", "yes", "no"][v],
                                _ => NAMES[v],
                            };
                            (dim(d).expect("dim"), v.to_string())
                        })
                        .into_iter()
                        .collect(),
                    limit,
                    view: if once { View::Once } else { View::Raw },
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Whatever the rows, batches, range, dimensions, filters, limit, view and
            /// expiry, a query answers what `flows` alone answers.
            #[test]
            fn the_rollup_answers_what_the_flows_answer(
                batches in prop::collection::vec(prop::collection::vec(arb_row(), 0..40), 1..4),
                queries in prop::collection::vec(arb_query(), 8),
                cutoff in prop::option::of(0..6 * 3600i64),
            ) {
                // A key's labels are fixed within an interval (the aggregator's rows); a
                // later write of the same key and interval with other labels would keep
                // the first labels in `flows` but its own in the rollups.
                let mut batches = batches;
                let mut first = std::collections::HashMap::new();
                for r in batches.iter_mut().flatten() {
                    let id = (r.interval_start, r.observer.clone(), r.key);
                    r.labels = Arc::clone(first.entry(id).or_insert_with(|| Arc::clone(&r.labels)));
                }
                let dir = tempfile::tempdir().expect("tmp");
                let mut s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("open");
                for b in &batches {
                    s.write(b).expect("write");
                }
                if let Some(c) = cutoff {
                    s.expire(c).expect("expire");
                }
                for q in &queries {
                    prop_assert_eq!(s.group(q).expect("group"), s.group_from_flows(q), "{:?}", q);
                }
                // A file written before the rollup existed is filled on open.
                drop(s);
                let c = Connection::open(dir.path().join("f.sqlite")).expect("open");
                c.execute_batch("DROP TABLE flows_hourly; DROP TABLE flows_1m").expect("drop");
                drop(c);
                let s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("reopen");
                for q in &queries {
                    prop_assert_eq!(s.group(q).expect("group"), s.group_from_flows(q), "{:?}", q);
                }
            }
        }

        #[test]
        fn a_day_of_one_pair_is_read_from_the_rollup() {
            let dir = tempfile::tempdir().expect("tmp");
            let mut s = SqliteStore::open(&dir.path().join("f.sqlite")).expect("open");
            let rows: Vec<FlowRow> = (0..24 * 6)
                .map(|i| super::row(i * 600, "10.0.0.2", 10))
                .collect();
            s.write(&rows).expect("write");
            let count = |t: &str| -> i64 {
                s.conn
                    .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                    .expect("count")
            };
            assert_eq!(count("flows_hourly"), 24, "one row per hour for one key");
            assert_eq!(count("flows_10m"), 144);
            let q = GroupQuery {
                from: 0,
                to: 86_400,
                group_by: vec![dim("src_namespace").expect("dim")],
                filters: Vec::new(),
                limit: 5,
                view: View::Once,
            };
            let got = s.group(&q).expect("group");
            assert_eq!(got.len(), 1);
            assert_eq!(
                (
                    got[0].key[0].as_str(),
                    got[0].bytes_src_to_dst,
                    got[0].connections
                ),
                ("shop", 1440, 144)
            );
        }
    }

    #[test]
    fn a_newer_schema_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f.sqlite");
        let c = Connection::open(&p).expect("open");
        c.pragma_update(None, "user_version", 99).expect("set");
        drop(c);
        let e = SqliteStore::open(&p).expect_err("newer");
        assert!(e.to_string().contains("f.sqlite"), "{e}");
    }
}
