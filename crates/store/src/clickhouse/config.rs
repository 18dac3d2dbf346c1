//! Where and how the ClickHouse store writes, checked before anything connects.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::ClickHouseError;

/// Where and how to store flows in ClickHouse.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP(S) endpoint, e.g. `https://clickhouse.example:8443`.
    pub url: String,
    /// Database (created if missing).
    pub database: String,
    /// Table (created or migrated at start).
    pub table: String,
    /// User name.
    pub user: Option<String>,
    /// Password given directly (e.g. from `PODFLOW_CLICKHOUSE_PASSWORD`); prefer `password_file`.
    pub password: Option<String>,
    /// File holding the password (a mounted Secret); one trailing newline is ignored.
    pub password_file: Option<PathBuf>,
    /// Cluster name: DDL runs `ON CLUSTER` and the table is a ReplicatedSummingMergeTree.
    pub cluster: Option<String>,
    /// Rows older than this many days are dropped by the table's TTL (0: keep forever).
    pub ttl_days: u32,
    /// At most this many flow rows per INSERT (each becomes an `out` and an `in` row).
    pub batch_rows: usize,
    /// Retries of a request that failed transiently (network, timeouts, overload).
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubles up to 10 s.
    pub retry_backoff_ms: u64,
    /// Timeout of one request, seconds.
    pub timeout_s: u64,
    /// `non_replicated_deduplication_window` of a non-replicated table: how many recent
    /// inserts are remembered to drop a retried batch (replicated tables use the server's
    /// `replicated_deduplication_window`).
    pub dedup_window: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "default".into(),
            table: "network_flows_0".into(),
            user: None,
            password: None,
            password_file: None,
            cluster: None,
            ttl_days: 90,
            batch_rows: 50_000,
            max_retries: 5,
            retry_backoff_ms: 200,
            timeout_s: 30,
            dedup_window: 1000,
        }
    }
}

impl fmt::Debug for ClickHouseConfig {
    // By hand so that a password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("table", &self.table)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("cluster", &self.cluster)
            .field("ttl_days", &self.ttl_days)
            .field("batch_rows", &self.batch_rows)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("timeout_s", &self.timeout_s)
            .field("dedup_window", &self.dedup_window)
            .finish()
    }
}

impl ClickHouseConfig {
    /// Checks the names that go into DDL and the batch size.
    pub(crate) fn check(&self) -> Result<(), ClickHouseError> {
        check_identifier("database", &self.database)?;
        check_identifier("table", &self.table)?;
        if let Some(c) = &self.cluster {
            check_identifier("cluster", c)?;
        }
        if self.batch_rows == 0 {
            return Err(ClickHouseError::Config(
                "batch_rows must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The password, given directly or read from `password_file` (one trailing newline
    /// dropped), if any.
    pub(crate) fn password(&self) -> Result<Option<String>, ClickHouseError> {
        match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => Err(ClickHouseError::Config(
                "give either password or password_file, not both".into(),
            )),
            (Some(p), None) => Ok(Some(p.clone())),
            (None, Some(f)) => {
                let s = std::fs::read_to_string(f).map_err(|e| {
                    ClickHouseError::Config(format!("password_file {}: {e}", f.display()))
                })?;
                Ok(Some(
                    s.strip_suffix('\n')
                        .unwrap_or(&s)
                        .trim_end_matches('\r')
                        .to_string(),
                ))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Accepts a database, table or cluster name that is safe inside backquotes.
fn check_identifier(what: &str, s: &str) -> Result<(), ClickHouseError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ClickHouseError::Config(format!(
            "{what} {s:?} must be 1-128 characters of letters, digits, '_', '-', '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("table", "network_flows_0").is_ok());
        assert!(check_identifier("table", "a`; DROP").is_err());
        assert!(check_identifier("table", "").is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let cfg = ClickHouseConfig {
            password: Some("hunter2".into()),
            ..Default::default()
        };
        let s = format!("{cfg:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("<redacted>"), "{s}");
    }
}
