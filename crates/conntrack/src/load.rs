//! Table load for tests and benchmarks: conntrack entries created and deleted by batched
//! netlink messages (IPCTNL_MSG_CT_NEW / IPCTNL_MSG_CT_DELETE, thousands to one `send`),
//! which makes the kernel send the same NEW and DESTROY events real connections do,
//! without any traffic. Use it only in a network namespace made for the purpose.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use podflow_model::{Protocol, Tuple};

use crate::Error;
use crate::decode::error_code;
use crate::encode::{self, Insert};
use crate::nl::{self, Messages};
use crate::socket::{CtSocket, Recv};

/// Entries per `send`.
pub const BATCH: usize = 1000;

/// The tuples of entry `i` of a generated set: TCP `10.(base + i>>16).(i>>8).(i):port →
/// 10.200.0.1:80`, unique within one `base` for `i < 2^24`.
pub fn tuples(base: u8, i: u32) -> (Tuple, Tuple) {
    let src = IpAddr::V4(Ipv4Addr::new(
        10,
        base.wrapping_add((i >> 16) as u8),
        (i >> 8) as u8,
        i as u8,
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1));
    let sport = 1024 + (i % 50_000) as u16;
    (
        Tuple {
            src,
            dst,
            src_port: sport,
            dst_port: 80,
        },
        Tuple {
            src: dst,
            dst: src,
            src_port: 80,
            dst_port: sport,
        },
    )
}

/// A socket that creates and deletes entries in the calling thread's namespace.
#[derive(Debug)]
pub struct Loader {
    sock: CtSocket,
    buf: Vec<u8>,
    rbuf: Vec<u8>,
    seq: u32,
    /// Error answers the kernel sent (e.g. EEXIST, ENOENT, ENOMEM when the table is full).
    pub errors: u64,
}

impl Loader {
    /// Opens the socket (in the calling thread's namespace).
    pub fn open() -> Result<Loader, Error> {
        Ok(Loader {
            sock: CtSocket::open(0, 8 << 20, "load socket")?,
            buf: Vec::with_capacity(200 * BATCH),
            rbuf: vec![0u8; 64 << 10],
            seq: 0,
            errors: 0,
        })
    }

    /// Creates entries `range` of set `base` (ESTABLISHED TCP, `timeout_s`), in batches.
    pub fn create(
        &mut self,
        base: u8,
        range: std::ops::Range<u32>,
        timeout_s: u32,
    ) -> Result<(), Error> {
        let mut i = range.start;
        while i < range.end {
            self.buf.clear();
            let end = (i + BATCH as u32).min(range.end);
            for k in i..end {
                let (orig, reply) = tuples(base, k);
                self.seq = self.seq.wrapping_add(1);
                encode::insert(
                    &mut self.buf,
                    self.seq,
                    &Insert {
                        proto: Protocol::TCP,
                        orig,
                        reply,
                        timeout_s,
                        mark: 0,
                    },
                );
            }
            self.sock.send(&self.buf, "insert batch")?;
            self.collect_errors()?;
            i = end;
        }
        Ok(())
    }

    /// Deletes entries `range` of set `base`, in batches (each sends a DESTROY event).
    pub fn delete(&mut self, base: u8, range: std::ops::Range<u32>) -> Result<(), Error> {
        let mut i = range.start;
        while i < range.end {
            self.buf.clear();
            let end = (i + BATCH as u32).min(range.end);
            for k in i..end {
                let (orig, _) = tuples(base, k);
                self.seq = self.seq.wrapping_add(1);
                encode::delete(&mut self.buf, self.seq, Protocol::TCP, &orig);
            }
            self.sock.send(&self.buf, "delete batch")?;
            self.collect_errors()?;
            i = end;
        }
        Ok(())
    }

    /// Reads the error answers queued so far (the kernel only answers failures).
    fn collect_errors(&mut self) -> Result<(), Error> {
        while let Recv::Data(n) =
            self.sock
                .recv(&mut self.rbuf, Some(Duration::ZERO), "load errors")?
        {
            for (h, p) in Messages::new(&self.rbuf[..n]).flatten() {
                if h.kind == nl::NLMSG_ERROR && error_code(p).is_some_and(|e| e != 0) {
                    self.errors += 1;
                }
            }
        }
        Ok(())
    }

    /// Waits up to `wait` for late error answers.
    pub fn settle(&mut self, wait: Duration) -> Result<u64, Error> {
        let t = Instant::now();
        while t.elapsed() < wait {
            self.collect_errors()?;
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(self.errors)
    }
}

/// What a storm did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StormReport {
    /// Entries created (each a NEW event) and deleted (each a DESTROY event).
    pub entries: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Entries per second reached.
    pub rate: f64,
}

/// Creates and deletes entries of set `base` at `rate` entries/s (`None`: as fast as the
/// kernel takes them) for `duration`, at most `max_entries`: batch after batch, each
/// created batch deleted right after the next is created, so at most two batches are live.
pub fn storm(
    l: &mut Loader,
    base: u8,
    rate: Option<f64>,
    duration: Duration,
    max_entries: u64,
) -> Result<StormReport, Error> {
    // Ids cycle through a window so the tuples repeat only long after their deletion.
    const WINDOW: u32 = 1 << 20;
    let t0 = Instant::now();
    let mut done = 0u64;
    let mut prev: Option<std::ops::Range<u32>> = None;
    let mut next = 0u32;
    while t0.elapsed() < duration && done < max_entries {
        let start = next % WINDOW;
        let range = start..start + BATCH as u32;
        next = next.wrapping_add(BATCH as u32);
        l.create(base, range.clone(), 60)?;
        if let Some(p) = prev.take() {
            l.delete(base, p)?;
        }
        prev = Some(range);
        done += BATCH as u64;
        if let Some(r) = rate.filter(|r| *r > 0.0) {
            let due = Duration::from_secs_f64(done as f64 / r);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    if let Some(p) = prev {
        l.delete(base, p)?;
    }
    let elapsed = t0.elapsed();
    Ok(StormReport {
        entries: done,
        elapsed,
        rate: done as f64 / elapsed.as_secs_f64().max(1e-9),
    })
}
