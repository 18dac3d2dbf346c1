//! The netlink sockets: one for dumps, one subscribed to NEW/DESTROY (and UPDATE) events.
//!
//! Thin I/O over `nix`; everything that interprets bytes lives in `decode`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    setsockopt, sockopt,
};

use crate::Error;

/// A ctnetlink socket.
#[derive(Debug)]
pub struct CtSocket {
    fd: OwnedFd,
}

/// What a receive got.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// This many bytes are in the buffer.
    Data(usize),
    /// Nothing arrived before the timeout.
    Timeout,
    /// The kernel dropped messages: the receive buffer overflowed (ENOBUFS).
    Overflow,
}

impl CtSocket {
    /// Opens a socket in the current network namespace, subscribed to `groups`
    /// (bit `n-1` for group `n`; 0 for none).
    pub fn open(groups: u32, rcvbuf: usize, op: &'static str) -> Result<CtSocket, Error> {
        let fd = nix::sys::socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|errno| Error::Socket { op, errno })?;
        if rcvbuf > 0 {
            // RcvBufForce ignores net.core.rmem_max (needs CAP_NET_ADMIN); fall back to the
            // capped size when it is not permitted.
            if setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf).is_err() {
                setsockopt(&fd, sockopt::RcvBuf, &rcvbuf)
                    .map_err(|errno| Error::Socket { op, errno })?;
            }
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))
            .map_err(|errno| Error::kernel(op, errno))?;
        Ok(CtSocket { fd })
    }

    /// The kernel's receive buffer size (as reported, i.e. doubled).
    pub fn rcvbuf(&self) -> usize {
        nix::sys::socket::getsockopt(&self.fd, sockopt::RcvBuf).unwrap_or(0)
    }

    /// Sends a request to the kernel.
    pub fn send(&self, msg: &[u8], op: &'static str) -> Result<(), Error> {
        sendto(
            self.fd.as_raw_fd(),
            msg,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|errno| Error::kernel(op, errno))?;
        Ok(())
    }

    /// Waits up to `timeout` for data, then receives one datagram into `buf`.
    pub fn recv(
        &self,
        buf: &mut [u8],
        timeout: Option<Duration>,
        op: &'static str,
    ) -> Result<Recv, Error> {
        if let Some(t) = timeout {
            let ms = u16::try_from(t.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => return Ok(Recv::Timeout),
                Ok(_) => {}
                Err(Errno::EINTR) => return Ok(Recv::Timeout),
                Err(errno) => return Err(Error::Socket { op, errno }),
            }
        }
        let flags = if timeout.is_some() {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::empty()
        };
        loop {
            match recv(self.fd.as_raw_fd(), buf, flags) {
                Ok(n) => return Ok(Recv::Data(n)),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(Recv::Timeout),
                Err(Errno::ENOBUFS) => return Ok(Recv::Overflow),
                Err(errno) => return Err(Error::Socket { op, errno }),
            }
        }
    }
}

/// Moves the calling thread into the network namespace at `path` (e.g.
/// `/run/netns/NAME`). Sockets opened afterwards by this thread belong to it.
pub fn enter_netns(path: &Path) -> Result<(), Error> {
    let f = std::fs::File::open(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
        hint: " (a network namespace file such as /run/netns/NAME)",
    })?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
        Error::Socket {
            op: "enter network namespace",
            errno,
        }
    })
}
