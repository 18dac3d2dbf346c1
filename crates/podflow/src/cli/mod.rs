//! The command-line parts both binaries share.

pub mod agent;
pub mod duration;
pub mod runtime;
pub mod sysctl;
