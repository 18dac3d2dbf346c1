//! The netlink sockets: one for dumps, one subscribed to NEW/DESTROY (and UPDATE) events.
//!
//! Thin I/O over `nix`; everything that interprets bytes lives in `decode`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io::IoSliceMut;

use nix::sys::socket::{
    AddressFamily, MsgFlags, MultiHeaders, NetlinkAddr, SockFlag, SockProtocol, SockType, bind,
    recv, recvmmsg, sendto, setsockopt, sockopt,
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

/// Receive slots of one [`CtSocket::recv_batch`]: event datagrams hold one message each
/// (a few hundred bytes), so one system call takes up to [`BATCH_SLOTS`] of them.
pub const BATCH_SLOTS: usize = 64;
/// Bytes per slot: the largest ctnetlink event message is well under 1 KiB.
pub const SLOT_BYTES: usize = 4096;

/// What a batch receive got.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// This many datagrams, their lengths in `lens`, each in its slot of the buffer; a
    /// length of `usize::MAX` marks a datagram cut short (larger than its slot).
    Data(usize),
    /// Nothing arrived before the timeout.
    Timeout,
    /// The kernel dropped messages: the receive buffer overflowed (ENOBUFS).
    Overflow,
}

impl CtSocket {
    /// Waits up to `timeout` (`None`: not at all) for data, then receives up to
    /// [`BATCH_SLOTS`] datagrams in one `recvmmsg`, datagram `i` into
    /// `buf[i * SLOT_BYTES..]` (`buf` holds `BATCH_SLOTS * SLOT_BYTES` bytes), lengths in
    /// `lens`.
    pub fn recv_batch(
        &self,
        buf: &mut [u8],
        lens: &mut [usize; BATCH_SLOTS],
        timeout: Option<Duration>,
        op: &'static str,
    ) -> Result<Batch, Error> {
        if let Some(t) = timeout.filter(|t| !t.is_zero()) {
            let ms = u16::try_from(t.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => return Ok(Batch::Timeout),
                Ok(_) => {}
                Err(Errno::EINTR) => return Ok(Batch::Timeout),
                Err(errno) => return Err(Error::Socket { op, errno }),
            }
        }
        let mut headers = MultiHeaders::<NetlinkAddr>::preallocate(BATCH_SLOTS, None);
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = buf
            .chunks_mut(SLOT_BYTES)
            .take(BATCH_SLOTS)
            .map(|c| [IoSliceMut::new(c)])
            .collect();
        // Non-blocking: EINTR and EAGAIN both read as "nothing now" (the caller polls again).
        match recvmmsg(
            self.fd.as_raw_fd(),
            &mut headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(got) => {
                let mut n = 0;
                for (slot, m) in lens.iter_mut().zip(got) {
                    *slot = if m.flags.contains(MsgFlags::MSG_TRUNC) {
                        usize::MAX
                    } else {
                        m.bytes
                    };
                    n += 1;
                }
                Ok(if n == 0 {
                    Batch::Timeout
                } else {
                    Batch::Data(n)
                })
            }
            Err(Errno::EINTR | Errno::EAGAIN) => Ok(Batch::Timeout),
            Err(Errno::ENOBUFS) => Ok(Batch::Overflow),
            Err(errno) => Err(Error::Socket { op, errno }),
        }
    }

    /// Reliable event delivery (what conntrackd's `NetlinkEventsReliable` sets):
    /// `NETLINK_BROADCAST_ERROR` makes a failed delivery an error the kernel sees, so it
    /// keeps a destroyed entry and redelivers its DESTROY event; `NETLINK_NO_ENOBUFS`
    /// stops overflow reports (nothing to recover by a dump: DESTROYs are not lost, NEW
    /// and UPDATE events may be, silently).
    pub fn set_reliable(&self) -> Result<(), Error> {
        for (opt, op) in [
            (
                nix::libc::NETLINK_BROADCAST_ERROR,
                "set NETLINK_BROADCAST_ERROR",
            ),
            (nix::libc::NETLINK_NO_ENOBUFS, "set NETLINK_NO_ENOBUFS"),
        ] {
            set_int_opt(&self.fd, nix::libc::SOL_NETLINK, opt, 1)
                .map_err(|errno| Error::Socket { op, errno })?;
        }
        Ok(())
    }

    /// Whether both reliable-delivery options are on (read back from the kernel).
    pub fn is_reliable(&self) -> bool {
        [
            nix::libc::NETLINK_BROADCAST_ERROR,
            nix::libc::NETLINK_NO_ENOBUFS,
        ]
        .iter()
        .all(|&o| get_int_opt(&self.fd, nix::libc::SOL_NETLINK, o).is_ok_and(|v| v != 0))
    }
}

/// `setsockopt(fd, level, opt, &value, sizeof(int))`. nix has no typed option for the
/// netlink-level flags, so this is the one unsafe call of the crate: the pointer and
/// length describe a live `c_int` for the duration of the call, and the fd is owned.
#[allow(unsafe_code)]
fn set_int_opt(fd: &OwnedFd, level: i32, opt: i32, value: i32) -> Result<(), Errno> {
    let v: nix::libc::c_int = value;
    // SAFETY: `&v` is valid for reads of `size_of::<c_int>()` bytes during the call.
    let r = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
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

/// `getsockopt` of an int option (see [`set_int_opt`]).
#[allow(unsafe_code)]
fn get_int_opt(fd: &OwnedFd, level: i32, opt: i32) -> Result<i32, Errno> {
    let mut v: nix::libc::c_int = 0;
    let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
    // SAFETY: `&mut v` and `&mut len` are valid for writes of their sizes during the call;
    // the kernel writes at most `len` bytes.
    let r = unsafe {
        nix::libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut nix::libc::c_int).cast(),
            &mut len,
        )
    };
    Errno::result(r).map(|_| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unsafe option calls, on a real socket: set, read back, and an error for a bad
    /// option instead of undefined behaviour.
    #[test]
    fn reliable_options_are_set_and_read_back() {
        let s = match CtSocket::open(0, 0, "test") {
            Ok(s) => s,
            Err(e) => {
                eprintln!("no netfilter netlink socket here ({e}); checked by the namespace tests");
                return;
            }
        };
        assert!(!s.is_reliable());
        s.set_reliable().expect("set");
        assert!(s.is_reliable());
        assert_eq!(
            set_int_opt(&s.fd, nix::libc::SOL_NETLINK, 9999, 1),
            Err(Errno::ENOPROTOOPT)
        );
    }
}
