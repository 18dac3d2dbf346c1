//! `podflow sysctl` and `podflow-agent sysctl`: turn the kernel's conntrack accounting and
//! timestamps on and say what changed (the agent's optional privileged init step: an image
//! without a shell has no `sysctl`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct SysctlArgs {
    /// Apply them in another network namespace (a file such as /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
}

pub fn run(a: SysctlArgs) -> anyhow::Result<()> {
    if let Some(ns) = &a.netns {
        podflow_conntrack::enter_netns(ns).with_context(|| format!("--netns {}", ns.display()))?;
    }
    let before = podflow_conntrack::read_features()?;
    let after = podflow_conntrack::enable_features()?;
    let word = |b: bool| if b { "on" } else { "off" };
    println!(
        "net.netfilter.nf_conntrack_acct: {} -> {}",
        word(before.accounting),
        word(after.accounting)
    );
    println!(
        "net.netfilter.nf_conntrack_timestamp: {} -> {}",
        word(before.timestamps),
        word(after.timestamps)
    );
    anyhow::ensure!(
        after.accounting && after.timestamps,
        "the kernel kept accounting {} and timestamps {}",
        word(after.accounting),
        word(after.timestamps)
    );
    Ok(())
}
