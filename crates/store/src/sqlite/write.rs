//! What changes the file: rows upserted in key order, binding only the parameters that
//! changed since the row before; the rollups and the agents' marks in the same
//! transaction; expiry.

use std::net::IpAddr;

use podflow_model::{AgentMark, FlowLabels, FlowRow};
use rusqlite::params;

use super::{SqliteStore, rollup, schema, sql, sqlite_err};
use crate::columns;
use crate::error::StoreError;
use crate::failpoint;

fn u(v: u64) -> i64 {
    // SQLite integers are i64; a single interval's counter never reaches 2^63.
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An address as text, on the stack (IPv6 text is at most 45 bytes, with an embedded
/// IPv4 address; Rust writes at most 39).
#[derive(Clone, Copy)]
struct AddrText {
    len: u8,
    buf: [u8; 46],
}

impl AddrText {
    fn of(a: Option<IpAddr>) -> AddrText {
        use std::fmt::Write as _;
        let mut t = AddrText {
            len: 0,
            buf: [0; 46],
        };
        match a {
            // The common case written by hand: `Display` costs several times more, and
            // every row has two or three addresses.
            Some(IpAddr::V4(v4)) => {
                let mut at = 0;
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.buf[at] = b'.';
                        at += 1;
                    }
                    let (h, d, u) = (o / 100, o / 10 % 10, o % 10);
                    if h > 0 {
                        t.buf[at] = b'0' + h;
                        at += 1;
                    }
                    if h > 0 || d > 0 {
                        t.buf[at] = b'0' + d;
                        at += 1;
                    }
                    t.buf[at] = b'0' + u;
                    at += 1;
                }
                t.len = at as u8;
            }
            // Cannot fail: an address is at most 45 bytes of text.
            Some(a) => {
                let _ = write!(t, "{a}");
            }
            None => {}
        }
        t
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so this never fails.
        std::str::from_utf8(self.bytes()).unwrap_or_default()
    }

    /// The first 16 bytes, zero padded: orders like the text for texts that differ
    /// there (zero sorts before every character, as a shorter text does).
    fn prefix(&self) -> u128 {
        let mut p = [0u8; 16];
        p.copy_from_slice(&self.buf[..16]);
        u128::from_be_bytes(p)
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let at = usize::from(self.len);
        let dst = self.buf.get_mut(at..at + s.len()).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len += s.len() as u8;
        Ok(())
    }
}

/// A row with its key columns as the table stores them and its other values copied
/// out: the rows are written in key order, not in the order they sit in memory, and
/// reading each through its reference would miss the cache once per row.
struct Keyed<'r> {
    row: &'r FlowRow,
    labels: &'r FlowLabels,
    /// The observer's rank among the batch's observers (its text is bound on change).
    observer: u64,
    interval_start: i64,
    interval_s: u32,
    proto: u8,
    responder_port: u16,
    local_initiated: bool,
    service_port: u16,
    /// The ends' prefix lengths (32 or 128: full addresses).
    prefix_lens: (u8, u8),
    counters: [u64; 6],
    cost_usd: f64,
    local: AddrText,
    remote: AddrText,
    service: AddrText,
}

/// `rows` in the table's primary-key order (interval, observer, proto, addresses as
/// text, port, initiator, Service address). Only speed depends on the order being
/// exact: the upsert is right in any order.
fn in_key_order<'r>(rows: &[&'r FlowRow]) -> Vec<Keyed<'r>> {
    let mut observers: Vec<&str> = rows.iter().map(|r| r.observer.as_str()).collect();
    observers.sort_unstable();
    observers.dedup();
    let rank = |o: &str| observers.binary_search(&o).unwrap_or_default() as u64;
    let mut keyed: Vec<Keyed> = rows
        .iter()
        .map(|&r| Keyed {
            row: r,
            labels: &r.labels,
            observer: rank(&r.observer),
            interval_start: r.interval_start,
            interval_s: r.interval_s,
            proto: r.key.proto.0,
            responder_port: r.key.responder_port,
            local_initiated: r.key.local_initiated,
            service_port: r.key.service.map_or(0, |(_, p)| p),
            prefix_lens: (r.key.local_prefix_len(), r.key.remote_prefix_len()),
            counters: r.totals.columns(),
            cost_usd: r.cost_usd,
            local: AddrText::of(Some(r.key.local)),
            remote: AddrText::of(Some(r.key.remote)),
            service: AddrText::of(r.key.service.map(|(a, _)| a)),
        })
        .collect();
    // Sorted by a compact copy of the key, computed once per row (integers: no string
    // compares).
    keyed.sort_by_cached_key(|k| {
        (
            k.interval_start,
            k.observer << 8 | u64::from(k.proto),
            k.local.prefix(),
            k.remote.prefix(),
            u64::from(k.responder_port) << 1 | u64::from(k.local_initiated),
            k.service.prefix(),
        )
    });
    keyed
}

/// Binds the upsert's parameters for `k`, skipping those equal to `prev`'s: in
/// [`sql::UPSERT`]'s order, 1-2 the interval, 3-10 the key, 11-16 the counters, 17 the
/// cost, then the labels, `remote_observed` and the prefix lengths.
fn bind_row(
    st: &mut rusqlite::Statement<'_>,
    k: &Keyed<'_>,
    prev: Option<&Keyed<'_>>,
) -> rusqlite::Result<()> {
    fn one<T: rusqlite::ToSql + PartialEq>(
        st: &mut rusqlite::Statement<'_>,
        i: usize,
        now: T,
        was: Option<T>,
    ) -> rusqlite::Result<()> {
        if was.as_ref() != Some(&now) {
            st.raw_bind_parameter(i, now)?;
        }
        Ok(())
    }
    let p = prev;
    one(st, 1, k.interval_start, p.map(|p| p.interval_start))?;
    one(st, 2, k.interval_s, p.map(|p| p.interval_s))?;
    if p.is_none_or(|p| p.observer != k.observer) {
        st.raw_bind_parameter(3, k.row.observer.as_str())?;
    }
    one(st, 4, k.proto, p.map(|p| p.proto))?;
    for (i, now, was) in [
        (5, &k.local, p.map(|p| &p.local)),
        (6, &k.remote, p.map(|p| &p.remote)),
        (9, &k.service, p.map(|p| &p.service)),
    ] {
        if was.is_none_or(|w| w.bytes() != now.bytes()) {
            st.raw_bind_parameter(i, now.as_str())?;
        }
    }
    one(st, 7, k.responder_port, p.map(|p| p.responder_port))?;
    one(st, 8, k.local_initiated, p.map(|p| p.local_initiated))?;
    one(st, 10, k.service_port, p.map(|p| p.service_port))?;
    for (i, c) in k.counters.into_iter().enumerate() {
        one(st, 11 + i, u(c), p.map(|p| u(p.counters[i])))?;
    }
    one(st, 17, k.cost_usd, p.map(|p| p.cost_usd))?;
    let same_labels = p.is_some_and(|p| std::ptr::eq(p.labels, k.labels));
    if !same_labels {
        let was = p.map(|p| columns::values(p.labels));
        for (i, v) in columns::values(k.labels).into_iter().enumerate() {
            // Equal labels are mostly the same shared string: compare addresses first.
            let same = was.is_some_and(|w| std::ptr::eq(w[i], v) || w[i] == v);
            if !same {
                st.raw_bind_parameter(sql::LABELS_PARAM + i, v)?;
            }
        }
    }
    one(
        st,
        sql::REMOTE_OBSERVED_PARAM,
        k.labels.remote_observed,
        p.map(|p| p.labels.remote_observed),
    )?;
    one(
        st,
        sql::PREFIX_PARAM,
        k.prefix_lens.0,
        p.map(|p| p.prefix_lens.0),
    )?;
    one(
        st,
        sql::PREFIX_PARAM + 1,
        k.prefix_lens.1,
        p.map(|p| p.prefix_lens.1),
    )
}

impl SqliteStore {
    /// Adds the rows of `chunks` (summed into the rows of the same interval and key) and
    /// records `marks`, in one transaction; a chunk with a token written before is
    /// skipped (its rows are in already).
    pub(super) fn write_rows(
        &mut self,
        chunks: &[(Option<&str>, &[FlowRow])],
        marks: &[AgentMark],
    ) -> Result<(), StoreError> {
        let err = |op| sqlite_err(&self.path, op);
        let tx = self.conn.transaction().map_err(err("begin"))?;
        let mut rows: Vec<&FlowRow> = Vec::new();
        if chunks.iter().any(|(t, _)| t.is_some()) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let mut st = tx
                .prepare_cached(sql::CHUNK)
                .map_err(err("prepare chunks"))?;
            for (token, chunk) in chunks {
                let new = match token {
                    Some(t) => st.execute(params![t, now]).map_err(err("record a chunk"))? == 1,
                    None => true,
                };
                if new {
                    rows.extend(chunk.iter());
                }
            }
            tx.execute(sql::PRUNE_CHUNKS, params![schema::CHUNKS_KEPT])
                .map_err(err("forget old chunks"))?;
        } else {
            rows.extend(chunks.iter().flat_map(|(_, c)| c.iter()));
        }
        {
            let mut st = tx
                .prepare_cached(&sql::UPSERT)
                .map_err(err("prepare upsert"))?;
            // In primary-key order: the rows of a new interval then append to the end of
            // the table's B-tree instead of landing on random pages (several times faster
            // with hundreds of thousands of keys per interval).
            let keyed = in_key_order(&rows);
            // SQLite keeps a statement's bindings across executions: bind only the
            // parameters that differ from the previous row's (most labels repeat).
            let mut prev: Option<&Keyed> = None;
            for k in &keyed {
                bind_row(&mut st, k, prev).map_err(err("bind upsert"))?;
                st.raw_execute().map_err(err("upsert"))?;
                prev = Some(k);
            }
            failpoint::check("sqlite-after-rows")?;
            for (table, level) in rollup::aggregate_levels(&rows) {
                let mut st = tx
                    .prepare_cached(&sql::rollup_upsert(table))
                    .map_err(err("prepare rollup upsert"))?;
                // In primary-key order, like the rows: the coarser levels' buckets hold
                // earlier intervals' keys, and updates in key order walk their pages
                // once instead of landing on random ones.
                let mut level: Vec<_> = level.into_iter().collect();
                level.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                for ((bucket, once, dims), sums) in level {
                    let counts = sums.counts.map(u);
                    let mut p: Vec<&dyn rusqlite::ToSql> = vec![&bucket, &once];
                    p.extend(dims.iter().map(|d| d as &dyn rusqlite::ToSql));
                    p.extend(counts.iter().map(|c| c as &dyn rusqlite::ToSql));
                    p.push(&sums.cost_usd);
                    st.execute(p.as_slice()).map_err(err("rollup upsert"))?;
                }
            }
            failpoint::check("sqlite-after-rollups")?;
        }
        {
            let mut st = tx.prepare_cached(sql::MARK).map_err(err("prepare marks"))?;
            for m in marks {
                let pending = crate::marks::encode(&m.pending);
                st.execute(params![m.agent, u(m.seq), m.node, m.last_seen, pending])
                    .map_err(err("write mark"))?;
            }
        }
        failpoint::check("sqlite-after-marks")?;
        tx.commit().map_err(err("commit"))?;
        failpoint::check("sqlite-after-commit")
    }

    /// Deletes the rows, and the rollups' whole buckets, before `before`; returns how
    /// many rows.
    pub(super) fn expire_rows(&mut self, before: i64) -> Result<u64, StoreError> {
        let err = |op| sqlite_err(&self.path, op);
        let tx = self.conn.transaction().map_err(err("begin expiry"))?;
        let n = tx
            .execute(sql::EXPIRE, params![before])
            .map_err(err("expire"))?;
        for (table, width) in rollup::LEVELS {
            tx.execute(&sql::expire_rollup(table), params![before, width])
                .map_err(err("expire a rollup"))?;
        }
        tx.commit().map_err(err("commit expiry"))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_reads_as_its_display() {
        let mut v4: Vec<IpAddr> = [0u32, 1, 9, 10, 99, 100, 255, 256, 0x0a00_0001, u32::MAX]
            .into_iter()
            .map(|n| IpAddr::from(std::net::Ipv4Addr::from(n)))
            .collect();
        // Every octet value in every position.
        for o in 0..=255u32 {
            v4.push(IpAddr::from(std::net::Ipv4Addr::from(
                o << 24 | o << 16 | (255 - o) << 8 | o,
            )));
        }
        let v6 = [
            "::",
            "::1",
            "2001:db8::7",
            "::ffff:10.1.2.3",
            "fe80::1:2:3:4",
        ]
        .map(|a| a.parse::<IpAddr>().expect("address"));
        for a in v4.into_iter().chain(v6) {
            assert_eq!(AddrText::of(Some(a)).as_str(), a.to_string());
        }
        assert_eq!(AddrText::of(None).as_str(), "");
    }
}
