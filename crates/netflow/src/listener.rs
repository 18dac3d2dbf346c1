//! The UDP listener: the thin I/O shell around [`Decoder`].
//!
//! Per listen address, `sockets_per_addr` sockets share the port with SO_REUSEPORT,
//! one thread each. Each thread owns its own [`Decoder`]: the kernel picks a socket
//! by hashing the datagram's source 4-tuple, so one exporter's stream (templates
//! and data) always lands on the same thread. A thread blocks in `recvmmsg`
//! (MSG_WAITFORONE, with a [`POLL_MS`] receive timeout so a stop request is seen
//! within that), gets up to `batch_datagrams` datagrams in one call, decodes them and
//! hands the flows to the sink as one [`Batch`].
//!
//! A thread that keeps up with its exporters would otherwise wake up for nearly every
//! datagram (at 20k datagrams/s, 95% of batches held one datagram and most of the CPU
//! went to context switches). So after a batch that did not fill, it pauses for
//! `coalesce` (1 ms by default) and lets the socket buffer gather the next batch: at
//! most ~1000 wake-ups per second per socket, a millisecond of latency, and at
//! 300k datagrams/s about 0.5 MB waiting in a buffer of 32 MiB. The pause is skipped
//! when the kernel granted a receive buffer under 4 MiB.
//!
//! Nothing is queued in between: while the sink runs, datagrams wait in the socket's
//! receive buffer, and when that is full the kernel drops them. Those drops are read
//! once a second from the `drops` column of `/proc/net/udp` or `/proc/net/udp6` for
//! the socket's inode (exact at any moment, unlike SO_RXQ_OVFL, which only reports
//! drops on the next datagram that gets through) and published in [`ListenerStats`].

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, MultiHeaders, SockFlag, SockType, SockaddrStorage, bind, getsockopt,
    recvmmsg, setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::allow::AllowList;
use crate::batch::{Batch, ObserverNames};
use crate::decoder::{Decoder, DecoderConfig};
use crate::error::{ErrorCounts, ErrorReason};
use crate::stats::{DomainKey, Stats};

/// Longest wait in `recvmmsg`, ms: the stop flag is checked at least this often.
pub const POLL_MS: u16 = 200;
/// How often each thread expires templates and publishes its counters.
const TICK: Duration = Duration::from_secs(1);
/// Smallest receive buffer (as the kernel reports it) for which a thread pauses to coalesce.
const COALESCE_MIN_RCVBUF: usize = 4 << 20;
/// Observer names cached per thread; the cache is cleared when it grows past this.
const MAX_OBSERVERS: usize = 65_536;

/// Where and how to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// UDP addresses to listen on (IPv4 or IPv6; an IPv6 address listens on IPv6 only).
    /// Port 0 picks a free port, shared by all sockets of that address.
    pub addrs: Vec<SocketAddr>,
    /// Sockets (and threads) per address sharing the port with SO_REUSEPORT (0 = one per core).
    pub sockets_per_addr: usize,
    /// Receive buffer per socket, bytes (0 = leave the system default). Set with
    /// SO_RCVBUFFORCE (needs CAP_NET_ADMIN), else SO_RCVBUF, which the kernel caps at
    /// `net.core.rmem_max`.
    pub rcvbuf_bytes: usize,
    /// Datagrams fetched per `recvmmsg` call, and so at most per [`Batch`] (at least 1).
    pub batch_datagrams: usize,
    /// Receive buffer per datagram; longer datagrams are counted as truncated and skipped.
    pub max_datagram_bytes: usize,
    /// Pause after a batch that did not fill, so the next one gathers more datagrams
    /// (zero: none). Skipped when the receive buffer is under 4 MiB.
    pub coalesce: Duration,
    /// Template, domain and held-data limits, over all threads: each thread's decoder
    /// gets an equal share of `max_templates` and `max_domains` (one exporter's stream
    /// stays on one thread, so `max_templates_per_exporter` applies to each as is).
    pub decoder: DecoderConfig,
    /// Exporter addresses whose datagrams are decoded; others are dropped and counted.
    pub allow: AllowList,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], 2055))],
            sockets_per_addr: 0,
            rcvbuf_bytes: 32 << 20,
            batch_datagrams: 64,
            // Exporters stay under the path MTU (RFC 7011 §10.3.3); 16 KiB covers jumbo frames.
            max_datagram_bytes: 16 << 10,
            coalesce: Duration::from_millis(1),
            decoder: DecoderConfig::default(),
            allow: AllowList::any(),
        }
    }
}

/// One bound socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// The address it is bound to (with the port the kernel chose for port 0).
    pub local: SocketAddr,
    /// SO_RCVBUF as the kernel reports it (twice the usable bytes, bookkeeping included).
    pub rcvbuf_bytes: usize,
    /// Whether SO_RCVBUFFORCE was allowed (else SO_RCVBUF, capped by `net.core.rmem_max`).
    pub rcvbuf_forced: bool,
}

/// Listener counters, shared with whoever exports metrics. Monotonic.
#[derive(Debug)]
pub struct ListenerStats {
    datagrams: AtomicU64,
    bytes: AtomicU64,
    records: AtomicU64,
    truncated: AtomicU64,
    no_source: AtomicU64,
    receive_errors: AtomicU64,
    batches: AtomicU64,
    denied: AtomicU64,
    denied_bytes: AtomicU64,
    allow_any: bool,
    decode_errors: [AtomicU64; ErrorReason::ALL.len()],
    /// Per socket: the kernel's drop counter at the last tick.
    kernel_drops: Vec<AtomicU64>,
    /// Per socket: its decoder's per-domain counters at the last tick.
    exporters: Vec<Mutex<Vec<(DomainKey, Stats)>>>,
    /// Per socket: counters of the domains its decoder has forgotten, at the last tick.
    retired: Vec<Mutex<Stats>>,
    /// Per socket: templates cached and domains tracked at the last tick.
    cached: Vec<[AtomicU64; 2]>,
}

/// A plain copy of [`ListenerStats`]' totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSnapshot {
    /// Datagrams received from the sockets.
    pub datagrams: u64,
    /// Their bytes (UDP payload).
    pub bytes: u64,
    /// Flow records decoded and handed to the sink.
    pub records: u64,
    /// Datagrams longer than `max_datagram_bytes`, skipped.
    pub truncated: u64,
    /// Datagrams without a source address, skipped (should not happen on UDP).
    pub no_source: u64,
    /// Failed `recvmmsg` calls other than EINTR/EAGAIN (timeouts).
    pub receive_errors: u64,
    /// Sink calls.
    pub batches: u64,
    /// Datagrams from addresses outside the allow-list, dropped undecoded.
    pub denied: u64,
    /// Their bytes.
    pub denied_bytes: u64,
    /// Whether every exporter address is allowed (no allow-list).
    pub allow_any: bool,
    /// Templates cached over all threads, as of each thread's last tick.
    pub templates_cached: u64,
    /// Domains tracked over all threads, as of each thread's last tick.
    pub domains_tracked: u64,
    /// Datagrams the kernel dropped (receive buffer full), as of each socket's last tick.
    pub kernel_drops: u64,
    /// Datagrams that failed to decode, by reason (records before the error are kept).
    pub decode_errors: ErrorCounts,
}

impl ListenerStats {
    fn new(sockets: usize, allow_any: bool) -> Self {
        ListenerStats {
            denied: AtomicU64::new(0),
            denied_bytes: AtomicU64::new(0),
            allow_any,
            retired: (0..sockets).map(|_| Mutex::new(Stats::default())).collect(),
            cached: (0..sockets).map(|_| Default::default()).collect(),
            datagrams: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            no_source: AtomicU64::new(0),
            receive_errors: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            decode_errors: Default::default(),
            kernel_drops: (0..sockets).map(|_| AtomicU64::new(0)).collect(),
            exporters: (0..sockets).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// The totals now (kernel drops and exporter counters as of each thread's last tick).
    pub fn snapshot(&self) -> ListenerSnapshot {
        let mut decode_errors = ErrorCounts::default();
        for (r, c) in ErrorReason::ALL.iter().zip(&self.decode_errors) {
            decode_errors.add_n(*r, c.load(Relaxed));
        }
        ListenerSnapshot {
            datagrams: self.datagrams.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            records: self.records.load(Relaxed),
            truncated: self.truncated.load(Relaxed),
            no_source: self.no_source.load(Relaxed),
            receive_errors: self.receive_errors.load(Relaxed),
            batches: self.batches.load(Relaxed),
            denied: self.denied.load(Relaxed),
            denied_bytes: self.denied_bytes.load(Relaxed),
            allow_any: self.allow_any,
            templates_cached: self.cached.iter().map(|c| c[0].load(Relaxed)).sum(),
            domains_tracked: self.cached.iter().map(|c| c[1].load(Relaxed)).sum(),
            kernel_drops: self.kernel_drops.iter().map(|d| d.load(Relaxed)).sum(),
            decode_errors,
        }
    }

    /// Per exporter and domain counters (templates, sequence loss, errors...), merged
    /// over every thread's decoder as of its last tick (at most a second old).
    pub fn exporters(&self) -> Vec<(DomainKey, Stats)> {
        let mut all: HashMap<DomainKey, Stats> = HashMap::new();
        for slot in &self.exporters {
            // A poisoned slot still holds a whole snapshot (it is replaced in one assignment).
            let v = slot.lock().unwrap_or_else(|p| p.into_inner());
            for (k, s) in v.iter() {
                all.entry(*k).or_default().merge(s);
            }
        }
        all.into_iter().collect()
    }

    /// Counters summed over every domain of every thread, forgotten domains included
    /// (monotonic, unlike a sum over [`ListenerStats::exporters`]).
    pub fn totals(&self) -> Stats {
        let mut t = Stats::default();
        for (_, s) in self.exporters() {
            t.merge(&s);
        }
        for slot in &self.retired {
            t.merge(&slot.lock().unwrap_or_else(|p| p.into_inner()));
        }
        t
    }
}

/// What can go wrong setting up or running the listener; names the address.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A socket call failed.
    #[error("NetFlow listener {addr}: {op}: {source}")]
    Socket {
        /// The listen address.
        addr: SocketAddr,
        /// The call (`socket`, `bind`, `SO_REUSEPORT`...).
        op: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The configuration cannot work.
    #[error("NetFlow listener: {0}")]
    Config(String),
    /// A receive thread panicked (in the sink or the decoder).
    #[error("NetFlow listener {addr}: receive thread panicked")]
    Panicked {
        /// The listen address of that thread's socket.
        addr: SocketAddr,
    },
}

/// A running listener: its threads, sockets and counters.
pub struct Listener {
    threads: Vec<(SocketAddr, JoinHandle<()>)>,
    sockets: Vec<SocketInfo>,
    stats: Arc<ListenerStats>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("sockets", &self.sockets)
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Listener {
    /// Binds every socket, then starts one receive thread per socket.
    ///
    /// `sink` is called from the receive threads, concurrently, once per non-empty
    /// batch. It reads the batch or takes it (`std::mem::take`); the thread then clears
    /// what is left and decodes the next datagrams into the same buffers (no
    /// allocation, no fresh pages per batch). While the sink runs that thread receives
    /// nothing (back-pressure goes to the socket buffer, then to the kernel's counted
    /// drops). Threads end within
    /// [`POLL_MS`] of `stop` becoming true; then call [`Listener::join`].
    pub fn start<F>(
        config: ListenerConfig,
        stop: Arc<AtomicBool>,
        sink: F,
    ) -> Result<Listener, ListenError>
    where
        F: Fn(&mut Batch) + Send + Sync + 'static,
    {
        if config.addrs.is_empty() {
            return Err(ListenError::Config("no listen address".into()));
        }
        if config.max_datagram_bytes == 0 {
            return Err(ListenError::Config("max_datagram_bytes is 0".into()));
        }
        let per_addr = match config.sockets_per_addr {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Bind everything first: a bad address fails before any thread runs.
        let mut socks = Vec::new();
        for addr in &config.addrs {
            let mut bound = *addr;
            for _ in 0..per_addr {
                let (sock, info) = open(bound, *addr, config.rcvbuf_bytes)?;
                // Port 0: the first socket got a port; the others join it.
                bound = info.local;
                socks.push((*addr, sock, info));
            }
        }
        let stats = Arc::new(ListenerStats::new(socks.len(), config.allow.allows_any()));
        let threads_n = socks.len().max(1);
        let share = |total: usize| total.div_ceil(threads_n);
        let decoder = DecoderConfig {
            max_templates: share(config.decoder.max_templates),
            max_domains: share(config.decoder.max_domains),
            ..config.decoder.clone()
        };
        let sink = Arc::new(sink);
        let sockets = socks.iter().map(|s| s.2).collect();
        let mut threads = Vec::new();
        for (slot, (addr, sock, info)) in socks.into_iter().enumerate() {
            let worker = Worker {
                sock,
                v6: info.local.is_ipv6(),
                slot,
                stats: Arc::clone(&stats),
                stop: Arc::clone(&stop),
                decoder: Decoder::new(decoder.clone()),
                allow: config.allow.clone(),
                batch: config.batch_datagrams.max(1),
                max_datagram: config.max_datagram_bytes,
                coalesce: if info.rcvbuf_bytes >= COALESCE_MIN_RCVBUF {
                    config.coalesce
                } else {
                    Duration::ZERO
                },
            };
            let sink = Arc::clone(&sink);
            let handle = std::thread::Builder::new()
                .name(format!("netflow-{slot}"))
                .spawn(move || worker.run(&*sink))
                .map_err(|e| ListenError::Socket {
                    addr,
                    op: "spawn thread",
                    source: e,
                });
            match handle {
                Ok(h) => threads.push((addr, h)),
                Err(e) => {
                    // Do not leave the started threads behind.
                    stop.store(true, Relaxed);
                    for (_, h) in threads {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Listener {
            threads,
            sockets,
            stats,
        })
    }

    /// The bound sockets, in address order.
    pub fn sockets(&self) -> &[SocketInfo] {
        &self.sockets
    }

    /// The distinct bound addresses (ports resolved), in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = Vec::new();
        for s in &self.sockets {
            if !v.contains(&s.local) {
                v.push(s.local);
            }
        }
        v
    }

    /// The counters, live.
    pub fn stats(&self) -> Arc<ListenerStats> {
        Arc::clone(&self.stats)
    }

    /// Waits for every thread (set the stop flag first). Each thread publishes its
    /// final counters before it ends.
    pub fn join(self) -> Result<(), ListenError> {
        let mut res = Ok(());
        for (addr, h) in self.threads {
            if h.join().is_err() && res.is_ok() {
                res = Err(ListenError::Panicked { addr });
            }
        }
        res
    }
}

fn sock_err(addr: SocketAddr, op: &'static str) -> impl FnOnce(Errno) -> ListenError {
    move |e| ListenError::Socket {
        addr,
        op,
        source: io::Error::from(e),
    }
}

/// Creates, tunes and binds one socket to `bind_to`; errors name `configured`.
fn open(
    bind_to: SocketAddr,
    configured: SocketAddr,
    rcvbuf: usize,
) -> Result<(UdpSocket, SocketInfo), ListenError> {
    let family = if bind_to.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd: OwnedFd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(sock_err(configured, "socket"))?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(sock_err(configured, "SO_REUSEPORT"))?;
    if bind_to.is_ipv6() {
        // One family per socket whatever net.ipv6.bindv6only says: list 0.0.0.0 and [::]
        // to get both, and their sockets never compete for the same datagrams.
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(sock_err(configured, "IPV6_V6ONLY"))?;
    }
    let mut forced = false;
    if rcvbuf > 0 {
        // The kernel doubles the value for its bookkeeping; getsockopt reports that.
        forced = setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf).is_ok();
        if !forced {
            setsockopt(&fd, sockopt::RcvBuf, &rcvbuf).map_err(sock_err(configured, "SO_RCVBUF"))?;
        }
    }
    // recvmmsg blocks at most this long, so the stop flag is seen in time.
    let timeout = TimeVal::milliseconds(i64::from(POLL_MS));
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)
        .map_err(sock_err(configured, "SO_RCVTIMEO"))?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(bind_to)).map_err(sock_err(configured, "bind"))?;
    let sock = UdpSocket::from(fd);
    let local = sock.local_addr().map_err(|e| ListenError::Socket {
        addr: configured,
        op: "getsockname",
        source: e,
    })?;
    let rcvbuf_bytes =
        getsockopt(&sock, sockopt::RcvBuf).map_err(sock_err(configured, "SO_RCVBUF"))?;
    Ok((
        sock,
        SocketInfo {
            local,
            rcvbuf_bytes,
            rcvbuf_forced: forced,
        },
    ))
}

/// One receive thread's state.
struct Worker {
    sock: UdpSocket,
    v6: bool,
    slot: usize,
    stats: Arc<ListenerStats>,
    stop: Arc<AtomicBool>,
    decoder: Decoder,
    allow: AllowList,
    batch: usize,
    max_datagram: usize,
    coalesce: Duration,
}

/// One received datagram: its length, source, and whether it was cut short.
#[derive(Clone, Copy, Debug)]
struct Received {
    len: usize,
    from: Option<SocketAddr>,
    truncated: bool,
}

impl Worker {
    fn run(mut self, sink: &(dyn Fn(&mut Batch) + Send + Sync)) {
        let mut bufs: Vec<Vec<u8>> = (0..self.batch)
            .map(|_| vec![0u8; self.max_datagram])
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(self.batch, None);
        let mut got: Vec<Received> = Vec::with_capacity(self.batch);
        let mut observers = ObserverNames::new(MAX_OBSERVERS);
        let mut out = Batch::default();
        let inode = nix::sys::stat::fstat(self.sock.as_fd())
            .ok()
            .map(|st| st.st_ino);
        let mut last_tick = Instant::now();
        while !self.stop.load(Relaxed) {
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick(inode);
            }
            match recv_batch(self.sock.as_raw_fd(), &mut headers, &mut bufs, &mut got) {
                Ok(()) => {}
                // Timeout (nothing for POLL_MS) or a signal.
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(_) => {
                    self.stats.receive_errors.fetch_add(1, Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            if got.is_empty() {
                continue;
            }
            out.clear();
            self.decode(&got, &bufs, &mut observers, &mut out);
            if !out.is_empty() {
                self.stats.batches.fetch_add(1, Relaxed);
                sink(&mut out);
            }
            if got.len() < self.batch && !self.coalesce.is_zero() {
                std::thread::sleep(self.coalesce);
            }
        }
        self.tick(inode);
    }

    fn decode(
        &mut self,
        got: &[Received],
        bufs: &[Vec<u8>],
        observers: &mut ObserverNames,
        out: &mut Batch,
    ) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (mut bytes, mut truncated, mut no_source) = (0u64, 0u64, 0u64);
        let (mut denied, mut denied_bytes) = (0u64, 0u64);
        let before = out.len();
        for (r, buf) in got.iter().zip(bufs) {
            bytes += r.len as u64;
            let Some(from) = r.from else {
                no_source += 1;
                continue;
            };
            if !self.allow.allows(from.ip()) {
                denied += 1;
                denied_bytes += r.len as u64;
                continue;
            }
            if r.truncated {
                truncated += 1;
                continue;
            }
            let Some(data) = buf.get(..r.len) else {
                truncated += 1;
                continue;
            };
            let res = observers.decode(&mut self.decoder, from, data, now, out);
            if let Err(e) = res
                && let Some(c) = self.stats.decode_errors.get(e.reason().index())
            {
                c.fetch_add(1, Relaxed);
            }
        }
        let s = &self.stats;
        s.datagrams.fetch_add(got.len() as u64, Relaxed);
        s.bytes.fetch_add(bytes, Relaxed);
        s.records.fetch_add((out.len() - before) as u64, Relaxed);
        if truncated > 0 {
            s.truncated.fetch_add(truncated, Relaxed);
        }
        if no_source > 0 {
            s.no_source.fetch_add(no_source, Relaxed);
        }
        if denied > 0 {
            s.denied.fetch_add(denied, Relaxed);
            s.denied_bytes.fetch_add(denied_bytes, Relaxed);
        }
    }

    /// Once a second: expire templates, publish counters and the kernel's drop count.
    fn tick(&mut self, inode: Option<u64>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.decoder.expire(now);
        let snap: Vec<(DomainKey, Stats)> =
            self.decoder.stats().map(|(k, s)| (*k, s.clone())).collect();
        if let Some(slot) = self.stats.exporters.get(self.slot) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = snap;
        }
        if let Some(slot) = self.stats.retired.get(self.slot) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = self.decoder.retired_stats().clone();
        }
        if let Some(c) = self.stats.cached.get(self.slot) {
            c[0].store(self.decoder.template_count() as u64, Relaxed);
            c[1].store(self.decoder.domain_count() as u64, Relaxed);
        }
        if let Some(drops) = inode.and_then(|i| kernel_drops(i, self.v6))
            && let Some(d) = self.stats.kernel_drops.get(self.slot)
        {
            d.store(drops, Relaxed);
        }
    }
}

/// One `recvmmsg`: waits for the first datagram (up to the socket's receive timeout),
/// then takes what else is queued, up to `bufs.len()`; fills `got`.
fn recv_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [Vec<u8>],
    got: &mut Vec<Received>,
) -> Result<(), Errno> {
    got.clear();
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(b.as_mut_slice())])
        .collect();
    let res = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None)?;
    for m in res {
        got.push(Received {
            len: m.bytes,
            from: m.address.and_then(to_std),
            truncated: m.flags.contains(MsgFlags::MSG_TRUNC),
        });
    }
    Ok(())
}

fn to_std(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(SocketAddr::V6((*v6).into()));
    }
    None
}

/// The `drops` column of `/proc/net/udp{,6}` for the socket with this inode.
fn kernel_drops(inode: u64, v6: bool) -> Option<u64> {
    let path = if v6 {
        "/proc/net/udp6"
    } else {
        "/proc/net/udp"
    };
    let text = std::fs::read_to_string(path).ok()?;
    drops_for_inode(&text, inode)
}

/// Parses `/proc/net/udp` text: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops`.
fn drops_for_inode(text: &str, inode: u64) -> Option<u64> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        f.get(12)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two sockets from a real /proc/net/udp (kernel 6.x), the second with 17 drops.
    const PROC_NET_UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  312: 0100007F:0807 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 0
  987: 00000000:0807 00000000:0000 07 00000000:00001200 00:00000000 00000000     0        0 654321 2 0000000000000000 17
";

    #[test]
    fn drops_are_read_for_the_right_inode() {
        assert_eq!(drops_for_inode(PROC_NET_UDP, 123456), Some(0));
        assert_eq!(drops_for_inode(PROC_NET_UDP, 654321), Some(17));
        assert_eq!(drops_for_inode(PROC_NET_UDP, 1), None);
        assert_eq!(drops_for_inode("", 1), None);
        assert_eq!(drops_for_inode("header\n1: short line\n", 1), None);
    }

    #[test]
    fn own_socket_is_found_in_proc_net_udp() {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let inode = nix::sys::stat::fstat(s.as_fd()).expect("fstat").st_ino;
        assert_eq!(kernel_drops(inode, false), Some(0));
    }

    #[test]
    fn default_config_matches_the_docs() {
        let c = ListenerConfig::default();
        assert_eq!(c.rcvbuf_bytes, 32 << 20);
        assert_eq!(c.sockets_per_addr, 0);
        assert_eq!(
            c.addrs,
            vec!["0.0.0.0:2055".parse::<SocketAddr>().expect("addr")]
        );
    }
}
