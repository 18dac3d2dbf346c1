use std::path::PathBuf;

use crate::decode::DecodeError;

/// What went wrong talking to conntrack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket call failed.
    #[error("ctnetlink {op}: {errno}")]
    Socket {
        /// What podflow was doing (e.g. "open event socket").
        op: &'static str,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// The kernel answered a request with an error.
    #[error("ctnetlink {op}: the kernel answered {errno}{hint}")]
    Kernel {
        /// The request.
        op: &'static str,
        /// The errno the kernel returned.
        errno: nix::errno::Errno,
        /// What to do about it.
        hint: &'static str,
    },
    /// A message from the kernel could not be decoded.
    #[error("ctnetlink {op}: {source}")]
    Decode {
        /// Where it came from (dump or events).
        op: &'static str,
        /// What was wrong.
        source: DecodeError,
    },
    /// A sysctl or namespace file could not be read or written.
    #[error("{path}: {source}{hint}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// A tracker checkpoint could not be restored.
    #[error(transparent)]
    Checkpoint(#[from] crate::CheckpointError),
    /// A helper command (nft) failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        message: String,
    },
}

impl Error {
    pub(crate) fn kernel(op: &'static str, errno: nix::errno::Errno) -> Error {
        let hint = match errno {
            nix::errno::Errno::EPERM => {
                " (podflow needs root or CAP_NET_ADMIN in this network namespace)"
            }
            _ => "",
        };
        Error::Kernel { op, errno, hint }
    }
}
