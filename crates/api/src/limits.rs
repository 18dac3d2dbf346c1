//! What bounds a request: a time limit that really stops the query, lanes that keep
//! expensive queries from taking every core, a limit on queries admitted at once (503
//! with `Retry-After` beyond it), and a request id that ties a generic error answer to
//! the log line that has the details.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use podflow_store::Interrupter;
use tokio::sync::Semaphore;

/// How the API bounds the queries it runs on the store.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Time limit of one request's store work (waiting for a lane included); the query
    /// is interrupted when it passes.
    pub timeout: Duration,
    /// Requests running or waiting for the store at once; beyond, 503 + `Retry-After`.
    pub max_concurrent: usize,
    /// Grouped queries (`/api/v1/query`, `/api/graph/data`, `/transactions`,
    /// `/api/v1/pairs`, `/api/v1/probes`) running at once: fewer than the cores, so the
    /// writer and the cheap lane always have one.
    pub expensive_lane: usize,
    /// Row listings (`/api/v1/flows`, `/flows`) running at once.
    pub cheap_lane: usize,
    /// While the embedded store's write-ahead log is larger than this, new queries are
    /// refused (503): readers that always overlap keep checkpoints from ever resetting
    /// the log, which then grows until the disk is full.
    pub max_wal_bytes: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        QueryLimits {
            timeout: Duration::from_secs(30),
            max_concurrent: 64,
            expensive_lane: cores.saturating_sub(1).max(1),
            cheap_lane: 4,
            max_wal_bytes: 512 << 20,
        }
    }
}

/// Which lane a query runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Bounded row listings.
    Cheap,
    /// Grouped scans over a range.
    Expensive,
}

/// Counters of the HTTP API, process-wide (rendered with the role's metrics).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Requests refused for a missing or wrong bearer token.
    pub unauthorized: AtomicU64,
    /// Requests refused because too many queries were admitted, or no lane freed up
    /// before the time limit.
    pub busy: AtomicU64,
    /// Queries interrupted at the time limit.
    pub timed_out: AtomicU64,
    /// Store errors answered with a generic message.
    pub store_errors: AtomicU64,
    /// Size of the embedded store's write-ahead log before the last query, bytes.
    pub wal_bytes: AtomicU64,
    /// Queries refused because the write-ahead log was over its limit.
    pub wal_paused: AtomicU64,
    /// On-demand probes refused by the rate limit (429).
    pub probe_rate_limited: AtomicU64,
}

/// The API's counters.
pub static STATS: HttpStats = HttpStats {
    unauthorized: AtomicU64::new(0),
    busy: AtomicU64::new(0),
    timed_out: AtomicU64::new(0),
    store_errors: AtomicU64::new(0),
    wal_bytes: AtomicU64::new(0),
    wal_paused: AtomicU64::new(0),
    probe_rate_limited: AtomicU64::new(0),
};

/// The semaphores every request of one router shares.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: QueryLimits,
    admitted: Arc<Semaphore>,
    expensive: Arc<Semaphore>,
    cheap: Arc<Semaphore>,
    next_id: AtomicU64,
    /// Distinguishes request ids across restarts.
    epoch: u32,
}

impl Admission {
    pub(crate) fn new(limits: QueryLimits) -> Admission {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        Admission {
            admitted: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            expensive: Arc::new(Semaphore::new(limits.expensive_lane.max(1))),
            cheap: Arc::new(Semaphore::new(limits.cheap_lane.max(1))),
            limits,
            next_id: AtomicU64::new(1),
            epoch,
        }
    }
}

/// What a handler knows about its request: its id, its deadline, the shared limits.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    id: String,
    deadline: Instant,
    adm: Arc<Admission>,
}

tokio::task_local! {
    static CTX: Ctx;
}

/// The context of a request served outside [`context`] (a handler called directly).
fn fallback() -> Ctx {
    static ADM: OnceLock<Arc<Admission>> = OnceLock::new();
    let adm = Arc::clone(ADM.get_or_init(|| Arc::new(Admission::new(QueryLimits::default()))));
    Ctx {
        id: "-".into(),
        deadline: Instant::now() + adm.limits.timeout,
        adm,
    }
}

fn current() -> Ctx {
    CTX.try_with(Ctx::clone).unwrap_or_else(|_| fallback())
}

/// Middleware: gives the request an id (`X-Request-Id` on the answer) and a deadline.
pub(crate) async fn context(
    State(adm): State<Arc<Admission>>,
    req: Request,
    next: Next,
) -> Response {
    let id = format!("{:08x}-{:x}", adm.epoch, adm.next_id.fetch_add(1, Relaxed));
    let ctx = Ctx {
        deadline: Instant::now() + adm.limits.timeout,
        id: id.clone(),
        adm,
    };
    let mut resp = CTX.scope(ctx, next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn error(status: StatusCode, msg: &str, id: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": msg, "request_id": id })),
    )
        .into_response()
}

/// 503 with `Retry-After`: the store is busy (counted).
fn busy(ctx: &Ctx) -> Response {
    STATS.busy.fetch_add(1, Relaxed);
    busy_answer(ctx)
}

fn busy_answer(ctx: &Ctx) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many queries at once; retry later",
        &ctx.id,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn timed_out(ctx: &Ctx) -> Response {
    STATS.timed_out.fetch_add(1, Relaxed);
    let mut r = error(
        StatusCode::GATEWAY_TIMEOUT,
        &format!(
            "the query ran past the time limit ({} s) and was stopped; narrow the range or the grouping",
            ctx.adm.limits.timeout.as_secs_f64()
        ),
        &ctx.id,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

/// A store failure: the details (file paths, URLs) go to the log under the request id,
/// the client gets a generic message with that id.
pub(crate) fn store_failed(detail: &dyn std::fmt::Display) -> Response {
    let ctx = current();
    STATS.store_errors.fetch_add(1, Relaxed);
    tracing::warn!(request_id = %ctx.id, error = %detail, "store query failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the store could not answer; the server log has the details under this request id",
        &ctx.id,
    )
}

/// 503 while the write-ahead log is over its limit (`wal`: its size, `None` when the
/// store has none), so the queries running end and a checkpoint can reset it.
pub(crate) fn refuse_for_wal(wal: Option<u64>) -> Option<Response> {
    let ctx = current();
    let w = wal?;
    STATS.wal_bytes.store(w, Relaxed);
    if w <= ctx.adm.limits.max_wal_bytes {
        return None;
    }
    STATS.wal_paused.fetch_add(1, Relaxed);
    tracing::warn!(request_id = %ctx.id, wal_bytes = w, limit = ctx.adm.limits.max_wal_bytes,
        "store write-ahead log over its limit: refusing queries until a checkpoint resets it");
    Some(busy_answer(&ctx))
}

/// Why a bounded job did not answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// This process does not serve it (404 with this message).
    NotServed(&'static str),
    /// The store failed (logged, answered generically).
    Store(String),
    /// The job saw the cancellation before it started.
    Cancelled,
}

/// Lets the async side stop a job running on a blocking thread: the job arms it with
/// its connection's [`Interrupter`] before it queries.
#[derive(Debug, Default)]
pub(crate) struct Cancel(Mutex<(bool, Option<Interrupter>)>);

impl Cancel {
    /// Registers what stops the job; `false` when it was cancelled already.
    pub(crate) fn arm(&self, stop: Option<Interrupter>) -> bool {
        let Ok(mut g) = self.0.lock() else {
            return false;
        };
        if g.0 {
            return false;
        }
        g.1 = stop;
        true
    }

    /// The job is done: nothing to interrupt.
    pub(crate) fn disarm(&self) {
        if let Ok(mut g) = self.0.lock() {
            g.1 = None;
        }
    }

    fn cancel(&self) {
        if let Ok(mut g) = self.0.lock() {
            g.0 = true;
            if let Some(stop) = g.1.take() {
                stop.interrupt();
            }
        }
    }
}

/// Cancels the job when the request's future is dropped (the client went away): a
/// dropped future alone would leave SQLite running.
struct CancelOnDrop(Option<Arc<Cancel>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

/// Runs `job` on a blocking thread within the request's limits: admitted (else 503), in
/// its lane (waiting at most until the deadline, else 503), and interrupted at the
/// deadline (504). `job` gets the deadline and the [`Cancel`] to arm.
pub(crate) async fn bounded<T: Send + 'static>(
    lane: Lane,
    job: impl FnOnce(Instant, &Cancel) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Response> {
    let ctx = current();
    let Ok(admitted) = Arc::clone(&ctx.adm.admitted).try_acquire_owned() else {
        return Err(busy(&ctx));
    };
    let sem = match lane {
        Lane::Cheap => &ctx.adm.cheap,
        Lane::Expensive => &ctx.adm.expensive,
    };
    let permit =
        match tokio::time::timeout_at(ctx.deadline.into(), Arc::clone(sem).acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Err(busy(&ctx)),
        };
    let cancel = Arc::new(Cancel::default());
    let mut on_drop = CancelOnDrop(Some(Arc::clone(&cancel)));
    let deadline = ctx.deadline;
    let c = Arc::clone(&cancel);
    let mut task = tokio::task::spawn_blocking(move || {
        // Held until the query really ends, even when the request is gone.
        let _held = (admitted, permit);
        job(deadline, &c)
    });
    let done = tokio::select! {
        r = &mut task => r,
        () = tokio::time::sleep_until(deadline.into()) => {
            cancel.cancel();
            // An interrupted SQLite query returns at once; give it a moment so the
            // connection is back in the pool before the answer leaves.
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            on_drop.0 = None;
            return Err(timed_out(&ctx));
        }
    };
    on_drop.0 = None;
    match done {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(Failure::NotServed(msg))) => Err(error(StatusCode::NOT_FOUND, msg, &ctx.id)),
        Ok(Err(Failure::Cancelled)) => Err(timed_out(&ctx)),
        Ok(Err(Failure::Store(e))) => Err(store_failed(&e)),
        Err(e) => Err(store_failed(&e)),
    }
}
