//! `--ensure-tracking`: conntrack is only active in a network namespace when some rule
//! needs it. On a host without any, one nftables table with a `ct state` rule makes the
//! kernel track connections; it is removed again at exit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

const TABLE: &str = "table inet podflow_track {
  chain pre { type filter hook prerouting priority -300; ct state new counter; }
  chain out { type filter hook output priority -300; ct state new counter; }
}
";

/// The table, deleted on drop.
#[derive(Debug)]
pub struct Tracking {
    netns: Option<PathBuf>,
}

fn nft(netns: Option<&Path>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("nft");
            c
        }
        None => Command::new("nft"),
    }
}

impl Tracking {
    /// Adds the table (idempotent).
    pub fn ensure(netns: Option<&Path>) -> anyhow::Result<Tracking> {
        let mut child = nft(netns)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run `nft` (install nftables)")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(TABLE.as_bytes())
            .context("write the nft table")?;
        let out = child.wait_with_output().context("wait for nft")?;
        if !out.status.success() {
            bail!(
                "nft refused the table: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        tracing::info!("added nftables table inet podflow_track so the kernel tracks connections");
        Ok(Tracking {
            netns: netns.map(Path::to_path_buf),
        })
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        let _ = nft(self.netns.as_deref())
            .args(["delete", "table", "inet", "podflow_track"])
            .stderr(Stdio::null())
            .status();
    }
}
