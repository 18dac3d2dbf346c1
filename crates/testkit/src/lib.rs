//! Real network namespaces for tests: created per test, removed on drop (also when the
//! test panics). Traffic only ever goes to addresses inside namespaces made here.

pub mod cluster;
pub mod kubeapi;
pub mod pcap;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A test that cannot run here: prints a loud skip line naming it and why, so a laptop
/// without root or a package still runs the rest. Under CI (`PODFLOW_REQUIRE_ALL=1`, set
/// by `.ci/run`) a test that cannot run fails instead: CI never passes a skipped test.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("PODFLOW_REQUIRE_ALL").is_some_and(|v| v != "0" && !v.is_empty()) {
        panic!("{test} cannot run: {why} (PODFLOW_REQUIRE_ALL is set: a skip is a failure)");
    }
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
}

/// Whether the tests can create namespaces (root and `ip` present). When not, skips
/// loudly (see [`skip`]) and returns false.
pub fn can_run(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !(root && ip) {
        skip(
            test,
            &format!("needs root and iproute2 (root={root}, ip={ip}); .ci/run runs it as root"),
        );
    }
    root && ip
}

/// Whether `cmd` is on the PATH; prints a loud skip line otherwise.
pub fn have(test: &str, cmd: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            test,
            &format!("`{cmd}` is not installed; .ci/run installs it"),
        );
    }
    ok
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// A network namespace that exists until dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `pf-<tag>-<pid>-<n>` with loopback up and conntrack accounting and
    /// timestamps on.
    pub fn new(tag: &str) -> io::Result<Netns> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("pf-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file (for `setns`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs a shell command inside the namespace; fails on a non-zero exit.
    pub fn sh(&self, script: &str) -> io::Result<String> {
        let out = run(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", script]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Turns on conntrack in the namespace: accounting, timestamps, and an nft rule that
    /// makes the kernel track connections (conntrack is only active in a namespace when
    /// some rule needs it).
    pub fn enable_conntrack(&self) -> io::Result<()> {
        self.sh(
            "sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1 && \
             nft -f - <<'EOF'
table inet pftrack {
  chain pre { type filter hook prerouting priority -300; ct state new counter; }
  chain out { type filter hook output priority -300; ct state new counter; }
}
EOF",
        )
        .map(|_| ())
    }

    /// Shortens TCP's closing-state timeouts to 1 s in this namespace so a closed
    /// connection's entry expires (and its DESTROY event comes) at the next dump.
    pub fn short_tcp_timeouts(&self) -> io::Result<()> {
        self.sh("for s in time_wait close fin_wait close_wait last_ack; do \
               sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_$s=1; done")
            .map(|_| ())
    }

    /// Runs `f` on a thread inside the namespace: sockets it creates live there.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("namespace file");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into test namespace");
            f()
        })
    }

    /// Runs `f` inside the namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses.
#[derive(Debug)]
pub struct Pair {
    /// Side A (10.99.0.1, fd99::1).
    pub a: Netns,
    /// Side B (10.99.0.2, fd99::2).
    pub b: Netns,
}

impl Pair {
    /// Address of A (IPv4).
    pub const A4: &'static str = "10.99.0.1";
    /// Address of B (IPv4).
    pub const B4: &'static str = "10.99.0.2";
    /// Address of A (IPv6).
    pub const A6: &'static str = "fd99::1";
    /// Address of B (IPv6).
    pub const B6: &'static str = "fd99::2";

    /// Creates both namespaces and the link, conntrack on in both.
    pub fn new(tag: &str) -> io::Result<Pair> {
        let a = Netns::new(&format!("{tag}a"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (va, vb) = (
            format!("pfa{n}x{}", std::process::id() % 10000),
            format!("pfb{n}x{}", std::process::id() % 10000),
        );
        run(Command::new("ip").args([
            "link",
            "add",
            &va,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            b.name(),
        ]))?;
        for (ns, dev, v4, v6) in [(&a, &va, Self::A4, Self::A6), (&b, &vb, Self::B4, Self::B6)] {
            ns.sh(&format!(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 && \
                 ip addr add {v4}/24 dev {dev} && ip addr add {v6}/64 dev {dev} nodad && ip link set {dev} up"
            ))?;
            ns.enable_conntrack()?;
        }
        Ok(Pair { a, b })
    }
}

/// A TCP server in B: for each request header (n to read, m to answer, 16 bytes) reads n
/// bytes and writes m bytes, until the client closes.
pub fn serve(pair: &Pair, port: u16) {
    let addr: SocketAddr = format!("{}:{port}", Pair::B4).parse().expect("addr");
    let ready = std::sync::mpsc::channel();
    let tx = ready.0;
    pair.b.spawn(move || {
        let l = TcpListener::bind(addr).expect("bind in B");
        tx.send(()).expect("ready");
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut hdr = [0u8; 16];
                while s.read_exact(&mut hdr).is_ok() {
                    let n = u64::from_be_bytes(hdr[..8].try_into().expect("8")) as usize;
                    let m = u64::from_be_bytes(hdr[8..].try_into().expect("8")) as usize;
                    let mut buf = vec![0u8; n];
                    if s.read_exact(&mut buf).is_err() {
                        break;
                    }
                    if s.write_all(&vec![7u8; m]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    ready
        .1
        .recv_timeout(Duration::from_secs(5))
        .expect("server up");
}

/// A UDP server in B on `ip:port` that answers each datagram with the same bytes after
/// waiting `delay` (an application's think time: the reply is the first packet back).
pub fn serve_udp_delayed(pair: &Pair, ip: &str, port: u16, delay: Duration) {
    let addr = socket_addr(ip, port);
    let (tx, rx) = std::sync::mpsc::channel();
    pair.b.spawn(move || {
        let s = std::net::UdpSocket::bind(addr).expect("bind udp in B");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            std::thread::sleep(delay);
            let _ = s.send_to(&buf[..n], from);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("udp server up");
}

/// From A: one UDP datagram to `ip:port`, waits (up to 5 s) for the answer; returns the
/// client's port.
pub fn udp_ask(pair: &Pair, ip: &str, port: u16) -> u16 {
    let dst = socket_addr(ip, port);
    pair.a.run(move || {
        let any = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let s = std::net::UdpSocket::bind(any).expect("bind udp in A");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.send_to(b"podflow-first-reply", dst).expect("send");
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).expect("answer");
        s.local_addr().expect("addr").port()
    })
}

fn socket_addr(ip: &str, port: u16) -> SocketAddr {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
    .parse()
    .expect("addr")
}

/// One request on an open client connection: send n bytes, read m back.
pub fn exchange(s: &mut TcpStream, n: usize, m: usize) {
    let mut hdr = [0u8; 16];
    hdr[..8].copy_from_slice(&(n as u64).to_be_bytes());
    hdr[8..].copy_from_slice(&(m as u64).to_be_bytes());
    s.write_all(&hdr).expect("send header");
    s.write_all(&vec![1u8; n]).expect("send body");
    let mut back = vec![0u8; m];
    s.read_exact(&mut back).expect("read answer");
}

pub fn connect(pair: &Pair, ip: &str, port: u16) -> TcpStream {
    let addr = socket_addr(ip, port);
    pair.a
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"))
}

/// One line of conntrack-tools' extended output (`conntrack -L -o extended` or an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtLine {
    /// Source port of the original direction.
    pub sport: u16,
    /// Destination port of the original direction.
    pub dport: u16,
    /// Original direction (packets, bytes).
    pub orig: (u64, u64),
    /// Reply direction (packets, bytes).
    pub reply: (u64, u64),
}

/// Parses a line of conntrack-tools' extended output with counters: `(proto, line)`.
pub fn parse_ct(line: &str) -> Option<(String, CtLine)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let proto = words
        .iter()
        .take(4)
        .find(|w| matches!(**w, "tcp" | "udp" | "icmp" | "icmpv6" | "sctp"))?;
    let get = |k: &'static str| words.iter().filter_map(move |w| w.strip_prefix(k));
    let sport = get("sport=").next()?.parse().ok()?;
    let dport = get("dport=").next()?.parse().ok()?;
    let nums: Vec<u64> = words
        .iter()
        .filter_map(|w| {
            w.strip_prefix("packets=")
                .or_else(|| w.strip_prefix("bytes="))
        })
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if nums.len() != 4 {
        return None;
    }
    Some((
        proto.to_string(),
        CtLine {
            sport,
            dport,
            orig: (nums[0], nums[1]),
            reply: (nums[2], nums[3]),
        },
    ))
}

/// `conntrack -E -e DESTROY -o extended` running in a namespace: the reference for the
/// kernel's final counters of every connection that ends while it runs.
#[derive(Debug)]
pub struct DestroyLog {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<(String, CtLine)>>,
}

impl DestroyLog {
    /// Starts logging in `ns`.
    pub fn start(ns: &Netns) -> DestroyLog {
        use std::io::BufRead;
        let mut child = ns
            .command("stdbuf")
            .args(["-oL", "conntrack", "-E", "-e", "DESTROY", "-o", "extended"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("conntrack -E");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        // conntrack -E subscribes asynchronously; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        DestroyLog {
            child,
            lines: rx,
            seen: Default::default(),
        }
    }

    fn pump(&self, wait: Duration) {
        if let Ok(l) = self.lines.recv_timeout(wait)
            && let Some(x) = parse_ct(&l)
        {
            self.seen.borrow_mut().push(x);
        }
        while let Ok(l) = self.lines.try_recv() {
            if let Some(x) = parse_ct(&l) {
                self.seen.borrow_mut().push(x);
            }
        }
    }

    /// Waits until the DESTROY of (proto, source port) is logged; returns it.
    pub fn wait(&self, proto: &str, sport: u16, within: Duration) -> CtLine {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some((_, c)) = self
                .seen
                .borrow()
                .iter()
                .find(|(p, c)| p == proto && c.sport == sport)
            {
                return *c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no DESTROY for {proto} sport {sport} within {within:?}"
            );
            self.pump(Duration::from_millis(100));
        }
    }
}

impl Drop for DestroyLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (for a child process to listen on), never one this
/// process handed out before: the probe socket is closed at once, so the kernel may
/// offer the same port to the next call (CI saw a server's HTTP port given twice).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        if given.insert(port) {
            return port;
        }
    }
    panic!("no port on 127.0.0.1 not handed out before in 1000 tries");
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0): `(status, body)`, or `None` when nothing
/// answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (head, body) = r.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.parse().ok()?,
        body.to_string(),
    ))
}

/// Polls `ok` every 100 ms until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Sends `sig` to the child.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), sig);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the ClickHouse HTTP front of the store tests (the real engine, chdb, behind
/// `crates/store/tests/fixtures/chdb_front.py`) on 127.0.0.1:`port` with its data under
/// `data`, and waits until it is ready; None when python3 with chdb cannot run it.
pub fn clickhouse_front(data: &std::path::Path, port: u16) -> Option<ChildGuard> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../store/tests/fixtures/chdb_front.py"
    );
    let mut child = ChildGuard(
        Command::new("python3")
            .args([script, "--data"])
            .arg(data)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?,
    );
    let out = child.0.stdout.take()?;
    let mut line = String::new();
    io::BufRead::read_line(&mut io::BufReader::new(out), &mut line).ok()?;
    line.starts_with("READY").then_some(child)
}

/// The committed inputs of fuzz target `target` (`<crate>/fuzz/seeds/<target>/`, crash
/// inputs saved there included) as (path, bytes), sorted; panics when there are none.
/// `crate_dir` is the calling crate's `env!("CARGO_MANIFEST_DIR")`.
pub fn fuzz_seeds(crate_dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(crate_dir)
        .join("fuzz/seeds")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let data = std::fs::read(&p).expect("read seed");
            (p.display().to_string(), data)
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no inputs in {}", dir.display());
    v
}

/// utime + stime of process `pid` (all its threads), seconds; `None` when it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()?;
    Some(ticks as f64 / hz as f64)
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, KiB; 0 for a field it cannot read.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The sum of every series of metric `name` in a Prometheus text page (0 when absent).
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_metric_sums_its_series_and_not_its_longer_namesakes() {
        let page = "# TYPE x_total counter\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3.5\n\
                    x_total_extra 100\nx_total 1\n";
        assert_eq!(super::metric_sum(page, "x_total"), 6.5);
        assert_eq!(super::metric_sum(page, "y_total"), 0.0);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(super::cpu_seconds(pid).is_some_and(|s| s >= 0.0));
        let (rss, peak) = super::memory_kib(pid);
        assert!(rss > 0 && peak >= rss, "rss {rss} KiB, peak {peak} KiB");
        assert_eq!(super::cpu_seconds(u32::MAX), None, "no such process");
    }
}
