//! NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011/7012) decoding.
//!
//! Pure: datagrams in, [`FlowRecord`]s out, time passed in by the caller. A
//! [`Decoder`] keeps what the protocols make stateful (templates, sampling rates,
//! sequence numbers, data that came before its template) per exporter and domain,
//! and counts everything it skips or drops in [`Stats`].
//!
//! The one I/O part is the `Listener` (feature `listener`): UDP sockets, receive
//! threads, one decoder per thread, flows out to a sink. Without the feature the crate
//! has no sockets, threads or system calls.

mod allow;
mod batch;
mod decoder;
pub mod encode;
mod error;
#[cfg(feature = "listener")]
mod listener;
mod record;
mod stats;
mod template;

pub use allow::{AllowError, AllowList};
pub use batch::{Batch, ObserverNames};
pub use decoder::{Decoder, DecoderConfig};
pub use error::{DecodeError, ErrorCounts, ErrorKind, ErrorReason, Version};
#[cfg(feature = "listener")]
pub use listener::{
    ListenError, Listener, ListenerConfig, ListenerSnapshot, ListenerStats, POLL_MS, SocketInfo,
};
pub use record::{Direction, Flow, FlowRecord, TCP_FIN, TCP_RST, TCP_SYN};
pub use stats::{DomainKey, Stats};
