//! Probe history in the embedded store: a file of its own beside the flows
//! (`probes.sqlite`, WAL, synchronous=FULL), one row per interval, pair, kind and name.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params_from_iter};

use super::{BUCKETS, ProbeGroup, ProbeQuery, ProbeRow, ProbeStore};
use crate::error::StoreError;

/// The embedded probe store.
#[derive(Debug)]
pub struct SqliteProbeStore {
    conn: Connection,
    path: String,
}

fn bucket_columns() -> Vec<String> {
    (0..BUCKETS).map(|i| format!("b{i}")).collect()
}

fn schema() -> String {
    let b: Vec<String> = bucket_columns()
        .iter()
        .map(|c| format!("{c} INTEGER NOT NULL"))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS probes (
            interval_start INTEGER NOT NULL,
            interval_s INTEGER NOT NULL,
            src_node TEXT NOT NULL,
            dst_node TEXT NOT NULL,
            src_zone TEXT NOT NULL,
            dst_zone TEXT NOT NULL,
            kind TEXT NOT NULL,
            dns_name TEXT NOT NULL,
            count INTEGER NOT NULL,
            failures INTEGER NOT NULL,
            unavailable INTEGER NOT NULL,
            sent INTEGER NOT NULL,
            lost INTEGER NOT NULL,
            rtt_count INTEGER NOT NULL,
            rtt_sum_ns INTEGER NOT NULL,
            rtt_min_ns INTEGER NOT NULL,
            rtt_max_ns INTEGER NOT NULL,
            {},
            PRIMARY KEY (interval_start, src_node, dst_node, kind, dns_name)
        ) WITHOUT ROWID;",
        b.join(",\n            ")
    )
}

/// Counters are stored as SQLite integers: clamp to what a 64-bit signed sum of a
/// day of them cannot overflow.
fn int(v: u64) -> i64 {
    v.min(1 << 48) as i64
}

impl SqliteProbeStore {
    /// Opens (or creates) `path`.
    pub fn open(path: &Path) -> Result<SqliteProbeStore, StoreError> {
        let p = path.display().to_string();
        let err = |op: &'static str| {
            let p = p.clone();
            move |source| StoreError::Sqlite {
                path: p.clone(),
                op,
                source,
            }
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("enable WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("set synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("set busy timeout"))?;
        conn.execute_batch(&schema())
            .map_err(err("create the probes table"))?;
        Ok(SqliteProbeStore { conn, path: p })
    }

    fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            op,
            source,
        }
    }
}

impl ProbeStore for SqliteProbeStore {
    fn write_probes(&mut self, rows: &[ProbeRow]) -> Result<(), StoreError> {
        let cols = bucket_columns();
        let sql = format!(
            "INSERT OR REPLACE INTO probes (interval_start, interval_s, src_node, dst_node,
             src_zone, dst_zone, kind, dns_name, count, failures, unavailable, sent, lost,
             rtt_count, rtt_sum_ns, rtt_min_ns, rtt_max_ns, {}) VALUES ({})",
            cols.join(", "),
            vec!["?"; 17 + BUCKETS].join(", ")
        );
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|source| StoreError::Sqlite {
                path: path.clone(),
                op: "begin a probes write",
                source,
            })?;
        {
            let mut st = tx
                .prepare_cached(&sql)
                .map_err(|source| StoreError::Sqlite {
                    path: path.clone(),
                    op: "prepare the probes write",
                    source,
                })?;
            for r in rows {
                let mut v: Vec<rusqlite::types::Value> = vec![
                    r.interval_start.into(),
                    i64::from(r.interval_s).into(),
                    r.src_node.clone().into(),
                    r.dst_node.clone().into(),
                    r.src_zone.clone().into(),
                    r.dst_zone.clone().into(),
                    r.kind.clone().into(),
                    r.dns_name.clone().into(),
                ];
                for n in [
                    r.count,
                    r.failures,
                    r.unavailable,
                    r.sent,
                    r.lost,
                    r.rtt_count,
                    r.rtt_sum_ns,
                    r.rtt_min_ns,
                    r.rtt_max_ns,
                ] {
                    v.push(int(n).into());
                }
                for i in 0..BUCKETS {
                    v.push(int(r.buckets.get(i).copied().unwrap_or(0)).into());
                }
                st.execute(params_from_iter(v))
                    .map_err(|source| StoreError::Sqlite {
                        path: path.clone(),
                        op: "write probes",
                        source,
                    })?;
            }
        }
        tx.commit().map_err(|source| StoreError::Sqlite {
            path,
            op: "commit probes",
            source,
        })
    }

    fn probes(&self, q: &ProbeQuery) -> Result<Vec<ProbeGroup>, StoreError> {
        // Dimension names come from the fixed list (`super::DIMENSIONS`): safe to name.
        let dims: Vec<&str> = q
            .group_by
            .iter()
            .copied()
            .filter(|d| super::DIMENSIONS.contains(d))
            .collect();
        let key = if dims.is_empty() {
            "''".to_string()
        } else {
            dims.join(", ")
        };
        let sums: Vec<String> = bucket_columns()
            .iter()
            .map(|c| format!("SUM({c})"))
            .collect();
        let mut filter = String::new();
        let mut params: Vec<rusqlite::types::Value> = vec![q.from.into(), q.to.into()];
        for (d, v) in &q.filters {
            if super::DIMENSIONS.contains(d) {
                filter.push_str(&format!(" AND {d} = ?"));
                params.push(v.clone().into());
            }
        }
        let group = if dims.is_empty() {
            String::new()
        } else {
            format!("GROUP BY {}", dims.join(", "))
        };
        let sql = format!(
            "SELECT {key}, SUM(count), SUM(failures), SUM(unavailable), SUM(sent), SUM(lost),
                    SUM(rtt_count), SUM(rtt_sum_ns),
                    MIN(CASE WHEN rtt_count > 0 THEN rtt_min_ns END), MAX(rtt_max_ns), {}
             FROM probes WHERE interval_start >= ? AND interval_start < ?{filter}
             {group} ORDER BY SUM(count) DESC",
            sums.join(", ")
        );
        let mut st = self
            .conn
            .prepare(&sql)
            .map_err(self.err("prepare a probes query"))?;
        let nk = dims.len().max(1);
        let rows = st
            .query_map(params_from_iter(params), |row| {
                let mut key = Vec::new();
                for i in 0..dims.len() {
                    key.push(row.get::<_, String>(i)?);
                }
                let n = |i: usize| -> rusqlite::Result<u64> {
                    Ok(row.get::<_, Option<i64>>(nk + i)?.unwrap_or(0).max(0) as u64)
                };
                let mut g = ProbeGroup {
                    key,
                    count: n(0)?,
                    failures: n(1)?,
                    unavailable: n(2)?,
                    sent: n(3)?,
                    lost: n(4)?,
                    rtt_count: n(5)?,
                    rtt_sum_ns: n(6)?,
                    rtt_min_ns: n(7)?,
                    rtt_max_ns: n(8)?,
                    buckets: Vec::with_capacity(BUCKETS),
                };
                for i in 0..BUCKETS {
                    g.buckets.push(n(9 + i)?);
                }
                Ok(g)
            })
            .map_err(self.err("query probes"))?;
        let mut out = Vec::new();
        for r in rows {
            let g = r.map_err(self.err("read probes"))?;
            if g.count > 0 {
                out.push(g);
            }
        }
        Ok(out)
    }

    fn expire_probes(&mut self, before: i64) -> Result<u64, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM probes WHERE interval_start < ?1", [before])
            .map_err(self.err("expire probes"))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::row;
    use super::*;

    #[test]
    fn rows_replace_and_group_like_the_pure_grouping() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SqliteProbeStore::open(&dir.path().join("probes.sqlite")).expect("open");
        let rows = vec![
            row(0, "a1", "b1", "udp", &[20_000, 21_000]),
            row(60, "a2", "b1", "udp", &[19_000]),
            row(60, "a1", "a2", "tcp", &[300]),
        ];
        s.write_probes(&rows).expect("write");
        s.write_probes(&rows[..1])
            .expect("a replay replaces, it does not add");
        for (group_by, filters) in [
            (vec!["src_zone", "dst_zone"], vec![]),
            (vec!["src_node", "dst_node", "kind"], vec![]),
            (vec!["kind"], vec![("dst_zone", "z-b".to_string())]),
            (vec![], vec![]),
        ] {
            let q = ProbeQuery {
                from: 0,
                to: 120,
                group_by,
                filters,
            };
            let mut want = super::super::group(rows.clone(), &q);
            let mut got = s.probes(&q).expect("query");
            want.sort_by(|a, b| a.key.cmp(&b.key));
            got.sort_by(|a, b| a.key.cmp(&b.key));
            assert_eq!(got, want, "{q:?}");
        }
        assert_eq!(s.expire_probes(60).expect("expire"), 1);
    }
}
