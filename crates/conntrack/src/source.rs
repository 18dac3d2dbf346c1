//! The conntrack source of one network namespace: a dump socket, an event socket, the
//! tracker, and the loop that ties them together.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use podflow_model::Observation;

use crate::decode::{CtEvent, DecodeStats, decode_entry, error_code, event_of};
use crate::nl::{self, Messages};
use crate::socket::{CtSocket, Recv};
use crate::sysctl::{Features, enable_features, read_features};
use crate::{Error, Tracker, encode};

/// How to open a source.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Network namespace file to read (e.g. `/run/netns/NAME`); `None` = the current one.
    pub netns: Option<PathBuf>,
    /// Receive buffer of the event socket, bytes. Bursts of short connections beyond it
    /// overflow (counted, then recovered by a dump).
    pub event_buffer: usize,
    /// Subscribe to NEW/DESTROY events (without them, bytes of connections that close
    /// between two dumps are lost).
    pub events: bool,
    /// Turn `nf_conntrack_acct` and `nf_conntrack_timestamp` on at open.
    pub enable_features: bool,
    /// Also subscribe to UPDATE events, to measure each connection's time to first
    /// reply. Off by default: every TCP state change is an UPDATE, so a short TCP
    /// connection sends 7 events instead of 2 (NEW, DESTROY).
    pub first_reply: bool,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            netns: None,
            event_buffer: 16 << 20,
            events: true,
            enable_features: false,
            first_reply: false,
        }
    }
}

/// Counters of a source, shared with the metrics; never reset.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Full dumps completed.
    pub dumps: AtomicU64,
    /// Entries read by dumps.
    pub dump_entries: AtomicU64,
    /// Dumps the kernel flagged as interrupted (the table changed while dumping).
    pub dumps_interrupted: AtomicU64,
    /// Time spent in dumps, ns.
    pub dump_ns: AtomicU64,
    /// Duration of the last dump, ns.
    pub last_dump_ns: AtomicU64,
    /// NEW events received.
    pub events_new: AtomicU64,
    /// DESTROY events received.
    pub events_destroy: AtomicU64,
    /// UPDATE events received (only with `first_reply`).
    pub events_update: AtomicU64,
    /// UPDATE events that were not a connection's first reply podflow could measure.
    pub updates_ignored: AtomicU64,
    /// First-reply times reported.
    pub first_replies: AtomicU64,
    /// Event socket overflows (ENOBUFS): events were lost; a dump followed.
    pub event_overflows: AtomicU64,
    /// Messages that could not be decoded (skipped).
    pub decode_errors: AtomicU64,
    /// Unknown attributes skipped.
    pub unknown_attributes: AtomicU64,
    /// Connections the tracker remembers.
    pub tracked: AtomicU64,
    /// Counter resets seen.
    pub counter_resets: AtomicU64,
    /// Connections forgotten without a DESTROY.
    pub vanished: AtomicU64,
    /// Reused conntrack ids.
    pub id_reused: AtomicU64,
    /// DESTROY events of connections never seen.
    pub destroy_unknown: AtomicU64,
    /// Connections taken as a baseline at start.
    pub baselined: AtomicU64,
    /// Observations emitted.
    pub observations: AtomicU64,
}

/// What one dump read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpSummary {
    /// Entries in the table.
    pub entries: u64,
    /// Observations emitted (entries whose counters moved, plus events drained).
    pub emitted: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// A conntrack source: dumps and events of one network namespace.
#[derive(Debug)]
pub struct Source {
    dump_sock: CtSocket,
    event_sock: Option<CtSocket>,
    tracker: Tracker,
    stats: Arc<SourceStats>,
    features: Features,
    decode_stats: DecodeStats,
    buf: Vec<u8>,
    seq: u32,
}

/// Largest dump chunk the kernel sends is 32 KiB; events are single small messages.
const RECV_BUF: usize = 64 << 10;
/// Receive buffers in flight between the dump reader thread and the decoder.
const DUMP_BUFFERS: usize = 16;
/// Bound on event datagrams handled per call, so a storm cannot starve the dumps.
const MAX_EVENTS_PER_POLL: usize = 100_000;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Source {
    /// Opens the sockets (in `cfg.netns` if set) and checks the features.
    pub fn open(cfg: &SourceConfig) -> Result<Source, Error> {
        let open = || -> Result<_, Error> {
            if let Some(ns) = &cfg.netns {
                crate::enter_netns(ns)?;
            }
            // Subscribe to events before the first dump, so nothing falls between them.
            let events = if cfg.events {
                let mut groups = (1 << (nl::NFNLGRP_CONNTRACK_NEW - 1))
                    | (1 << (nl::NFNLGRP_CONNTRACK_DESTROY - 1));
                if cfg.first_reply {
                    groups |= 1 << (nl::NFNLGRP_CONNTRACK_UPDATE - 1);
                }
                Some(CtSocket::open(
                    groups,
                    cfg.event_buffer,
                    "open event socket",
                )?)
            } else {
                None
            };
            let dump = CtSocket::open(0, 1 << 20, "open dump socket")?;
            // Opening a ctnetlink socket loads the module, so the sysctls now exist.
            let features = if cfg.enable_features {
                enable_features()?
            } else {
                read_features()?
            };
            Ok((dump, events, features))
        };
        // A namespace switch applies to the calling thread: do it on a short-lived one.
        let (dump_sock, event_sock, features) = if cfg.netns.is_some() {
            std::thread::scope(|s| s.spawn(open).join()).unwrap_or_else(|_| {
                Err(Error::Command {
                    command: "open".into(),
                    message: "namespace thread panicked".into(),
                })
            })?
        } else {
            open()?
        };
        Ok(Source {
            dump_sock,
            event_sock,
            tracker: Tracker::new(now_ns()),
            stats: Arc::new(SourceStats::default()),
            features,
            decode_stats: DecodeStats::default(),
            buf: vec![0; RECV_BUF],
            seq: 0,
        })
    }

    /// The conntrack features of the namespace.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The counters (shared; read them from any thread).
    pub fn stats(&self) -> Arc<SourceStats> {
        Arc::clone(&self.stats)
    }

    /// The tracker (for memory accounting).
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Dumps the whole table, emits deltas, drains pending events, then forgets
    /// connections gone without a DESTROY.
    pub fn dump(&mut self, emit: &mut impl FnMut(Observation)) -> Result<DumpSummary, Error> {
        let t0 = Instant::now();
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.dump_sock
            .send(&encode::dump_request(seq), "dump request")?;
        self.tracker.begin_dump();
        let mut entries = 0u64;
        let mut emitted = 0u64;
        let mut interrupted = false;
        let mut emit_counted = |o: Observation| {
            emitted += 1;
            emit(o)
        };
        // Receiving runs on a second thread: the kernel builds the next chunk while this
        // one is decoded, so decoding and delta tracking hide behind the kernel's own work.
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(DUMP_BUFFERS);
        let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(DUMP_BUFFERS + 1);
        for _ in 0..DUMP_BUFFERS {
            let _ = free_tx.send(vec![0u8; RECV_BUF]);
        }
        let sock = &self.dump_sock;
        let tracker = &mut self.tracker;
        let decode_stats = &mut self.decode_stats;
        let stats = &self.stats;
        let outcome = std::thread::scope(|scope| -> Result<(), Error> {
            let reader = scope.spawn(move || -> Result<(), Error> {
                while let Ok(mut buf) = free_rx.recv() {
                    let n = match sock.recv(&mut buf, None, "dump")? {
                        Recv::Data(n) => n,
                        Recv::Timeout => continue,
                        Recv::Overflow => {
                            return Err(Error::kernel("dump", nix::errno::Errno::ENOBUFS));
                        }
                    };
                    let last = Messages::new(&buf[..n]).flatten().any(|(h, _)| {
                        h.seq == seq && (h.kind == nl::NLMSG_DONE || h.kind == nl::NLMSG_ERROR)
                    });
                    if full_tx.send((buf, n)).is_err() || last {
                        break;
                    }
                }
                Ok(())
            });
            let mut result = Ok(());
            'recv: while let Ok((buf, n)) = full_rx.recv() {
                for m in Messages::new(&buf[..n]) {
                    let (h, payload) = match m {
                        Ok(m) => m,
                        Err(e) => {
                            stats.decode_errors.fetch_add(1, Relaxed);
                            tracing::warn!(error = ?e, "skipping malformed dump datagram");
                            break;
                        }
                    };
                    if h.seq != seq {
                        continue;
                    }
                    interrupted |= h.flags & nl::NLM_F_DUMP_INTR != 0;
                    match h.kind {
                        nl::NLMSG_DONE => break 'recv,
                        nl::NLMSG_ERROR => {
                            if let Some(e) = error_code(payload).filter(|e| *e != 0) {
                                result =
                                    Err(Error::kernel("dump", nix::errno::Errno::from_raw(-e)));
                                break 'recv;
                            }
                        }
                        _ => match decode_entry(payload, decode_stats) {
                            Ok(e) => {
                                entries += 1;
                                tracker.on_dump(&e, &mut emit_counted);
                            }
                            Err(err) => {
                                stats.decode_errors.fetch_add(1, Relaxed);
                                tracing::warn!(%err, "skipping undecodable dump entry");
                            }
                        },
                    }
                }
                let _ = free_tx.send(buf);
            }
            drop(full_rx);
            drop(free_tx);
            let read = reader.join().unwrap_or_else(|_| {
                Err(Error::Command {
                    command: "dump reader".into(),
                    message: "thread panicked".into(),
                })
            });
            result.and(read)
        });
        outcome?;
        // DESTROY events queued during the dump belong to entries the dump may have
        // missed: handle them before forgetting anything.
        self.drain_events(Some(Duration::ZERO), &mut emit_counted)?;
        self.tracker.end_dump();
        let elapsed = t0.elapsed();
        let s = &self.stats;
        s.dumps.fetch_add(1, Relaxed);
        s.dump_entries.fetch_add(entries, Relaxed);
        s.dumps_interrupted
            .fetch_add(u64::from(interrupted), Relaxed);
        s.dump_ns.fetch_add(elapsed.as_nanos() as u64, Relaxed);
        s.last_dump_ns.store(elapsed.as_nanos() as u64, Relaxed);
        s.observations.fetch_add(emitted, Relaxed);
        self.publish_tracker_stats();
        Ok(DumpSummary {
            entries,
            emitted,
            elapsed,
        })
    }

    /// Reads a full dump and discards it, counting messages: the kernel's own cost, the
    /// floor for any reader (used by the benchmark).
    pub fn dump_discard(&mut self) -> Result<u64, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.dump_sock
            .send(&encode::dump_request(seq), "dump request")?;
        let mut n_msgs = 0u64;
        loop {
            let Recv::Data(n) = self.dump_sock.recv(&mut self.buf, None, "dump")? else {
                continue;
            };
            for (h, _) in Messages::new(&self.buf[..n]).flatten() {
                if h.kind == nl::NLMSG_DONE || h.kind == nl::NLMSG_ERROR {
                    return Ok(n_msgs);
                }
                n_msgs += 1;
            }
        }
    }

    fn publish_tracker_stats(&self) {
        let t = self.tracker.stats();
        let s = &self.stats;
        s.tracked.store(self.tracker.len() as u64, Relaxed);
        s.counter_resets.store(t.counter_resets, Relaxed);
        s.vanished.store(t.vanished, Relaxed);
        s.id_reused.store(t.id_reused, Relaxed);
        s.destroy_unknown.store(t.destroy_unknown, Relaxed);
        s.baselined.store(t.baselined, Relaxed);
        s.first_replies.store(t.first_replies, Relaxed);
        s.unknown_attributes
            .store(self.decode_stats.unknown_attributes, Relaxed);
    }

    /// Waits up to `timeout` for events and handles every one queued. Returns `true`
    /// when the event socket overflowed (events were lost: dump soon).
    fn drain_events(
        &mut self,
        timeout: Option<Duration>,
        emit: &mut impl FnMut(Observation),
    ) -> Result<bool, Error> {
        let Some(sock) = &self.event_sock else {
            if let Some(t) = timeout.filter(|t| !t.is_zero()) {
                std::thread::sleep(t);
            }
            return Ok(false);
        };
        let mut overflow = false;
        let mut wait = timeout;
        for _ in 0..MAX_EVENTS_PER_POLL {
            let n = match sock.recv(&mut self.buf, wait, "events")? {
                Recv::Data(n) => n,
                Recv::Timeout => break,
                Recv::Overflow => {
                    self.stats.event_overflows.fetch_add(1, Relaxed);
                    self.tracker.events_lost();
                    overflow = true;
                    continue;
                }
            };
            wait = Some(Duration::ZERO);
            // One clock read per datagram: the reply time when the kernel does not stamp
            // its events.
            let recv_ns = now_ns();
            for m in Messages::new(&self.buf[..n]) {
                let Ok((h, payload)) = m else {
                    self.stats.decode_errors.fetch_add(1, Relaxed);
                    break;
                };
                let Some(ev) = event_of(&h) else { continue };
                match decode_entry(payload, &mut self.decode_stats) {
                    Ok(e) => match ev {
                        CtEvent::New => {
                            self.stats.events_new.fetch_add(1, Relaxed);
                            self.tracker.on_new(&e, emit);
                        }
                        CtEvent::Destroy => {
                            self.stats.events_destroy.fetch_add(1, Relaxed);
                            self.tracker.on_destroy(&e, emit);
                        }
                        CtEvent::Update => {
                            // Only subscribed with `first_reply`; anything else is ignored.
                            self.stats.events_update.fetch_add(1, Relaxed);
                            if !self.tracker.on_update(&e, recv_ns) {
                                self.stats.updates_ignored.fetch_add(1, Relaxed);
                            }
                        }
                        CtEvent::Dump => {}
                    },
                    Err(err) => {
                        self.stats.decode_errors.fetch_add(1, Relaxed);
                        tracing::warn!(%err, "skipping undecodable event");
                    }
                }
            }
        }
        Ok(overflow)
    }

    /// Waits up to `timeout` for events and handles them; on overflow dumps at once.
    pub fn poll(
        &mut self,
        timeout: Duration,
        emit: &mut impl FnMut(Observation),
    ) -> Result<(), Error> {
        let mut count = 0u64;
        let mut counted = |o: Observation| {
            count += 1;
            emit(o)
        };
        let overflow = self.drain_events(Some(timeout), &mut counted)?;
        self.stats.observations.fetch_add(count, Relaxed);
        self.publish_tracker_stats();
        if overflow {
            tracing::warn!(
                "conntrack event socket overflowed (events lost); dumping now to recover"
            );
            self.dump(emit)?;
        }
        Ok(())
    }

    /// Runs until `stop` is set: events continuously, a full dump every `interval`, and
    /// a last dump at the end so the bytes since the previous one are not lost.
    /// Observations go to `sink` in batches of up to `batch` (a full sink blocks: that is
    /// the back-pressure, and the kernel's event buffer absorbs it or overflows, counted).
    pub fn run(
        &mut self,
        interval: Duration,
        batch: usize,
        stop: &AtomicBool,
        sink: &mut impl FnMut(Vec<Observation>),
    ) -> Result<(), Error> {
        let batch = batch.max(1);
        let mut pending = Vec::with_capacity(batch);
        let mut next_dump = Instant::now();
        loop {
            let stopping = stop.load(Relaxed);
            {
                let mut emit = |o: Observation| {
                    pending.push(o);
                    if pending.len() >= batch {
                        sink(std::mem::replace(&mut pending, Vec::with_capacity(batch)));
                    }
                };
                if stopping || Instant::now() >= next_dump {
                    self.dump(&mut emit)?;
                    next_dump = Instant::now() + interval;
                }
                if !stopping {
                    let wait = next_dump
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(200));
                    self.poll(wait, &mut emit)?;
                }
            }
            if !pending.is_empty() {
                sink(std::mem::replace(&mut pending, Vec::with_capacity(batch)));
            }
            if stopping {
                return Ok(());
            }
        }
    }
}
