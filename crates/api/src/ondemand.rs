//! `POST /api/v1/probe`: one probe now, from the host the server runs on, to a node the
//! server knows (the request names the node; its address comes from the inventory, never
//! from the request). Behind the API's bearer token like every data endpoint, rate
//! limited by one process-wide token bucket (refusals: 429 with `Retry-After`, counted
//! in `podflow_http_requests_rejected_total{reason="probe_rate"}`).
//!
//! Browsers cannot send this request from another origin: it must carry
//! `Content-Type: application/json`, which makes a cross-origin request a CORS
//! "non-simple" one whose preflight the API never answers (no `Access-Control-*`
//! header), so a page elsewhere cannot make the server probe even when no token is set.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::limits::STATS;

/// The largest request body accepted, bytes.
pub const MAX_BODY: usize = 4096;

/// The probe types a request may name (DNS probes go to resolvers, not to nodes: see
/// [`probe`]).
pub const TYPES: [&str; 4] = ["udp", "tcp", "http", "icmp"];

/// What a probe measured, as the answer's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeAnswer {
    /// The node probed.
    pub target: String,
    /// The address probed (the node's own, from the inventory).
    pub address: String,
    /// The probe type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it worked (a burst: every packet answered).
    pub ok: bool,
    /// `ok`, `fail` or `unavailable` (this host cannot run that kind, e.g. ICMP without
    /// NET_RAW).
    pub outcome: String,
    /// Median RTT (a burst) or the connect/request time, seconds; `null` without one.
    pub rtt_seconds: Option<f64>,
    /// Smallest and largest RTT of a burst, seconds.
    pub rtt_min_seconds: Option<f64>,
    /// Largest RTT, seconds.
    pub rtt_max_seconds: Option<f64>,
    /// Packets sent (bursts; 1 for a connect or request).
    pub sent: u32,
    /// Packets lost.
    pub lost: u32,
    /// `lost / sent` (0 when nothing was sent).
    pub loss: f64,
    /// Why it failed, empty when it worked.
    pub error: String,
}

/// Why a probe was not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDemandError {
    /// The node is not one the server knows (404).
    UnknownNode(String),
    /// The server cannot probe yet (503), with why.
    NotReady(String),
}

/// A future the prober returns.
pub type ProbeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ProbeAnswer, OnDemandError>> + Send + 'a>>;

/// Runs one probe of `kind` (one of [`TYPES`]) to the node named `node`.
pub trait OnDemandProber: Send + Sync + std::fmt::Debug {
    /// Resolves `node` among the nodes the server knows and probes it from here.
    fn probe<'a>(&'a self, node: &'a str, kind: &'a str) -> ProbeFuture<'a>;
}

/// A token bucket: `rate` tokens a second up to `burst`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

/// The on-demand prober of a role and its rate limit.
#[derive(Debug)]
pub struct OnDemand {
    prober: Arc<dyn OnDemandProber>,
    bucket: Mutex<Bucket>,
}

impl OnDemand {
    /// `prober` behind a bucket of `rate_per_s` probes a second, `burst` at once (a rate
    /// at or below zero is taken as one probe an hour).
    pub fn new(prober: Arc<dyn OnDemandProber>, rate_per_s: f64, burst: u32) -> OnDemand {
        let rate = if rate_per_s > 0.0 {
            rate_per_s
        } else {
            1.0 / 3600.0
        };
        let burst = f64::from(burst.max(1));
        OnDemand {
            prober,
            bucket: Mutex::new(Bucket {
                rate,
                burst,
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    target: String,
    #[serde(rename = "type", default = "udp")]
    kind: String,
}

fn udp() -> String {
    "udp".into()
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// `POST /api/v1/probe` with `{"target": NODE, "type": "udp|tcp|http|icmp"}`.
pub async fn probe(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(od) = &s.on_demand else {
        return error(
            StatusCode::NOT_FOUND,
            "this process runs no on-demand probes (POST /api/v1/probe is served by `podflow server`)",
        );
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with `Content-Type: application/json`",
        );
    }
    let taken = match od.bucket.lock() {
        Ok(mut b) => b.take(Instant::now()),
        Err(_) => Err(Duration::from_secs(1)),
    };
    if let Err(wait) = taken {
        STATS.probe_rate_limited.fetch_add(1, Relaxed);
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many on-demand probes: try again in {secs} s"),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be {{\"target\": NODE, \"type\": \"udp|tcp|http|icmp\"}}: {e}"
                ),
            );
        }
    };
    if req.target.is_empty() || req.target.len() > 253 {
        return error(
            StatusCode::BAD_REQUEST,
            "`target` must be a node name of 1 to 253 characters",
        );
    }
    if req.kind == "dns" {
        return error(
            StatusCode::BAD_REQUEST,
            "`type` dns: DNS probes go to resolvers (the agents' --probe-dns), not to nodes",
        );
    }
    if !TYPES.contains(&req.kind.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "`type` {:?} is not a probe type (one of {})",
                req.kind,
                TYPES.join(", ")
            ),
        );
    }
    match od.prober.probe(&req.target, &req.kind).await {
        Ok(a) => Json(a).into_response(),
        Err(OnDemandError::UnknownNode(n)) => error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown node `{n}`: on-demand probes go only to nodes the inventory or the peer set names"
            ),
        ),
        Err(OnDemandError::NotReady(why)) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, why);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_gives_its_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate: 1.0,
            burst: 5.0,
            tokens: 5.0,
            at: t0,
        };
        for i in 0..5 {
            assert!(b.take(t0).is_ok(), "burst token {i}");
        }
        let wait = b.take(t0).expect_err("the sixth at once is refused");
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9, "{wait:?}");
        assert!(b.take(t0 + Duration::from_millis(500)).is_err());
        assert!(b.take(t0 + Duration::from_millis(1000)).is_ok());
        // Idle for a minute: back to the burst, not 60.
        let later = t0 + Duration::from_secs(61);
        for _ in 0..5 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }
}
