//! A datagram socket with the kernel's software timestamps (SO_TIMESTAMPING): receive
//! stamps with every datagram, transmit stamps from the error queue (MSG_ERRQUEUE).
//! Both are CLOCK_REALTIME, the clock [`now_ns`] reads, so a missing stamp falls back
//! to the user-space clock without mixing clocks.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrStorage, TimestampingFlag, sockopt,
};
use nix::sys::time::TimeSpec;
use tokio::io::unix::AsyncFd;

/// Wall-clock now (CLOCK_REALTIME), ns since the Unix epoch.
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map(|t| ts_ns(&t))
        .unwrap_or_default()
}

fn ts_ns(t: &TimeSpec) -> u64 {
    (t.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec() as u64)
}

fn sockaddr(a: SocketAddr) -> SockaddrStorage {
    match a {
        SocketAddr::V4(v) => v.into(),
        SocketAddr::V6(v) => v.into(),
    }
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v).into()));
    }
    s.as_sockaddr_in6().map(|v| SocketAddr::V6((*v).into()))
}

/// One received datagram.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Bytes (the datagram was cut to the buffer when `truncated`).
    pub len: usize,
    /// The sender.
    pub from: Option<SocketAddr>,
    /// The kernel's receive stamp, when it gave one.
    pub kernel_ns: Option<u64>,
    /// The datagram was longer than the buffer.
    pub truncated: bool,
}

/// A non-blocking datagram socket registered with tokio.
#[derive(Debug)]
pub struct TsSocket {
    fd: AsyncFd<OwnedFd>,
    stamps: bool,
    tx_stamps: bool,
    v6: bool,
}

/// Which protocol to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// UDP.
    Udp,
    /// ICMP through an unprivileged ping socket (net.ipv4.ping_group_range).
    IcmpDgram,
    /// ICMP through a raw socket (CAP_NET_RAW).
    IcmpRaw,
}

impl TsSocket {
    /// Opens a socket of `proto` for the family of `family_of`, with timestamps on
    /// when the kernel allows them.
    pub fn open(proto: Proto, family_of: IpAddr) -> io::Result<TsSocket> {
        Self::open_with(proto, family_of, true)
    }

    /// As [`TsSocket::open`]; `tx` says whether to ask for transmit stamps too (a
    /// responder does not: each costs the kernel a packet copy and us a read).
    pub fn open_with(proto: Proto, family_of: IpAddr, tx: bool) -> io::Result<TsSocket> {
        let v6 = family_of.is_ipv6();
        let af = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let (ty, p) = match (proto, v6) {
            (Proto::Udp, _) => (SockType::Datagram, SockProtocol::Udp),
            (Proto::IcmpDgram, false) => (SockType::Datagram, SockProtocol::Icmp),
            (Proto::IcmpDgram, true) => (SockType::Datagram, SockProtocol::IcmpV6),
            (Proto::IcmpRaw, false) => (SockType::Raw, SockProtocol::Icmp),
            (Proto::IcmpRaw, true) => (SockType::Raw, SockProtocol::IcmpV6),
        };
        let fd = socket::socket(af, ty, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, p)?;
        let mut flags = TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE
            | TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE;
        if tx {
            flags |= TimestampingFlag::SOF_TIMESTAMPING_TX_SOFTWARE;
        }
        let stamps = socket::setsockopt(&fd, sockopt::Timestamping, &flags).is_ok();
        let tx_stamps = stamps && tx;
        Ok(TsSocket {
            fd: crate::sys::async_fd(fd)?,
            stamps,
            tx_stamps,
            v6,
        })
    }

    /// Whether kernel stamps are on.
    pub fn stamps(&self) -> bool {
        self.stamps
    }

    /// Whether this is an IPv6 socket.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Binds to `addr`.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        Ok(socket::bind(self.fd.as_raw_fd(), &sockaddr(addr))?)
    }

    /// Connects (the kernel then drops datagrams from anyone else).
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        Ok(socket::connect(self.fd.as_raw_fd(), &sockaddr(addr))?)
    }

    /// The connected peer, if any.
    pub fn peer(&self) -> Option<SocketAddr> {
        let s: SockaddrStorage = socket::getpeername(self.fd.as_raw_fd()).ok()?;
        socket_addr(&s)
    }

    /// Sets Don't Fragment (path-MTU discovery "do").
    pub fn dont_fragment(&self) -> io::Result<()> {
        crate::sys::set_pmtudisc_do(self.fd.get_ref().as_fd(), self.v6)
    }

    /// The path MTU the kernel knows for the connected peer.
    pub fn path_mtu(&self) -> Option<i32> {
        if self.v6 {
            None
        } else {
            socket::getsockopt(self.fd.get_ref(), sockopt::IpMtu).ok()
        }
    }

    /// Sets the receive buffer size.
    pub fn set_rcvbuf(&self, bytes: usize) -> io::Result<()> {
        Ok(socket::setsockopt(
            self.fd.get_ref(),
            sockopt::RcvBuf,
            &bytes,
        )?)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let s: SockaddrStorage = socket::getsockname(self.fd.as_raw_fd())?;
        socket_addr(&s).ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Sends `buf` to `to` (or to the connected peer when `None`), waiting for room.
    pub async fn send(&self, buf: &[u8], to: Option<SocketAddr>) -> io::Result<()> {
        let to = to.map(sockaddr);
        loop {
            let mut g = self.fd.writable().await?;
            let r = g.try_io(|fd| {
                let fd = fd.as_raw_fd();
                let r = match &to {
                    Some(a) => socket::sendto(fd, buf, a, MsgFlags::empty()),
                    None => socket::send(fd, buf, MsgFlags::empty()),
                };
                r.map_err(io::Error::from)
            });
            match r {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits for one datagram.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut cmsg = nix::cmsg_space!(socket::Timestamps);
        loop {
            let mut g = self.fd.readable().await?;
            match g.try_io(|fd| recv_one(fd.as_raw_fd(), buf, &mut cmsg, MsgFlags::MSG_TRUNC)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads every transmit stamp waiting in the error queue, without blocking: `f`
    /// gets the looped-back packet (headers included; the payload is its tail) and
    /// the stamp. Returns how many entries it read.
    pub fn drain_tx_stamps(&self, buf: &mut [u8], mut f: impl FnMut(&[u8], u64)) -> usize {
        if !self.tx_stamps {
            return 0;
        }
        let mut cmsg = nix::cmsg_space!(
            socket::Timestamps,
            libc::sock_extended_err,
            libc::sockaddr_in6
        );
        let mut n = 0;
        // Bounded: the queue holds at most what this socket sent.
        for _ in 0..1024 {
            let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
            match recv_one(self.fd.as_raw_fd(), buf, &mut cmsg, flags) {
                Ok(r) => {
                    n += 1;
                    if let Some(t) = r.kernel_ns {
                        f(&buf[..r.len], t);
                    }
                }
                Err(_) => break,
            }
        }
        n
    }
}

fn recv_one(fd: i32, buf: &mut [u8], cmsg: &mut [u8], flags: MsgFlags) -> io::Result<Received> {
    let buf_len = buf.len();
    let mut iov = [IoSliceMut::new(buf)];
    let m = socket::recvmsg::<SockaddrStorage>(fd, &mut iov, Some(cmsg), flags)?;
    let mut kernel_ns = None;
    if let Ok(cm) = m.cmsgs() {
        for c in cm {
            if let ControlMessageOwned::ScmTimestampsns(t) = c {
                let ns = ts_ns(&t.system);
                if ns != 0 {
                    kernel_ns = Some(ns);
                }
            }
        }
    }
    let cap = m.bytes.min(buf_len);
    Ok(Received {
        len: cap,
        from: m.address.as_ref().and_then(socket_addr),
        kernel_ns,
        truncated: m.bytes > buf_len || m.flags.contains(MsgFlags::MSG_TRUNC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_stamps_both_ways() {
        let lo: IpAddr = "127.0.0.1".parse().expect("addr");
        let a = TsSocket::open(Proto::Udp, lo).expect("socket");
        let b = TsSocket::open(Proto::Udp, lo).expect("socket");
        a.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        b.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        assert!(
            a.stamps() && b.stamps(),
            "this kernel gives software stamps"
        );
        let to = b.local_addr().expect("addr");
        // The kernel turns receive stamping on in a deferred work item the first time a
        // socket asks for it: the first packets may come without (the prober counts
        // those as fallbacks). Within a few tries they must come.
        for attempt in 0..20 {
            let before = now_ns();
            a.send(b"0123456789", Some(to)).await.expect("send");
            let mut buf = [0u8; 64];
            let r = b.recv(&mut buf).await.expect("recv");
            assert_eq!(
                (r.len, &buf[..10], r.truncated),
                (10, &b"0123456789"[..], false)
            );
            assert_eq!(r.from, Some(a.local_addr().expect("addr")));
            let mut stamps = Vec::new();
            let mut ebuf = [0u8; 256];
            a.drain_tx_stamps(&mut ebuf, |p, t| {
                stamps.push((p.ends_with(b"0123456789"), t))
            });
            assert_eq!(stamps.len(), 1, "one transmit stamp per send");
            assert!(stamps[0].0, "the looped packet ends with the payload");
            let Some(rx) = r.kernel_ns else {
                eprintln!("attempt {attempt}: no receive stamp yet");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            assert!(rx >= before && rx <= now_ns());
            assert!(stamps[0].1 >= before && stamps[0].1 <= rx);
            return;
        }
        panic!("no receive stamp in 20 tries");
    }

    #[tokio::test]
    async fn long_datagram_is_flagged_truncated() {
        let lo: IpAddr = "127.0.0.1".parse().expect("addr");
        let a = TsSocket::open(Proto::Udp, lo).expect("socket");
        let b = TsSocket::open(Proto::Udp, lo).expect("socket");
        b.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        a.send(&[7u8; 100], Some(b.local_addr().expect("addr")))
            .await
            .expect("send");
        let mut buf = [0u8; 40];
        let r = b.recv(&mut buf).await.expect("recv");
        assert_eq!((r.len, r.truncated), (40, true));
    }
}
