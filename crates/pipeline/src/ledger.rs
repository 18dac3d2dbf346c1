//! Which agent batches are counted, written and acknowledged, in which chunks.
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
//!
//! Chunks (for stores that deduplicate by token, not by transaction: ClickHouse,
//! docs/reliability.md, "Exactly once"): every counted batch joins a *part* of its agent, and the
//! aggregator keeps the part in its key, so a part's rows are a function of exactly its
//! batches. A part holds one agent's batches of one day (one ClickHouse partition), at
//! most about `max_part_weight` observations, and either one interval or only intervals
//! already closed when its batches came (replays), so it is sealed whole. Sealed parts of
//! a day are packed into *chunks* of at most `max_chunk_rows` rows, one INSERT each; a
//! chunk is frozen when sealed (rows and token never change: a failed job is retried as
//! it is) and its token is a function of its parts' agents and batches. The store writes
//! an *intent* (per agent: its parts in the job's chunks, with their tokens) before the
//! rows and the marks after them; parts whose batches are above an agent's mark at start
//! are *re-cut*: the agents' replays of those batches join parts of a chunk with the
//! same token again, held until all of them are back (or their agent has moved past
//! them, or [`RECUT_PATIENCE_S`] passed), so a chunk that landed before the crash is
//! dropped by the store and one that did not lands once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use podflow_model::hash::Fnv128;
use podflow_model::{AgentMark, ChunkId, FlowRow};

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
    /// before the agent's previous batch, so an agent's batches close in order) into
    /// chunk `chunk` (the aggregator's tag); the ack is released when its rows are durable.
    Count {
        /// When to count it, Unix seconds.
        at: i64,
        /// The chunk its rows go to.
        chunk: u64,
    },
    /// Already durable: acknowledge now, count nothing.
    Duplicate(A),
    /// Received before and not durable yet: acknowledged together with the first copy.
    InFlight,
    /// Not now: the rows waiting for the store reached the bound. Answer "retry later";
    /// the agent keeps the batch.
    Busy(A),
}

/// A frozen chunk of a job: its token, its agents' parts and its rows.
#[derive(Debug, Clone)]
pub struct JobChunk {
    /// The deduplication token.
    pub token: String,
    /// The day of its rows (days since the Unix epoch).
    pub day: i64,
    /// Each agent's batches in it (none for rows no agent replays).
    pub parts: Vec<ChunkId>,
    /// The rows (shared with the writer, so a writer that dies loses nothing).
    pub rows: Arc<[FlowRow]>,
}

impl JobChunk {
    fn has(&self, agent: &str) -> bool {
        self.parts.iter().any(|p| p.agent.as_deref() == Some(agent))
    }
}

/// Rows of closed intervals and the batches they complete, to be written as one unit.
#[derive(Debug, Clone)]
pub struct Job {
    /// Numbered in the order the jobs were sealed (and must be written).
    pub id: u64,
    /// The rows, per chunk.
    pub chunks: Vec<JobChunk>,
    /// The batches whose rows are all in this job or in jobs before it.
    pub batches: Vec<BatchId>,
}

impl Job {
    /// Rows in every chunk.
    pub fn rows(&self) -> usize {
        self.chunks.iter().map(|c| c.rows.len()).sum()
    }
}

/// What to write for the next job: the intents (before the rows), the chunks, and the
/// agents' marks (after the rows, or with them in one transaction).
#[derive(Debug)]
pub struct Plan<'a> {
    /// The job.
    pub job: &'a Job,
    /// Per agent with chunks in the job: its mark now, and every chunk of it that may be
    /// in the store above the mark, this job's included.
    pub intents: Vec<AgentMark>,
    /// Per agent in the job: its mark once the job is written, and the chunks still
    /// above it.
    pub marks: Vec<AgentMark>,
}

/// Where a counted batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its observations are in the aggregator, in this interval and chunk.
    Open { interval: i64, chunk: u64 },
    /// Its rows are in the job with this id.
    Sealed { job: u64 },
}

/// A part not sealed yet: one agent's batches.
#[derive(Debug)]
struct Part {
    agent: Arc<str>,
    /// Its batches, in the order they came.
    seqs: Vec<u64>,
    /// The day of its intervals (days since the Unix epoch).
    day: i64,
    /// The latest interval of its batches.
    max_interval: i64,
    /// Observations counted into it.
    weight: usize,
    /// The re-cut chunk it belongs to (found pending at start).
    recut: Option<u64>,
    /// Batches of a re-cut part not back yet: its chunk is held until none.
    expect: BTreeSet<u64>,
}

/// A chunk found pending at start, cut again from its agents' replays.
#[derive(Debug)]
struct Recut {
    token: String,
    day: i64,
    parts: Vec<u64>,
}

/// Counted, not yet durable batches of one agent.
#[derive(Debug)]
struct AgentState {
    /// Highest durable sequence number with every batch at or below it durable.
    durable: u64,
    /// Batches counted and not durable yet, by sequence number.
    in_flight: BTreeMap<u64, State>,
    /// Durable batches above `durable` (an earlier one is still in flight).
    durable_above: Vec<u64>,
    /// The latest time a batch of this agent was counted at.
    last_at: i64,
    /// The node it runs on.
    node: String,
    /// The latest observation time of its batches (durable or not).
    last_seen: i64,
    /// The part its next batch may join.
    open_part: Option<u64>,
    /// Batches expected back into a re-cut part: seq -> part.
    recut_of: BTreeMap<u64, u64>,
    /// Batches of re-cut parts sealed before they came back (the agent had moved past
    /// them): taken for duplicates if they ever come.
    recut_missed: BTreeSet<u64>,
    /// Its written parts with batches above `durable`: kept in the intents until the
    /// mark passes them.
    unmarked: Vec<ChunkId>,
}

impl AgentState {
    fn new(durable: u64) -> AgentState {
        AgentState {
            durable,
            in_flight: BTreeMap::new(),
            durable_above: Vec::new(),
            last_at: i64::MIN,
            node: String::new(),
            last_seen: 0,
            open_part: None,
            recut_of: BTreeMap::new(),
            recut_missed: BTreeSet::new(),
            unmarked: Vec::new(),
        }
    }
}

/// The ledger; `A` is whatever the caller needs to send an ack (a connection's queue).
#[derive(Debug)]
pub struct Ledger<A> {
    interval_s: i64,
    max_pending_rows: usize,
    max_part_weight: usize,
    max_chunk_rows: usize,
    /// Names the chunks of rows no agent replays (part 0) apart from another server's.
    instance: u64,
    agents: HashMap<Arc<str>, AgentState>,
    parts: HashMap<u64, Part>,
    next_part: u64,
    recuts: HashMap<u64, Recut>,
    /// The `upto` of the first seal: re-cuts wait [`RECUT_PATIENCE_S`] from there.
    first_seal: Option<i64>,
    acks: HashMap<BatchId, Vec<A>>,
    jobs: VecDeque<Job>,
    pending_rows: usize,
    next_job: u64,
    recut_late: u64,
    /// Every node an agent runs on, with the latest observation time of its batches.
    nodes: HashMap<String, i64>,
}

/// How long after its agent's last batch a node still counts as observed, seconds: an
/// agent that stopped (its node drained, the DaemonSet removed) no longer makes its
/// peers' rows count as seen twice.
pub const OBSERVED_FOR_S: i64 = 300;

/// Observations per part beyond which an agent's next batch starts a new part.
pub const MAX_PART_WEIGHT: usize = 50_000;

/// Rows per chunk (one INSERT) beyond which a job's next part goes to another chunk.
pub const MAX_CHUNK_ROWS: usize = 100_000;

/// How long a re-cut chunk waits for its agents' replays after the first seal, seconds:
/// an agent gone for good does not hold the others' batches forever.
pub const RECUT_PATIENCE_S: i64 = 600;

/// The most agents the ledger keeps state and a durable mark for. Agents are never
/// forgotten (their marks are what makes a replay a duplicate), so an id the ledger does
/// not know yet is refused beyond this, whatever sends it: 5,000 nodes (Kubernetes' own
/// limit) with two ids each fit.
pub const MAX_AGENTS: usize = 10_000;

/// The most agent ids one node may have: its agent, and `<node>/<suffix>` ids (the
/// forwarders of NetFlow, a re-created data directory...).
pub const MAX_AGENTS_PER_NODE: usize = 16;

/// Why the ledger will not take a new agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooMany {
    /// It knows [`MAX_AGENTS`] agents (or the bound given) already.
    Agents(usize),
    /// The node has [`MAX_AGENTS_PER_NODE`] agent ids (or the bound given) already.
    OnNode(usize),
}

/// Seconds in a day (ClickHouse partitions by `toDate(intervalStartTime)`, UTC).
const DAY: i64 = 86_400;

/// The deduplication token of a chunk: a stable 128-bit FNV-1a hash of its parts'
/// agents and batches, in order (it must not change between builds).
pub fn chunk_token<'a>(parts: impl IntoIterator<Item = (&'a str, &'a [u64])>) -> String {
    let mut h = Fnv128::new();
    for (agent, seqs) in parts {
        h.str(agent);
        h.u64(seqs.len() as u64);
        for s in seqs {
            h.u64(*s);
        }
    }
    format!("podflow-c1-{:032x}", h.0)
}

impl<A> Ledger<A> {
    /// A ledger over `interval_s`-second intervals, holding at most about
    /// `max_pending_rows` rows for the store, starting from the marks the store has
    /// recorded (their pending chunks are re-cut); `instance` names this process's
    /// chunks of rows no agent replays.
    pub fn new(
        interval_s: u32,
        max_pending_rows: usize,
        marks: impl IntoIterator<Item = AgentMark>,
        instance: u64,
    ) -> Ledger<A> {
        let mut l = Ledger {
            interval_s: i64::from(interval_s.max(1)),
            max_pending_rows: max_pending_rows.max(1),
            max_part_weight: MAX_PART_WEIGHT,
            max_chunk_rows: MAX_CHUNK_ROWS,
            instance,
            agents: HashMap::new(),
            parts: HashMap::new(),
            next_part: 1,
            recuts: HashMap::new(),
            first_seal: None,
            acks: HashMap::new(),
            jobs: VecDeque::new(),
            pending_rows: 0,
            next_job: 0,
            recut_late: 0,
            nodes: HashMap::new(),
        };
        let mut by_token: HashMap<String, u64> = HashMap::new();
        for m in marks {
            let agent: Arc<str> = Arc::from(m.agent.as_str());
            let mut st = AgentState::new(m.seq);
            if !m.node.is_empty() {
                let t = l.nodes.entry(m.node.clone()).or_insert(m.last_seen);
                *t = (*t).max(m.last_seen);
            }
            st.node = m.node;
            st.last_seen = m.last_seen;
            for p in m.pending {
                let expect: BTreeSet<u64> = p.seqs.iter().copied().filter(|s| *s > m.seq).collect();
                if expect.is_empty() {
                    continue;
                }
                let next = l.recuts.len() as u64 + 1;
                let r = *by_token.entry(p.token.clone()).or_insert(next);
                let id = l.next_part;
                l.next_part += 1;
                l.recuts
                    .entry(r)
                    .or_insert_with(|| Recut {
                        token: p.token,
                        day: p.day,
                        parts: Vec::new(),
                    })
                    .parts
                    .push(id);
                for s in &expect {
                    st.recut_of.insert(*s, id);
                }
                l.parts.insert(
                    id,
                    Part {
                        agent: Arc::clone(&agent),
                        seqs: Vec::new(),
                        day: p.day,
                        max_interval: i64::MIN,
                        weight: 0,
                        recut: Some(r),
                        expect,
                    },
                );
            }
            l.agents.insert(agent, st);
        }
        l
    }

    /// Sets the observations per part beyond which an agent's next batch starts a new
    /// part, and the rows per chunk (defaults [`MAX_PART_WEIGHT`], [`MAX_CHUNK_ROWS`]).
    pub fn with_limits(mut self, part_weight: usize, chunk_rows: usize) -> Ledger<A> {
        self.max_part_weight = part_weight.max(1);
        self.max_chunk_rows = chunk_rows.max(1);
        self
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

    /// Re-cut chunks still waiting for some of their batches.
    pub fn held_chunks(&self) -> usize {
        self.recuts
            .values()
            .filter(|r| {
                r.parts
                    .iter()
                    .any(|p| self.parts.get(p).is_some_and(|p| !p.expect.is_empty()))
            })
            .count()
    }

    /// Batches of a re-cut chunk that came back after the chunk was written without
    /// them (taken for duplicates: podflow cannot tell whether their first copy landed).
    pub fn recut_late(&self) -> u64 {
        self.recut_late
    }

    /// Offers batch `id` from the agent on `node`, observed at `at` (Unix seconds) and
    /// holding `weight` observations, at `now`, with `ack` to answer it by.
    pub fn offer(
        &mut self,
        id: BatchId,
        node: &str,
        at: i64,
        now: i64,
        weight: usize,
        ack: A,
    ) -> Offer<A> {
        let full = self.is_full();
        let interval_s = self.interval_s;
        let st = self
            .agents
            .entry(Arc::clone(&id.agent))
            .or_insert_with(|| AgentState::new(0));
        if id.seq <= st.durable || st.durable_above.contains(&id.seq) {
            return Offer::Duplicate(ack);
        }
        if st.recut_missed.contains(&id.seq) {
            self.recut_late += 1;
            return Offer::Duplicate(ack);
        }
        if st.in_flight.contains_key(&id.seq) {
            self.acks.entry(id).or_default().push(ack);
            return Offer::InFlight;
        }
        if full {
            return Offer::Busy(ack);
        }
        if st.node != node {
            st.node = node.to_string();
        }
        let interval_of = |t: i64| t - t.rem_euclid(interval_s);
        let recut = st
            .recut_of
            .remove(&id.seq)
            .and_then(|c| Some((c, self.parts.get_mut(&c)?)));
        let (at, part) = if let Some((c, p)) = recut {
            // Back into the part it was written in before the restart, in that part's
            // day (its partition), whatever the clamps say now.
            let at = at.max(st.last_at).clamp(p.day * DAY, p.day * DAY + DAY - 1);
            p.expect.remove(&id.seq);
            (at, c)
        } else {
            let at = at.max(st.last_at);
            // The agent replays in order: re-cut parts whose batches all lie below this
            // one will not get the missing ones back; they are sealed without them.
            let passed: Vec<u64> = st.recut_of.range(..id.seq).map(|(_, c)| *c).collect();
            for c in passed {
                if let Some(p) = self.parts.get_mut(&c)
                    && p.expect.last().is_some_and(|last| *last < id.seq)
                {
                    for s in std::mem::take(&mut p.expect) {
                        st.recut_of.remove(&s);
                        st.recut_missed.insert(s);
                    }
                }
            }
            let interval = interval_of(at);
            let live = interval_of(now);
            let day = interval.div_euclid(DAY);
            let joins = st
                .open_part
                .and_then(|c| self.parts.get(&c))
                .is_some_and(|p| {
                    p.recut.is_none()
                        && p.day == day
                        && p.weight < self.max_part_weight
                        && (p.max_interval == interval
                            || (p.max_interval < live && interval < live))
                });
            let c = match st.open_part {
                Some(c) if joins => c,
                _ => {
                    let c = self.next_part;
                    self.next_part += 1;
                    self.parts.insert(
                        c,
                        Part {
                            agent: Arc::clone(&id.agent),
                            seqs: Vec::new(),
                            day,
                            max_interval: interval,
                            weight: 0,
                            recut: None,
                            expect: BTreeSet::new(),
                        },
                    );
                    st.open_part = Some(c);
                    c
                }
            };
            (at, c)
        };
        st.last_at = st.last_at.max(at);
        st.last_seen = st.last_seen.max(at);
        if !node.is_empty() {
            match self.nodes.get_mut(node) {
                Some(t) => *t = (*t).max(at),
                None => {
                    self.nodes.insert(node.to_string(), at);
                }
            }
        }
        let interval = interval_of(at);
        if let Some(p) = self.parts.get_mut(&part) {
            p.seqs.push(id.seq);
            p.max_interval = p.max_interval.max(interval);
            p.weight = p.weight.saturating_add(weight.max(1));
        }
        st.in_flight.insert(
            id.seq,
            State::Open {
                interval,
                chunk: part,
            },
        );
        self.acks.entry(id).or_default().push(ack);
        Offer::Count { at, chunk: part }
    }

    /// The parts that can be sealed at `upto`: every batch in an interval before it, and
    /// for re-cut ones, every part of their chunk back. Past the patience, re-cut parts
    /// stop waiting.
    fn sealable(&mut self, upto: i64) -> HashSet<u64> {
        let first = *self.first_seal.get_or_insert(upto);
        if upto.saturating_sub(first) >= RECUT_PATIENCE_S {
            for p in self.parts.values_mut() {
                if p.expect.is_empty() {
                    continue;
                }
                if let Some(st) = self.agents.get_mut(&p.agent) {
                    for s in std::mem::take(&mut p.expect) {
                        st.recut_of.remove(&s);
                        st.recut_missed.insert(s);
                    }
                }
            }
        }
        let mut out: HashSet<u64> = self
            .parts
            .iter()
            .filter(|(_, p)| p.recut.is_none() && p.max_interval < upto)
            .map(|(id, _)| *id)
            .collect();
        for r in self.recuts.values() {
            let ready = r.parts.iter().all(|c| {
                self.parts
                    .get(c)
                    .is_none_or(|p| p.expect.is_empty() && p.max_interval < upto)
            });
            if ready {
                out.extend(r.parts.iter().copied());
            }
        }
        out
    }

    /// The intervals before `upto` closed: `take` is given the parts that can be sealed
    /// and returns their rows (and those of part 0 before `upto`), per part; they become
    /// a job together with the batches of those parts. Returns the job's id, or `None`
    /// when there was nothing to write.
    pub fn seal(
        &mut self,
        upto: i64,
        take: impl FnOnce(&HashSet<u64>) -> Vec<(u64, Vec<FlowRow>)>,
    ) -> Option<u64> {
        let sealable = self.sealable(upto);
        let mut taken: HashMap<u64, Vec<FlowRow>> = take(&sealable).into_iter().collect();
        let id = self.next_job;
        let mut batches = Vec::new();
        let mut sealed: BTreeMap<u64, (Part, ChunkId)> = BTreeMap::new();
        for c in &sealable {
            let Some(p) = self.parts.remove(c) else {
                continue;
            };
            if let Some(st) = self.agents.get_mut(&p.agent) {
                if st.open_part == Some(*c) {
                    st.open_part = None;
                }
                for seq in &p.seqs {
                    if let Some(state) = st.in_flight.get_mut(seq) {
                        *state = State::Sealed { job: id };
                    }
                    batches.push(BatchId {
                        agent: Arc::clone(&p.agent),
                        seq: *seq,
                    });
                }
            }
            let mut seqs = p.seqs.clone();
            seqs.sort_unstable();
            let cid = ChunkId {
                token: String::new(),
                agent: Some(p.agent.to_string()),
                seqs,
                day: p.day,
            };
            sealed.insert(*c, (p, cid));
        }
        let mut chunks: Vec<JobChunk> = Vec::new();
        // Re-cut chunks: their token, whatever rows came back.
        let done: Vec<u64> = self
            .recuts
            .iter()
            .filter(|(_, r)| r.parts.iter().all(|c| sealed.contains_key(c)))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            let Some(r) = self.recuts.remove(&k) else {
                continue;
            };
            let mut parts = Vec::new();
            let mut rows = Vec::new();
            for c in &r.parts {
                if let Some((_, mut cid)) = sealed.remove(c) {
                    rows.extend(taken.remove(c).unwrap_or_default());
                    if !cid.seqs.is_empty() {
                        cid.token = r.token.clone();
                        parts.push(cid);
                    }
                }
            }
            if !rows.is_empty() {
                chunks.push(JobChunk {
                    token: r.token,
                    day: r.day,
                    parts,
                    rows: rows.into(),
                });
            }
        }
        // New parts: packed per day, in agent and batch order, up to the row bound.
        let mut by_day: BTreeMap<i64, Vec<(ChunkId, Vec<FlowRow>)>> = BTreeMap::new();
        for (c, (p, cid)) in sealed {
            let rows = taken.remove(&c).unwrap_or_default();
            if !rows.is_empty() {
                by_day.entry(p.day).or_default().push((cid, rows));
            }
        }
        for (day, mut parts) in by_day {
            parts.sort_by(|a, b| (&a.0.agent, &a.0.seqs).cmp(&(&b.0.agent, &b.0.seqs)));
            let mut cur: Vec<(ChunkId, Vec<FlowRow>)> = Vec::new();
            let mut n = 0;
            let flush = |cur: &mut Vec<(ChunkId, Vec<FlowRow>)>, chunks: &mut Vec<JobChunk>| {
                if cur.is_empty() {
                    return;
                }
                let token = chunk_token(
                    cur.iter()
                        .map(|(c, _)| (c.agent.as_deref().unwrap_or(""), c.seqs.as_slice())),
                );
                let mut parts = Vec::new();
                let mut rows = Vec::new();
                for (mut c, r) in cur.drain(..) {
                    c.token = token.clone();
                    parts.push(c);
                    rows.extend(r);
                }
                chunks.push(JobChunk {
                    token,
                    day,
                    parts,
                    rows: rows.into(),
                });
            };
            for (c, rows) in parts {
                if n > 0 && n + rows.len() > self.max_chunk_rows {
                    flush(&mut cur, &mut chunks);
                    n = 0;
                }
                n += rows.len();
                cur.push((c, rows));
            }
            flush(&mut cur, &mut chunks);
        }
        // Rows no agent replays: per day, named by this process and job, cut at the row
        // bound (retried unchanged, never re-cut). Moved into their chunks, not copied
        // (an interval of NetFlow can hold millions).
        let rest = taken.remove(&0).unwrap_or_default();
        let first_day = rest.first().map(|r| r.interval_start.div_euclid(DAY));
        let by_day: Vec<(i64, Vec<FlowRow>)> = match first_day {
            None => Vec::new(),
            Some(d) if rest.iter().all(|r| r.interval_start.div_euclid(DAY) == d) => {
                vec![(d, rest)]
            }
            Some(_) => {
                let mut m: BTreeMap<i64, Vec<FlowRow>> = BTreeMap::new();
                for r in rest {
                    m.entry(r.interval_start.div_euclid(DAY))
                        .or_default()
                        .push(r);
                }
                m.into_iter().collect()
            }
        };
        let max = self.max_chunk_rows.max(1);
        for (day, rows) in by_day {
            let n = rows.len().div_ceil(max);
            let mut rows = rows.into_iter();
            for i in 0..n {
                chunks.push(JobChunk {
                    token: format!("podflow-s1-{:016x}-{id}-{day}-{i}", self.instance),
                    day,
                    parts: Vec::new(),
                    // Written once, straight into the shared slice.
                    rows: rows.by_ref().take(max).collect(),
                });
            }
        }
        debug_assert!(
            taken.values().all(Vec::is_empty),
            "rows of parts not sealed"
        );
        if chunks.is_empty() && batches.is_empty() {
            return None;
        }
        batches.sort();
        self.next_job += 1;
        self.pending_rows += chunks.iter().map(|c| c.rows.len()).sum::<usize>();
        self.jobs.push_back(Job {
            id,
            chunks,
            batches,
        });
        Some(id)
    }

    /// The rows of job `id` while it waits to be written (none once written).
    pub fn job_rows(&self, id: u64) -> impl Iterator<Item = &FlowRow> {
        self.jobs
            .iter()
            .filter(move |j| j.id == id)
            .flat_map(|j| j.chunks.iter().flat_map(|c| c.rows.iter()))
    }

    /// The next job to write, with the intents and marks to write with it.
    pub fn next(&self) -> Option<Plan<'_>> {
        let job = self.jobs.front()?;
        let mut agents: Vec<&str> = job.batches.iter().map(|b| &*b.agent).collect();
        agents.extend(
            job.chunks
                .iter()
                .flat_map(|c| c.parts.iter().filter_map(|p| p.agent.as_deref())),
        );
        agents.sort_unstable();
        agents.dedup();
        let mut intents = Vec::new();
        let mut marks = Vec::new();
        for agent in agents {
            let Some(st) = self.agents.get(agent) else {
                continue;
            };
            let mut pending = st.unmarked.clone();
            pending.extend(job.chunks.iter().flat_map(|c| {
                c.parts
                    .iter()
                    .filter(|p| p.agent.as_deref() == Some(agent))
                    .cloned()
            }));
            let mark = AgentMark {
                agent: agent.to_string(),
                seq: st.durable,
                node: st.node.clone(),
                last_seen: st.last_seen,
                pending: Vec::new(),
            };
            if job.chunks.iter().any(|c| c.has(agent)) {
                intents.push(AgentMark {
                    pending: pending.clone(),
                    ..mark.clone()
                });
            }
            let m = mark_after(st, job.id);
            pending.retain(|c| c.seqs.iter().any(|s| *s > m));
            marks.push(AgentMark {
                seq: m,
                pending,
                ..mark
            });
        }
        Some(Plan {
            job,
            intents,
            marks,
        })
    }

    /// Job `id` (the next one) is durable: its batches' acks, to send now.
    pub fn written(&mut self, id: u64) -> Vec<(BatchId, A)> {
        if self.jobs.front().is_none_or(|j| j.id != id) {
            return Vec::new();
        }
        let Some(job) = self.jobs.pop_front() else {
            return Vec::new();
        };
        self.pending_rows -= job.rows().min(self.pending_rows);
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
        for c in job.chunks {
            for p in c.parts {
                if let Some(st) = p.agent.as_deref().and_then(|a| self.agents.get_mut(a))
                    && p.seqs.iter().any(|s| *s > st.durable)
                {
                    st.unmarked.push(p);
                }
            }
        }
        for st in self.agents.values_mut() {
            let d = st.durable;
            st.unmarked.retain(|c| c.seqs.iter().any(|s| *s > d));
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

    /// Whether a batch of `agent` on `node` may be offered: a known agent always; a new
    /// one while fewer than `max_total` agents, and fewer than `max_per_node` on its
    /// node, are known. (Counting a node's agents scans them: it runs only for ids the
    /// ledger does not know, so at most once per refused batch.)
    pub fn admits(
        &self,
        agent: &str,
        node: &str,
        max_total: usize,
        max_per_node: usize,
    ) -> Result<(), TooMany> {
        if self.agents.contains_key(agent) {
            return Ok(());
        }
        if self.agents.len() >= max_total {
            return Err(TooMany::Agents(self.agents.len()));
        }
        let on_node = self.agents.values().filter(|a| a.node == node).count();
        if on_node >= max_per_node {
            return Err(TooMany::OnNode(on_node));
        }
        Ok(())
    }

    /// Every agent's node and the latest observation time of its batches.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, i64)> {
        self.agents.values().map(|a| (a.node.as_str(), a.last_seen))
    }

    /// Whether an agent observes `node` at `at` (Unix seconds): one sent a batch from it
    /// observed at most [`OBSERVED_FOR_S`] before `at`, or any time after (a durable
    /// fact: the marks keep every agent's node and last-seen time across restarts).
    pub fn observes(&self, node: &str, at: i64) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|t| *t >= at.saturating_sub(OBSERVED_FOR_S))
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
                prefixes: Default::default(),
            },
            totals: Default::default(),
            labels: Default::default(),
            cost_usd: 0.0,
        }
    }

    /// Offers at `at`, with the clock at `at` (live).
    fn offer<A>(l: &mut Ledger<A>, b: BatchId, at: i64, ack: A) -> Offer<A> {
        l.offer(b, "node", at, at, 1, ack)
    }

    /// Seals at `upto`, giving each sealable chunk `n` rows (chunk 0 when none).
    fn seal<A>(l: &mut Ledger<A>, upto: i64, n: usize) -> Option<u64> {
        l.seal(upto, |chunks| {
            let mut c: Vec<u64> = chunks.iter().copied().collect();
            if c.is_empty() {
                c.push(0);
            }
            c.into_iter().map(|c| (c, vec![row(); n])).collect()
        })
    }

    fn counted<A>(o: Offer<A>) -> Option<i64> {
        match o {
            Offer::Count { at, .. } => Some(at),
            _ => None,
        }
    }

    #[test]
    fn acks_follow_the_write_of_every_interval_a_batch_touched() {
        let mut l: Ledger<u32> = Ledger::new(10, 100, [], 7);
        assert_eq!(counted(offer(&mut l, id("a", 1), 105, 1)), Some(105));
        assert_eq!(counted(offer(&mut l, id("a", 2), 112, 2)), Some(112));
        assert_eq!(offer(&mut l, id("a", 1), 105, 3), Offer::InFlight);
        let j = seal(&mut l, 110, 1).expect("a job");
        let plan = l.next().expect("next");
        assert_eq!(plan.job.batches, vec![id("a", 1)]);
        assert_eq!(plan.marks.len(), 1);
        assert_eq!((plan.marks[0].agent.as_str(), plan.marks[0].seq), ("a", 1));
        assert_eq!(plan.intents[0].seq, 0, "the intent carries the mark before");
        assert_eq!(plan.intents[0].pending[0].seqs, vec![1]);
        assert!(
            plan.marks[0].pending.is_empty(),
            "the mark covers the chunk"
        );
        l.failed(j);
        assert_eq!(l.pending_rows(), 1, "a failed job keeps its rows");
        let acks: Vec<u32> = l.written(j).into_iter().map(|(_, a)| a).collect();
        assert_eq!(acks, vec![1, 3], "both copies of batch 1 are acked");
        assert_eq!(l.durable("a"), 1);
        assert_eq!(offer(&mut l, id("a", 1), 105, 4), Offer::Duplicate(4));
        assert_eq!(l.pending_rows(), 0);
    }

    #[test]
    fn new_agents_are_refused_beyond_the_bounds_known_ones_never() {
        let mut l: Ledger<()> = Ledger::new(10, 100, [], 7);
        for (agent, node) in [("a", "n1"), ("a/nf", "n1"), ("b", "n2")] {
            assert_eq!(l.admits(agent, node, 3, 2), Ok(()));
            l.offer(id(agent, 1), node, 100, 100, 1, ());
        }
        assert_eq!(l.admits("a/x", "n1", 4, 2), Err(TooMany::OnNode(2)));
        assert_eq!(l.admits("b/x", "n2", 4, 2), Ok(()), "n2 has one");
        assert_eq!(l.admits("c", "n3", 3, 2), Err(TooMany::Agents(3)));
        assert_eq!(l.admits("a", "n1", 3, 2), Ok(()), "a known agent always");
        assert_eq!(l.admits("a/nf", "n1", 0, 0), Ok(()));
    }

    #[test]
    fn an_agents_batches_close_in_order_even_when_its_clock_steps_back() {
        let mut l: Ledger<()> = Ledger::new(10, 100, [], 7);
        assert_eq!(counted(offer(&mut l, id("a", 7), 500, ())), Some(500));
        assert_eq!(
            counted(offer(&mut l, id("a", 8), 100, ())),
            Some(500),
            "never before the previous batch"
        );
    }

    #[test]
    fn the_mark_stays_below_a_batch_still_open() {
        let mark = AgentMark {
            agent: "a".into(),
            seq: 4,
            ..Default::default()
        };
        let mut l: Ledger<()> = Ledger::new(10, 100, [mark], 7);
        assert_eq!(offer(&mut l, id("a", 4), 1, ()), Offer::Duplicate(()));
        offer(&mut l, id("a", 6), 100, ());
        offer(&mut l, id("a", 5), 100, ()); // out of order: counted at 100 too
        offer(&mut l, id("a", 7), 200, ());
        let j = seal(&mut l, 110, 0).expect("job");
        let plan = l.next().expect("next");
        assert_eq!(plan.marks[0].seq, 6);
        l.written(j);
        assert_eq!(l.durable("a"), 6);
        let j = seal(&mut l, i64::MAX, 0).expect("job");
        l.written(j);
        assert_eq!(l.durable("a"), 7);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn a_full_backlog_refuses_new_batches_as_busy_and_keeps_replays_answered() {
        let mut l: Ledger<u8> = Ledger::new(10, 2, [], 7);
        offer(&mut l, id("a", 1), 100, 1);
        let j = seal(&mut l, 110, 2).expect("job");
        assert!(l.is_full());
        assert_eq!(offer(&mut l, id("a", 2), 120, 2), Offer::Busy(2));
        assert_eq!(offer(&mut l, id("a", 1), 100, 3), Offer::InFlight);
        l.written(j);
        assert!(!l.is_full());
        assert_eq!(counted(offer(&mut l, id("a", 2), 120, 4)), Some(120));
    }

    #[test]
    fn jobs_are_written_in_order() {
        let mut l: Ledger<()> = Ledger::new(10, 100, [], 7);
        offer(&mut l, id("a", 1), 100, ());
        let first = seal(&mut l, 110, 1).expect("job");
        offer(&mut l, id("a", 2), 110, ());
        let second = seal(&mut l, 120, 1).expect("job");
        assert!(l.written(second).is_empty(), "not the next job");
        assert_eq!(l.next().map(|p| p.job.id), Some(first));
        assert_eq!(l.written(first).len(), 1);
        assert_eq!(l.written(second).len(), 1);
        assert_eq!(l.durable("a"), 2);
    }

    #[test]
    fn chunks_are_per_agent_per_day_and_sealed_whole() {
        let mut l: Ledger<()> = Ledger::new(10, 1000, [], 7);
        let chunk = |o: Offer<()>| match o {
            Offer::Count { chunk, .. } => chunk,
            other => panic!("{other:?}"),
        };
        // Replays of closed intervals share a chunk; another agent has its own.
        let a1 = chunk(l.offer(id("a", 1), "na", 100, 1000, 1, ()));
        let a2 = chunk(l.offer(id("a", 2), "na", 120, 1000, 1, ()));
        let b1 = chunk(l.offer(id("b", 1), "nb", 120, 1000, 1, ()));
        assert_eq!(a1, a2);
        assert_ne!(a1, b1);
        // A batch in the live interval starts a chunk of its own, sealed once it closes.
        let a3 = chunk(l.offer(id("a", 3), "na", 1000, 1000, 1, ()));
        assert_ne!(a3, a1);
        let a4 = chunk(l.offer(id("a", 4), "na", 1005, 1005, 1, ()));
        assert_eq!(a4, a3, "same interval");
        // The next day is another partition: another chunk.
        let a5 = chunk(l.offer(id("a", 5), "na", DAY, DAY, 1, ()));
        assert_ne!(a5, a3);
        let mut given = Vec::new();
        let j = l
            .seal(1000, |c| {
                given = c.iter().copied().collect();
                given.sort_unstable();
                given.iter().map(|c| (*c, vec![row()])).collect()
            })
            .expect("job");
        assert_eq!(given, vec![a1, b1], "the live chunk waits for its interval");
        let plan = l.next().expect("plan");
        assert_eq!(plan.job.id, j);
        assert_eq!(
            plan.job.chunks.len(),
            1,
            "one day: one chunk of both agents' parts"
        );
        let c = &plan.job.chunks[0];
        let parts: Vec<(&str, Vec<u64>)> = c
            .parts
            .iter()
            .map(|p| (p.agent.as_deref().unwrap_or(""), p.seqs.clone()))
            .collect();
        assert_eq!(parts, vec![("a", vec![1, 2]), ("b", vec![1])]);
        assert_eq!(c.token, chunk_token([("a", &[1, 2][..]), ("b", &[1][..])]));
        assert!(c.parts.iter().all(|p| p.token == c.token && p.day == 0));
        assert_eq!(plan.intents.len(), 2, "an intent per agent");
        // Rows no agent replays are named by the instance and the job.
        let j2 = l.seal(1010, |_| vec![(0, vec![row()])]).expect("job");
        l.written(j);
        let plan = l.next().expect("plan");
        assert_eq!(plan.job.id, j2);
        let c0 = plan
            .job
            .chunks
            .iter()
            .find(|c| c.parts.is_empty())
            .expect("part 0");
        assert_eq!(c0.token, format!("podflow-s1-{:016x}-{j2}-0-0", 7));
    }

    #[test]
    fn a_job_is_cut_into_chunks_at_the_row_bound_between_parts() {
        let mut l: Ledger<()> = Ledger::new(10, 1000, [], 7).with_limits(100, 3);
        for (agent, seq) in [("a", 1), ("b", 1), ("c", 1)] {
            l.offer(id(agent, seq), agent, 100, 1000, 1, ());
        }
        l.seal(1000, |c| c.iter().map(|c| (*c, vec![row(); 2])).collect())
            .expect("job");
        let plan = l.next().expect("plan");
        let sizes: Vec<usize> = plan.job.chunks.iter().map(|c| c.rows.len()).collect();
        assert_eq!(
            sizes,
            vec![2, 2, 2],
            "two rows per part, at most three per chunk"
        );
    }

    #[test]
    fn rows_no_agent_replays_are_cut_per_day_and_at_the_row_bound_in_order() {
        let mut l: Ledger<()> = Ledger::new(10, 1000, [], 7).with_limits(100, 3);
        // Four rows of day 0 and three of day 1, the days mixed; each row numbered.
        let days = [0, 1, 0, 0, 1, 1, 0];
        let rows: Vec<FlowRow> = days
            .iter()
            .enumerate()
            .map(|(i, d)| FlowRow {
                interval_start: d * DAY + 10 * i as i64,
                totals: podflow_model::FlowTotals {
                    bytes_out: i as u64,
                    ..Default::default()
                },
                ..row()
            })
            .collect();
        let j = l.seal(i64::MAX, |_| vec![(0, rows)]).expect("job");
        let plan = l.next().expect("plan");
        let got: Vec<(String, Vec<u64>)> = plan
            .job
            .chunks
            .iter()
            .map(|c| {
                let n = c.rows.iter().map(|r| r.totals.bytes_out).collect();
                (c.token.clone(), n)
            })
            .collect();
        let t = |day: i64, i: usize| format!("podflow-s1-{:016x}-{j}-{day}-{i}", 7);
        assert_eq!(
            got,
            vec![
                (t(0, 0), vec![0, 2, 3]),
                (t(0, 1), vec![6]),
                (t(1, 0), vec![1, 4, 5]),
            ]
        );
        // One day alone: moved whole, cut the same way.
        let one: Vec<FlowRow> = (0..4).map(|_| row()).collect();
        let j = l.seal(i64::MAX, |_| vec![(0, one)]).expect("job");
        let sizes: Vec<usize> = l.job_rows(j).map(|_| 1).collect();
        assert_eq!(sizes.len(), 4, "every row in the job");
    }

    #[test]
    fn the_token_of_a_chunk_does_not_change_between_builds() {
        let t = |a: &'static str, s: &'static [u64]| chunk_token([(a, s)]);
        assert_ne!(t("node-a", &[5, 6]), t("node-a", &[5, 6, 7]));
        assert_ne!(t("node-a", &[5]), t("node-b", &[5]));
        assert_ne!(
            chunk_token([("a", &[1][..]), ("b", &[2][..])]),
            chunk_token([("a", &[1, 2][..])])
        );
        assert_eq!(
            t("node-a", &[5, 6, 7]),
            "podflow-c1-ad922fcf3ed266a99e58f7977cfc8bd6"
        );
    }

    #[test]
    fn a_pending_chunk_is_cut_again_with_its_token_once_all_its_batches_are_back() {
        let mark = AgentMark {
            agent: "a".into(),
            seq: 4,
            node: "na".into(),
            last_seen: 90,
            pending: vec![ChunkId {
                token: "T".into(),
                agent: Some("a".into()),
                seqs: vec![4, 5, 6],
                day: 0,
            }],
        };
        let mut l: Ledger<()> = Ledger::new(10, 1000, [mark.clone()], 7);
        assert_eq!(l.held_chunks(), 1);
        let c5 = l.offer(id("a", 5), "na", 100, 1000, 1, ());
        assert!(seal(&mut l, 1000, 0).is_none(), "held: batch 6 is not back");
        let c6 = l.offer(id("a", 6), "na", 100, 1000, 1, ());
        assert_eq!(c5, c6);
        assert_eq!(l.held_chunks(), 0);
        let c7 = l.offer(id("a", 7), "na", 100, 1000, 1, ());
        assert_ne!(c7, c6, "a batch the chunk did not hold starts another");
        seal(&mut l, 1000, 1).expect("job");
        let plan = l.next().expect("plan");
        let t = plan
            .job
            .chunks
            .iter()
            .find(|c| c.token == "T")
            .expect("the re-cut chunk");
        assert_eq!(t.parts[0].seqs, vec![5, 6]);
        assert_eq!(plan.job.chunks.len(), 2, "batch 7 in a chunk of its own");

        // The agent has moved past a batch of the chunk: sealed without it, and the
        // batch, should it come, is taken for a duplicate.
        let mut l: Ledger<()> = Ledger::new(10, 1000, [mark], 7);
        l.offer(id("a", 5), "na", 100, 1000, 1, ());
        l.offer(id("a", 8), "na", 100, 1000, 1, ());
        assert_eq!(l.held_chunks(), 0);
        seal(&mut l, 1000, 1).expect("job");
        assert_eq!(
            l.offer(id("a", 6), "na", 100, 1000, 1, ()),
            Offer::Duplicate(())
        );
        assert_eq!(l.recut_late(), 1);
    }

    #[test]
    fn a_node_counts_as_observed_from_the_marks_and_stops_when_its_agent_does() {
        let mark = AgentMark {
            agent: "agent-b".into(),
            seq: 9,
            node: "node-b".into(),
            last_seen: 1_000,
            pending: Vec::new(),
        };
        // A server just restarted: the mark alone says node-b runs an agent.
        let mut l: Ledger<()> = Ledger::new(10, 100, [mark], 7);
        assert!(l.observes("node-b", 1_000 + OBSERVED_FOR_S));
        assert!(l.observes("node-b", 10), "any time before its last batch");
        assert!(!l.observes("node-a", 1_000), "no agent there yet");
        // node-b's agent left: its last batch grows old.
        assert!(!l.observes("node-b", 1_001 + OBSERVED_FOR_S));
        // node-a's agent sends; node-b's comes back.
        l.offer(id("agent-a", 1), "node-a", 2_000, 2_000, 1, ());
        assert!(l.observes("node-a", 2_000));
        l.offer(id("agent-b", 10), "node-b", 2_000, 2_000, 1, ());
        assert!(l.observes("node-b", 2_000 + OBSERVED_FOR_S));
        // What the store is given to keep: node and last-seen time per agent.
        seal(&mut l, 2_010, 1).expect("job");
        let plan = l.next().expect("plan");
        let nodes: Vec<(&str, &str, i64)> = plan
            .marks
            .iter()
            .map(|m| (m.agent.as_str(), m.node.as_str(), m.last_seen))
            .collect();
        assert_eq!(
            nodes,
            vec![("agent-a", "node-a", 2_000), ("agent-b", "node-b", 2_000)]
        );
    }

    proptest::proptest! {
        /// Whatever the order of offers, seals, failures and writes: a batch is acked only
        /// after its job was written, each copy once, every counted batch is acked once all
        /// is written, a batch counted and not yet durable is never taken for a duplicate,
        /// a mark never passes a batch that is not durable, and every chunk is sealed whole
        /// with one token.
        #[test]
        fn acks_only_for_what_is_durable(ops in proptest::collection::vec((0u8..5, 1u64..30, 0i64..300), 1..200)) {
            let mut l: Ledger<u64> = Ledger::new(10, 1_000, [], 1);
            let mut counted = std::collections::BTreeSet::new();
            let mut durable = std::collections::BTreeSet::new();
            let mut handles: Vec<u64> = Vec::new(); // handle -> seq
            let mut acked = std::collections::BTreeSet::new(); // handles
            let mut chunk_of: std::collections::BTreeMap<u64, u64> = Default::default();
            let mut tokens: std::collections::BTreeSet<String> = Default::default();
            let mut now = 0i64;
            for (op, seq, t) in ops {
                match op {
                    0 | 1 => {
                        let h = handles.len() as u64;
                        handles.push(seq);
                        match l.offer(id("a", seq), "n", t.min(now + 5), now + 5, 1, h) {
                            Offer::Count { chunk, .. } => { counted.insert(seq); chunk_of.insert(seq, chunk); }
                            Offer::Duplicate(_) => proptest::prop_assert!(!counted.contains(&seq) || durable.contains(&seq)),
                            Offer::InFlight => proptest::prop_assert!(counted.contains(&seq) && !durable.contains(&seq)),
                            Offer::Busy(_) => {}
                        }
                    }
                    2 => { now += 10; seal(&mut l, now, 1); }
                    3 => if let Some(plan) = l.next() {
                        let jid = plan.job.id;
                        let in_job: Vec<u64> = plan.job.batches.iter().map(|b| b.seq).collect();
                        for m in &plan.marks {
                            for s in counted.iter().filter(|s| **s <= m.seq) {
                                proptest::prop_assert!(durable.contains(s) || in_job.contains(s), "mark {} passes batch {}", m.seq, s);
                            }
                        }
                        for c in &plan.job.chunks {
                            proptest::prop_assert!(tokens.insert(c.token.clone()), "token used twice");
                            // Whole: every batch of each part is in this job.
                            for p in &c.parts {
                                let tag = p.seqs.first().and_then(|s| chunk_of.get(s));
                                for (s, ch) in &chunk_of {
                                    if Some(ch) == tag && !durable.contains(s) {
                                        proptest::prop_assert!(p.seqs.contains(s));
                                    }
                                }
                            }
                        }
                        durable.extend(in_job);
                        for (b, h) in l.written(jid) {
                            proptest::prop_assert_eq!(b.seq, handles[h as usize]);
                            proptest::prop_assert!(durable.contains(&b.seq));
                            proptest::prop_assert!(acked.insert(h), "acked twice: {}", h);
                        }
                    },
                    _ => if let Some(plan) = l.next() { let jid = plan.job.id; l.failed(jid); },
                }
            }
            seal(&mut l, i64::MAX, 0);
            while let Some(plan) = l.next() {
                let jid = plan.job.id;
                durable.extend(plan.job.batches.iter().map(|b| b.seq));
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
