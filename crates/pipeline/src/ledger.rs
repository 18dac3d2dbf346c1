//! Which agent batches are counted, written and acknowledged.
//!
//! A state machine whose inputs are passed in: batches offered ([`Ledger::offer`]),
//! intervals closed with the rows they produced ([`Ledger::seal`]), and the outcome of
//! each store write ([`Ledger::written`], [`Ledger::failed`]). It holds the rows until
//! they are durable, so a failed or abandoned write loses nothing, and it releases a
//! batch's acknowledgement only once every row the batch contributed to is durable.
//!
//! Writes ([`Job`]s) happen strictly in order: a job is written only after every job
//! sealed before it, so a job's marks never claim a batch whose rows are still waiting.
//! When the rows waiting to be written reach the bound, new batches are refused as
//! [`Offer::Busy`] (retryable: the agent keeps them) instead of dropping anything.
//!
//! An agent's durable mark is the highest sequence number at or below which every batch
//! of that agent is durable; it is written with the rows, in the same transaction where
//! the store can, so that after a restart a replayed batch is recognised.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use podflow_model::FlowRow;

/// An agent's batch: (agent id, sequence number).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId {
    /// The agent.
    pub agent: Arc<str>,
    /// Its sequence number.
    pub seq: u64,
}

/// What to do with a batch offered to the ledger.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<A> {
    /// New: count its observations at `at` (Unix seconds: the batch's own time, but never
    /// before the agent's previous batch, so an agent's batches close in order); the ack is
    /// released when its rows are durable.
    Count {
        /// When to count it, Unix seconds.
        at: i64,
    },
    /// Already durable: acknowledge now, count nothing.
    Duplicate(A),
    /// Received before and not durable yet: acknowledged together with the first copy.
    InFlight,
    /// Not now: the rows waiting for the store reached the bound. Answer "retry later";
    /// the agent keeps the batch.
    Busy(A),
}

/// Rows of closed intervals and the batches they complete, to be written as one unit.
#[derive(Debug, Clone)]
pub struct Job {
    /// Numbered in the order the jobs were sealed (and must be written).
    pub id: u64,
    /// The rows (shared with the writer, so a writer that dies loses nothing).
    pub rows: Arc<[FlowRow]>,
    /// The batches whose rows are all in this job or in jobs before it.
    pub batches: Vec<BatchId>,
}

/// Where a counted batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its observations are in the aggregator, in this interval.
    Open { interval: i64 },
    /// Its rows are in the job with this id.
    Sealed { job: u64 },
}

/// Counted, not yet durable batches of one agent.
#[derive(Debug, Default)]
struct AgentState {
    /// Highest durable sequence number with every batch at or below it durable.
    durable: u64,
    /// Batches counted and not durable yet, by sequence number.
    in_flight: BTreeMap<u64, State>,
    /// Durable batches above `durable` (an earlier one is still in flight).
    durable_above: Vec<u64>,
    /// The latest time a batch of this agent was counted at.
    last_at: i64,
}

/// The ledger; `A` is whatever the caller needs to send an ack (a connection's queue).
#[derive(Debug)]
pub struct Ledger<A> {
    interval_s: i64,
    max_pending_rows: usize,
    agents: HashMap<Arc<str>, AgentState>,
    acks: HashMap<BatchId, Vec<A>>,
    jobs: VecDeque<Job>,
    pending_rows: usize,
    next_job: u64,
}

impl<A> Ledger<A> {
    /// A ledger over `interval_s`-second intervals, holding at most about
    /// `max_pending_rows` rows for the store, starting from the durable marks the store
    /// has recorded.
    pub fn new(
        interval_s: u32,
        max_pending_rows: usize,
        marks: impl IntoIterator<Item = (String, u64)>,
    ) -> Ledger<A> {
        let agents = marks
            .into_iter()
            .map(|(a, seq)| {
                let st = AgentState {
                    durable: seq,
                    last_at: i64::MIN,
                    ..Default::default()
                };
                (Arc::from(a.as_str()), st)
            })
            .collect();
        Ledger {
            interval_s: i64::from(interval_s.max(1)),
            max_pending_rows: max_pending_rows.max(1),
            agents,
            acks: HashMap::new(),
            jobs: VecDeque::new(),
            pending_rows: 0,
            next_job: 0,
        }
    }

    /// Whether the rows waiting for the store reached the bound (new batches are
    /// refused as busy until a write succeeds).
    pub fn is_full(&self) -> bool {
        self.pending_rows >= self.max_pending_rows
    }

    /// Rows waiting to be written.
    pub fn pending_rows(&self) -> usize {
        self.pending_rows
    }

    /// Jobs waiting to be written.
    pub fn pending_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Batches counted and not durable yet.
    pub fn in_flight(&self) -> usize {
        self.agents.values().map(|a| a.in_flight.len()).sum()
    }

    /// The durable mark of `agent` (0: none).
    pub fn durable(&self, agent: &str) -> u64 {
        self.agents.get(agent).map_or(0, |a| a.durable)
    }

    /// Offers batch `id`, observed at `at` (Unix seconds), with `ack` to answer it by.
    pub fn offer(&mut self, id: BatchId, at: i64, ack: A) -> Offer<A> {
        let full = self.is_full();
        let interval_s = self.interval_s;
        let st = self
            .agents
            .entry(Arc::clone(&id.agent))
            .or_insert_with(|| AgentState {
                last_at: i64::MIN,
                ..Default::default()
            });
        if id.seq <= st.durable || st.durable_above.contains(&id.seq) {
            return Offer::Duplicate(ack);
        }
        if st.in_flight.contains_key(&id.seq) {
            self.acks.entry(id).or_default().push(ack);
            return Offer::InFlight;
        }
        if full {
            return Offer::Busy(ack);
        }
        let at = at.max(st.last_at);
        st.last_at = at;
        let interval = at - at.rem_euclid(interval_s);
        st.in_flight.insert(id.seq, State::Open { interval });
        self.acks.entry(id).or_default().push(ack);
        Offer::Count { at }
    }

    /// The intervals before `upto` were flushed into `rows`: they become a job together
    /// with the batches counted in those intervals. Returns the job's id, or `None` when
    /// there was nothing to write.
    pub fn seal(&mut self, upto: i64, rows: Vec<FlowRow>) -> Option<u64> {
        let id = self.next_job;
        let mut batches = Vec::new();
        for (agent, st) in &mut self.agents {
            for (seq, state) in &mut st.in_flight {
                if let State::Open { interval } = *state
                    && interval < upto
                {
                    *state = State::Sealed { job: id };
                    batches.push(BatchId {
                        agent: Arc::clone(agent),
                        seq: *seq,
                    });
                }
            }
        }
        if rows.is_empty() && batches.is_empty() {
            return None;
        }
        batches.sort();
        self.next_job += 1;
        self.pending_rows += rows.len();
        self.jobs.push_back(Job {
            id,
            rows: rows.into(),
            batches,
        });
        Some(id)
    }

    /// The next job to write, with the durable marks to record in the same write.
    pub fn next(&self) -> Option<(&Job, Vec<(String, u64)>)> {
        let job = self.jobs.front()?;
        let mut marks: Vec<(String, u64)> = Vec::new();
        for b in &job.batches {
            if marks.last().is_some_and(|(a, _)| **a == *b.agent) {
                continue;
            }
            if let Some(st) = self.agents.get(&b.agent) {
                let m = mark_after(st, job.id);
                if m > st.durable {
                    marks.push((b.agent.to_string(), m));
                }
            }
        }
        Some((job, marks))
    }

    /// Job `id` (the next one) is durable: its batches' acks, to send now.
    pub fn written(&mut self, id: u64) -> Vec<(BatchId, A)> {
        if self.jobs.front().is_none_or(|j| j.id != id) {
            return Vec::new();
        }
        let Some(job) = self.jobs.pop_front() else {
            return Vec::new();
        };
        self.pending_rows -= job.rows.len();
        let mut out = Vec::new();
        for b in job.batches {
            if let Some(st) = self.agents.get_mut(&b.agent) {
                let mark = mark_after(st, id);
                st.in_flight.remove(&b.seq);
                if b.seq > mark {
                    st.durable_above.push(b.seq);
                }
                st.durable = st.durable.max(mark);
                let d = st.durable;
                st.durable_above.retain(|s| *s > d);
            }
            for a in self.acks.remove(&b).unwrap_or_default() {
                out.push((b.clone(), a));
            }
        }
        out
    }

    /// Writing job `id` failed (or its writer died): it stays first, unchanged, to be
    /// tried again; nothing is acknowledged.
    pub fn failed(&mut self, id: u64) {
        debug_assert!(self.jobs.front().is_none_or(|j| j.id == id));
    }

    /// Agents the ledger knows.
    pub fn agents(&self) -> usize {
        self.agents.len()
    }
}

/// The durable mark of `st` once job `job` (and every job before it) is written: just
/// below its lowest batch that is still open or in a later job.
fn mark_after(st: &AgentState, job: u64) -> u64 {
    let waiting = st.in_flight.iter().find(|(_, state)| match state {
        State::Open { .. } => true,
        State::Sealed { job: j } => *j > job,
    });
    match waiting {
        Some((seq, _)) => st.durable.max(seq.saturating_sub(1)),
        None => st
            .in_flight
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(st.durable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(agent: &str, seq: u64) -> BatchId {
        BatchId {
            agent: Arc::from(agent),
            seq,
        }
    }

    fn row() -> FlowRow {
        FlowRow {
            interval_start: 0,
            interval_s: 10,
            observer: "n".into(),
            key: podflow_model::FlowKey {
                proto: podflow_model::Protocol::TCP,
                local: std::net::Ipv4Addr::LOCALHOST.into(),
                remote: std::net::Ipv4Addr::LOCALHOST.into(),
                responder_port: 1,
                local_initiated: true,
                service: None,
            },
            totals: Default::default(),
            labels: Default::default(),
            cost_usd: 0.0,
        }
    }

    #[test]
    fn acks_follow_the_write_of_every_interval_a_batch_touched() {
        let mut l: Ledger<u32> = Ledger::new(10, 100, []);
        assert_eq!(l.offer(id("a", 1), 105, 1), Offer::Count { at: 105 });
        assert_eq!(l.offer(id("a", 2), 112, 2), Offer::Count { at: 112 });
        assert_eq!(l.offer(id("a", 1), 105, 3), Offer::InFlight);
        let j = l.seal(110, vec![row()]).expect("a job");
        let (job, marks) = l.next().expect("next");
        assert_eq!(job.batches, vec![id("a", 1)]);
        assert_eq!(marks, vec![("a".to_string(), 1)]);
        l.failed(j);
        assert_eq!(l.pending_rows(), 1, "a failed job keeps its rows");
        let acks: Vec<u32> = l.written(j).into_iter().map(|(_, a)| a).collect();
        assert_eq!(acks, vec![1, 3], "both copies of batch 1 are acked");
        assert_eq!(l.durable("a"), 1);
        assert_eq!(l.offer(id("a", 1), 105, 4), Offer::Duplicate(4));
        assert_eq!(l.pending_rows(), 0);
    }

    #[test]
    fn an_agents_batches_close_in_order_even_when_its_clock_steps_back() {
        let mut l: Ledger<()> = Ledger::new(10, 100, []);
        assert_eq!(l.offer(id("a", 7), 500, ()), Offer::Count { at: 500 });
        assert_eq!(
            l.offer(id("a", 8), 100, ()),
            Offer::Count { at: 500 },
            "never before the previous batch"
        );
    }

    #[test]
    fn the_mark_stays_below_a_batch_still_open() {
        let mut l: Ledger<()> = Ledger::new(10, 100, [("a".to_string(), 4)]);
        assert_eq!(l.offer(id("a", 4), 1, ()), Offer::Duplicate(()));
        l.offer(id("a", 6), 100, ());
        l.offer(id("a", 5), 100, ()); // out of order: counted at 100 too
        l.offer(id("a", 7), 200, ());
        let j = l.seal(110, Vec::new()).expect("job");
        let (_, marks) = l.next().expect("next");
        assert_eq!(marks, vec![("a".to_string(), 6)]);
        l.written(j);
        assert_eq!(l.durable("a"), 6);
        let j = l.seal(i64::MAX, Vec::new()).expect("job");
        l.written(j);
        assert_eq!(l.durable("a"), 7);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn a_full_backlog_refuses_new_batches_as_busy_and_keeps_replays_answered() {
        let mut l: Ledger<u8> = Ledger::new(10, 2, []);
        l.offer(id("a", 1), 100, 1);
        let j = l.seal(110, vec![row(), row()]).expect("job");
        assert!(l.is_full());
        assert_eq!(l.offer(id("a", 2), 120, 2), Offer::Busy(2));
        assert_eq!(l.offer(id("a", 1), 100, 3), Offer::InFlight);
        l.written(j);
        assert!(!l.is_full());
        assert_eq!(l.offer(id("a", 2), 120, 4), Offer::Count { at: 120 });
    }

    #[test]
    fn jobs_are_written_in_order() {
        let mut l: Ledger<()> = Ledger::new(10, 100, []);
        l.offer(id("a", 1), 100, ());
        let first = l.seal(110, vec![row()]).expect("job");
        l.offer(id("a", 2), 110, ());
        let second = l.seal(120, vec![row()]).expect("job");
        assert!(l.written(second).is_empty(), "not the next job");
        assert_eq!(l.next().map(|(j, _)| j.id), Some(first));
        assert_eq!(l.written(first).len(), 1);
        assert_eq!(l.written(second).len(), 1);
        assert_eq!(l.durable("a"), 2);
    }

    proptest::proptest! {
        /// Whatever the order of offers, seals, failures and writes: a batch is acked only
        /// after its job was written, each copy once, every counted batch is acked once all
        /// is written, a batch counted and not yet durable is never taken for a duplicate,
        /// and a mark never passes a batch that is not durable.
        #[test]
        fn acks_only_for_what_is_durable(ops in proptest::collection::vec((0u8..5, 1u64..30, 0i64..300), 1..200)) {
            let mut l: Ledger<u64> = Ledger::new(10, 1_000, []);
            let mut counted = std::collections::BTreeSet::new();
            let mut durable = std::collections::BTreeSet::new();
            let mut handles: Vec<u64> = Vec::new(); // handle -> seq
            let mut acked = std::collections::BTreeSet::new(); // handles
            let mut now = 0i64;
            for (op, seq, t) in ops {
                match op {
                    0 | 1 => {
                        let h = handles.len() as u64;
                        handles.push(seq);
                        match l.offer(id("a", seq), t, h) {
                            Offer::Count { .. } => { counted.insert(seq); }
                            Offer::Duplicate(_) => proptest::prop_assert!(!counted.contains(&seq) || durable.contains(&seq)),
                            Offer::InFlight => proptest::prop_assert!(counted.contains(&seq) && !durable.contains(&seq)),
                            Offer::Busy(_) => {}
                        }
                    }
                    2 => { now += 10; l.seal(now, vec![row()]); }
                    3 => if let Some((job, marks)) = l.next() {
                        let jid = job.id;
                        let in_job: Vec<u64> = job.batches.iter().map(|b| b.seq).collect();
                        for (_, m) in &marks {
                            for s in counted.iter().filter(|s| **s <= *m) {
                                proptest::prop_assert!(durable.contains(s) || in_job.contains(s), "mark {} passes batch {}", m, s);
                            }
                        }
                        durable.extend(in_job);
                        for (b, h) in l.written(jid) {
                            proptest::prop_assert_eq!(b.seq, handles[h as usize]);
                            proptest::prop_assert!(durable.contains(&b.seq));
                            proptest::prop_assert!(acked.insert(h), "acked twice: {}", h);
                        }
                    },
                    _ => if let Some((job, _)) = l.next() { let jid = job.id; l.failed(jid); },
                }
            }
            l.seal(i64::MAX, Vec::new());
            while let Some((job, _)) = l.next() {
                let jid = job.id;
                durable.extend(job.batches.iter().map(|b| b.seq));
                for (_, h) in l.written(jid) {
                    proptest::prop_assert!(acked.insert(h));
                }
            }
            let acked_seqs: std::collections::BTreeSet<u64> = acked.iter().map(|h| handles[*h as usize]).collect();
            proptest::prop_assert_eq!(&acked_seqs, &counted);
            proptest::prop_assert_eq!(l.pending_rows(), 0);
            proptest::prop_assert_eq!(l.in_flight(), 0);
        }
    }
}
