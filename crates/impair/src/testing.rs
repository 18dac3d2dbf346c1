//! Test gating: a test that needs root or a command skips with a loud line, and fails
//! instead when `PODFLOW_REQUIRE_ALL=1` (CI), so nothing skips silently there.

use std::process::{Command, Stdio};

/// Whether `PODFLOW_REQUIRE_ALL=1` is set.
pub fn require_all() -> bool {
    std::env::var("PODFLOW_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Whether `test` can run: root, and every command in `cmds` on the PATH. Otherwise
/// prints `SKIPPED <test>: <why>` and returns false, or panics under
/// `PODFLOW_REQUIRE_ALL=1`.
pub fn can_run(test: &str, cmds: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_string());
    }
    for c in cmds.iter().chain(["ip"].iter()) {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            missing.push(format!("`{c}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "needs {} (.ci/run runs as root and installs them)",
        missing.join(", ")
    );
    if require_all() {
        panic!("{test}: PODFLOW_REQUIRE_ALL=1 and it would skip: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_command_skips() {
        if super::require_all() {
            return; // would panic by design
        }
        assert!(!super::can_run(
            "testing::missing_command_skips",
            &["pf-no-such-command"]
        ));
    }
}
