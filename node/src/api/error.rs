//! Errors of the API in OpenAI's shape, so OpenAI client libraries raise their usual
//! exception types (`BadRequestError`, `APIStatusError`...) with our message.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::pipeline::PipelineError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The request is malformed or asks for something impossible (400).
    #[error("{message}")]
    BadRequest {
        /// What is wrong, for the client.
        message: String,
        /// The request field at fault, when one is.
        param: Option<&'static str>,
        /// OpenAI's machine-readable code, when it has one for this case.
        code: Option<&'static str>,
    },
    /// No such route (404).
    #[error("no route {0}")]
    NotFound(String),
    /// The cluster cannot run requests now (503).
    #[error("{0}")]
    Unavailable(String),
    /// The pipeline failed while running the request.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A fault of this node (500).
    #[error("{0}")]
    Internal(String),
    /// No or a wrong bearer token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Too many requests in flight on this node (429).
    #[error("this node is at its limit of requests in flight; retry shortly")]
    Overloaded,
    /// The request body is over the size limit (413).
    #[error("{0}")]
    TooLarge(String),
}

impl ApiError {
    /// A 400 about `param`.
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }

    /// The HTTP status: a pipeline that refused is a bad gateway, one that is gone or silent
    /// is unavailable.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Pipeline(e) if e.is_busy() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Pipeline(PipelineError::Stage(_)) => StatusCode::BAD_GATEWAY,
            ApiError::Pipeline(PipelineError::Head(_)) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Pipeline(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `{"error": {...}}` object OpenAI sends, as JSON text (also the payload of an SSE
    /// error event).
    pub(crate) fn body(&self) -> String {
        let (kind, param, code) = match self {
            ApiError::BadRequest { param, code, .. } => ("invalid_request_error", *param, *code),
            ApiError::NotFound(_) | ApiError::TooLarge(_) => ("invalid_request_error", None, None),
            ApiError::Unauthorized(_) => ("invalid_request_error", None, Some("invalid_api_key")),
            ApiError::Overloaded => ("requests", None, Some("rate_limit_exceeded")),
            _ => ("server_error", None, None),
        };
        let body = ErrorBody {
            error: ErrorObject {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| r#"{"error":{}}"#.to_owned())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let headers = [(axum::http::header::CONTENT_TYPE, "application/json")];
        (self.status(), headers, self.body()).into_response()
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Serialize)]
struct ErrorObject {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

/// A JSON request body whose rejections (bad JSON, wrong types, missing fields, wrong
/// content type) are OpenAI 400 errors instead of axum's plain-text ones.
pub(crate) struct OpenAiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(OpenAiJson(value)),
            Err(rejection) => Err(rejected(rejection)),
        }
    }
}

fn rejected(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge(format!("request body too large: {}", rejection.body_text()));
    }
    ApiError::BadRequest {
        message: format!("invalid request body: {}", rejection.body_text()),
        param: None,
        code: None,
    }
}
