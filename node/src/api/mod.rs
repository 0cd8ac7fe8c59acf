//! The node's OpenAI-compatible HTTP API, its health and cluster views, and `/metrics`.
//!
//! Handlers read everything through the [`Backend`] trait, so the API neither knows nor
//! cares how the node found its stages. Every answer, errors included, is JSON in OpenAI's
//! shape (`/metrics` is Prometheus text), so OpenAI clients work unchanged.

mod chat;
mod completions;
mod error;
mod generation;
mod guard;
mod info;
mod openai;
mod request;
mod sse;
mod stop;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::metrics::Metrics;

pub use guard::{ApiOptions, ApiToken, MIN_TOKEN_CHARS};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    /// `created` of the model card: when this server started.
    started: u64,
    /// The model's id in `/v1/models` and responses, when it is not the model's own name.
    model_id: Option<Arc<str>>,
    /// The generation requests' slots and queue, shown in `/v1/cluster`.
    admission: Arc<guard::Admission>,
}

impl AppState {
    /// The id clients see: `--model-id`, else the model's name (its file's stem).
    fn model_id(&self) -> &str {
        self.model_id
            .as_deref()
            .unwrap_or(&self.backend.model().name)
    }
}

/// The routes of the API with default [`ApiOptions`] (no token).
pub fn router(backend: Arc<dyn Backend>, metrics: Arc<Metrics>) -> Router {
    router_with(backend, metrics, &ApiOptions::default())
}

/// The routes of the API, guarded as `options` say.
pub fn router_with(
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    options: &ApiOptions,
) -> Router {
    let admission = Arc::new(guard::Admission {
        max_requests: options.max_requests,
        slots: Arc::new(tokio::sync::Semaphore::new(options.max_requests)),
        queue: guard::Queue::new(options.max_queue, metrics.clone()),
        rate: options.max_request_rate.map(guard::RequestRate::new),
    });
    let state = AppState {
        backend,
        metrics,
        started: request::unix_now(),
        model_id: options.model_id.as_deref().map(Arc::from),
        admission: admission.clone(),
    };
    let generation = Router::new()
        .route("/v1/completions", post(completions::handle))
        .route("/v1/chat/completions", post(chat::handle))
        .layer(axum::middleware::from_fn_with_state(
            admission,
            guard::limit_in_flight,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(options.max_body_bytes));
    let mut router = Router::new()
        .merge(generation)
        .route("/", get(info::dashboard))
        .route("/v1/models", get(info::models))
        .route("/v1/cluster", get(info::cluster))
        .route("/health", get(info::health))
        .route("/metrics", get(info::metrics))
        .fallback(info::not_found);
    if let Some(token) = &options.token {
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(token.clone()),
            guard::require_token,
        ));
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets requests in
/// flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, backend, metrics, &ApiOptions::default(), shutdown).await
}

/// [`serve`] with a token and limits.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    options: &ApiOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router_with(backend, metrics, options))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Counts each answer by route and status. Paths outside the routes count as one label, so
/// clients cannot grow the number of series.
async fn count_requests(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = match req.uri().path() {
        "/v1/completions" => "/v1/completions",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/models" => "/v1/models",
        "/v1/cluster" => "/v1/cluster",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/" => "/",
        _ => "other",
    };
    let response = next.run(req).await;
    app.metrics.request(endpoint, response.status().as_u16());
    response
}
