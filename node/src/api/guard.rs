//! What stands between the network and the handlers: the optional bearer token, the bound on
//! requests in flight, an optional bound on the rate of new generation requests, and the body
//! size limit ([`ApiOptions`]).
//!
//! A generation request runs when a slot is free; otherwise it waits its turn in a bounded
//! first-in-first-out queue. Only a full queue (or the rate bound) answers 429 with
//! `Retry-After`, at once: a flood costs the node one small response per request beyond
//! the queue, and the requests already admitted keep their pace. An admitted request holds
//! its slot until its response body (an SSE stream included) is finished or dropped; a
//! client that disconnects while queued leaves the queue at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::error::ApiError;

/// Fewest characters an API token may have.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Access and load limits of the API. `Default`: no token, 12 requests running (what a
/// stage admits from one head by default), 256 waiting, 1 MiB bodies.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// When set, every `/v1/*` route and `/metrics` need `Authorization: Bearer <token>`.
    /// `/health` stays open for liveness probes.
    pub token: Option<ApiToken>,
    /// Generation requests (completions and chats) running or streaming at once; more wait
    /// in the queue.
    pub max_requests: usize,
    /// Generation requests waiting for a slot; more are refused with 429.
    pub max_queue: usize,
    /// Largest accepted request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// New generation requests accepted per second, averaged (bursts up to one second's
    /// worth); more are refused with 429. `None`: no rate bound.
    pub max_request_rate: Option<f64>,
    /// The model's id in `/v1/models` and responses (default: the model file's stem).
    pub model_id: Option<String>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            token: None,
            max_requests: 12,
            max_queue: 256,
            max_body_bytes: 1 << 20,
            max_request_rate: None,
            model_id: None,
        }
    }
}

/// A bearer token, kept only as its SHA-256 so comparisons take the same time whatever the
/// candidate shares with it.
#[derive(Clone)]
pub struct ApiToken([u8; 32]);

impl ApiToken {
    /// A token from its text (surrounding whitespace trimmed); refuses short ones.
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "an API token needs at least {MIN_TOKEN_CHARS} characters, this one has {}",
                text.chars().count()
            ));
        }
        Ok(Self(Sha256::digest(text.as_bytes()).into()))
    }

    fn matches(&self, candidate: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        // Fold over every byte: no early exit.
        digest
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// Refuses requests without the right bearer token (401, `WWW-Authenticate: Bearer`).
pub(crate) async fn require_token(
    State(token): State<Arc<ApiToken>>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    // A browser opening the dashboard cannot send a bearer token: it is asked for the token
    // as a Basic password, which it then sends with the page's own requests too.
    let page = req.uri().path() == "/";
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| match v.strip_prefix("Bearer ") {
            Some(bearer) => Some(bearer.trim().to_owned()),
            None => basic_password(v),
        });
    match presented {
        Some(candidate) if token.matches(&candidate) => next.run(req).await,
        Some(_) => unauthorized("invalid API key", page),
        None => unauthorized(
            "missing API key: send `Authorization: Bearer <token>`",
            page,
        ),
    }
}

fn unauthorized(message: &str, page: bool) -> Response {
    let mut response = ApiError::Unauthorized(message.to_owned()).into_response();
    let challenge = if page {
        "Basic realm=\"shoal (password: the API token)\""
    } else {
        "Bearer"
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        challenge.parse().expect("valid header"),
    );
    response
}

/// The password of an `Authorization: Basic base64(user:password)` header.
fn basic_password(value: &str) -> Option<String> {
    let encoded = value.strip_prefix("Basic ")?.trim();
    let decoded = String::from_utf8(base64_decode(encoded)?).ok()?;
    let (_, password) = decoded.split_once(':')?;
    Some(password.trim().to_owned())
}

/// Standard base64 with padding, `None` on any other input.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) || bytes.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks_exact(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// The admission bounds of generation requests.
#[derive(Debug)]
pub(crate) struct Admission {
    /// The slots' number.
    pub(crate) max_requests: usize,
    /// Requests running or streaming.
    pub(crate) slots: Arc<Semaphore>,
    /// Requests waiting for a slot, and how many may.
    pub(crate) queue: Queue,
    /// New requests per second, when bounded.
    pub(crate) rate: Option<RequestRate>,
}

impl Admission {
    /// Requests running and waiting now.
    pub(crate) fn view(&self) -> crate::cluster::AdmissionView {
        crate::cluster::AdmissionView {
            running: self
                .max_requests
                .saturating_sub(self.slots.available_permits()),
            max_requests: self.max_requests,
            waiting: self.queue.waiting.load(Ordering::Acquire),
            max_queue: self.queue.limit,
        }
    }
}

/// A token bucket of requests: `per_second` refill, one second's worth of burst.
#[derive(Debug)]
pub(crate) struct RequestRate {
    per_second: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl RequestRate {
    pub(crate) fn new(per_second: f64) -> Self {
        let per_second = per_second.max(f64::MIN_POSITIVE);
        Self {
            per_second,
            bucket: Mutex::new((per_second.max(1.0), Instant::now())),
        }
    }

    /// Takes one request's token, or says how many whole seconds until one is there.
    fn take(&self) -> Result<(), u64> {
        let mut bucket = self.bucket.lock().expect("rate lock");
        let now = Instant::now();
        let burst = self.per_second.max(1.0);
        let tokens =
            (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * self.per_second).min(burst);
        *bucket = (tokens, now);
        if tokens >= 1.0 {
            bucket.0 -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// The requests waiting for a slot (the semaphore's own queue is first in, first out).
#[derive(Debug)]
pub(crate) struct Queue {
    waiting: Arc<AtomicUsize>,
    limit: usize,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Queue {
    pub(crate) fn new(limit: usize, metrics: Arc<crate::metrics::Metrics>) -> Queue {
        Queue {
            waiting: Arc::new(AtomicUsize::new(0)),
            limit,
            metrics,
        }
    }

    /// A place in the queue, or `None` when it is full.
    fn enter(&self) -> Option<Waiting> {
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            });
        taken.ok().map(|n| {
            self.metrics.queue_length((n + 1) as i64);
            Waiting {
                waiting: self.waiting.clone(),
                metrics: self.metrics.clone(),
                since: Instant::now(),
            }
        })
    }
}

/// One request's place in the queue; leaving (admitted or gone) frees it.
struct Waiting {
    waiting: Arc<AtomicUsize>,
    metrics: Arc<crate::metrics::Metrics>,
    since: Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let left = self.waiting.fetch_sub(1, Ordering::AcqRel) - 1;
        self.metrics.queue_length(left as i64);
        self.metrics.queue_wait(self.since.elapsed().as_secs_f64());
    }
}

fn too_many(retry_after_s: u64) -> Response {
    let mut response = ApiError::Overloaded.into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        retry_after_s.to_string().parse().expect("valid header"),
    );
    response
}

/// Admits a generation request under the rate bound when a slot is free, or after its turn
/// in the queue; refuses it when the queue is full. The slot is released when the response
/// body ends.
pub(crate) async fn limit_in_flight(
    State(admission): State<Arc<Admission>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(rate) = &admission.rate {
        if let Err(wait) = rate.take() {
            return too_many(wait);
        }
    }
    let permit = match admission.slots.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            let Some(place) = admission.queue.enter() else {
                return too_many(1);
            };
            // Dropped with this future when the client goes away: the place is freed.
            let Ok(permit) = admission.slots.clone().acquire_owned().await else {
                return ApiError::Internal("the API is shutting down".into()).into_response();
            };
            drop(place);
            permit
        }
    };
    let response = next.run(req).await;
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_admits_a_burst_then_says_when_to_retry() {
        let rate = RequestRate::new(3.0);
        assert!(
            (0..3).all(|_| rate.take().is_ok()),
            "a second's worth at once"
        );
        assert_eq!(rate.take(), Err(1));
        let slow = RequestRate::new(0.2);
        assert!(slow.take().is_ok());
        assert_eq!(slow.take(), Err(5));
    }

    #[test]
    fn a_basic_password_is_read_as_the_token() {
        // base64("shoal:0123456789abcdef") and base64("a:b") (with padding).
        assert_eq!(
            basic_password("Basic c2hvYWw6MDEyMzQ1Njc4OWFiY2RlZg==").as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(basic_password("Basic YTpi").as_deref(), Some("b"));
        assert_eq!(basic_password("Basic YQ=="), None, "no colon");
        assert_eq!(basic_password("Basic ***"), None);
        assert_eq!(base64_decode("YWI="), Some(b"ab".to_vec()));
    }
}
