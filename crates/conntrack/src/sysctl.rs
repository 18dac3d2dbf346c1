//! The per-namespace conntrack switches podflow depends on.

use std::path::{Path, PathBuf};

use crate::Error;

const ACCT: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";
const TSTAMP: &str = "/proc/sys/net/netfilter/nf_conntrack_timestamp";

/// Which conntrack features are on in the current network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `nf_conntrack_acct`: byte and packet counters. Without it podflow sees connections
    /// but no bytes or packets.
    pub accounting: bool,
    /// `nf_conntrack_timestamp`: start/stop times. Without it there are no connection
    /// durations and a reused conntrack id is told apart by tuple only.
    pub timestamps: bool,
}

impl Features {
    /// What podflow will miss, one sentence per missing feature.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if !self.accounting {
            m.push(
                "net.netfilter.nf_conntrack_acct=0: connections are seen but carry no byte or \
                 packet counters, so every byte total stays 0 (start with --enable-accounting \
                 or set the sysctl)",
            );
        }
        if !self.timestamps {
            m.push(
                "net.netfilter.nf_conntrack_timestamp=0: no connection start/stop times, so no \
                 durations; reused conntrack ids are told apart by tuple only",
            );
        }
        m
    }
}

fn read_flag(path: &str) -> Result<bool, Error> {
    let s = std::fs::read_to_string(path).map_err(|source| Error::File {
        path: PathBuf::from(path),
        source,
        hint: " (is the nf_conntrack module loaded?)",
    })?;
    Ok(s.trim() != "0")
}

fn write_flag(path: &str) -> Result<(), Error> {
    std::fs::write(Path::new(path), b"1").map_err(|source| Error::File {
        path: PathBuf::from(path),
        source,
        hint: " (setting it needs root or CAP_NET_ADMIN with a writable /proc/sys)",
    })
}

/// Reads the features of the calling thread's network namespace.
pub fn read_features() -> Result<Features, Error> {
    Ok(Features {
        accounting: read_flag(ACCT)?,
        timestamps: read_flag(TSTAMP)?,
    })
}

/// Turns accounting and timestamps on in the calling thread's network namespace.
pub fn enable_features() -> Result<Features, Error> {
    let f = read_features()?;
    if !f.accounting {
        write_flag(ACCT)?;
    }
    if !f.timestamps {
        write_flag(TSTAMP)?;
    }
    read_features()
}
