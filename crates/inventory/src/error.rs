use std::path::PathBuf;

/// Everything that can go wrong loading an inventory; each names the file and the place.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// JSON did not parse (the message carries line and column).
    #[error("{origin}: {source}")]
    Json {
        /// The file.
        origin: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// YAML did not parse (the message carries line and column).
    #[error("{origin}: {source}")]
    Yaml {
        /// The file.
        origin: String,
        /// The parser's error.
        source: Box<serde_saphyr::Error>,
    },
    /// An object parsed but a field is wrong.
    #[error("{origin}: {object}: {field}: {message}")]
    Field {
        /// The file.
        origin: String,
        /// `Kind namespace/name`.
        object: String,
        /// The field, e.g. `status.podIPs[1].ip`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The Kubernetes API source failed (configuration, client, watcher).
    #[error("kubernetes API: {message}")]
    Kube {
        /// What failed.
        message: String,
    },
}
