//! Why a role stopped.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a role stopped (or could not start); every variant names its input.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The conntrack source failed.
    #[error("conntrack source: {0}")]
    Conntrack(#[from] podflow_conntrack::Error),
    /// The store failed to open.
    #[error(transparent)]
    Store(#[from] podflow_store::StoreError),
    /// The HTTP or gRPC listener could not bind.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file named by a flag could not be read.
    #[error("{flag} {path}: {source}")]
    File {
        /// The flag that names it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Attribution could not be set up (cloud ranges, prices, inventory).
    #[error("attribution: {0}")]
    Attribution(String),
    /// Settings are unusable (TLS, tokens, addresses).
    #[error("{0}")]
    Config(String),
    /// A task ended abnormally.
    #[error("{0}")]
    Task(String),
}

/// Reads the file `path` named by `flag` (certificates, keys, tokens).
pub fn read_file(flag: &'static str, path: &std::path::Path) -> Result<Vec<u8>, RoleError> {
    std::fs::read(path).map_err(|source| RoleError::File {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// An error and its causes on one line, each cause once: most errors here name their
/// cause in their own message as well as returning it as their source, so printing every
/// source (anyhow's `{:#}`) says the same thing two or three times. A cause whose text is
/// already in the line is left out.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("starting the agent")]
    struct Outer(#[source] RoleError);

    #[test]
    fn a_chain_says_each_cause_once() {
        let inner = RoleError::DataDir {
            path: PathBuf::from("/var/lib/podflow"),
            source: std::io::Error::other("disk on fire"),
        };
        // The role error names its cause and returns it as its source: said once.
        assert_eq!(
            chain(&inner),
            "data directory /var/lib/podflow: disk on fire"
        );
        // A context that does not name its cause gets it appended.
        assert_eq!(
            chain(&Outer(inner)),
            "starting the agent: data directory /var/lib/podflow: disk on fire"
        );
    }
}
