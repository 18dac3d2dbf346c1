//! The two calls that need `unsafe`, kept here and nowhere else:
//!
//! - the socket option nix 0.30 does not wrap on Linux: `IP_MTU_DISCOVER` /
//!   `IPV6_MTU_DISCOVER` = `*_PMTUDISC_DO`, which sets Don't Fragment on every packet
//!   and makes the kernel refuse (EMSGSIZE) a datagram larger than the path MTU it
//!   knows instead of fragmenting it;
//! - registering a socket with tokio (`AsyncFd::register`, unsafe since tokio 1.54
//!   because a type could close its fd behind tokio's back).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// Registers `fd` with the tokio reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd moves into the AsyncFd, which owns it until it is dropped
    // (deregistering first); this crate only ever borrows it (`get_ref`), so the fd is
    // neither closed nor replaced while registered.
    unsafe { AsyncFd::register(fd).map_err(io::Error::from) }
}

fn opt(v6: bool) -> (libc::c_int, libc::c_int, libc::c_int) {
    if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    }
}

/// Sets path-MTU discovery to "do" (Don't Fragment) on an IPv4 or IPv6 socket.
pub fn set_pmtudisc_do(fd: BorrowedFd<'_>, v6: bool) -> io::Result<()> {
    let (level, name, val) = opt(v6);
    // SAFETY: `fd` is a live socket (the borrow keeps it open); the value is a c_int on
    // the stack and its exact size is passed, as setsockopt(2) requires for these
    // options. The kernel only reads `size_of::<c_int>()` bytes from the pointer.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads the path-MTU discovery mode back (for tests).
#[cfg(test)]
pub fn pmtudisc(fd: BorrowedFd<'_>, v6: bool) -> io::Result<libc::c_int> {
    let (level, name, _) = opt(v6);
    let mut val: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above; the kernel writes at most `len` bytes into `val` and updates
    // `len`, both valid for the duration of the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(val)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sets_and_reads_back_dont_fragment() {
        for (v6, bind) in [(false, "127.0.0.1:0"), (true, "[::1]:0")] {
            let Ok(s) = std::net::UdpSocket::bind(bind) else {
                eprintln!("SKIPPED sys::dont_fragment on {bind}: cannot bind");
                continue;
            };
            let want = opt(v6).2;
            assert_ne!(pmtudisc(s.as_fd(), v6).expect("get"), want);
            set_pmtudisc_do(s.as_fd(), v6).expect("set");
            assert_eq!(pmtudisc(s.as_fd(), v6).expect("get"), want);
        }
    }

    #[test]
    fn bad_fd_is_an_error_not_a_crash() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        // An IPv6 option on an IPv4 socket: the kernel refuses, we report it.
        assert!(set_pmtudisc_do(s.as_fd(), true).is_err());
    }
}
