//! The crate's one error type. Decoder failures say which field of which packet was
//! wrong; socket failures say what podflow was doing and with which address.

use std::net::SocketAddr;

/// What was wrong with a probe packet (see [`crate::wire`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the fixed header.
    #[error("probe packet of {len} bytes is shorter than the {need}-byte header")]
    Short {
        /// Bytes present.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The first four bytes are not `PFPB`.
    #[error("probe packet starts with {found:#010x}, not the magic {expected:#010x} (\"PFPB\")")]
    Magic {
        /// What the packet had.
        found: u32,
        /// What a probe has.
        expected: u32,
    },
    /// A version this build does not speak.
    #[error("probe packet version {0} is not supported (this build speaks version 1)")]
    Version(u8),
    /// The type byte is neither request (1) nor reply (2).
    #[error("probe packet type {0} is neither request (1) nor reply (2)")]
    Type(u8),
    /// A request asked for a size the encoder cannot make.
    #[error("probe size {size} is outside {min}..={max} bytes")]
    Size {
        /// Requested size.
        size: usize,
        /// Smallest packet (the header).
        min: usize,
        /// Largest packet.
        max: usize,
    },
}

/// What was wrong with a DNS answer (see [`crate::dns`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Fewer bytes than the 12-byte header or a record needs.
    #[error("DNS message of {len} bytes ends at offset {at} inside {what}")]
    Truncated {
        /// Message length.
        len: usize,
        /// Where the data ran out.
        at: usize,
        /// What was being read.
        what: &'static str,
    },
    /// The answer's id is not the query's.
    #[error("DNS answer id {got:#06x} does not match query id {want:#06x}")]
    Id {
        /// Id in the answer.
        got: u16,
        /// Id of the query.
        want: u16,
    },
    /// The QR bit says query, not response.
    #[error("DNS message is a query, not a response")]
    NotResponse,
    /// The question section does not echo the question asked.
    #[error("DNS answer is for another question")]
    Question,
    /// A compressed name loops or points forward.
    #[error("DNS name at offset {at}: {why}")]
    Name {
        /// Offset of the name.
        at: usize,
        /// What was wrong.
        why: &'static str,
    },
    /// A name to ask for is not a valid DNS name.
    #[error("cannot ask DNS for {name:?}: {why}")]
    BadName {
        /// The name.
        name: String,
        /// What was wrong.
        why: &'static str,
    },
}

/// Any failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A probe packet from `from` could not be decoded.
    #[error("probe packet from {from}: {source}")]
    Wire {
        /// Sender.
        from: SocketAddr,
        /// What was wrong.
        source: WireError,
    },
    /// A DNS answer from `resolver` could not be decoded.
    #[error("DNS answer from {resolver}: {source}")]
    Dns {
        /// The resolver.
        resolver: SocketAddr,
        /// What was wrong.
        source: DnsError,
    },
    /// A socket call failed.
    #[error("{op} {addr}: {source}")]
    Socket {
        /// What podflow was doing ("bind UDP responder", "connect", ...).
        op: &'static str,
        /// The address it was doing it with.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("probe config {key} = {value}: {why}")]
    Config {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl Error {
    pub(crate) fn socket(op: &'static str, addr: SocketAddr, e: impl Into<std::io::Error>) -> Self {
        Error::Socket {
            op,
            addr,
            source: e.into(),
        }
    }
}
