//! `podflow demo`: a three-node cluster in network namespaces (two zones, six pods, a
//! kube-proxy-style Service), one `podflow agent` per node and a `podflow server`, with
//! traffic of known sizes. Everything it makes is named `pfd-*` and removed at exit, also
//! on error or panic (a drop guard); `--cleanup` removes a crashed run's leftovers.

mod files;
mod net;
mod traffic;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Environment variable set on the demo's children, naming the demo's process id (how
/// `--cleanup` finds the children of a crashed run).
const CHILD_ENV: &str = "PODFLOW_DEMO_PARENT";

/// What `podflow demo` was asked to do.
#[derive(Debug)]
pub struct Options {
    /// Stop after this long (None: until Ctrl-C).
    pub duration: Option<Duration>,
    /// Address of the server's HTTP API and UI.
    pub listen: SocketAddr,
    /// Where the inventory, store, logs and traffic counts go (None: a fresh temporary
    /// directory, removed at exit).
    pub data_dir: Option<PathBuf>,
    /// Aggregation and dump interval.
    pub interval: Duration,
    /// Stop the traffic after this long (None: until the end); the demo keeps running, so
    /// the totals settle.
    pub traffic_for: Option<Duration>,
    /// Only remove a crashed run's leftovers.
    pub cleanup: bool,
    /// Links to impair.
    pub impair: Vec<Impairment>,
}

/// `--impair TARGET=DELAY,LOSS`: what to do to the links between `target` (a zone or a
/// node) and the other nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Impairment {
    /// A zone (`us-east-1b`) or a node (`node-c`).
    pub target: String,
    /// Added to what the target's nodes send to the others.
    pub delay: Duration,
    /// Share of what the target's nodes receive from the others that is dropped.
    pub loss: f64,
}

impl Impairment {
    /// Parses `TARGET=DELAY,LOSS%` (either part may be left out).
    pub fn parse(s: &str) -> Result<Impairment, String> {
        let (target, spec) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected TARGET=DELAY,LOSS (e.g. us-east-1b=30ms,5%)")
        })?;
        let known = net::NODES
            .iter()
            .any(|n| n.name() == target || n.zone == target);
        if !known {
            let zones: Vec<_> = net::NODES.iter().map(|n| n.zone).collect();
            return Err(format!(
                "{target:?} is neither a demo node (node-a, node-b, node-c) nor a zone ({})",
                zones.join(", ")
            ));
        }
        let mut imp = Impairment {
            target: target.to_string(),
            delay: Duration::ZERO,
            loss: 0.0,
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(pct) = part.strip_suffix('%') {
                imp.loss = pct
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| format!("{part:?}: a loss is a percentage within 0..=100"))?
                    / 100.0;
            } else {
                imp.delay = podflow::cli::duration::parse(part)
                    .map_err(|e| format!("{part:?}: not a delay ({e})"))?;
            }
        }
        if imp.delay.is_zero() && imp.loss == 0.0 {
            return Err(format!("{s:?}: neither a delay nor a loss"));
        }
        Ok(imp)
    }

    fn hits(&self, n: &net::Node) -> bool {
        n.name() == self.target || n.zone == self.target
    }
}

/// An impairment installed in a node's namespace; removed on drop.
#[derive(Debug)]
enum Installed {
    Loss(#[allow(dead_code)] podflow_impair::LossRule),
    Delay(#[allow(dead_code)] podflow_impair::Delayer),
}

/// Installs `imp` between its nodes and the others: loss where the target's nodes
/// receive (a network drops silently), delay where they send.
fn impair(imp: &Impairment) -> anyhow::Result<Vec<Installed>> {
    use podflow_impair::{Backend, DelaySpec, Delayer, Direction, LossRule};
    let mut out = Vec::new();
    for t in net::NODES.iter().filter(|n| imp.hits(n)) {
        for p in net::NODES.iter().filter(|n| !imp.hits(n)) {
            let peer = p.ip().parse().context("node address")?;
            if imp.loss > 0.0 {
                out.push(Installed::Loss(
                    LossRule::add(
                        &t.netns(),
                        peer,
                        Direction::FromPeer,
                        imp.loss,
                        Backend::Iptables,
                    )
                    .with_context(|| format!("loss from {} on {}", p.name(), t.name()))?,
                ));
            }
            if !imp.delay.is_zero() {
                out.push(Installed::Delay(
                    Delayer::start(
                        &t.netns(),
                        peer,
                        Direction::ToPeer,
                        DelaySpec::fixed(imp.delay),
                    )
                    .with_context(|| format!("delay to {} on {}", p.name(), t.name()))?,
                ));
            }
        }
    }
    Ok(out)
}

/// Runs the demo (or the cleanup).
pub fn run(o: Options) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "`podflow demo` needs root: it creates network namespaces, links and firewall rules \
             (try `sudo podflow demo`)"
        );
    }
    for tool in ["ip", "iptables-restore", "nft", "sysctl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            bail!("`podflow demo` needs `{tool}` (iproute2, iptables, nftables, procps)");
        }
    }
    if o.cleanup {
        let n = cleanup()?;
        println!("podflow demo: removed {n} leftovers (namespaces, processes, data directories)");
        return Ok(());
    }
    let left = net::leftover_namespaces()?;
    if !left.is_empty() {
        bail!(
            "namespaces of another demo exist ({}): is one running? If not, remove them with \
             `podflow demo --cleanup`",
            left.join(", ")
        );
    }
    let mut demo = Demo::default();
    let result = demo.run(&o);
    let teardown = demo.teardown();
    result?;
    teardown
}

/// Everything the demo started; [`Demo::teardown`] (or drop) stops and removes it.
#[derive(Debug, Default)]
struct Demo {
    topology: net::Topology,
    children: Vec<(String, Child)>,
    traffic: Option<traffic::Traffic>,
    temp_dir: Option<PathBuf>,
    impaired: Vec<Installed>,
}

impl Demo {
    fn run(&mut self, o: &Options) -> anyhow::Result<()> {
        // Ctrl-C and SIGTERM are caught from the start (also while building), so an
        // interrupted demo still removes what it made. One worker runs the handler.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the signal handler")?;
        let token = tokio_util::sync::CancellationToken::new();
        rt.spawn(podflow::cli::runtime::shutdown_signal(token.clone()));
        let interrupted = || {
            if token.is_cancelled() {
                bail!("interrupted");
            }
            Ok(())
        };
        let dir = match &o.data_dir {
            Some(d) => d.clone(),
            None => {
                let d = std::env::temp_dir().join(format!("podflow-demo-{}", std::process::id()));
                self.temp_dir = Some(d.clone());
                d
            }
        };
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
        files::write_all(&dir)?;
        eprintln!(
            "podflow demo: building 3 nodes, 6 pods, internet and S3 hosts in network namespaces (pfd-*)"
        );
        self.topology.build()?;
        for imp in &o.impair {
            self.impaired.extend(impair(imp)?);
            eprintln!(
                "podflow demo: impairing {} <-> the other nodes: +{:?}, {}% loss",
                imp.target,
                imp.delay,
                imp.loss * 100.0
            );
        }
        interrupted()?;

        let exe = std::env::current_exe().context("finding the podflow executable")?;
        let interval = format!("{}ms", o.interval.as_millis());
        let grpc = free_port()?;
        let mut server = Command::new(&exe);
        server
            .arg("server")
            .arg("--listen")
            .arg(o.listen.to_string())
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--data-dir")
            .arg(dir.join("server"))
            .arg("--interval")
            .arg(&interval)
            .arg("--inventory")
            .arg(dir.join("inventory.yaml"))
            .arg("--cloud-ranges")
            .arg(dir.join("cloud-ranges"))
            .arg("--config")
            .arg(dir.join("podflow.yaml"));
        self.spawn("server", server, &logs)?;
        self.wait_http("server", o.listen.port(), "/live", &logs)?;
        interrupted()?;

        let mut agent_ports = Vec::new();
        for n in &net::NODES {
            let port = free_port()?;
            let mut agent = Command::new(&exe);
            agent
                .arg("agent")
                .arg("--server")
                .arg(format!("http://127.0.0.1:{grpc}"))
                .arg("--node-name")
                .arg(n.name())
                .arg("--netns")
                .arg(format!("/run/netns/{}", n.netns()))
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(dir.join(format!("agent-{}", n.letter)))
                .arg("--interval")
                .arg(&interval)
                .arg("--enable-accounting")
                // Time to first reply per Service (the Services dashboard shows it).
                .arg("--first-reply")
                // Every node probes the others (peers come from the server).
                .args([
                    "--probes",
                    "--probe-interval",
                    "1s",
                    "--probe-store-interval",
                    "5s",
                ]);
            self.spawn(&format!("agent-{}", n.letter), agent, &logs)?;
            agent_ports.push((n.letter, port));
        }
        for (letter, port) in agent_ports {
            self.wait_http(&format!("agent-{letter}"), port, "/ready", &logs)?;
        }
        interrupted()?;

        let traffic = self.traffic.insert(traffic::Traffic::start()?);
        let counts = dir.join("traffic.json");
        traffic.write_snapshot(&counts)?;
        println!("podflow demo is running: open http://{}/", o.listen);
        println!(
            "  API: http://{l}/api/v1/query  http://{l}/transactions  data, logs and traffic counts: {}",
            dir.display(),
            l = o.listen
        );
        match o.duration {
            Some(d) => println!("  stopping after {d:?} (or Ctrl-C)"),
            None => println!("  stop with Ctrl-C"),
        }

        let traffic_started = Instant::now();
        let end = o.duration.map(|d| traffic_started + d);
        let mut last_report = Instant::now();
        loop {
            rt.block_on(async {
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            });
            if !traffic.clients_stopped()
                && o.traffic_for
                    .is_some_and(|t| traffic_started.elapsed() >= t)
            {
                traffic.stop_clients();
                eprintln!(
                    "podflow demo: traffic stopped after {:?} ({} requests answered)",
                    o.traffic_for.unwrap_or_default(),
                    traffic.requests_done()
                );
            }
            traffic.write_snapshot(&counts)?;
            if token.is_cancelled() || end.is_some_and(|e| Instant::now() >= e) {
                break;
            }
            for (name, c) in &mut self.children {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!(
                        "podflow {name} exited ({st}) while the demo ran; its log:\n{}",
                        tail(&logs.join(format!("{name}.log")))
                    );
                }
            }
            if !traffic.clients_stopped() && last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                eprintln!(
                    "podflow demo: {} requests answered so far",
                    traffic.requests_done()
                );
            }
        }
        // Stop the traffic first and write the final counts, so they are complete.
        traffic.stop();
        traffic.write_snapshot(&counts)?;
        Ok(())
    }

    fn spawn(&mut self, name: &str, mut cmd: Command, logs: &Path) -> anyhow::Result<()> {
        let log_path = logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let child = cmd
            .env(CHILD_ENV, std::process::id().to_string())
            .env("NO_COLOR", "1")
            // Their own process group: Ctrl-C in the terminal reaches only the demo, which
            // then stops them in order (agents flush to the server first).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Waits (at most 30 s) until `http://127.0.0.1:port{path}` answers 200.
    fn wait_http(&mut self, name: &str, port: u16, path: &str, logs: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_status(port, path) == Some(200) {
                return Ok(());
            }
            if let Some((_, c)) = self.children.iter_mut().find(|(n, _)| n == name)
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!(
                    "podflow {name} exited ({st}) at start; its log:\n{}",
                    tail(&logs.join(format!("{name}.log")))
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "podflow {name} did not answer 200 on 127.0.0.1:{port}{path} within 30 s; its log:\n{}",
                    tail(&logs.join(format!("{name}.log")))
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops traffic, then the agents (they flush), then the server; removes every
    /// namespace. Safe to call twice.
    fn teardown(&mut self) -> anyhow::Result<()> {
        if let Some(mut t) = self.traffic.take() {
            t.stop();
        }
        // Agents first, all at once (their last batches reach the server), then the server.
        let (mut server, mut agents): (Vec<_>, Vec<_>) =
            self.children.drain(..).partition(|(n, _)| n == "server");
        let mut problems = stop_children(&mut agents);
        problems.extend(stop_children(&mut server));
        self.impaired.clear();
        problems.extend(self.topology.remove());
        if let Some(d) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("demo teardown: {}", problems.join("; "))
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("podflow demo: {e:#}");
        }
    }
}

/// SIGTERMs every child, waits up to 15 s for all of them, then kills the rest.
fn stop_children(children: &mut [(String, Child)]) -> Vec<String> {
    for (_, c) in children.iter() {
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut problems = Vec::new();
    for (name, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    problems.push(format!("podflow {name} did not stop on SIGTERM: killed"));
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
            }
        }
    }
    problems
}

/// Removes every `pfd-*` namespace and the default data directory of a crashed run, and
/// stops its children.
fn cleanup() -> anyhow::Result<usize> {
    let mut n = 0;
    let me = std::process::id().to_string();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            let parent = env
                .split(|b| *b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .find_map(|kv| kv.strip_prefix(CHILD_ENV).and_then(|v| v.strip_prefix('=')));
            let Some(parent) = parent else { continue };
            // A running demo's children are its own business.
            let parent_alive = parent != me && Path::new(&format!("/proc/{parent}")).exists();
            if !parent_alive {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
                n += 1;
            }
        }
    }
    // Default data directories of demos that are gone.
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("podflow-demo-")) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
                n += 1;
            }
        }
    }
    for ns in net::leftover_namespaces()? {
        net::run(Command::new("ip").args(["netns", "del", &ns]))?;
        n += 1;
    }
    for link in net::leftover_links()? {
        net::run(Command::new("ip").args(["link", "del", &link]))?;
        n += 1;
    }
    Ok(n)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port on 127.0.0.1")?
        .port())
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    std::str::from_utf8(&head[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The last lines of a log file, for error messages.
fn tail(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impairments_parse_and_name_what_is_wrong() {
        let i = Impairment::parse("us-east-1b=30ms,5%").expect("ok");
        assert_eq!(
            (i.target.as_str(), i.delay, i.loss),
            ("us-east-1b", Duration::from_millis(30), 0.05)
        );
        let only_loss = Impairment::parse("node-a=12.5%").expect("ok");
        assert_eq!((only_loss.delay, only_loss.loss), (Duration::ZERO, 0.125));
        assert!(Impairment::parse("node-a=20ms").is_ok_and(|i| i.loss == 0.0));
        assert!(Impairment::parse("node-x=20ms").is_err_and(|e| e.contains("node-x")));
        assert!(Impairment::parse("node-a").is_err_and(|e| e.contains("TARGET=")));
        assert!(Impairment::parse("node-a=150%").is_err_and(|e| e.contains("150%")));
        assert!(Impairment::parse("node-a=").is_err());
        let a = &net::NODES[0];
        assert!(Impairment::parse("us-east-1a=1ms").expect("ok").hits(a));
    }
}
