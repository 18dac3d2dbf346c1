//! The store side of the fault matrix (docs/reliability.md): the real ledger and
//! aggregator (`podflow-pipeline`) in front of the real store, with a store error
//! injected at each step of a job's write (`failpoint`) and the server's memory lost
//! (a restart: ledger and aggregator dropped, the store reopened) at any point. Each
//! agent batch carries a distinct power of two of bytes, so the stored total says
//! exactly which batches were counted and how often.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use podflow_model::{ChunkId, Counters, FlowLabels, FlowRow, Oriented, Protocol};
use podflow_pipeline::Aggregator;
use podflow_pipeline::ledger::{BatchId, Ledger, Offer};

use crate::query::{GroupQuery, View};
use crate::{ChunkWrite, FlowQuery, FlowStore, JobWrite, SqliteStore, failpoint};

/// The SQLite write steps a store error can be injected at.
const SQLITE_STEPS: [&str; 4] = [
    "sqlite-after-rows",
    "sqlite-after-rollups",
    "sqlite-after-marks",
    "sqlite-after-commit",
];

/// What a server holds in memory (a SIGKILL loses it).
struct Server {
    ledger: Ledger<(usize, u64)>,
    agg: Aggregator,
}

impl Server {
    fn start(store: &dyn FlowStore) -> Server {
        let marks = store.agents().expect("marks");
        Server {
            ledger: Ledger::new(10, 1_000_000, marks, 7),
            agg: Aggregator::new(10, 10_000),
        }
    }
}

/// An agent: keeps every batch it sent until the server acks it.
struct Agent {
    name: &'static str,
    node: &'static str,
    /// Bytes of batch s: 1 << (s + shift).
    shift: u32,
    sent: u64,
    unacked: BTreeSet<u64>,
}

impl Agent {
    fn new(name: &'static str, node: &'static str, shift: u32) -> Agent {
        Agent {
            name,
            node,
            shift,
            sent: 0,
            unacked: BTreeSet::new(),
        }
    }

    fn bytes(&self, seq: u64) -> u64 {
        1 << (seq as u32 + self.shift)
    }

    /// Every batch sent, in bytes.
    fn all(&self) -> u64 {
        (1..=self.sent).map(|s| self.bytes(s)).sum()
    }
}

/// Batch `seq` of agent `a` (index `i`) offered at its own time (1000 + seq); a
/// duplicate is acked at once.
fn offer(srv: &mut Server, agents: &mut [Agent], i: usize, seq: u64, now: i64) {
    let a = &agents[i];
    let at = 1_000 + seq as i64;
    let id = BatchId {
        agent: Arc::from(a.name),
        seq,
    };
    match srv.ledger.offer(id, a.node, at, now, 1, (i, seq)) {
        Offer::Count { at, chunk } => {
            let o = Oriented {
                local: IpAddr::V4(Ipv4Addr::new(10, 0, i as u8, 1)),
                remote: IpAddr::V4(Ipv4Addr::new(10, 1, 0, (seq % 3) as u8)),
                responder_port: 80,
                local_initiated: true,
                service: None,
                out: Counters {
                    bytes: a.bytes(seq),
                    packets: 1,
                },
                inbound: Counters::default(),
            };
            let observer: Arc<str> = Arc::from(a.node);
            assert!(srv.agg.record_counted_in(
                chunk,
                &observer,
                Protocol::TCP,
                &o,
                at,
                FlowLabels::default,
                0.0,
                (1, 0),
            ));
        }
        Offer::Duplicate((i, s)) => {
            agents[i].unacked.remove(&s);
        }
        Offer::InFlight | Offer::Busy(_) => {}
    }
}

/// The agent sends its next batch.
fn send(srv: &mut Server, agents: &mut [Agent], i: usize, now: i64) {
    agents[i].sent += 1;
    let seq = agents[i].sent;
    agents[i].unacked.insert(seq);
    offer(srv, agents, i, seq, now);
}

/// The agent sends every batch not acked yet, in order (a reconnect).
fn replay(srv: &mut Server, agents: &mut [Agent], i: usize, now: i64) {
    for seq in agents[i].unacked.clone() {
        offer(srv, agents, i, seq, now);
    }
}

fn seal(srv: &mut Server, upto: i64) {
    let agg = &mut srv.agg;
    srv.ledger.seal(upto, |chunks| agg.take(upto, chunks));
}

/// Bytes stored, from the rows and from the rollups (both must agree).
fn stored(store: &dyn FlowStore) -> u64 {
    let flows: u64 = store
        .flows(&FlowQuery {
            from: 0,
            to: 100_000,
            limit: 100_000,
        })
        .expect("flows")
        .iter()
        .map(|f| f.totals.bytes_out)
        .sum();
    let grouped: u64 = store
        .group(&GroupQuery {
            from: 0,
            to: 100_000,
            group_by: Vec::new(),
            filters: Vec::new(),
            limit: 10,
            view: View::Raw,
        })
        .expect("group")
        .iter()
        .map(|g| g.bytes_src_to_dst)
        .sum();
    assert_eq!(flows, grouped, "rows and rollups agree");
    flows
}

/// Writes the jobs in order, as the driver does, stopping at the first failure; acks go
/// to the agents, each checked to be stored already.
fn write(srv: &mut Server, store: &mut dyn FlowStore, agents: &mut [Agent]) -> bool {
    while let Some(plan) = srv.ledger.next() {
        let id = plan.job.id;
        let ids: Vec<ChunkId> = plan
            .job
            .chunks
            .iter()
            .map(|c| ChunkId {
                token: c.token.clone(),
                agent: None,
                seqs: Vec::new(),
                day: c.day,
            })
            .collect();
        let rows: Vec<Arc<[FlowRow]>> = plan
            .job
            .chunks
            .iter()
            .map(|c| Arc::clone(&c.rows))
            .collect();
        let chunks: Vec<ChunkWrite<'_>> = ids
            .iter()
            .zip(&rows)
            .map(|(id, rows)| ChunkWrite { id, rows })
            .collect();
        let res = store.write_job(&JobWrite {
            intents: &plan.intents,
            chunks: &chunks,
            marks: &plan.marks,
        });
        if res.is_err() {
            srv.ledger.failed(id);
            return false;
        }
        let have = stored(store);
        for (_, (i, seq)) in srv.ledger.written(id) {
            let b = agents[i].bytes(seq);
            assert_eq!(
                have & b,
                b,
                "{}'s batch {seq} acked but not stored",
                agents[i].name
            );
            agents[i].unacked.remove(&seq);
        }
    }
    true
}

fn open(p: &Path) -> SqliteStore {
    SqliteStore::open(p).expect("open")
}

#[test]
fn every_write_step_failing_acks_nothing_undurable_and_a_retry_counts_once() {
    for step in SQLITE_STEPS {
        for restart in [false, true] {
            let dir = tempfile::tempdir().expect("tmp");
            let p = dir.path().join("f.sqlite");
            let mut store = open(&p);
            let mut srv = Server::start(&store);
            let mut agents = [Agent::new("a", "node-a", 0), Agent::new("b", "node-b", 20)];
            for s in 0..6 {
                send(&mut srv, &mut agents, s % 2, 1_000);
            }
            seal(&mut srv, 1_010);
            failpoint::arm(&format!("{step}=error"));
            assert!(
                !write(&mut srv, &mut store, &mut agents),
                "{step}: the write fails"
            );
            failpoint::arm("");
            let all: u64 = agents.iter().map(Agent::all).sum();
            let durable = step == "sqlite-after-commit";
            assert_eq!(stored(&store), if durable { all } else { 0 }, "{step}");
            assert!(
                agents.iter().all(|a| a.unacked.len() == 3),
                "{step}: nothing acked after a failed write"
            );
            if restart {
                drop(srv);
                drop(store);
                store = open(&p);
                srv = Server::start(&store);
                for i in 0..2 {
                    replay(&mut srv, &mut agents, i, 1_020);
                }
                seal(&mut srv, 1_030);
            }
            assert!(
                write(&mut srv, &mut store, &mut agents),
                "{step}: the retry"
            );
            assert_eq!(
                stored(&store),
                all,
                "{step}, restart {restart}: each batch once"
            );
            assert!(
                agents.iter().all(|a| a.unacked.is_empty()),
                "{step}: all acked"
            );
            let mut marks: Vec<(String, u64)> = store
                .agents()
                .expect("marks")
                .into_iter()
                .map(|m| (m.agent, m.seq))
                .collect();
            marks.sort();
            assert_eq!(marks, vec![("a".into(), 3), ("b".into(), 3)], "{step}");
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("PODFLOW_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    ))]

    /// Random batches, replays, seals, writes failing at a random step, and server
    /// restarts: every ack follows its rows into the store (checked at each ack), and
    /// once everything is written every batch is stored exactly once.
    #[test]
    fn acked_batches_are_stored_exactly_once(
        ops in proptest::collection::vec((0u8..7, 0u8..5), 1..80)
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f.sqlite");
        let mut store = open(&p);
        let mut srv = Server::start(&store);
        let mut agents = [Agent::new("a", "node-a", 0), Agent::new("b", "node-b", 18)];
        let mut now = 1_000i64;
        for (op, arg) in ops {
            let i = usize::from(arg % 2);
            match op {
                0 | 1 if agents[i].sent < 16 => send(&mut srv, &mut agents, i, now),
                2 => {
                    now += 10;
                    seal(&mut srv, now);
                }
                3 | 4 => {
                    let step = SQLITE_STEPS.get(usize::from(arg)).copied().unwrap_or("");
                    failpoint::arm(&format!("{step}=error"));
                    write(&mut srv, &mut store, &mut agents);
                    failpoint::arm("");
                }
                5 => {
                    drop(srv);
                    drop(store);
                    store = open(&p);
                    srv = Server::start(&store);
                    for i in 0..2 {
                        replay(&mut srv, &mut agents, i, now);
                    }
                }
                _ => replay(&mut srv, &mut agents, i, now),
            }
        }
        for i in 0..2 {
            replay(&mut srv, &mut agents, i, now);
        }
        seal(&mut srv, i64::MAX);
        proptest::prop_assert!(write(&mut srv, &mut store, &mut agents));
        let all: u64 = agents.iter().map(Agent::all).sum();
        proptest::prop_assert_eq!(stored(&store), all);
        proptest::prop_assert!(agents.iter().all(|a| a.unacked.is_empty()));
    }
}
