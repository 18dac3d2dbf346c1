//! Failpoints for fault tests: named places where a test can make the process die (as a
//! SIGKILL would) or a call fail, at a precise moment no timing could hit.
//!
//! Compiled in only for this crate's unit tests and under the `failpoints` feature;
//! otherwise [`hit`] is an empty inline function. Armed by the environment:
//! `PODFLOW_FAILPOINTS=name[=action][@n],...`, where the action is `abort` (the default:
//! the process dies at once, no destructor runs) or `error` (the call returns an error),
//! and `@n` fires on the n-th time the place is reached (default 1); or by [`arm`] (for
//! this crate's unit tests: armed for the calling thread only, so tests run in parallel).
//!
//! Places (each write step of a job, see docs/reliability.md):
//! - SQLite, inside the job's transaction: `sqlite-after-rows` (flows upserted),
//!   `sqlite-after-rollups`, `sqlite-after-marks` (before COMMIT); and
//!   `sqlite-after-commit` (durable, but the caller is told it failed).
//! - ClickHouse: `clickhouse-after-intents`, `clickhouse-after-chunk` (each chunk
//!   inserted), `clickhouse-after-rows` (every chunk inserted, the marks not yet),
//!   `clickhouse-after-marks` (durable, but the caller is told it failed).
//! - The server's driver: `driver-after-write` (a job durable, its acks not yet sent).

/// What a failpoint asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on.
    Pass,
    /// Fail the call.
    Error,
}

#[cfg(any(test, feature = "failpoints"))]
mod armed {
    use std::collections::HashMap;

    use super::Action;

    pub(super) struct Point {
        error: bool,
        nth: u64,
        seen: u64,
    }

    pub(super) fn parse(spec: &str) -> HashMap<String, Point> {
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (s, nth) = match s.split_once('@') {
                    Some((s, n)) => (s, n.parse().unwrap_or(1)),
                    None => (s, 1),
                };
                let (name, action) = s.split_once('=').unwrap_or((s, "abort"));
                (
                    name.to_string(),
                    Point {
                        error: action == "error",
                        nth,
                        seen: 0,
                    },
                )
            })
            .collect()
    }

    /// Counts a pass through `name` in `points` and says what to do.
    pub(super) fn step(points: &mut HashMap<String, Point>, name: &str) -> Action {
        let Some(pt) = points.get_mut(name) else {
            return Action::Pass;
        };
        pt.seen += 1;
        if pt.seen != pt.nth {
            return Action::Pass;
        }
        if pt.error {
            return Action::Error;
        }
        eprintln!("podflow: failpoint {name} reached: aborting (PODFLOW_FAILPOINTS)");
        std::process::abort();
    }
}

#[cfg(test)]
mod table {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::{Action, armed};

    thread_local! {
        static POINTS: RefCell<HashMap<String, armed::Point>> = RefCell::new(HashMap::new());
    }

    pub(super) fn hit(name: &str) -> Action {
        POINTS.with(|p| armed::step(&mut p.borrow_mut(), name))
    }

    pub(super) fn arm(spec: &str) {
        POINTS.with(|p| *p.borrow_mut() = armed::parse(spec));
    }
}

#[cfg(all(not(test), feature = "failpoints"))]
mod table {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use super::{Action, armed};

    fn points() -> &'static Mutex<HashMap<String, armed::Point>> {
        static P: OnceLock<Mutex<HashMap<String, armed::Point>>> = OnceLock::new();
        P.get_or_init(|| {
            let spec = std::env::var("PODFLOW_FAILPOINTS").unwrap_or_default();
            Mutex::new(armed::parse(&spec))
        })
    }

    pub(super) fn hit(name: &str) -> Action {
        match points().lock() {
            Ok(mut p) => armed::step(&mut p, name),
            Err(_) => Action::Pass,
        }
    }

    pub(super) fn arm(spec: &str) {
        if let Ok(mut p) = points().lock() {
            *p = armed::parse(spec);
        }
    }
}

/// Reports reaching the place `name`: dies there, or asks for an error, when a test
/// armed it (see the module doc); passes otherwise.
#[cfg(any(test, feature = "failpoints"))]
pub fn hit(name: &str) -> Action {
    table::hit(name)
}

/// Without the `failpoints` feature nothing is armed.
#[cfg(not(any(test, feature = "failpoints")))]
#[inline(always)]
pub fn hit(_name: &str) -> Action {
    Action::Pass
}

/// Arms failpoints (replacing those armed before): for the calling thread in this
/// crate's unit tests, for the process under the `failpoints` feature.
#[cfg(any(test, feature = "failpoints"))]
pub fn arm(spec: &str) {
    table::arm(spec)
}

/// `Err` when the failpoint `name` asks for an error (see [`hit`]).
pub(crate) fn check(name: &'static str) -> Result<(), crate::StoreError> {
    match hit(name) {
        Action::Pass => Ok(()),
        Action::Error => Err(crate::StoreError::Injected { place: name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_fires_on_its_nth_pass_only_and_for_its_thread() {
        arm("p=error@2");
        assert_eq!(hit("p"), Action::Pass);
        assert_eq!(hit("p"), Action::Error);
        assert_eq!(hit("p"), Action::Pass);
        assert_eq!(hit("q"), Action::Pass);
        arm("p=error");
        let other = std::thread::spawn(|| hit("p")).join().expect("thread");
        assert_eq!(other, Action::Pass, "armed for this thread only");
        assert_eq!(hit("p"), Action::Error);
        arm("");
    }
}
