//! Network impairment for tests and demos, inside network namespaces the caller made:
//!
//! - [`LossRule`]: drop a random share of the packets to (or from) one peer address,
//!   with nftables `numgen random` or iptables `-m statistic`;
//! - [`Delayer`]: an NFQUEUE client (raw netlink, nfnetlink_queue) that holds each
//!   packet to (or from) one peer for a fixed delay plus an optional random extra and
//!   then accepts it; verdicts go out in release order, so a random extra reorders.
//!
//! Everything installed is removed when the value is dropped, also while a test
//! unwinds from a panic. No netem needed (this kernel has none).

mod delay;
mod loss;
mod nfq;
pub mod testing;

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub use delay::{DelaySpec, Delayer, DelayerStats};
pub use loss::{Backend, LossRule};

/// What went wrong installing an impairment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace is not a named one this process may touch.
    #[error("network namespace {name:?}: {why}")]
    Namespace {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// A command (nft, iptables) failed.
    #[error("in namespace {ns}: `{cmd}` failed: {stderr}")]
    Command {
        /// The namespace.
        ns: String,
        /// The command line.
        cmd: String,
        /// What it said.
        stderr: String,
    },
    /// A value is out of range.
    #[error("{what} = {value}: {why}")]
    Value {
        /// The parameter.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A netlink call to nfnetlink_queue failed.
    #[error("NFQUEUE {queue} in namespace {ns}: {op}: {errno}")]
    Netlink {
        /// The namespace.
        ns: String,
        /// The queue number.
        queue: u16,
        /// What was being done.
        op: &'static str,
        /// The error.
        errno: nix::errno::Errno,
    },
}

/// Which packets of the namespace an impairment applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Packets this namespace sends to the peer (output hook, destination = peer).
    ToPeer,
    /// Packets this namespace receives from the peer (input hook, source = peer).
    FromPeer,
}

/// Checks that `name` is a named network namespace (`/run/netns/NAME`) and not the
/// host's own: impairments never touch the machine's real network.
pub fn check_netns(name: &str) -> Result<PathBuf, Error> {
    let bad = |why: &str| Error::Namespace {
        name: name.to_string(),
        why: why.to_string(),
    };
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(bad("not a plain namespace name"));
    }
    let path = PathBuf::from(format!("/run/netns/{name}"));
    let ns = std::fs::metadata(&path).map_err(|e| bad(&format!("{}: {e}", path.display())))?;
    for host in ["/proc/1/ns/net", "/proc/self/ns/net"] {
        if let Ok(h) = std::fs::metadata(host)
            && h.ino() == ns.ino()
            && h.dev() == ns.dev()
        {
            return Err(bad(&format!("is the same namespace as {host}")));
        }
    }
    Ok(path)
}

/// Runs `program args` inside `ns` with `stdin` fed; fails with its stderr.
fn run_in(ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), Error> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let line = format!("{program} {}", args.join(" "));
    let err = |stderr: String| Error::Command {
        ns: ns.to_string(),
        cmd: line.clone(),
        stderr,
    };
    let mut child = cmd.spawn().map_err(|e| err(e.to_string()))?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// The nft match for packets to/from `peer`.
fn nft_match(peer: IpAddr, dir: Direction) -> String {
    let fam = if peer.is_ipv6() { "ip6" } else { "ip" };
    let side = match dir {
        Direction::ToPeer => "daddr",
        Direction::FromPeer => "saddr",
    };
    format!("{fam} {side} {peer}")
}

fn nft_hook(dir: Direction) -> &'static str {
    match dir {
        Direction::ToPeer => "output",
        Direction::FromPeer => "input",
    }
}

/// A unique name for what this process installs (`pf_impair_<pid>_<n>`).
fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "pf_{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An iptables/ip6tables rule in a namespace (tagged with a unique comment), deleted
/// on drop.
#[derive(Debug)]
struct IptRule {
    ns: String,
    program: &'static str,
    spec: Vec<String>,
}

impl IptRule {
    /// Inserts `-m comment --comment <unique> <matches...> -j <target...>` into the
    /// chain for `dir` (OUTPUT -d peer, INPUT -s peer).
    fn insert(
        ns: &str,
        peer: IpAddr,
        dir: Direction,
        tag: &str,
        rest: &[String],
    ) -> Result<IptRule, Error> {
        let program = if peer.is_ipv6() {
            "ip6tables"
        } else {
            "iptables"
        };
        let (chain, side) = match dir {
            Direction::ToPeer => ("OUTPUT", "-d"),
            Direction::FromPeer => ("INPUT", "-s"),
        };
        let mut spec: Vec<String> = [
            chain,
            side,
            &peer.to_string(),
            "-m",
            "comment",
            "--comment",
            &unique(tag),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        spec.extend(rest.iter().cloned());
        let mut args = vec!["-w", "-I"];
        args.extend(spec.iter().map(String::as_str));
        run_in(ns, program, &args, None)?;
        Ok(IptRule {
            ns: ns.to_string(),
            program,
            spec,
        })
    }
}

impl Drop for IptRule {
    fn drop(&mut self) {
        let mut args = vec!["-w", "-D"];
        args.extend(self.spec.iter().map(String::as_str));
        let _ = run_in(&self.ns, self.program, &args, None);
    }
}

/// An nft table in a namespace, deleted on drop.
#[derive(Debug)]
struct NftTable {
    ns: String,
    name: String,
}

impl NftTable {
    fn create(
        ns: &str,
        name: String,
        chain: &str,
        hook: &str,
        priority: i32,
        rule: &str,
    ) -> Result<NftTable, Error> {
        let script = format!(
            "table inet {name} {{\n  chain {chain} {{ type filter hook {hook} priority {priority}; policy accept; {rule}; }}\n}}\n"
        );
        run_in(ns, "nft", &["-f", "-"], Some(&script))?;
        Ok(NftTable {
            ns: ns.to_string(),
            name,
        })
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = run_in(
            &self.ns,
            "nft",
            &["delete", "table", "inet", &self.name],
            None,
        );
    }
}
