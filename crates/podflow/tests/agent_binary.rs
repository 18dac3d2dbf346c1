//! `podflow-agent`, the agent-only binary, takes exactly the flags of `podflow agent` and
//! reports a bad one the same way.

use std::collections::BTreeSet;
use std::process::Command;

fn help(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    assert!(out.status.success(), "{bin} {args:?} --help: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Every `--flag` a help text lists (`--help`/`--version` aside).
fn flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .filter(|w| w != "--help" && w != "--version")
        .collect()
}

#[test]
fn podflow_agent_takes_the_flags_of_podflow_agent() {
    let lean = flags(&help(env!("CARGO_BIN_EXE_podflow-agent"), &[]));
    let multi = flags(&help(env!("CARGO_BIN_EXE_podflow"), &["agent"]));
    assert!(
        lean.contains("--server") && lean.contains("--probes") && lean.contains("--log-format"),
        "{lean:?}"
    );
    assert!(lean.len() > 30, "only {} flags: {lean:?}", lean.len());
    assert_eq!(lean, multi);
}

#[test]
fn a_bad_flag_value_is_named_and_nothing_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_podflow-agent"))
        .args(["--server", "http://127.0.0.9:9", "--interval", "soon"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("soon") && err.contains("--interval"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_podflow-agent"))
        .args([
            "--server",
            "http://127.0.0.9:9",
            "--probes",
            "--probe-kinds",
            "udp,nope",
        ])
        .args([
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "/nonexistent/podflow",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("podflow-agent: ") && err.contains("`nope`"),
        "{err}"
    );
}
