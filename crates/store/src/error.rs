//! The crate's errors: every message names the input (the file, or the URL and table).

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("store {path}: {op}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// What podflow was doing.
        op: &'static str,
        /// The error.
        source: rusqlite::Error,
    },
    /// A stored value could not be read back.
    #[error("store {path}: row has an invalid {column}: {value:?}")]
    Corrupt {
        /// The database file.
        path: String,
        /// The column.
        column: &'static str,
        /// The value found.
        value: String,
    },
    /// A failpoint asked for an error (fault tests only: `failpoint`).
    #[error("failpoint {place}: injected error")]
    Injected {
        /// The failpoint.
        place: &'static str,
    },
    /// The ClickHouse backend failed (the message names the URL and table).
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
}

/// What went wrong talking to ClickHouse; every message names the URL and table.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    /// A request failed (after its retries, when the failure looked transient).
    #[error("ClickHouse {url} table {table}: {op} failed after {attempts} attempt(s): {source}")]
    Request {
        /// The endpoint.
        url: String,
        /// `database.table`.
        table: String,
        /// What podflow was doing.
        op: &'static str,
        /// How many times it was tried.
        attempts: u32,
        /// The client's error.
        source: ::clickhouse::error::Error,
    },
    /// A row or a stored value cannot be represented.
    #[error("ClickHouse {url} table {table}: {what}")]
    Invalid {
        /// The endpoint.
        url: String,
        /// `database.table`.
        table: String,
        /// What is wrong.
        what: String,
    },
    /// The configuration is unusable.
    #[error("ClickHouse config: {0}")]
    Config(String),
}
