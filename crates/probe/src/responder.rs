//! The responder every agent runs: a UDP echo for [`crate::wire`] probes, a TCP port
//! that accepts and closes, and a minimal HTTP endpoint (200 to any GET, then close).
//!
//! Bounded by construction: one task per socket, one reused buffer, no per-peer
//! state; HTTP connections in flight are capped and the extra ones counted and closed.
//! A reply is never larger than its request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::tsock::{Proto, TsSocket, now_ns};
use crate::wire;

/// The ports probes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    /// UDP echo (and the full-MTU probe).
    pub udp: u16,
    /// TCP accept-and-close.
    pub tcp: u16,
    /// HTTP.
    pub http: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            udp: 9470,
            tcp: 9471,
            http: 9472,
        }
    }
}

/// Responder settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponderConfig {
    /// Address to bind (an agent binds its node address; `0.0.0.0` or `::` for all).
    pub bind: IpAddr,
    /// Ports; 0 picks a free one (tests).
    pub ports: Ports,
    /// The most HTTP connections served at once; more are closed and counted.
    pub max_http_connections: usize,
    /// How long an HTTP client may take to send its request.
    pub http_read_timeout_ms: u64,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: Ports::default(),
            max_http_connections: 64,
            http_read_timeout_ms: 1000,
        }
    }
}

/// Counters of one kind of responder socket.
#[derive(Debug, Default)]
pub struct KindCounters {
    /// Datagrams or connections received.
    pub received: AtomicU64,
    /// Replies sent (UDP), connections accepted and closed (TCP), 200s sent (HTTP).
    pub answered: AtomicU64,
    /// Not a probe: bad packet, truncated datagram, unreadable HTTP request.
    pub malformed: AtomicU64,
    /// Received but not answered for lack of means: a failed send, HTTP over its cap.
    pub dropped: AtomicU64,
}

/// A snapshot of [`KindCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStats {
    /// Datagrams or connections received.
    pub received: u64,
    /// Answered.
    pub answered: u64,
    /// Malformed.
    pub malformed: u64,
    /// Dropped.
    pub dropped: u64,
}

impl KindCounters {
    fn snapshot(&self) -> KindStats {
        KindStats {
            received: self.received.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The responder's counters, shared with its tasks.
#[derive(Debug, Default)]
pub struct ResponderCounters {
    /// UDP echo.
    pub udp: KindCounters,
    /// TCP accept.
    pub tcp: KindCounters,
    /// HTTP.
    pub http: KindCounters,
    /// UDP probes answered with a user-space receive time (no kernel stamp).
    pub timestamp_fallbacks: AtomicU64,
}

/// A snapshot of the responder's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponderStats {
    /// UDP echo.
    pub udp: KindStats,
    /// TCP accept.
    pub tcp: KindStats,
    /// HTTP.
    pub http: KindStats,
    /// UDP probes answered with a user-space receive time.
    pub timestamp_fallbacks: u64,
}

/// A running responder; stops when its token is cancelled or [`Responder::stop`].
#[derive(Debug)]
pub struct Responder {
    udp: SocketAddr,
    tcp: SocketAddr,
    http: SocketAddr,
    counters: Arc<ResponderCounters>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// The largest datagram answered (jumbo frames); longer ones are malformed.
const UDP_BUF: usize = 9216;
/// The most request-head bytes read from an HTTP client.
const HTTP_HEAD_MAX: usize = 4096;

impl Responder {
    /// Binds all three sockets (failing with the address when one cannot be bound)
    /// and starts serving on the current tokio runtime.
    pub fn start(cfg: &ResponderConfig, cancel: CancellationToken) -> Result<Responder, Error> {
        let cancel = cancel.child_token();
        let counters = Arc::new(ResponderCounters::default());
        let at = |p| SocketAddr::new(cfg.bind, p);

        let udp_at = at(cfg.ports.udp);
        let sock = TsSocket::open_with(Proto::Udp, cfg.bind, false)
            .map_err(|e| Error::socket("open UDP responder", udp_at, e))?;
        sock.bind(udp_at)
            .map_err(|e| Error::socket("bind UDP responder", udp_at, e))?;
        // Replies to full-MTU probes keep Don't Fragment: the return path is tested too.
        sock.dont_fragment()
            .map_err(|e| Error::socket("set DF on UDP responder", udp_at, e))?;
        let _ = sock.set_rcvbuf(1 << 20);
        let udp = sock
            .local_addr()
            .map_err(|e| Error::socket("UDP responder address", udp_at, e))?;

        let listen = |op: &'static str,
                      addr: SocketAddr|
         -> Result<(TcpListener, SocketAddr), Error> {
            let l = std::net::TcpListener::bind(addr).map_err(|e| Error::socket(op, addr, e))?;
            l.set_nonblocking(true)
                .map_err(|e| Error::socket(op, addr, e))?;
            let local = l.local_addr().map_err(|e| Error::socket(op, addr, e))?;
            let l = TcpListener::from_std(l).map_err(|e| Error::socket(op, addr, e))?;
            Ok((l, local))
        };
        let (tcp_l, tcp) = listen("bind TCP responder", at(cfg.ports.tcp))?;
        let (http_l, http) = listen("bind HTTP responder", at(cfg.ports.http))?;

        let tasks = vec![
            tokio::spawn(serve_udp(sock, counters.clone(), cancel.clone())),
            tokio::spawn(serve_tcp(tcp_l, counters.clone(), cancel.clone())),
            tokio::spawn(serve_http(
                http_l,
                counters.clone(),
                cancel.clone(),
                cfg.max_http_connections.max(1),
                Duration::from_millis(cfg.http_read_timeout_ms),
            )),
        ];
        Ok(Responder {
            udp,
            tcp,
            http,
            counters,
            cancel,
            tasks,
        })
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The ports actually bound.
    pub fn ports(&self) -> Ports {
        Ports {
            udp: self.udp.port(),
            tcp: self.tcp.port(),
            http: self.http.port(),
        }
    }

    /// The live counters (for a metrics registry).
    pub fn counters(&self) -> Arc<ResponderCounters> {
        self.counters.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ResponderStats {
        let c = &self.counters;
        ResponderStats {
            udp: c.udp.snapshot(),
            tcp: c.tcp.snapshot(),
            http: c.http.snapshot(),
            timestamp_fallbacks: c.timestamp_fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Stops serving and waits for the tasks (the sockets close).
    pub async fn stop(mut self) {
        self.cancel.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn serve_udp(sock: TsSocket, c: Arc<ResponderCounters>, cancel: CancellationToken) {
    let mut buf = vec![0u8; UDP_BUF];
    loop {
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = sock.recv(&mut buf) => r,
        };
        let Ok(r) = r else {
            // ECONNREFUSED and the like from an earlier send: nothing to answer.
            continue;
        };
        inc(&c.udp.received);
        let Some(from) = r.from else {
            inc(&c.udp.malformed);
            continue;
        };
        if r.truncated {
            inc(&c.udp.malformed);
            continue;
        }
        let t2 = r.kernel_ns.unwrap_or_else(|| {
            inc(&c.timestamp_fallbacks);
            now_ns()
        });
        if wire::reply_in_place(&mut buf[..r.len], t2, now_ns()).is_err() {
            inc(&c.udp.malformed);
            continue;
        }
        // t3 is taken just before the send; the few µs between are the responder's
        // own and end up in the RTT, not the other way round.
        match sock.send(&buf[..r.len], Some(from)).await {
            Ok(()) => inc(&c.udp.answered),
            Err(_) => inc(&c.udp.dropped),
        }
    }
}

async fn serve_tcp(l: TcpListener, c: Arc<ResponderCounters>, cancel: CancellationToken) {
    loop {
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = l.accept() => r,
        };
        match r {
            Ok((s, _)) => {
                inc(&c.tcp.received);
                drop(s);
                inc(&c.tcp.answered);
            }
            // EMFILE and friends: back off a little instead of spinning.
            Err(_) => {
                inc(&c.tcp.dropped);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_http(
    l: TcpListener,
    c: Arc<ResponderCounters>,
    cancel: CancellationToken,
    max: usize,
    read_timeout: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = l.accept() => r,
        };
        let s = match r {
            Ok((s, _)) => s,
            Err(_) => {
                inc(&c.http.dropped);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        inc(&c.http.received);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            inc(&c.http.dropped);
            continue;
        };
        let c = c.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = answer_http(s, &c, read_timeout) => {}
            }
        });
    }
}

/// Whether `head` is a complete request head (ends with an empty line).
fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// Whether the request line is `GET <target> HTTP/1.x` (or HEAD).
pub(crate) fn is_get(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let version = parts.next().unwrap_or_default();
    (method == b"GET" || method == b"HEAD")
        && !target.is_empty()
        && version.starts_with(b"HTTP/1.")
        && parts.next().is_none()
}

async fn answer_http(mut s: TcpStream, c: &ResponderCounters, read_timeout: Duration) {
    let _ = s.set_nodelay(true);
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let read = async {
        while head.len() < HTTP_HEAD_MAX && !head_complete(&head) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n.min(HTTP_HEAD_MAX - head.len())]),
            }
        }
        head_complete(&head)
    };
    let complete = tokio::time::timeout(read_timeout, read)
        .await
        .unwrap_or(false);
    if !complete || !is_get(&head) {
        inc(&c.http.malformed);
        let _ = s
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        return;
    }
    let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
    match s.write_all(ok).await {
        Ok(()) => {
            let _ = s.shutdown().await;
            inc(&c.http.answered);
        }
        Err(_) => inc(&c.http.dropped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert!(is_get(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(is_get(b"GET /anything?x=1 HTTP/1.0\r\n\r\n"));
        assert!(is_get(b"HEAD / HTTP/1.1\n\n"));
        assert!(!is_get(b"POST / HTTP/1.1\r\n\r\n"));
        assert!(!is_get(b"GET /\r\n\r\n"));
        assert!(!is_get(b"GET  / HTTP/1.1\r\n\r\n"));
        assert!(!is_get(b"\x16\x03\x01"));
        assert!(head_complete(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\n"));
    }
}
