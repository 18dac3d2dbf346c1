//! The demo's traffic: servers and clients on threads that entered pod (or host)
//! namespaces, exchanging requests of known sizes at a bounded rate, and counting every
//! payload byte so a test can compare them with what podflow stored.
//!
//! Wire format (TCP and UDP): a 16-byte header (request body length, answer length, both
//! u64 big-endian) followed by the body; the server answers with that many bytes. One TCP
//! connection per request (HTTP/1.0 style), so connection counts are known too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;

use super::net::{self, API_PORT, INTERNET, INTERNET_IP, NODE_PORT, NODES, PODS, S3, S3_IP};

/// Largest answer or body a server accepts (bounds memory on bad input).
const MAX_SIZE: u64 = 1 << 20;
/// Socket timeouts: every blocking call returns within this, so stop is prompt.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// `tcp` or `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// One connection per request.
    Tcp,
    /// One datagram each way per request.
    Udp,
}

/// One stream of requests.
#[derive(Debug, Clone)]
pub struct Spec {
    /// What it shows, e.g. `web -> api (same node)`.
    pub name: &'static str,
    /// Namespace the client runs in.
    pub client_netns: String,
    /// Client address.
    pub client_ip: String,
    /// Node that sees the client's side (None: the client is outside the cluster).
    pub client_node: Option<String>,
    /// Address dialled.
    pub dst: SocketAddr,
    /// Protocol.
    pub proto: Proto,
    /// Request body bytes (the 16-byte header comes on top).
    pub request: u64,
    /// Answer bytes.
    pub answer: u64,
    /// Pause between requests.
    pub every: Duration,
}

/// Payload counters of one stream. `started_*` counts a request before its first byte is
/// sent (an upper bound of what can be on the wire), `done_*` after its answer arrived (a
/// lower bound).
#[derive(Debug, Default)]
pub struct Counts {
    started: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    started_out: AtomicU64,
    started_in: AtomicU64,
    done_out: AtomicU64,
    done_in: AtomicU64,
}

/// Every stream the demo runs.
pub fn specs() -> Vec<Spec> {
    let pod = |tag: &str, node: usize| {
        PODS.iter()
            .find(|p| p.tag == tag && p.node == node)
            .copied()
            .unwrap_or(PODS[0])
    };
    let (web, api_a, api_c, db, report, dns) = (
        pod("web", 0),
        pod("api", 0),
        pod("api", 2),
        pod("db", 1),
        pod("report", 2),
        pod("dns", 2),
    );
    let addr =
        |ip: String, port: u16| SocketAddr::new(ip.parse().unwrap_or([0, 0, 0, 0].into()), port);
    let from = |p: net::Pod| (p.netns(), p.ip(), Some(NODES[p.node].name()));
    let ms = Duration::from_millis;
    let mk = |name,
              (client_netns, client_ip, client_node): (String, String, Option<String>),
              dst,
              proto,
              request,
              answer,
              every| Spec {
        name,
        client_netns,
        client_ip,
        client_node,
        dst,
        proto,
        request,
        answer,
        every,
    };
    vec![
        mk(
            "web -> api pod (same node)",
            from(web),
            addr(api_a.ip(), API_PORT),
            Proto::Tcp,
            300,
            2_000,
            ms(200),
        ),
        mk(
            "web -> api Service",
            from(web),
            addr(net::SERVICE_IP.into(), net::SERVICE_PORT),
            Proto::Tcp,
            400,
            5_000,
            ms(200),
        ),
        mk(
            "api -> db (same zone)",
            from(api_a),
            addr(db.ip(), 5432),
            Proto::Tcp,
            200,
            8_000,
            ms(250),
        ),
        mk(
            "report -> db (cross zone)",
            from(report),
            addr(db.ip(), 5432),
            Proto::Tcp,
            150,
            30_000,
            ms(300),
        ),
        mk(
            "web -> node-dns (udp)",
            from(web),
            addr(dns.ip(), 53),
            Proto::Udp,
            40,
            120,
            ms(200),
        ),
        mk(
            "api -> node-dns (udp)",
            from(api_c),
            addr(dns.ip(), 53),
            Proto::Udp,
            40,
            200,
            ms(300),
        ),
        mk(
            "web -> internet",
            from(web),
            addr(INTERNET_IP.into(), 443),
            Proto::Tcp,
            500,
            20_000,
            ms(500),
        ),
        mk(
            "report -> S3",
            from(report),
            addr(S3_IP.into(), 443),
            Proto::Tcp,
            50_000,
            500,
            ms(500),
        ),
        mk(
            "internet -> NodePort",
            (INTERNET.into(), INTERNET_IP.into(), None),
            addr(NODES[2].ip(), NODE_PORT),
            Proto::Tcp,
            200,
            3_000,
            ms(500),
        ),
    ]
}

/// The servers every stream needs: (namespace, address, protocol).
fn servers() -> Vec<(String, SocketAddr, Proto)> {
    let mut v = Vec::new();
    for p in PODS.iter() {
        let ip = p.ip().parse().unwrap_or([0, 0, 0, 0].into());
        match p.app {
            "api" => v.push((p.netns(), SocketAddr::new(ip, API_PORT), Proto::Tcp)),
            "db" => v.push((p.netns(), SocketAddr::new(ip, 5432), Proto::Tcp)),
            "node-dns" => v.push((p.netns(), SocketAddr::new(ip, 53), Proto::Udp)),
            _ => {}
        }
    }
    for (ns, ip) in [(INTERNET, INTERNET_IP), (S3, S3_IP)] {
        let ip = ip.parse().unwrap_or([0, 0, 0, 0].into());
        v.push((ns.to_string(), SocketAddr::new(ip, 443), Proto::Tcp));
    }
    v
}

/// Enters the network namespace `ns` on this thread.
fn enter(ns: &str) -> anyhow::Result<()> {
    let path = PathBuf::from(format!("/run/netns/{ns}"));
    let file = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into {}", path.display()))?;
    Ok(())
}

/// Running servers and clients; [`Traffic::stop`] ends and joins them.
#[derive(Debug)]
pub struct Traffic {
    stop_servers: Arc<AtomicBool>,
    stop_clients: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    clients: Vec<JoinHandle<()>>,
    specs: Vec<Spec>,
    counts: Vec<Arc<Counts>>,
}

impl Traffic {
    /// Starts the servers (waiting until each listens), then the clients.
    pub fn start() -> anyhow::Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_clients = Arc::new(AtomicBool::new(false));
        let mut t = Traffic {
            stop_servers: stop.clone(),
            stop_clients: stop_clients.clone(),
            servers: Vec::new(),
            clients: Vec::new(),
            specs: specs(),
            counts: Vec::new(),
        };
        for (ns, addr, proto) in servers() {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            let h = std::thread::Builder::new()
                .name(format!("demo-server-{ns}"))
                .spawn(move || {
                    let bound = enter(&ns).and_then(|()| match proto {
                        Proto::Tcp => TcpListener::bind(addr)
                            .and_then(|l| l.set_nonblocking(true).map(|()| l))
                            .map(Bound::Tcp)
                            .with_context(|| format!("listen on tcp {addr} in {ns}")),
                        Proto::Udp => UdpSocket::bind(addr)
                            .and_then(|s| {
                                s.set_read_timeout(Some(Duration::from_millis(200)))
                                    .map(|()| s)
                            })
                            .map(Bound::Udp)
                            .with_context(|| format!("bind udp {addr} in {ns}")),
                    });
                    match bound {
                        Ok(b) => {
                            let _ = tx.send(Ok(()));
                            b.serve(&stop);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })
                .context("spawn a server thread")?;
            t.servers.push(h);
            rx.recv_timeout(Duration::from_secs(5))
                .context("a demo server did not start within 5 s")??;
        }
        for spec in t.specs.clone() {
            let counts = Arc::new(Counts::default());
            t.counts.push(counts.clone());
            let stop = stop_clients.clone();
            let h = std::thread::Builder::new()
                .name("demo-client".into())
                .spawn(move || {
                    if let Err(e) = enter(&spec.client_netns) {
                        tracing::error!("demo client {}: {e:#}", spec.name);
                        return;
                    }
                    client(&spec, &counts, &stop);
                })
                .context("spawn a client thread")?;
            t.clients.push(h);
        }
        Ok(t)
    }

    /// The counters as JSON (the test's ground truth).
    pub fn snapshot(&self) -> serde_json::Value {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let streams: Vec<_> = self
            .specs
            .iter()
            .zip(&self.counts)
            .map(|(s, c)| {
                json!({
                    "name": s.name,
                    "proto": match s.proto { Proto::Tcp => "tcp", Proto::Udp => "udp" },
                    "client_ip": s.client_ip,
                    "client_node": s.client_node,
                    "dst_ip": s.dst.ip().to_string(),
                    "dst_port": s.dst.port(),
                    "requests_started": c.started.load(Relaxed),
                    "requests_done": c.done.load(Relaxed),
                    "requests_failed": c.failed.load(Relaxed),
                    "payload_out_started": c.started_out.load(Relaxed),
                    "payload_in_started": c.started_in.load(Relaxed),
                    "payload_out_done": c.done_out.load(Relaxed),
                    "payload_in_done": c.done_in.load(Relaxed),
                })
            })
            .collect();
        json!({ "written_at_ms": now_ms, "running": !self.clients_stopped(), "streams": streams })
    }

    /// Writes [`Traffic::snapshot`] to `path` atomically.
    pub fn write_snapshot(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.snapshot().to_string())
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
    }

    /// Total requests answered so far.
    pub fn requests_done(&self) -> u64 {
        self.counts.iter().map(|c| c.done.load(Relaxed)).sum()
    }

    /// Stops the clients and waits for their last requests (each returns within
    /// [`IO_TIMEOUT`]); the servers keep answering.
    pub fn stop_clients(&mut self) {
        self.stop_clients.store(true, Relaxed);
        for h in self.clients.drain(..) {
            let _ = h.join();
        }
    }

    /// Whether the clients were stopped.
    pub fn clients_stopped(&self) -> bool {
        self.stop_clients.load(Relaxed)
    }

    /// Stops the clients, then the servers, and waits for every thread.
    pub fn stop(&mut self) {
        self.stop_clients();
        self.stop_servers.store(true, Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Bound {
    fn serve(self, stop: &AtomicBool) {
        match self {
            Bound::Tcp(l) => {
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                while !stop.load(Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            conns.retain(|h| !h.is_finished());
                            // Bounded: at most 64 connections in service at once.
                            if conns.len() >= 64 {
                                continue;
                            }
                            if let Ok(h) = std::thread::Builder::new()
                                .name("demo-conn".into())
                                .spawn(move || answer_tcp(s))
                            {
                                conns.push(h);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                for h in conns {
                    let _ = h.join();
                }
            }
            Bound::Udp(s) => {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Relaxed) {
                    let Ok((n, from)) = s.recv_from(&mut buf) else {
                        continue;
                    };
                    let Some(hdr) = buf.get(..16).filter(|_| n >= 16) else {
                        continue;
                    };
                    let m = u64::from_be_bytes(hdr[8..16].try_into().unwrap_or([0; 8]));
                    // One datagram answers; larger answers are clipped to fit.
                    let m = m.min(60_000) as usize;
                    let _ = s.send_to(&vec![7u8; m], from);
                }
            }
        }
    }
}

/// Serves requests on one connection until the client closes it.
fn answer_tcp(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let mut hdr = [0u8; 16];
    while s.read_exact(&mut hdr).is_ok() {
        let n = u64::from_be_bytes(hdr[..8].try_into().unwrap_or([0; 8]));
        let m = u64::from_be_bytes(hdr[8..].try_into().unwrap_or([0; 8]));
        if n > MAX_SIZE || m > MAX_SIZE {
            return;
        }
        let mut body = vec![0u8; n as usize];
        if s.read_exact(&mut body).is_err() || s.write_all(&vec![7u8; m as usize]).is_err() {
            return;
        }
    }
}

fn header(n: u64, m: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&n.to_be_bytes());
    h[8..].copy_from_slice(&m.to_be_bytes());
    h
}

/// Sends requests until stopped, one every `spec.every`.
fn client(spec: &Spec, c: &Counts, stop: &AtomicBool) {
    let out = 16 + spec.request;
    let mut failures_logged = 0;
    while !stop.load(Relaxed) {
        let t0 = Instant::now();
        c.started.fetch_add(1, Relaxed);
        c.started_out.fetch_add(out, Relaxed);
        c.started_in.fetch_add(spec.answer, Relaxed);
        let r = match spec.proto {
            Proto::Tcp => tcp_request(spec),
            Proto::Udp => udp_request(spec),
        };
        match r {
            Ok(()) => {
                c.done.fetch_add(1, Relaxed);
                c.done_out.fetch_add(out, Relaxed);
                c.done_in.fetch_add(spec.answer, Relaxed);
            }
            Err(e) => {
                c.failed.fetch_add(1, Relaxed);
                if failures_logged < 3 {
                    failures_logged += 1;
                    tracing::warn!("demo traffic {} to {}: {e}", spec.name, spec.dst);
                }
            }
        }
        // Sleep in short steps so stop is prompt.
        while !stop.load(Relaxed) && t0.elapsed() < spec.every {
            std::thread::sleep(Duration::from_millis(20).min(spec.every));
        }
    }
}

fn tcp_request(spec: &Spec) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&spec.dst, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&header(spec.request, spec.answer))?;
    s.write_all(&vec![1u8; spec.request as usize])?;
    let mut back = vec![0u8; spec.answer as usize];
    s.read_exact(&mut back)?;
    Ok(())
}

fn udp_request(spec: &Spec) -> std::io::Result<()> {
    let s = UdpSocket::bind(SocketAddr::new(
        spec.client_ip.parse().unwrap_or([0, 0, 0, 0].into()),
        0,
    ))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut d = header(spec.request, spec.answer).to_vec();
    d.resize(16 + spec.request as usize, 1);
    s.send_to(&d, spec.dst)?;
    let mut buf = vec![0u8; 65_536];
    let (n, _) = s.recv_from(&mut buf)?;
    if n as u64 != spec.answer {
        return Err(std::io::Error::other(format!(
            "answer of {n} bytes, expected {}",
            spec.answer
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_has_a_server_and_a_known_client() {
        let servers = servers();
        for s in specs() {
            assert!(
                s.dst.ip() != std::net::IpAddr::from([0, 0, 0, 0]),
                "{}",
                s.name
            );
            let served = servers.iter().any(|(_, a, p)| *a == s.dst && *p == s.proto)
                // The Service and the NodePort are DNATed to the api servers.
                || s.dst.port() == net::SERVICE_PORT
                || s.dst.port() == NODE_PORT;
            assert!(served, "{}: nobody listens on {}", s.name, s.dst);
            assert!(s.client_netns.starts_with(net::PREFIX), "{}", s.name);
            assert!(s.request + 16 <= MAX_SIZE && s.answer <= MAX_SIZE);
            if s.proto == Proto::Udp {
                assert!(s.answer <= 60_000, "{}: one datagram", s.name);
            }
        }
    }

    #[test]
    fn header_is_two_big_endian_lengths() {
        let h = header(0x0102, 0x0304);
        assert_eq!(&h[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&h[8..], &[0, 0, 0, 0, 0, 0, 3, 4]);
    }
}
