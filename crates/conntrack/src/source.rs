//! The conntrack source of one network namespace: a dump socket, an event socket, the
//! tracker, and the loop that ties them together.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use podflow_model::Observation;

use crate::decode::{CtEvent, DecodeStats, decode_entry, error_code, event_of};
use crate::encode::DumpFilter;
use crate::nl::{self, Messages};
use crate::socket::{BATCH_SLOTS, Batch, CtSocket, Recv, SLOT_BYTES};
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

/// Further settings of a source, apart from [`SourceConfig`] so that code building a
/// `SourceConfig` field by field keeps compiling; [`Source::open_with`] takes them.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Subscribe to NEW events too (on by default). Without them nothing is lost: a
    /// DESTROY carries the tuple, timestamps and final counters, so a connection that
    /// opens and closes between two dumps is still reported whole (opened and closed in one
    /// observation, counted in `destroy_unknown`), and one that lives across a dump is
    /// reported opened by that dump. What changes is when `opened` is reported (at the next
    /// dump or the close, not at once), and the event volume halves (a short connection
    /// sends one event instead of two), which halves podflow's event CPU and the
    /// chance of an overflow. `first_reply` needs NEW events and turns them on.
    pub new_events: bool,
    /// Reliable DESTROY delivery (conntrackd's `NetlinkEventsReliable`): the kernel keeps
    /// an entry whose DESTROY event could not be delivered (event socket full) and sends it
    /// again later, so no connection's final bytes are lost to an overflow. Off by default.
    ///
    /// **Warning:** the price is paid by the node: while podflow does not read its events
    /// (stalled, stopped by a debugger, starved of CPU), closed connections stay in the
    /// conntrack table waiting for delivery, so a stalled podflow can fill the table
    /// (`nf_conntrack_max`) and the kernel then drops new connections. Overflows are no
    /// longer reported (`NETLINK_NO_ENOBUFS`): NEW and UPDATE events can still be lost,
    /// silently (dumps recover those connections; first-reply times are then taken only
    /// from UPDATEs read before the next dump shows the reply).
    pub reliable_events: bool,
    /// Keep dump CPU under this fraction of one core (e.g. 0.05 = 5%): the interval in
    /// force is `max(interval, last dump's CPU time / budget)`, published as
    /// `SourceStats::dump_interval_ns`. `None`: always the configured interval.
    pub cpu_budget: Option<f64>,
    /// Ask the kernel for only these entries (dumps), and ignore events of others
    /// (user space: the kernel does not filter multicast). Empty: everything.
    pub filter: DumpFilter,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            new_events: true,
            reliable_events: false,
            cpu_budget: None,
            filter: DumpFilter::default(),
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
    /// Connections remembered from a checkpoint that had closed while no agent ran
    /// (found gone by the first dump after the restore; their last bytes are lost).
    pub closed_while_down: AtomicU64,
    /// The dump interval in force, ns (the configured one, or longer under a CPU budget):
    /// the gauge `podflow_conntrack_dump_interval_seconds`.
    pub dump_interval_ns: AtomicU64,
    /// CPU time (user + system) of the dumping thread spent in dumps, ns.
    pub dump_cpu_ns: AtomicU64,
    /// CPU time of the last dump, ns.
    pub last_dump_cpu_ns: AtomicU64,
    /// Events of entries outside `SourceOptions::filter`, ignored.
    pub events_filtered: AtomicU64,
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
    /// CPU time of the dumping thread (user + system: the kernel's work is billed here).
    pub cpu: Duration,
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
    /// Event datagrams, [`BATCH_SLOTS`] slots of [`SLOT_BYTES`].
    ev_buf: Vec<u8>,
    seq: u32,
    filter: DumpFilter,
    cpu_budget: Option<f64>,
    reliable: bool,
}

/// Largest dump chunk the kernel sends is 32 KiB; a larger buffer gains nothing.
const RECV_BUF: usize = 64 << 10;
/// Bound on event datagrams handled per call, so a storm cannot starve the dumps.
const MAX_EVENTS_PER_POLL: usize = 100_000;

/// CPU time of the calling thread (user + system), ns.
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0, |t| {
        (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64)
    })
}

/// The interval to wait after a dump that cost `cpu_ns`: `interval`, or longer so that
/// dumping uses at most `budget` of a core.
pub fn budget_interval(interval: Duration, cpu_ns: u64, budget: Option<f64>) -> Duration {
    match budget.filter(|b| *b > 0.0 && b.is_finite()) {
        Some(b) => interval.max(Duration::from_secs_f64(cpu_ns as f64 / 1e9 / b)),
        None => interval,
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Source {
    /// Opens the sockets (in `cfg.netns` if set) and checks the features.
    pub fn open(cfg: &SourceConfig) -> Result<Source, Error> {
        Source::open_with(cfg, &SourceOptions::default(), Tracker::new(now_ns()))
    }

    /// Opens the sockets like [`Source::open`] but continues with `tracker`, e.g. one
    /// [`Tracker::restore`]d from a checkpoint (plus [`Tracker::apply`] of the batches
    /// reported after it): the first dump then continues where the last report left off
    /// instead of taking a new baseline (see [`Tracker::restore`]).
    ///
    /// `tracker`: `Tracker::new(now)` for a fresh start.
    pub fn open_with(
        cfg: &SourceConfig,
        opts: &SourceOptions,
        tracker: Tracker,
    ) -> Result<Source, Error> {
        let open = || -> Result<_, Error> {
            if let Some(ns) = &cfg.netns {
                crate::enter_netns(ns)?;
            }
            // Subscribe to events before the first dump, so nothing falls between them.
            let events = if cfg.events {
                let mut groups = 1 << (nl::NFNLGRP_CONNTRACK_DESTROY - 1);
                if opts.new_events || cfg.first_reply {
                    groups |= 1 << (nl::NFNLGRP_CONNTRACK_NEW - 1);
                }
                if cfg.first_reply {
                    groups |= 1 << (nl::NFNLGRP_CONNTRACK_UPDATE - 1);
                }
                let sock = CtSocket::open(groups, cfg.event_buffer, "open event socket")?;
                if opts.reliable_events {
                    sock.set_reliable()?;
                }
                Some(sock)
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
        let stats = Arc::new(SourceStats::default());
        stats.dump_interval_ns.store(0, Relaxed);
        Ok(Source {
            dump_sock,
            ev_buf: if event_sock.is_some() {
                vec![0; BATCH_SLOTS * SLOT_BYTES]
            } else {
                Vec::new()
            },
            event_sock,
            tracker,
            stats,
            features,
            decode_stats: DecodeStats::default(),
            buf: vec![0; RECV_BUF],
            seq: 0,
            filter: opts.filter,
            cpu_budget: opts.cpu_budget,
            reliable: opts.reliable_events && cfg.events,
        })
    }

    /// Whether the event socket has reliable delivery on (read back from the kernel).
    pub fn reliable_events(&self) -> bool {
        self.event_sock.as_ref().is_some_and(CtSocket::is_reliable)
    }

    /// The tracker's state as a checkpoint (see [`Tracker::checkpoint`]).
    pub fn checkpoint(&self) -> Vec<u8> {
        self.tracker.checkpoint()
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
    ///
    /// One thread receives, decodes and tracks: the kernel builds each 32 KiB chunk
    /// inside the `recv` that asks for it, so a second receiving thread would only add
    /// wake-ups (CPU) to hide user-space time that is a few percent of the kernel's.
    pub fn dump(&mut self, emit: &mut impl FnMut(Observation)) -> Result<DumpSummary, Error> {
        let t0 = Instant::now();
        let cpu0 = thread_cpu_ns();
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.dump_sock.send(
            &encode::dump_request_filtered(seq, &self.filter),
            "dump request",
        )?;
        if self.reliable {
            // Lost UPDATEs are not signalled with reliable delivery: distrust replies the
            // dump shows that no UPDATE announced.
            self.tracker.events_lost();
        }
        self.tracker.begin_dump();
        let mut entries = 0u64;
        let mut emitted = 0u64;
        let mut interrupted = false;
        let mut emit_counted = |o: Observation| {
            emitted += 1;
            emit(o)
        };
        'recv: loop {
            let n = match self.dump_sock.recv(&mut self.buf, None, "dump")? {
                Recv::Data(n) => n,
                Recv::Timeout => continue,
                Recv::Overflow => return Err(Error::kernel("dump", nix::errno::Errno::ENOBUFS)),
            };
            for m in Messages::new(&self.buf[..n]) {
                let (h, payload) = match m {
                    Ok(m) => m,
                    Err(e) => {
                        self.stats.decode_errors.fetch_add(1, Relaxed);
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
                            return Err(Error::kernel("dump", nix::errno::Errno::from_raw(-e)));
                        }
                    }
                    _ => match decode_entry(payload, &mut self.decode_stats) {
                        Ok(e) => {
                            entries += 1;
                            self.tracker.on_dump(&e, &mut emit_counted);
                        }
                        Err(err) => {
                            self.stats.decode_errors.fetch_add(1, Relaxed);
                            tracing::warn!(%err, "skipping undecodable dump entry");
                        }
                    },
                }
            }
        }
        // DESTROY events queued during the dump belong to entries the dump may have
        // missed: handle them before forgetting anything.
        self.drain_events(Some(Duration::ZERO), &mut emit_counted)?;
        self.tracker.end_dump();
        let elapsed = t0.elapsed();
        let cpu = thread_cpu_ns().saturating_sub(cpu0);
        let s = &self.stats;
        s.dumps.fetch_add(1, Relaxed);
        s.dump_entries.fetch_add(entries, Relaxed);
        s.dumps_interrupted
            .fetch_add(u64::from(interrupted), Relaxed);
        s.dump_ns.fetch_add(elapsed.as_nanos() as u64, Relaxed);
        s.last_dump_ns.store(elapsed.as_nanos() as u64, Relaxed);
        s.dump_cpu_ns.fetch_add(cpu, Relaxed);
        s.last_dump_cpu_ns.store(cpu, Relaxed);
        s.observations.fetch_add(emitted, Relaxed);
        self.publish_tracker_stats();
        Ok(DumpSummary {
            entries,
            emitted,
            elapsed,
            cpu: Duration::from_nanos(cpu),
        })
    }

    /// Reads a full dump and discards it, counting messages: the kernel's own cost, the
    /// floor for any reader (used by the benchmark).
    pub fn dump_discard(&mut self) -> Result<u64, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.dump_sock.send(
            &encode::dump_request_filtered(seq, &self.filter),
            "dump request",
        )?;
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
        s.closed_while_down.store(t.closed_while_down, Relaxed);
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
        let mut lens = [0usize; BATCH_SLOTS];
        let mut handled = 0usize;
        while handled < MAX_EVENTS_PER_POLL {
            let got = match sock.recv_batch(&mut self.ev_buf, &mut lens, wait, "events")? {
                Batch::Data(n) => n,
                Batch::Timeout => break,
                Batch::Overflow => {
                    self.stats.event_overflows.fetch_add(1, Relaxed);
                    self.tracker.events_lost();
                    overflow = true;
                    continue;
                }
            };
            wait = None;
            handled += got;
            // One clock read per batch: the reply time when the kernel does not stamp its
            // events.
            let recv_ns = now_ns();
            for (slot, &len) in lens[..got].iter().enumerate() {
                if len == usize::MAX {
                    self.stats.decode_errors.fetch_add(1, Relaxed);
                    tracing::warn!("skipping an event datagram larger than {SLOT_BYTES} bytes");
                    continue;
                }
                let at = slot * SLOT_BYTES;
                let datagram = &self.ev_buf[at..at + len];
                for m in Messages::new(datagram) {
                    let Ok((h, payload)) = m else {
                        self.stats.decode_errors.fetch_add(1, Relaxed);
                        break;
                    };
                    let Some(ev) = event_of(&h) else { continue };
                    match decode_entry(payload, &mut self.decode_stats) {
                        Ok(e) => {
                            if !self.filter.is_empty()
                                && !self.filter.matches(e.orig.src.is_ipv6(), e.mark, e.zone)
                            {
                                self.stats.events_filtered.fetch_add(1, Relaxed);
                                continue;
                            }
                            match ev {
                                CtEvent::New => {
                                    self.stats.events_new.fetch_add(1, Relaxed);
                                    self.tracker.on_new(&e, emit);
                                }
                                CtEvent::Destroy => {
                                    self.stats.events_destroy.fetch_add(1, Relaxed);
                                    self.tracker.on_destroy(&e, emit);
                                }
                                CtEvent::Update => {
                                    // Only subscribed with `first_reply`.
                                    self.stats.events_update.fetch_add(1, Relaxed);
                                    if !self.tracker.on_update(&e, recv_ns) {
                                        self.stats.updates_ignored.fetch_add(1, Relaxed);
                                    }
                                }
                                CtEvent::Dump => {}
                            }
                        }
                        Err(err) => {
                            self.stats.decode_errors.fetch_add(1, Relaxed);
                            tracing::warn!(%err, "skipping undecodable event");
                        }
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

    /// Runs until `stop` is set: events continuously, a full dump every `interval` (or
    /// longer under `SourceOptions::cpu_budget`), and a last dump at the end so the bytes
    /// since the previous one are not lost.
    /// Observations go to `sink` in batches of up to `batch` (a full sink blocks: that is
    /// the back-pressure, and the kernel's event buffer absorbs it or overflows, counted).
    pub fn run(
        &mut self,
        interval: Duration,
        batch: usize,
        stop: &AtomicBool,
        sink: &mut impl FnMut(Vec<Observation>),
    ) -> Result<(), Error> {
        self.run_with(interval, batch, stop, sink, &mut |_| {})
    }

    /// [`Source::run`], calling `after_dump` after each scheduled dump (the last one
    /// included) once every observation emitted so far has gone to `sink`: the moment a
    /// [`Source::checkpoint`] covers exactly what the sink has received.
    pub fn run_with(
        &mut self,
        interval: Duration,
        batch: usize,
        stop: &AtomicBool,
        sink: &mut impl FnMut(Vec<Observation>),
        after_dump: &mut impl FnMut(&Source),
    ) -> Result<(), Error> {
        let batch = batch.max(1);
        let mut pending = Vec::with_capacity(batch);
        let mut next_dump = Instant::now();
        loop {
            let stopping = stop.load(Relaxed);
            let mut dumped = false;
            {
                let mut emit = |o: Observation| {
                    pending.push(o);
                    if pending.len() >= batch {
                        sink(std::mem::replace(&mut pending, Vec::with_capacity(batch)));
                    }
                };
                if stopping || Instant::now() >= next_dump {
                    let d = self.dump(&mut emit)?;
                    let wait = budget_interval(interval, d.cpu.as_nanos() as u64, self.cpu_budget);
                    self.stats
                        .dump_interval_ns
                        .store(wait.as_nanos() as u64, Relaxed);
                    next_dump = Instant::now() + wait;
                    dumped = true;
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
            if dumped {
                after_dump(self);
            }
            if stopping {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stretches_the_interval_only_when_dumps_cost_more_than_it() {
        let five = Duration::from_secs(5);
        // 0.25 s of CPU per dump within 5% of a core: 5 s.
        assert_eq!(budget_interval(five, 250_000_000, Some(0.05)), five);
        // 2.5 s per dump (1M entries) within 5%: 50 s.
        assert_eq!(
            budget_interval(five, 2_500_000_000, Some(0.05)),
            Duration::from_secs(50)
        );
        // No budget, or a meaningless one: the configured interval.
        assert_eq!(budget_interval(five, 2_500_000_000, None), five);
        assert_eq!(budget_interval(five, 2_500_000_000, Some(0.0)), five);
        assert_eq!(budget_interval(five, 2_500_000_000, Some(f64::NAN)), five);
    }
}
