//! What stands between the network and the handlers: the optional bearer token, the bound on
//! requests in flight, and the body size limit ([`ApiOptions`]).
//!
//! A request over the in-flight bound is answered 429 at once, never queued: a flood costs
//! the node one small response per request, and the requests already admitted keep their
//! pace. An admitted request holds its slot until its response body (an SSE stream
//! included) is finished or dropped.

use std::sync::Arc;

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

/// Access and load limits of the API. `Default`: no token, 64 requests in flight, 1 MiB
/// bodies.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// When set, every `/v1/*` route and `/metrics` need `Authorization: Bearer <token>`.
    /// `/health` stays open for liveness probes.
    pub token: Option<ApiToken>,
    /// Generation requests (completions and chats) running or streaming at once; more are
    /// refused with 429.
    pub max_requests: usize,
    /// Largest accepted request body, in bytes (413 above).
    pub max_body_bytes: usize,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            token: None,
            max_requests: 64,
            max_body_bytes: 1 << 20,
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
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(candidate) if token.matches(candidate.trim()) => next.run(req).await,
        Some(_) => unauthorized("invalid API key"),
        None => unauthorized("missing API key: send `Authorization: Bearer <token>`"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::Unauthorized(message.to_owned()).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("valid header"),
    );
    response
}

/// Admits a generation request only while a slot is free; the slot is released when the
/// response body ends.
pub(crate) async fn limit_in_flight(
    State(slots): State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        let mut response = ApiError::Overloaded.into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, "1".parse().expect("valid header"));
        return response;
    };
    let response = next.run(req).await;
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}
