use std::path::PathBuf;

/// Everything that can go wrong loading enrich inputs; each names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file did not parse (serde_json's message carries line and column).
    #[error("{origin}: {source}")]
    Json {
        /// The file (or `<embedded ...>`).
        origin: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A YAML file did not parse (the message carries line and column).
    #[error("{origin}: {source}")]
    Yaml {
        /// The file (or `<embedded ...>`).
        origin: String,
        /// The parser's error.
        source: Box<serde_saphyr::Error>,
    },
    /// A value parsed but is wrong.
    #[error("{origin}: {field}: {message}")]
    Field {
        /// The file (or `<embedded ...>`).
        origin: String,
        /// Where in the file, e.g. `prefixes[12].ip_prefix`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl EnrichError {
    pub(crate) fn field(
        origin: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> EnrichError {
        EnrichError::Field {
            origin: origin.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn json(origin: &str, source: serde_json::Error) -> EnrichError {
        EnrichError::Json {
            origin: origin.to_string(),
            source,
        }
    }

    pub(crate) fn yaml(origin: &str, source: serde_saphyr::Error) -> EnrichError {
        EnrichError::Yaml {
            origin: origin.to_string(),
            source: Box::new(source),
        }
    }
}
