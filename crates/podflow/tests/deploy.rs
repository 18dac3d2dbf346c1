//! The deployment artefacts under deploy/, checked with the real tools: the Helm chart
//! (Helm v4's library through PyPI helm-python-sdk: lint and render, no cluster), every
//! rendered object against Kubernetes' schemas (kubernetes-validate, strict) and the
//! CRDs' own schemas (deploy/tests/crds/), golden renders, the alert rules (promtool check
//! and unit tests), the Grafana dashboards (structure, every PromQL expression parsed by
//! promtool, Grafana's dashboard model), the container image (podman, FROM scratch, run
//! in a chroot), the manifests executed in network namespaces, and the dashboards against
//! a real Prometheus scraping `podflow demo`.
//!
//! The checks themselves are in deploy/tests/*.py; these tests run them. A test whose
//! tool is missing prints a loud `SKIPPED` line and passes, unless PODFLOW_REQUIRE_ALL=1
//! (CI) makes it fail. UPDATE_GOLDEN=1 rewrites the golden renders and the plain rules
//! file from the chart.
//!
//! Slow ones run on request: PODFLOW_TEST_IMAGE=1 (or PODFLOW_REQUIRE_ALL=1) builds the
//! image (the `dist` binary: ~11 min from scratch on 2 cores, seconds when built);
//! PODFLOW_TEST_DEMO_DASHBOARDS=1 runs the demo against Prometheus (~3 min).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use podflow_testkit::{free_port, http_get};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn require_all() -> bool {
    std::env::var("PODFLOW_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

use podflow_testkit::skip;

fn have_cmd(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether python3 can import every module.
fn have_python(modules: &[&str]) -> bool {
    have_cmd("python3")
        && Command::new("python3")
            .args(["-c", &format!("import {}", modules.join(", "))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A command run from the repository root.
fn in_repo(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(repo());
    c
}

/// Runs a command; panics with its output when it fails.
fn run_ok(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    eprintln!("{what}:\n{text}");
    out
}

const CHART_MODULES: &[&str] = &["helm_python", "yaml", "jsonschema", "kubernetes_validate"];

/// Runs one check of deploy/tests/chart.py, or skips without its Python modules.
fn chart_check(test: &str, command: &str) {
    if !have_python(CHART_MODULES) {
        return skip(
            test,
            "python3 with helm-python-sdk, PyYAML, jsonschema and kubernetes-validate is not installed",
        );
    }
    run_ok(
        &format!("deploy/tests/chart.py {command}"),
        in_repo("python3").args(["deploy/tests/chart.py", command]),
    );
}

/// The rendered server Deployment and agent DaemonSet, executed in network namespaces
/// with a fake API server (deploy/tests/executed.py): their declared probes answer within
/// their windows, the agent's port serves /metrics from outside its namespace, its
/// stream is authenticated and bound, and the server uses exactly its RBAC grants; with
/// the defaults and with HTTPS on the API port.
#[test]
fn chart_manifests_run_ready_and_scraped() {
    let test = "chart_manifests_run_ready_and_scraped";
    if !have_python(CHART_MODULES) {
        return skip(
            test,
            "python3 with helm-python-sdk and PyYAML is not installed",
        );
    }
    if !is_root() {
        return skip(test, "needs root (network namespaces)");
    }
    // The defaults, then HTTPS on the API port (the probes' scheme follows).
    for values in ["{}", r#"{"auth": {"api": {"tls": {"enabled": true}}}}"#] {
        run_ok(
            &format!("deploy/tests/executed.py with {values}"),
            in_repo("python3").args([
                "deploy/tests/executed.py",
                env!("CARGO_BIN_EXE_podflow"),
                values,
            ]),
        );
    }
}

#[test]
fn chart_lints_with_defaults_and_every_ci_profile() {
    chart_check("chart_lints_with_defaults_and_every_ci_profile", "lint");
}

#[test]
fn chart_objects_validate_against_kubernetes_and_crd_schemas() {
    chart_check(
        "chart_objects_validate_against_kubernetes_and_crd_schemas",
        "validate",
    );
}

#[test]
fn chart_renders_equal_the_golden_files() {
    chart_check("chart_renders_equal_the_golden_files", "golden");
}

#[test]
fn chart_keeps_its_promises() {
    chart_check("chart_keeps_its_promises", "invariants");
}

#[test]
fn chart_schema_refuses_misspelt_keys() {
    chart_check("chart_schema_refuses_misspelt_keys", "schema");
}

#[test]
fn chart_rules_equal_the_plain_rules_file() {
    chart_check("chart_rules_equal_the_plain_rules_file", "rules");
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let test = "alert_rules_pass_promtool_check_and_unit_tests";
    if !have_cmd("promtool") {
        return skip(test, "promtool (Debian prometheus) is not installed");
    }
    run_ok(
        "promtool check rules",
        in_repo("promtool").args(["check", "rules", "deploy/prometheus/podflow-rules.yaml"]),
    );
    let dir = repo().join("deploy/prometheus/tests");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/prometheus/tests")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no unit tests in {}", dir.display());
    let out = run_ok(
        "promtool test rules",
        Command::new("promtool")
            .args(["test", "rules"])
            .args(&files)
            .current_dir(&dir),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("SUCCESS").count(),
        files.len(),
        "every test file passes: {text}"
    );

    // Every alert is tested, firing once and quiet once.
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/podflow-rules.yaml"))
        .expect("rules");
    let tests: String = files
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).expect("test file"))
        .collect();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let cases: Vec<&str> = tests
            .split("- name: ")
            .filter(|c| c.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels")),
            "{alert}: no test case where it fires"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert}: no test case where it stays quiet"
        );
    }
}

#[test]
fn dashboards_are_well_formed() {
    if !have_cmd("python3") {
        return skip("dashboards_are_well_formed", "python3 is not installed");
    }
    run_ok(
        "deploy/tests/dashboards.py check",
        in_repo("python3").args(["deploy/tests/dashboards.py", "check"]),
    );
}

#[test]
fn dashboard_expressions_parse() {
    let test = "dashboard_expressions_parse";
    if !have_cmd("python3") || !have_cmd("promtool") {
        return skip(test, "python3 and promtool (Debian prometheus) are needed");
    }
    run_ok(
        "deploy/tests/dashboards.py promql",
        in_repo("python3").args(["deploy/tests/dashboards.py", "promql"]),
    );
}

#[test]
fn dashboards_fit_grafanas_dashboard_model() {
    let test = "dashboards_fit_grafanas_dashboard_model";
    if !have_python(&["grafana_foundation_sdk"]) {
        return skip(test, "PyPI grafana-foundation-sdk is not installed");
    }
    run_ok(
        "deploy/tests/dashboards.py sdk",
        in_repo("python3").args(["deploy/tests/dashboards.py", "sdk"]),
    );
}

/// scripts/build-image.sh end to end, for the server's image and the agent's (`--agent`):
/// the `dist` binary, `podman build` FROM scratch, the exported filesystem running
/// `--version` in a chroot (as root and as the image's user, with name resolution through
/// /etc/hosts and DNS), each under 15 MB compressed.
#[test]
fn image_builds_small_and_runs() {
    let test = "image_builds_small_and_runs";
    let wanted = std::env::var("PODFLOW_TEST_IMAGE").is_ok_and(|v| v == "1") || require_all();
    if !wanted {
        eprintln!(
            "SKIPPED {test}: slow (builds the dist binaries: ~11 min from scratch); PODFLOW_TEST_IMAGE=1 or PODFLOW_REQUIRE_ALL=1 runs it"
        );
        return;
    }
    if !is_root() {
        return skip(
            test,
            "needs root (podman's storage, chroot, a network namespace)",
        );
    }
    if !have_cmd("podman") {
        return skip(test, "podman is not installed");
    }
    for (tag, extra) in [
        ("localhost/podflow:test", None),
        ("localhost/podflow-agent:test", Some("--agent")),
    ] {
        let start = Instant::now();
        let out = run_ok(
            &format!("scripts/build-image.sh {}", extra.unwrap_or("")),
            in_repo("scripts/build-image.sh")
                .args(extra)
                .args(["--tag", tag]),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let bytes: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("image_compressed_bytes="))
            .next_back()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no image_compressed_bytes= line in:\n{text}"));
        eprintln!(
            "image {tag}: {bytes} bytes compressed, built and checked in {:?}",
            start.elapsed()
        );
        let _ = Command::new("podman").args(["rmi", "-f", tag]).output();
        assert!(
            bytes < 15_000_000,
            "the image {tag} is {bytes} bytes compressed (goal: under 15 MB)"
        );
    }
}

// ------------------------------------------------------------------ the demo

/// `podflow demo`, stopped with SIGTERM (it removes its namespaces) when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["demo", "--cleanup"])
            .output();
    }
}

/// A child killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `--listen` ports of the demo's agents: its children whose environment names it.
fn demo_agent_ports(parent: u32) -> Vec<u16> {
    let want = format!("PODFLOW_DEMO_PARENT={parent}");
    let mut ports = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) != Some("agent") {
            continue;
        }
        if let Some(port) = args
            .windows(2)
            .find(|w| w[0] == "--listen")
            .and_then(|w| w[1].rsplit(':').next()?.parse().ok())
        {
            ports.push(port);
        }
    }
    ports.sort();
    ports
}

fn prom_query(port: u16, query: &str) -> Vec<Value> {
    let path = format!("/api/v1/query?query={}", urlencode(query));
    let (status, body) = http_get(port, &path).expect("Prometheus answers");
    assert_eq!(status, 200, "{query}: {body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the demo cannot show, and why: these panels stay empty on it by design.
const NOT_IN_THE_DEMO: &[(&str, &str)] =
    &[("podflow_netflow_", "the demo has no NetFlow exporter")];

/// Every panel of every dashboard, its variables substituted, against a real Prometheus
/// scraping `podflow demo` (server and agents) on 127.0.0.1: each expression returns
/// data, and the bytes by class in Prometheus equal the API's count-once view.
/// Every `podflow_*` metric an alert rule or a dashboard uses is one docs/metrics.md
/// lists (the table is generated from the code's registry): no panel or alert watches a
/// metric nothing exports.
#[test]
fn rules_and_dashboards_use_only_metrics_podflow_exports() {
    let docs = std::fs::read_to_string(repo().join("docs/metrics.md")).expect("docs/metrics.md");
    let documented = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        docs.contains(&format!("`{name}`")) || docs.contains(&format!("`{base}`"))
    };
    let mut texts = vec![repo().join("deploy/prometheus/podflow-rules.yaml")];
    for e in std::fs::read_dir(repo().join("deploy/grafana")).expect("deploy/grafana") {
        texts.push(e.expect("entry").path());
    }
    let mut unknown = std::collections::BTreeSet::new();
    for path in texts {
        let text = std::fs::read_to_string(&path).expect("read");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("podflow_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            // Recording rules' own names and file names are not metrics podflow exports.
            let before = rest[..at].chars().last();
            if before != Some(':') && !name.ends_with('_') && !documented(name) {
                unknown.insert(format!(
                    "{name} ({})",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
            rest = &tail[end..];
        }
    }
    assert!(
        unknown.is_empty(),
        "used but not exported (not in docs/metrics.md): {unknown:#?}"
    );
}

#[test]
fn dashboards_show_the_demo_in_prometheus() {
    let test = "dashboards_show_the_demo_in_prometheus";
    if !std::env::var("PODFLOW_TEST_DEMO_DASHBOARDS").is_ok_and(|v| v == "1") && !require_all() {
        eprintln!(
            "SKIPPED {test}: runs the demo for ~3 minutes; PODFLOW_TEST_DEMO_DASHBOARDS=1 runs it"
        );
        return;
    }
    if !is_root() {
        return skip(test, "needs root (the demo's network namespaces)");
    }
    for cmd in [
        "ip",
        "iptables-restore",
        "nft",
        "conntrack",
        "stdbuf",
        "prometheus",
        "python3",
    ] {
        if !have_cmd(cmd) {
            return skip(test, &format!("`{cmd}` is not installed"));
        }
    }
    let data = tempfile::tempdir().expect("tmp");
    let api = free_port();
    let demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args([
                "demo",
                "--duration",
                "200s",
                "--traffic-for",
                "110s",
                "--interval",
                "2s",
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{api}"))
            .arg("--data-dir")
            .arg(data.path().join("demo"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("podflow demo"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !data.path().join("demo/traffic.json").exists() {
        assert!(Instant::now() < deadline, "the demo did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let traffic_started = Instant::now();
    let agents = demo_agent_ports(demo.0.id());
    assert_eq!(agents.len(), 3, "three demo agents: {agents:?}");

    let prom = free_port();
    let targets: Vec<String> = std::iter::once(api)
        .chain(agents.iter().copied())
        .map(|p| format!("'127.0.0.1:{p}'"))
        .collect();
    let config = data.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 5s, evaluation_interval: 5s}}\n\
             scrape_configs:\n  - job_name: podflow\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .expect("prometheus.yml");
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    );
    let prom_started = Instant::now();

    // While the traffic runs: every panel's expression.
    std::thread::sleep(Duration::from_secs(100).saturating_sub(traffic_started.elapsed()));
    let range = format!("{}s", prom_started.elapsed().as_secs());
    let out = run_ok(
        "dashboards.py query",
        in_repo("python3").args([
            "deploy/tests/dashboards.py",
            "query",
            &format!("http://127.0.0.1:{prom}"),
            &range,
        ]),
    );
    let mut empty = Vec::new();
    let mut expected_empty = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let r: Value = serde_json::from_str(line).expect("a JSON line");
        assert!(r["error"].is_null(), "{line}");
        if r["series"].as_u64().unwrap_or(0) > 0 {
            continue;
        }
        let expr = r["expr"].as_str().unwrap_or_default();
        let what = format!("{} / {} ({}): {expr}", r["dashboard"], r["panel"], r["ref"]);
        match NOT_IN_THE_DEMO.iter().find(|(m, _)| expr.contains(m)) {
            Some((_, why)) => expected_empty.push(format!("{what}  [{why}]")),
            None => empty.push(what),
        }
    }
    for e in &expected_empty {
        eprintln!("empty, as expected: {e}");
    }

    // After the traffic: bytes by class, Prometheus against the API's count-once view.
    std::thread::sleep(Duration::from_secs(135).saturating_sub(traffic_started.elapsed()));
    let (status, body) = http_get(
        api,
        "/api/v1/query?group_by=class&from=0&to=4102444800&limit=100",
    )
    .expect("the API answers");
    assert_eq!(status, 200, "{body}");
    let api_rows: Value = serde_json::from_str(&body).expect("JSON");
    let mut from_api: Vec<(String, u64)> = api_rows["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["key"]["class"].as_str().unwrap_or_default().to_string(),
                r["bytes_src_to_dst"].as_u64().unwrap_or(0)
                    + r["bytes_dst_to_src"].as_u64().unwrap_or(0),
            )
        })
        .filter(|(_, b)| *b > 0)
        .collect();
    from_api.sort();
    let mut from_prom: Vec<(String, u64)> =
        prom_query(prom, "sum by (class) (podflow_workload_bytes_total)")
            .iter()
            .map(|s| {
                (
                    s["metric"]["class"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0) as u64,
                )
            })
            .filter(|(_, b)| *b > 0)
            .collect();
    from_prom.sort();
    eprintln!("bytes by class, API (count once): {from_api:?}");
    eprintln!("bytes by class, Prometheus:       {from_prom:?}");

    assert!(
        empty.is_empty(),
        "{} dashboard expressions returned no data on the demo:\n{}",
        empty.len(),
        empty.join("\n")
    );
    assert!(!from_api.is_empty(), "the API has traffic by class");
    // The probes go on after the generators stop: node-to-node bytes keep growing, so
    // Prometheus's last scrape and the API's last stored interval may differ by what the
    // probes sent in between (at most 15 s of their mean rate); every other byte is equal.
    let elapsed = traffic_started.elapsed().as_secs_f64();
    let (_, body) = http_get(
        api,
        "/api/v1/query?group_by=class,src_kind,dst_kind&from=0&to=4102444800&limit=1000",
    )
    .expect("the API answers");
    let by_kind: Value = serde_json::from_str(&body).expect("JSON");
    let probe_slack = |class: &str| -> f64 {
        by_kind["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["key"]["class"] == class
                    && r["key"]["src_kind"] == "node"
                    && r["key"]["dst_kind"] == "node"
            })
            .map(|r| {
                (r["bytes_src_to_dst"].as_u64().unwrap_or(0)
                    + r["bytes_dst_to_src"].as_u64().unwrap_or(0)) as f64
            })
            .sum::<f64>()
            * 15.0
            / elapsed
    };
    let classes = |v: &[(String, u64)]| v.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>();
    assert_eq!(classes(&from_prom), classes(&from_api), "the same classes");
    for ((class, prom_bytes), (_, api_bytes)) in from_prom.iter().zip(&from_api) {
        let slack = probe_slack(class);
        assert!(
            (*prom_bytes as f64 - *api_bytes as f64).abs() <= slack,
            "podflow_workload_bytes_total{{class={class:?}}} = {prom_bytes}, the API's count-once view {api_bytes} (probe slack {slack:.0})"
        );
    }
}
