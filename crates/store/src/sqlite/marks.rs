//! The agents' marks as the embedded store keeps them (`agent_marks`).

use podflow_model::AgentMark;

use super::{SqliteStore, sql, sqlite_err};
use crate::error::StoreError;

impl SqliteStore {
    /// Every agent's mark, node, last-seen time and pending chunks.
    pub(super) fn read_marks(&self) -> Result<Vec<AgentMark>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(sql::MARKS)
            .map_err(sqlite_err(&self.path, "read marks"))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?.max(0) as u64,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(sqlite_err(&self.path, "read marks"))?;
        let mut out = Vec::new();
        for row in rows {
            let (agent, seq, node, last_seen, pending) =
                row.map_err(sqlite_err(&self.path, "read marks"))?;
            let Some(pending) = crate::marks::decode(&agent, &pending) else {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    column: "agent_marks.pending",
                    value: pending,
                });
            };
            out.push(AgentMark {
                agent,
                seq,
                node,
                last_seen,
                pending,
            });
        }
        Ok(out)
    }
}
