//! `POST /v1/completions`: text in, text out.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, OpenAiJson};
use super::generation;
use super::openai::{Completion, CompletionChoice, CompletionRequest, FinishReason, Prompt, Usage};
use super::request::{prepare, response_id, unix_now};
use super::sse::{self, Chunks};
use super::AppState;

const OBJECT: &str = "text_completion";

pub(crate) async fn handle(
    State(app): State<AppState>,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let text = match req.prompt {
        Prompt::One(text) => text,
        Prompt::Many(mut v) if v.len() == 1 => v.swap_remove(0),
        Prompt::Many(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "only one prompt per request is supported",
            ))
        }
    };
    let model = app.backend.model();
    let max_tokens = req.params.max_tokens;
    let prepared = prepare(model, &text, max_tokens, req.params, arrived)?;
    let head = app.backend.head().map_err(ApiError::Unavailable)?;
    let events = generation::start(head, app.backend.clone(), app.metrics.clone(), prepared.job);
    let stream = Stream {
        id: response_id("cmpl"),
        created: unix_now(),
        model: model.name.clone(),
    };
    if prepared.stream {
        return Ok(sse::response(stream, prepared.include_usage, events));
    }
    let (text, reason, usage) = generation::collect(events).await?;
    let body = stream.chunk(&text, Some(reason), Some(usage));
    Ok(Json(body).into_response())
}

/// The fixed fields of one response's chunks.
struct Stream {
    id: String,
    created: u64,
    model: String,
}

impl Stream {
    fn chunk<'a>(
        &'a self,
        text: &'a str,
        finish_reason: Option<FinishReason>,
        usage: Option<Usage>,
    ) -> Completion<'a> {
        Completion {
            id: &self.id,
            object: OBJECT,
            created: self.created,
            model: &self.model,
            choices: Some(CompletionChoice {
                index: 0,
                text,
                logprobs: None,
                finish_reason,
            }),
            usage,
        }
    }
}

impl Chunks for Stream {
    fn opening(&self, _buf: &mut Vec<u8>) {}

    fn text(&self, buf: &mut Vec<u8>, text: &str) {
        sse::frame(buf, &self.chunk(text, None, None));
    }

    fn finish(&self, buf: &mut Vec<u8>, reason: FinishReason) {
        sse::frame(buf, &self.chunk("", Some(reason), None));
    }

    fn usage(&self, buf: &mut Vec<u8>, usage: Usage) {
        let mut chunk = self.chunk("", None, Some(usage));
        chunk.choices = None;
        sse::frame(buf, &chunk);
    }
}
