//! The NFQUEUE delayer: an iptables rule queues the packets to (or from) one peer, a thread
//! in the namespace holds each for its delay and then accepts it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::nfq::{self, Event};
use crate::{Direction, Error, IptRule, check_netns};

/// How long each packet is held.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DelaySpec {
    /// Every packet waits at least this long.
    pub base: Duration,
    /// Plus a uniformly random extra in `0..=jitter` (reorders packets closer together
    /// than the jitter).
    pub jitter: Duration,
}

impl DelaySpec {
    /// A fixed delay.
    pub fn fixed(base: Duration) -> DelaySpec {
        DelaySpec {
            base,
            jitter: Duration::ZERO,
        }
    }
}

/// What the delayer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayerStats {
    /// Packets the kernel queued to it.
    pub queued: u64,
    /// Packets accepted after their delay.
    pub released: u64,
    /// Packets accepted at once because the delayer held its maximum.
    pub overflow: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    released: AtomicU64,
    overflow: AtomicU64,
}

/// The most packets held at once (the kernel's queue is capped the same and fails
/// open beyond it).
const MAX_HELD: usize = 4096;

/// A running delayer; on drop the rule goes first, then every held packet is
/// accepted and the queue unbound.
#[derive(Debug)]
pub struct Delayer {
    rule: Option<IptRule>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    queue: u16,
}

impl Delayer {
    /// Delays packets to (`ToPeer`) or from (`FromPeer`) `peer` in namespace `ns`.
    pub fn start(
        ns: &str,
        peer: IpAddr,
        dir: Direction,
        spec: DelaySpec,
    ) -> Result<Delayer, Error> {
        let path = check_netns(ns)?;
        // Queue numbers are per namespace; one per delayer of this process.
        let queue = (std::process::id() as u16)
            .wrapping_mul(31)
            .wrapping_add(fastrand::u16(..))
            | 1;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (stop2, counters2, ns2) = (stop.clone(), counters.clone(), ns.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("nfq-delay-{queue}"))
            .spawn(move || {
                let nl = |op, errno| Error::Netlink {
                    ns: ns2.clone(),
                    queue,
                    op,
                    errno,
                };
                let opened = std::fs::File::open(&path)
                    .map_err(|e| {
                        nl(
                            "open namespace",
                            nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                        )
                    })
                    .and_then(|f| {
                        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|e| nl("setns", e))
                    })
                    .and_then(|()| open_queue(queue).map_err(|(op, e)| nl(op, e)));
                let fd = match opened {
                    Ok(fd) => {
                        let _ = ready_tx.send(Ok(()));
                        fd
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(&fd, queue, spec, &stop2, &counters2);
            })
            .map_err(|e| Error::Value {
                what: "delayer thread",
                value: e.to_string(),
                why: "could not be started",
            })?;
        let started = ready_rx.recv().unwrap_or_else(|_| {
            Err(Error::Value {
                what: "delayer thread",
                value: "exited".into(),
                why: "stopped before binding its queue",
            })
        });
        let mut d = Delayer {
            rule: None,
            stop,
            thread: Some(thread),
            counters,
            queue,
        };
        started?;
        // The xtables NFQUEUE target (this kernel has it built in; nft's `queue`
        // expression it may not have).
        let rest = [
            "-j".to_string(),
            "NFQUEUE".to_string(),
            "--queue-num".to_string(),
            queue.to_string(),
        ];
        d.rule = Some(IptRule::insert(ns, peer, dir, "delay", &rest)?);
        Ok(d)
    }

    /// The queue number used.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// What it did so far.
    pub fn stats(&self) -> DelayerStats {
        DelayerStats {
            queued: self.counters.queued.load(Ordering::Relaxed),
            released: self.counters.released.load(Ordering::Relaxed),
            overflow: self.counters.overflow.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        // The rule first, so nothing new is queued to a thread about to stop.
        self.rule.take();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Op = (&'static str, nix::errno::Errno);

fn request(fd: &OwnedFd, msg: &[u8], seq: u32, op: &'static str) -> Result<(), Op> {
    socket::send(std::os::fd::AsRawFd::as_raw_fd(fd), msg, MsgFlags::empty())
        .map_err(|e| (op, e))?;
    let mut buf = vec![0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut ev = Vec::new();
    while Instant::now() < deadline {
        let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        if poll(&mut p, PollTimeout::from(100u16)).map_err(|e| (op, e))? == 0 {
            continue;
        }
        let n = socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            &mut buf,
            MsgFlags::empty(),
        )
        .map_err(|e| (op, e))?;
        ev.clear();
        nfq::parse(&buf[..n], &mut ev);
        for e in &ev {
            if let Event::Ack { seq: s, errno } = *e
                && s == seq
            {
                return if errno == 0 {
                    Ok(())
                } else {
                    Err((op, nix::errno::Errno::from_raw(-errno)))
                };
            }
        }
    }
    Err((op, nix::errno::Errno::ETIMEDOUT))
}

fn open_queue(queue: u16) -> Result<OwnedFd, Op> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| ("open netlink socket", e))?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &NetlinkAddr::new(0, 0),
    )
    .map_err(|e| ("bind netlink", e))?;
    let _ = socket::setsockopt(&fd, socket::sockopt::RcvBuf, &(4 << 20));
    request(&fd, &nfq::bind(1, queue), 1, "bind queue")?;
    request(
        &fd,
        &nfq::params(2, queue, MAX_HELD as u32),
        2,
        "set queue parameters",
    )?;
    Ok(fd)
}

fn serve(fd: &OwnedFd, queue: u16, spec: DelaySpec, stop: &AtomicBool, c: &Counters) {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let mut held: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
    let mut buf = vec![0u8; 65536];
    let mut ev = Vec::new();
    let accept = |id: u32| {
        let _ = socket::send(
            raw,
            &nfq::verdict(queue, id, nfq::NF_ACCEPT),
            MsgFlags::empty(),
        );
    };
    let jitter_ns = spec.jitter.as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = held.peek().copied() {
            if at > now {
                break;
            }
            held.pop();
            // Counted before the verdict: whoever receives the packet sees it counted.
            c.released.fetch_add(1, Ordering::Relaxed);
            accept(id);
        }
        let wait = held
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(20))
            .min(Duration::from_millis(20));
        let ms = wait.as_millis().clamp(0, 20) as u16;
        let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut p, PollTimeout::from(ms)) {
            Ok(0) | Err(_) => continue,
            Ok(_) => {}
        }
        let Ok(n) = socket::recv(raw, &mut buf, MsgFlags::MSG_DONTWAIT) else {
            continue;
        };
        ev.clear();
        nfq::parse(&buf[..n], &mut ev);
        let arrived = Instant::now();
        for e in &ev {
            if let Event::Packet(id) = *e {
                c.queued.fetch_add(1, Ordering::Relaxed);
                if held.len() >= MAX_HELD {
                    accept(id);
                    c.overflow.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let extra = if jitter_ns > 0 {
                    Duration::from_nanos(fastrand::u64(0..=jitter_ns))
                } else {
                    Duration::ZERO
                };
                held.push(Reverse((arrived + spec.base + extra, id)));
            }
        }
    }
    // Stopping: nothing stays held.
    while let Some(Reverse((_, id))) = held.pop() {
        c.released.fetch_add(1, Ordering::Relaxed);
        accept(id);
    }
    let _ = request(fd, &nfq::unbind(3, queue), 3, "unbind queue");
}
