//! `podflow-agent`: the agent alone, with the flags of `podflow agent`, and `podflow-agent
//! sysctl` for the chart's optional init container. Its text is a fraction of the
//! multi-role binary's, and the pages of text a process touches count in its resident
//! memory: the agent's base RSS is 7-8 MB instead of 10-11 MB (docs/benchmarks.md). The
//! agent image (scripts/build-image.sh --agent) holds it alone; the chart's DaemonSet runs
//! it.

use std::process::ExitCode;

use clap::Parser;
use podflow::cli::agent::AgentArgs;
use podflow::cli::runtime::Globals;
use podflow::cli::sysctl::SysctlArgs;

/// podflow's per-node agent: reads this node's conntrack and streams observations to a
/// podflow server over gRPC, keeping unacknowledged batches (memory, then a spill file)
/// across server restarts. Needs CAP_NET_ADMIN (a DaemonSet on the host network). The
/// same flags as `podflow agent`.
#[derive(Debug, Parser)]
#[command(
    name = "podflow-agent",
    version,
    about,
    long_about,
    after_help = "`podflow-agent sysctl [--netns FILE]` does what `podflow sysctl` does \
                  (the chart's optional privileged init container)."
)]
struct Cli {
    #[command(flatten)]
    globals: Globals,

    #[command(flatten)]
    agent: AgentArgs,
}

/// Turn on the kernel's conntrack byte counters and timestamps
/// (net.netfilter.nf_conntrack_acct=1, nf_conntrack_timestamp=1) in this network
/// namespace, print what they were and are, and exit: what `podflow sysctl` does, for the
/// agent image's privileged init container. Needs CAP_NET_ADMIN.
#[derive(Debug, Parser)]
#[command(
    name = "podflow-agent sysctl",
    bin_name = "podflow-agent sysctl",
    version,
    about,
    long_about
)]
struct SysctlCli {
    #[command(flatten)]
    globals: Globals,

    #[command(flatten)]
    sysctl: SysctlArgs,
}

fn main() -> ExitCode {
    // Not a clap subcommand: the agent's required flags would be required of it too.
    let result = if std::env::args_os().nth(1).is_some_and(|a| a == "sysctl") {
        let cli = SysctlCli::parse_from(std::env::args_os().skip(1));
        cli.globals.apply();
        podflow::cli::sysctl::run(cli.sysctl)
    } else {
        let cli = Cli::parse();
        cli.globals.apply();
        podflow::cli::agent::run(cli.agent)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podflow-agent: {}", podflow_role::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
