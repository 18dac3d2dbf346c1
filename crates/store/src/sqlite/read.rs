//! What reads the file: totals per key, grouped queries (from the rollups where they
//! can answer), the agents' marks; stored text turned back into addresses and labels.

use std::net::IpAddr;
use std::sync::Arc;

use podflow_model::{FlowKey, FlowLabels, FlowTotals, Protocol};
use rusqlite::{params, params_from_iter};

use super::{SqliteStore, sql, sqlite_err};
use crate::columns::{self, LABELS};
use crate::error::StoreError;
use crate::flow_store::{FlowQuery, FlowSummary};
use crate::query::{GroupQuery, GroupRow};

impl SqliteStore {
    /// Totals per observer and key over a time range, largest first.
    pub(super) fn read_flows(&self, q: &FlowQuery) -> Result<Vec<FlowSummary>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(&sql::FLOWS)
            .map_err(sqlite_err(&self.path, "prepare query"))?;
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let raw = st
            .query_map(params![q.from, q.to, limit], |r| {
                let (c, l) = (sql::FLOWS_COUNTERS_AT, sql::FLOWS_LABELS_AT);
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u8>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, u16>(4)?,
                    r.get::<_, bool>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, u16>(7)?,
                    {
                        let mut n = [0u64; 6];
                        for (i, v) in n.iter_mut().enumerate() {
                            *v = sql::join_sum(r.get(c + 2 * i)?, r.get(c + 2 * i + 1)?);
                        }
                        n
                    },
                    r.get::<_, i64>(c + 12)?,
                    r.get::<_, i64>(c + 13)?,
                    r.get::<_, f64>(c + 14)?,
                    (l..l + LABELS.len())
                        .map(|i| r.get::<_, String>(i))
                        .collect::<Result<Vec<_>, _>>()?,
                    r.get::<_, bool>(l + LABELS.len())?,
                    (
                        r.get::<_, u8>(l + LABELS.len() + 1)?,
                        r.get::<_, u8>(l + LABELS.len() + 2)?,
                    ),
                ))
            })
            .map_err(sqlite_err(&self.path, "query"))?;
        let mut out = Vec::new();
        for row in raw {
            let (
                observer,
                proto,
                local,
                remote,
                port,
                init,
                sa,
                sp,
                n,
                first,
                last,
                cost_usd,
                l,
                ro,
                (local_len, remote_len),
            ) = row.map_err(sqlite_err(&self.path, "read row"))?;
            let mut labels = self.labels(l)?;
            Arc::make_mut(&mut labels).remote_observed = ro;
            let service = if sa.is_empty() {
                None
            } else {
                Some((self.ip("service_addr", sa)?, sp))
            };
            out.push(FlowSummary {
                observer,
                key: FlowKey {
                    proto: Protocol(proto),
                    local: self.ip("local_addr", local)?,
                    remote: self.ip("remote_addr", remote)?,
                    responder_port: port,
                    local_initiated: init,
                    service,
                    prefixes: Default::default(),
                }
                .with_prefix_lens(local_len, remote_len),
                totals: FlowTotals::from_columns(n),
                labels,
                cost_usd,
                first,
                last,
            });
        }
        Ok(out)
    }

    /// A grouped query, from the rollups where they can answer it.
    pub(super) fn read_group(&self, q: &GroupQuery) -> Result<Vec<GroupRow>, StoreError> {
        let oldest: Option<i64> = self
            .conn
            .query_row(sql::OLDEST, [], |r| r.get(0))
            .map_err(sqlite_err(&self.path, "read the oldest interval"))?;
        let (sql, params) = sql::group_sql(q, oldest);
        self.run_group(&sql, &params, q.group_by.len())
    }

    fn corrupt(&self, column: &'static str, value: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            column,
            value,
        }
    }

    /// Labels from the label columns' values, in [`LABELS`] order.
    fn labels(&self, l: Vec<String>) -> Result<Arc<FlowLabels>, StoreError> {
        columns::from_values(l)
            .map(Arc::new)
            .map_err(|(column, value)| self.corrupt(column, value))
    }

    /// A grouped query answered from `flows` alone (the reference for the rollup).
    #[cfg(test)]
    pub(super) fn group_from_flows(&self, q: &GroupQuery) -> Vec<GroupRow> {
        // An `oldest` of None reads flows alone.
        let (sql, params) = sql::group_sql(q, None);
        assert!(!sql.contains("flows_hourly"));
        self.run_group(&sql, &params, q.group_by.len())
            .expect("query")
    }

    fn run_group(
        &self,
        sql: &str,
        params: &[String],
        n: usize,
    ) -> Result<Vec<GroupRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(sql)
            .map_err(sqlite_err(&self.path, "prepare grouped query"))?;
        let rows = st
            .query_map(params_from_iter(params.iter()), |r| {
                let key = (0..n)
                    .map(|i| r.get::<_, Option<String>>(i).map(Option::unwrap_or_default))
                    .collect::<Result<Vec<_>, _>>()?;
                // Each integer sum is two columns (see `sql::split_sum`), then the cost.
                let u = |i: usize| -> rusqlite::Result<u64> {
                    Ok(sql::join_sum(r.get(n + 2 * i)?, r.get(n + 2 * i + 1)?))
                };
                Ok(GroupRow {
                    key,
                    bytes_src_to_dst: u(0)?,
                    bytes_dst_to_src: u(1)?,
                    packets_src_to_dst: u(2)?,
                    packets_dst_to_src: u(3)?,
                    connections: u(4)?,
                    closed: u(5)?,
                    cost_usd: r.get::<_, Option<f64>>(n + 12)?.unwrap_or(0.0),
                })
            })
            .map_err(sqlite_err(&self.path, "grouped query"))?;
        let mut out: Vec<_> = rows
            .collect::<Result<_, _>>()
            .map_err(sqlite_err(&self.path, "grouped query"))?;
        // An empty range still yields one all-zero total row without GROUP BY: drop it.
        if n == 0
            && out
                .first()
                .is_some_and(|r: &GroupRow| r.bytes() == 0 && r.connections == 0)
        {
            out.clear();
        }
        Ok(out)
    }

    fn ip(&self, column: &'static str, s: String) -> Result<IpAddr, StoreError> {
        s.parse().map_err(|_| self.corrupt(column, s))
    }
}
