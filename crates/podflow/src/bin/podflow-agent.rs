//! `podflow-agent`: the agent alone, with the flags of `podflow agent`. Its text is a
//! fraction of the multi-role binary's, and the pages of text a process touches count in
//! its resident memory: the agent's base RSS is 7-8 MB instead of 10-11 MB
//! (docs/benchmarks.md). The Helm chart's DaemonSet runs it.

use std::process::ExitCode;

use clap::Parser;
use podflow::cli::agent::AgentArgs;
use podflow::cli::runtime::Globals;

/// podflow's per-node agent: reads this node's conntrack and streams observations to a
/// podflow server over gRPC, keeping unacknowledged batches (memory, then a spill file)
/// across server restarts. Needs CAP_NET_ADMIN (a DaemonSet on the host network). The
/// same flags as `podflow agent`.
#[derive(Debug, Parser)]
#[command(name = "podflow-agent", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    globals: Globals,

    #[command(flatten)]
    agent: AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.globals.apply();
    match podflow::cli::agent::run(cli.agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podflow-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
