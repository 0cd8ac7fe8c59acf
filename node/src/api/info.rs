//! The read-only endpoints: models, cluster, health, metrics.

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::openai::{ModelCard, ModelList};
use super::AppState;

/// The live dashboard: one static page polling `/v1/cluster`, shipped inside the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// `GET /`: the dashboard.
pub(crate) async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// `GET /v1/models`: the one model served.
pub(crate) async fn models(State(app): State<AppState>) -> Response {
    let list = ModelList {
        object: "list",
        data: [ModelCard {
            id: app.model_id(),
            object: "model",
            created: app.started,
            owned_by: "shoal",
        }],
    };
    Json(list).into_response()
}

/// `GET /v1/cluster`.
pub(crate) async fn cluster(State(app): State<AppState>) -> Response {
    let mut view = app.backend.view();
    view.admission = Some(app.admission.view());
    Json(view).into_response()
}

/// `GET /health`: 200 when the cluster is ready, else 503 saying what state it is in and
/// why, so a load balancer and a human read the same answer.
pub(crate) async fn health(State(app): State<AppState>) -> Response {
    let view = app.backend.view();
    if view.state.is_healthy() {
        return Json(json!({ "status": "ok" })).into_response();
    }
    let body = json!({ "status": view.state, "problem": view.problem });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `GET /metrics`: OpenMetrics text.
pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], app.metrics.encode()).into_response()
}

/// Any other path.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}
