//! The crate's one error type: every message names the version, the exporter and
//! where in the datagram the problem was.

use std::fmt;
use std::net::SocketAddr;

/// Which export protocol a datagram claimed to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// NetFlow v5.
    V5,
    /// NetFlow v9 (RFC 3954).
    V9,
    /// IPFIX (RFC 7011), version number 10.
    Ipfix,
    /// Anything else (the number found in the first two bytes).
    Unknown(u16),
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::V5 => f.write_str("NetFlow v5"),
            Version::V9 => f.write_str("NetFlow v9"),
            Version::Ipfix => f.write_str("IPFIX"),
            Version::Unknown(v) => write!(f, "NetFlow/IPFIX (version {v})"),
        }
    }
}

/// A decode failure: which exporter sent what, and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{version} packet from {exporter}: {kind}")]
pub struct DecodeError {
    /// The version the datagram claimed.
    pub version: Version,
    /// The datagram's source.
    pub exporter: SocketAddr,
    /// What was wrong.
    pub kind: ErrorKind,
}

impl DecodeError {
    /// The reason label for metrics.
    pub fn reason(&self) -> ErrorReason {
        self.kind.reason()
    }
}

/// What was wrong with a datagram, with the offsets and ids needed to find it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// Fewer bytes than the fixed header needs.
    #[error("{len} bytes are too short for the {need}-byte header")]
    ShortHeader {
        /// Bytes present.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The version number is not 5, 9 or 10.
    #[error("unsupported version {0}")]
    UnknownVersion(u16),
    /// NetFlow v5: the header's record count does not fit the datagram.
    #[error("header announces {count} records ({need} bytes) but only {len} bytes follow")]
    V5Count {
        /// Records announced.
        count: u16,
        /// Bytes they need.
        need: usize,
        /// Bytes present after the header.
        len: usize,
    },
    /// IPFIX: the message length in the header is wrong.
    #[error("message length {declared} does not fit the {actual}-byte datagram")]
    MessageLength {
        /// Length in the header.
        declared: u16,
        /// Datagram length.
        actual: usize,
    },
    /// A set (flowset) header claims a length that is too short or runs past the end.
    #[error("set {set_id} at offset {offset} has length {len} but {remaining} bytes remain")]
    SetLength {
        /// Set (flowset) id.
        set_id: u16,
        /// Offset of the set header in the datagram.
        offset: usize,
        /// The set's length field.
        len: u16,
        /// Bytes left in the datagram from the set's start.
        remaining: usize,
    },
    /// A template record is malformed.
    #[error("template {template} at offset {offset}: {why}")]
    BadTemplate {
        /// Template id (0 when it could not be read).
        template: u16,
        /// Offset of the template record in the datagram.
        offset: usize,
        /// What was wrong.
        why: &'static str,
    },
    /// A field of a data record runs past the end of the record (or set).
    #[error("template {template} field {field} runs past the record at offset {offset}")]
    FieldPastRecord {
        /// Template id.
        template: u16,
        /// Index of the field in the template (0-based).
        field: usize,
        /// Offset of the record in the datagram.
        offset: usize,
    },
    /// The template cache is configured to hold nothing; the template was refused.
    #[error("template {template} refused: the cache holds at most {limit} templates")]
    TooManyTemplates {
        /// Template id refused.
        template: u16,
        /// The configured limit.
        limit: usize,
    },
}

impl ErrorKind {
    /// The reason label for metrics.
    pub fn reason(&self) -> ErrorReason {
        match self {
            ErrorKind::ShortHeader { .. } => ErrorReason::ShortHeader,
            ErrorKind::UnknownVersion(_) => ErrorReason::UnknownVersion,
            ErrorKind::V5Count { .. } | ErrorKind::MessageLength { .. } => ErrorReason::BadLength,
            ErrorKind::SetLength { .. } => ErrorReason::BadSet,
            ErrorKind::BadTemplate { .. } => ErrorReason::BadTemplate,
            ErrorKind::FieldPastRecord { .. } => ErrorReason::BadRecord,
            ErrorKind::TooManyTemplates { .. } => ErrorReason::TemplateLimit,
        }
    }
}

/// Decode error reasons, a small fixed set usable as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorReason {
    /// Datagram shorter than its header.
    ShortHeader,
    /// Version not 5, 9 or 10.
    UnknownVersion,
    /// Record count or message length inconsistent with the datagram.
    BadLength,
    /// A set header with an impossible length.
    BadSet,
    /// A malformed template or options template.
    BadTemplate,
    /// A data record that runs past its set.
    BadRecord,
    /// The template cache holds no templates (a limit of 0).
    TemplateLimit,
}

impl ErrorReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [ErrorReason; 7] = [
        ErrorReason::ShortHeader,
        ErrorReason::UnknownVersion,
        ErrorReason::BadLength,
        ErrorReason::BadSet,
        ErrorReason::BadTemplate,
        ErrorReason::BadRecord,
        ErrorReason::TemplateLimit,
    ];

    /// The label value (`short_header`, `bad_template`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::ShortHeader => "short_header",
            ErrorReason::UnknownVersion => "unknown_version",
            ErrorReason::BadLength => "bad_length",
            ErrorReason::BadSet => "bad_set",
            ErrorReason::BadTemplate => "bad_template",
            ErrorReason::BadRecord => "bad_record",
            ErrorReason::TemplateLimit => "template_limit",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Decode error counts by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; 7]);

impl ErrorCounts {
    /// Adds one error of `reason`.
    pub fn add(&mut self, reason: ErrorReason) {
        self.0[reason.index()] += 1;
    }

    /// Adds `n` errors of `reason`.
    pub fn add_n(&mut self, reason: ErrorReason, n: u64) {
        self.0[reason.index()] += n;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// The count for `reason`.
    pub fn get(&self, reason: ErrorReason) -> u64 {
        self.0[reason.index()]
    }

    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// (reason, count) pairs, every reason included.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorReason, u64)> + '_ {
        ErrorReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}
