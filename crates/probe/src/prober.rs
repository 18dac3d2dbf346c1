//! The probes (thin I/O around [`crate::burst`], [`crate::wire`], [`crate::dns`] and
//! [`crate::icmp`]): each takes a peer, does one measurement and returns a
//! [`ProbeResult`]; none panics or returns early without a result.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

use crate::burst::{Burst, Summary};
use crate::dns::{self, QType, Rcode};
use crate::icmp;
use crate::peers::Peer;
use crate::responder::Ports;
use crate::result::{Outcome, ProbeKind, ProbeResult};
use crate::tsock::{Proto, TsSocket, now_ns};
use crate::wire;

/// Probe settings (shared by every peer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Ports of the peers' responders.
    pub ports: Ports,
    /// Source address for probes (the node address); none lets the kernel choose.
    pub bind: Option<IpAddr>,
    /// UDP packets per burst.
    pub udp_count: u32,
    /// Gap between the packets of a burst (UDP and ICMP), ms. 0: the whole burst
    /// leaves back to back from one wake-up (a third of the CPU of 10 ms at 100 peers,
    /// see BENCHMARKS.md), at the price of correlated samples: the packets share one
    /// moment of the path, so a burst sees a short loss spike whole or not at all.
    pub udp_spacing_ms: u64,
    /// A reply later than this after its packet is lost, ms.
    pub udp_timeout_ms: u64,
    /// Bytes of a small UDP probe (at least the 48-byte header).
    pub udp_size: usize,
    /// Path MTU the full-MTU probe checks (IP packet size, e.g. 1500 or 9001); 0: off.
    pub mtu: usize,
    /// Packets per full-MTU burst.
    pub mtu_count: u32,
    /// ICMP echo requests per burst.
    pub icmp_count: u32,
    /// TCP connect timeout, ms.
    pub tcp_timeout_ms: u64,
    /// Whole HTTP request timeout, ms.
    pub http_timeout_ms: u64,
    /// Path of the HTTP GET.
    pub http_path: String,
    /// DNS answer timeout, ms.
    pub dns_timeout_ms: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            ports: Ports::default(),
            bind: None,
            udp_count: 5,
            udp_spacing_ms: 0,
            udp_timeout_ms: 250,
            udp_size: wire::HEADER_LEN,
            mtu: 1500,
            mtu_count: 2,
            icmp_count: 3,
            tcp_timeout_ms: 1000,
            http_timeout_ms: 1000,
            http_path: "/".to_string(),
            dns_timeout_ms: 1000,
        }
    }
}

/// The probing node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    /// Node name.
    pub node: String,
    /// Zone.
    pub zone: String,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn result(kind: ProbeKind, me: &Me, peer: &Peer) -> ProbeResult {
    ProbeResult::new(
        kind,
        (&me.node, &me.zone),
        (&peer.node, &peer.zone),
        now_ns(),
    )
}

fn bind_addr(cfg: &ProbeConfig, dst: IpAddr) -> SocketAddr {
    match cfg.bind {
        Some(b) if b.is_ipv6() == dst.is_ipv6() => SocketAddr::new(b, 0),
        _ if dst.is_ipv6() => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    }
}

/// Sockets kept for one peer across rounds (a connected UDP socket per burst kind and
/// an ICMP socket), so a round costs no socket set-up. A socket that saw an error is
/// dropped and opened anew next time. Replies still in flight from an earlier round
/// arrive with another session and never match.
#[derive(Debug, Default)]
pub struct PeerSockets {
    /// Small UDP probes.
    pub udp: Option<TsSocket>,
    /// Full-MTU UDP probes (Don't Fragment).
    pub mtu: Option<TsSocket>,
    /// ICMP echo, and whether it is a raw socket.
    pub icmp: Option<(TsSocket, bool)>,
}

/// Runs one probe of `kind` against `peer` (DNS is not a peer probe: see [`dns_lookup`]).
pub async fn probe(cfg: &ProbeConfig, me: &Me, peer: &Peer, kind: ProbeKind) -> ProbeResult {
    probe_with(cfg, me, peer, kind, &mut PeerSockets::default()).await
}

/// As [`probe`], reusing (and filling) `socks`.
pub async fn probe_with(
    cfg: &ProbeConfig,
    me: &Me,
    peer: &Peer,
    kind: ProbeKind,
    socks: &mut PeerSockets,
) -> ProbeResult {
    let Some(addr) = peer.addr_like(cfg.bind) else {
        let mut r = result(kind, me, peer);
        r.error = format!("peer {} has no address", peer.node);
        return r;
    };
    match kind {
        ProbeKind::Udp => udp_burst(cfg, me, peer, addr, false, &mut socks.udp).await,
        ProbeKind::UdpMtu => udp_burst(cfg, me, peer, addr, true, &mut socks.mtu).await,
        ProbeKind::Tcp => tcp_connect(cfg, me, peer, addr).await,
        ProbeKind::Http => http_get(cfg, me, peer, addr).await,
        ProbeKind::Icmp => icmp_echo(cfg, me, peer, addr, &mut socks.icmp).await,
        ProbeKind::Dns => {
            let mut r = result(kind, me, peer);
            r.outcome = Outcome::Unavailable;
            r.error = "DNS probes go to resolvers, not peers".to_string();
            r
        }
    }
}

/// How a burst's packets are written and read.
trait BurstCodec: Sync {
    fn request(&self, session: u64, seq: u32, t1: u64, out: &mut Vec<u8>);
    /// `(session, seq, t2, t3)` of a reply.
    fn reply(&self, b: &[u8]) -> Option<(u64, u32, u64, u64)>;
    /// `(session, seq)` of a looped-back sent packet (its payload is the tail).
    fn sent(&self, b: &[u8]) -> Option<(u64, u32)>;
}

struct Udp {
    size: usize,
}

impl BurstCodec for Udp {
    fn request(&self, session: u64, seq: u32, t1: u64, out: &mut Vec<u8>) {
        // The size was checked when the burst was set up.
        let _ = wire::encode(&wire::Probe::request(session, seq, t1, self.size), out);
    }
    fn reply(&self, b: &[u8]) -> Option<(u64, u32, u64, u64)> {
        let p = wire::decode(b).ok()?;
        (p.kind == wire::Kind::Reply).then_some((p.session, p.seq, p.t2_ns, p.t3_ns))
    }
    fn sent(&self, b: &[u8]) -> Option<(u64, u32)> {
        let tail = b.get(b.len().checked_sub(self.size)?..)?;
        let p = wire::decode(tail).ok()?;
        Some((p.session, p.seq))
    }
}

struct Icmp {
    v6: bool,
    raw: bool,
}

impl BurstCodec for Icmp {
    fn request(&self, session: u64, seq: u32, _t1: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&icmp::echo_request(
            self.v6,
            (session >> 48) as u16,
            session,
            seq,
        ));
    }
    fn reply(&self, b: &[u8]) -> Option<(u64, u32, u64, u64)> {
        icmp::echo_reply(b, self.v6, self.raw).map(|(s, q)| (s, q, 0, 0))
    }
    fn sent(&self, b: &[u8]) -> Option<(u64, u32)> {
        icmp::echo_sent(b.get(b.len().checked_sub(icmp::ECHO_LEN)?..)?)
    }
}

struct BurstRun {
    summary: Summary,
    first_error: Option<String>,
}

fn describe(e: &io::Error, dst: SocketAddr) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => format!("{dst}: nothing listens (ICMP port unreachable)"),
        Some(libc::EMSGSIZE) => {
            format!("{dst}: packet larger than the path MTU the kernel knows (EMSGSIZE)")
        }
        Some(libc::EHOSTUNREACH) => format!("{dst}: host unreachable"),
        Some(libc::ENETUNREACH) => format!("{dst}: network unreachable"),
        _ => format!("{dst}: {e}"),
    }
}

/// Sends `count` packets `spacing` apart and collects the replies until every packet
/// is answered or the last one's timeout passes.
async fn run_burst(
    sock: &TsSocket,
    codec: &dyn BurstCodec,
    dst: SocketAddr,
    count: u32,
    spacing: Duration,
    timeout: Duration,
    max_len: usize,
) -> BurstRun {
    let session = fastrand::u64(..);
    let mut burst = Burst::new(session, count, timeout.as_nanos() as u64);
    let mut first_error = None;
    let mut out = Vec::with_capacity(64);
    // Room for the largest probe (a reply is as long as its request) plus headers.
    let mut rbuf = vec![0u8; max_len + 64];
    let mut ebuf = vec![0u8; max_len + 128];
    let start = tokio::time::Instant::now();
    let mut next = 0u32;
    let mut last_send = start;
    let drain = |burst: &mut Burst, ebuf: &mut [u8]| {
        sock.drain_tx_stamps(ebuf, |p, t| {
            if let Some((s, q)) = codec.sent(p) {
                burst.tx_stamp(s, q, t);
            }
        });
    };
    loop {
        // Every packet that is due leaves now: with no spacing the whole burst goes
        // from this one wake-up, back to back (a send awaits only a full buffer).
        let now = tokio::time::Instant::now();
        while next < count && start + spacing * next <= now {
            let t1 = now_ns();
            codec.request(session, next, t1, &mut out);
            burst.sent(next, t1);
            if let Err(e) = sock.send(&out, None).await {
                burst.send_failed(next);
                first_error.get_or_insert_with(|| describe(&e, dst));
            }
            last_send = tokio::time::Instant::now();
            next += 1;
        }
        if next >= count && burst.complete() {
            break;
        }
        let wake = if next < count {
            start + spacing * next
        } else {
            last_send + timeout
        };
        tokio::select! {
            r = sock.recv(&mut rbuf) => {
                match r {
                    Ok(r) if !r.truncated => {
                        if let Some((s, q, t2, t3)) = codec.reply(&rbuf[..r.len]) {
                            // The transmit stamp is queued by the time the packet is
                            // on the wire: read the queue only when this reply's stamp
                            // is not in yet (once per burst when it goes back to back).
                            if !burst.has_tx_stamp(s, q) {
                                drain(&mut burst, &mut ebuf);
                            }
                            let (t4, kernel) = match r.kernel_ns {
                                Some(t) => (t, true),
                                None => (now_ns(), false),
                            };
                            burst.reply(s, q, t2, t3, t4, kernel);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        first_error.get_or_insert_with(|| describe(&e, dst));
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if next >= count {
                    break;
                }
            }
        }
    }
    // What is still queued (stamps of unanswered packets) is read so the next burst on
    // this socket starts with an empty queue.
    if !burst.all_tx_stamped() {
        drain(&mut burst, &mut ebuf);
    }
    BurstRun {
        summary: burst.finish(),
        first_error,
    }
}

fn fill_burst(r: &mut ProbeResult, run: BurstRun) {
    let s = run.summary;
    r.sent = s.sent;
    r.lost = s.lost;
    r.duplicates = s.duplicates;
    r.late = s.late;
    r.rtt_ns = s.rtt_ns;
    r.timestamp_fallbacks = s.timestamp_fallbacks;
    if s.sent > 0 && s.lost == 0 {
        r.outcome = Outcome::Ok;
    } else {
        r.outcome = Outcome::Fail;
        r.error = match run.first_error {
            Some(e) if s.lost == s.sent => e,
            Some(e) => format!("lost {} of {}; {e}", s.lost, s.sent),
            None if s.late > 0 => {
                format!("lost {} of {} ({} answered late)", s.lost, s.sent, s.late)
            }
            None => format!("lost {} of {}", s.lost, s.sent),
        };
    }
}

/// A UDP burst to the peer's echo port: small packets, or (`full_mtu`) packets of the
/// configured path MTU with Don't Fragment set. Uses the socket in `slot` (opening
/// one when empty) and keeps it there unless the burst saw a socket error.
pub async fn udp_burst(
    cfg: &ProbeConfig,
    me: &Me,
    peer: &Peer,
    addr: IpAddr,
    full_mtu: bool,
    slot: &mut Option<TsSocket>,
) -> ProbeResult {
    let kind = if full_mtu {
        ProbeKind::UdpMtu
    } else {
        ProbeKind::Udp
    };
    let mut r = result(kind, me, peer);
    let dst = SocketAddr::new(addr, cfg.ports.udp);
    let (size, count) = if full_mtu {
        let hdr = if addr.is_ipv6() { 48 } else { 28 };
        (cfg.mtu.saturating_sub(hdr), cfg.mtu_count)
    } else {
        (cfg.udp_size, cfg.udp_count)
    };
    if !(wire::HEADER_LEN..=wire::MAX_LEN).contains(&size) {
        r.error = format!(
            "probe size {size} is outside {}..={} bytes",
            wire::HEADER_LEN,
            wire::MAX_LEN
        );
        return r;
    }
    if slot.as_ref().is_some_and(|s| s.peer() != Some(dst)) {
        *slot = None;
    }
    let sock = match slot.take() {
        Some(s) => s,
        None => match open_udp(cfg, dst, full_mtu) {
            Ok(s) => s,
            Err(e) => {
                r.error = describe(&e, dst);
                return r;
            }
        },
    };
    let run = run_burst(
        &sock,
        &Udp { size },
        dst,
        count,
        ms(cfg.udp_spacing_ms),
        ms(cfg.udp_timeout_ms),
        size,
    )
    .await;
    let emsgsize = run
        .first_error
        .as_deref()
        .is_some_and(|e| e.contains("EMSGSIZE"));
    let clean = run.first_error.is_none();
    fill_burst(&mut r, run);
    if full_mtu
        && emsgsize
        && let Some(pmtu) = sock.path_mtu()
    {
        r.error = format!(
            "{dst}: the kernel knows a path MTU of {pmtu}, below the {} probed",
            cfg.mtu
        );
    }
    if clean {
        *slot = Some(sock);
    }
    r
}

fn open_udp(cfg: &ProbeConfig, dst: SocketAddr, df: bool) -> io::Result<TsSocket> {
    let s = TsSocket::open(Proto::Udp, dst.ip())?;
    s.bind(bind_addr(cfg, dst.ip()))?;
    if df {
        s.dont_fragment()?;
    }
    s.connect(dst)?;
    Ok(s)
}

/// A burst of ICMP echo requests: through a ping socket when
/// `net.ipv4.ping_group_range` allows, else a raw socket (CAP_NET_RAW), else
/// [`Outcome::Unavailable`].
pub async fn icmp_echo(
    cfg: &ProbeConfig,
    me: &Me,
    peer: &Peer,
    addr: IpAddr,
    slot: &mut Option<(TsSocket, bool)>,
) -> ProbeResult {
    let mut r = result(ProbeKind::Icmp, me, peer);
    let dst = SocketAddr::new(addr, 0);
    if slot
        .as_ref()
        .is_some_and(|(s, _)| s.peer().map(|p| p.ip()) != Some(addr))
    {
        *slot = None;
    }
    if let Some((sock, raw)) = slot.take() {
        let clean = icmp_run(cfg, &mut r, &sock, raw, dst).await;
        if clean {
            *slot = Some((sock, raw));
        }
        return r;
    }
    let mut refused = Vec::new();
    let mut opened = None;
    for (proto, raw) in [(Proto::IcmpDgram, false), (Proto::IcmpRaw, true)] {
        match TsSocket::open(proto, addr) {
            Ok(s) => {
                opened = Some((s, raw));
                break;
            }
            Err(e) => refused.push(format!("{proto:?}: {e}")),
        }
    }
    let Some((sock, raw)) = opened else {
        r.outcome = Outcome::Unavailable;
        r.error = format!(
            "no ICMP socket (needs CAP_NET_RAW or net.ipv4.ping_group_range): {}",
            refused.join("; ")
        );
        return r;
    };
    if let Err(e) = sock
        .bind(bind_addr(cfg, addr))
        .and_then(|()| sock.connect(dst))
    {
        r.error = describe(&e, dst);
        return r;
    }
    if icmp_run(cfg, &mut r, &sock, raw, dst).await {
        *slot = Some((sock, raw));
    }
    r
}

/// One ICMP burst on `sock`; true when it saw no socket error.
async fn icmp_run(
    cfg: &ProbeConfig,
    r: &mut ProbeResult,
    sock: &TsSocket,
    raw: bool,
    dst: SocketAddr,
) -> bool {
    let codec = Icmp {
        v6: dst.is_ipv6(),
        raw,
    };
    let run = run_burst(
        sock,
        &codec,
        dst,
        cfg.icmp_count,
        ms(cfg.udp_spacing_ms),
        ms(cfg.udp_timeout_ms),
        icmp::ECHO_LEN + 60,
    )
    .await;
    let clean = run.first_error.is_none();
    fill_burst(r, run);
    clean
}

async fn connect(
    cfg: &ProbeConfig,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<(tokio::net::TcpStream, u64), String> {
    let sock = if dst.is_ipv6() {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
    .map_err(|e| describe(&e, dst))?;
    sock.bind(bind_addr(cfg, dst.ip()))
        .map_err(|e| describe(&e, dst))?;
    let t0 = Instant::now();
    match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(Ok(s)) => Ok((s, t0.elapsed().as_nanos() as u64)),
        Ok(Err(e)) => Err(describe(&e, dst)),
        Err(_) => Err(format!(
            "{dst}: no connection within {} ms",
            timeout.as_millis()
        )),
    }
}

/// A TCP connect to the peer's TCP port; the sample is the connect time.
pub async fn tcp_connect(cfg: &ProbeConfig, me: &Me, peer: &Peer, addr: IpAddr) -> ProbeResult {
    let mut r = result(ProbeKind::Tcp, me, peer);
    r.sent = 1;
    let dst = SocketAddr::new(addr, cfg.ports.tcp);
    match connect(cfg, dst, ms(cfg.tcp_timeout_ms)).await {
        Ok((_s, t)) => {
            r.outcome = Outcome::Ok;
            r.rtt_ns.push(t);
        }
        Err(e) => {
            r.lost = 1;
            r.error = e;
        }
    }
    r
}

/// An HTTP GET over a fresh connection (TCP_NODELAY, `Connection: close`); the sample
/// is the whole request, connect included. Anything but a 200 fails.
pub async fn http_get(cfg: &ProbeConfig, me: &Me, peer: &Peer, addr: IpAddr) -> ProbeResult {
    http_and_connect(cfg, me, peer, addr).await.1
}

/// One HTTP GET that also gives the TCP connect result (to the HTTP port): what the
/// mesh runs when both `tcp` and `http` are on, one connection instead of two.
pub async fn http_and_connect(
    cfg: &ProbeConfig,
    me: &Me,
    peer: &Peer,
    addr: IpAddr,
) -> (ProbeResult, ProbeResult) {
    let mut t = result(ProbeKind::Tcp, me, peer);
    let mut r = result(ProbeKind::Http, me, peer);
    t.sent = 1;
    r.sent = 1;
    let dst = SocketAddr::new(addr, cfg.ports.http);
    let timeout = ms(cfg.http_timeout_ms);
    let t0 = Instant::now();
    let mut connected = None;
    let exchange = async {
        let (mut s, ct) =
            connect(cfg, dst, ms(cfg.tcp_timeout_ms.min(cfg.http_timeout_ms))).await?;
        connected = Some(ct);
        let _ = s.set_nodelay(true);
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: podflow-probe\r\nConnection: close\r\n\r\n",
            cfg.http_path, dst
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| describe(&e, dst))?;
        let mut body = Vec::with_capacity(256);
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) if body.len() < 64 * 1024 => body.extend_from_slice(&buf[..n]),
                Ok(_) => break,
                Err(e) => return Err(describe(&e, dst)),
            }
        }
        Ok::<_, String>(body)
    };
    let body = match tokio::time::timeout(timeout, exchange).await {
        Ok(b) => b,
        Err(_) => Err(format!(
            "{dst}: no complete answer within {} ms",
            timeout.as_millis()
        )),
    };
    let elapsed = t0.elapsed().as_nanos() as u64;
    match connected {
        Some(ct) => {
            t.outcome = Outcome::Ok;
            t.rtt_ns.push(ct);
        }
        None => {
            t.lost = 1;
            t.error = body.as_ref().err().cloned().unwrap_or_default();
        }
    }
    match body {
        Ok(b) => match status(&b) {
            Some(200) => {
                r.outcome = Outcome::Ok;
                r.rtt_ns.push(elapsed);
            }
            Some(code) => {
                r.lost = 1;
                r.error = format!("{dst}: HTTP status {code}");
            }
            None => {
                r.lost = 1;
                r.error = format!("{dst}: not an HTTP response ({} bytes)", b.len());
            }
        },
        Err(e) => {
            r.lost = 1;
            r.error = e;
        }
    }
    (t, r)
}

/// The status code of an HTTP/1.x response.
fn status(b: &[u8]) -> Option<u16> {
    let line = b.split(|&c| c == b'\n').next()?;
    let mut parts = line.split(|&c| c == b' ');
    if !parts.next()?.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(parts.next()?).ok()?.parse().ok()
}

/// One DNS lookup of `name` (`qtype`) at `resolver`. Answers with another id or
/// question are ignored (counted as duplicates); the first matching one decides.
pub async fn dns_lookup(
    cfg: &ProbeConfig,
    me: &Me,
    resolver: SocketAddr,
    name: &str,
    qtype: QType,
) -> ProbeResult {
    let mut r = ProbeResult::new(
        ProbeKind::Dns,
        (&me.node, &me.zone),
        (&resolver.to_string(), ""),
        now_ns(),
    );
    r.dns_name = name.to_string();
    r.sent = 1;
    r.lost = 1;
    let id = fastrand::u16(..);
    let mut q = Vec::with_capacity(64);
    if let Err(e) = dns::encode_query(id, name, qtype, &mut q) {
        r.error = e.to_string();
        return r;
    }
    let timeout = ms(cfg.dns_timeout_ms);
    let t0 = Instant::now();
    let ask = async {
        let s = UdpSocket::bind(bind_addr(cfg, resolver.ip()))
            .await
            .map_err(|e| describe(&e, resolver))?;
        s.connect(resolver)
            .await
            .map_err(|e| describe(&e, resolver))?;
        s.send(&q).await.map_err(|e| describe(&e, resolver))?;
        let mut buf = [0u8; 1500];
        let mut strangers = 0u32;
        loop {
            let n = s.recv(&mut buf).await.map_err(|e| describe(&e, resolver))?;
            match dns::decode_answer(&buf[..n], id, name, qtype) {
                Ok(a) => return Ok((a, strangers)),
                Err(crate::DnsError::Id { .. } | crate::DnsError::Question) => strangers += 1,
                Err(e) => return Err(format!("DNS answer from {resolver}: {e}")),
            }
        }
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok((a, strangers))) => {
            r.duplicates = strangers;
            r.lost = 0;
            r.rtt_ns.push(t0.elapsed().as_nanos() as u64);
            if a.rcode != Rcode::NoError {
                r.error = format!("{resolver}: {name}: {}", a.rcode);
            } else if a.addrs.is_empty() {
                r.error = format!("{resolver}: {name}: no {qtype:?} records");
            } else {
                r.outcome = Outcome::Ok;
            }
        }
        Ok(Err(e)) => r.error = e,
        Err(_) => {
            r.error = format!(
                "{resolver}: no answer for {name} within {} ms",
                timeout.as_millis()
            )
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_line() {
        assert_eq!(status(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(status(b"HTTP/1.0 503 Busy\r\n"), Some(503));
        assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status(b""), None);
    }
}
