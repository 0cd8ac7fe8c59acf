//! `POST /v1/completions`: text in, text out.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, OpenAiJson};
use super::generation;
use super::openai::{Completion, CompletionChoice, CompletionRequest, FinishReason, Prompt, Usage};
use super::openai::{CompletionLogprobs, TokenLogprob};
use super::request::{completion_logprobs, prepare, response_id, unix_now};
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
    let logprobs = completion_logprobs(&req.params)?;
    let prepared = prepare(model, &text, max_tokens, req.params, logprobs, arrived)?;
    let head = app.backend.head().map_err(ApiError::Unavailable)?;
    let events = generation::start(head, app.backend.clone(), app.metrics.clone(), prepared.job);
    let stream = Stream {
        id: response_id("cmpl"),
        created: unix_now(),
        model: app.model_id().to_owned(),
        logprobs: logprobs.is_some(),
        offset: std::sync::atomic::AtomicUsize::new(0),
    };
    if prepared.stream {
        return Ok(sse::response(stream, prepared.include_usage, events));
    }
    let answer = generation::collect(events).await?;
    let mut body = stream.chunk(&answer.text, Some(answer.finish), Some(answer.usage));
    body.choices = body.choices.map(|c| CompletionChoice {
        logprobs: stream.logprobs(&answer.logprobs),
        ..c
    });
    Ok(Json(body).into_response())
}

/// The fixed fields of one response's chunks.
struct Stream {
    id: String,
    created: u64,
    model: String,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
    /// Bytes of token text streamed so far: the next chunk's `text_offset` starts here.
    offset: std::sync::atomic::AtomicUsize,
}

impl Stream {
    fn logprobs<'a>(&self, tokens: &'a [TokenLogprob]) -> Option<CompletionLogprobs<'a>> {
        let len: usize = tokens.iter().map(|t| t.token.len()).sum();
        let offset = self
            .offset
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        self.logprobs
            .then_some(CompletionLogprobs { tokens, offset })
    }

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

    fn text(&self, buf: &mut Vec<u8>, text: &str, logprobs: &[TokenLogprob]) {
        let mut chunk = self.chunk(text, None, None);
        if let Some(choice) = chunk.choices.as_mut() {
            choice.logprobs = self.logprobs(logprobs);
        }
        sse::frame(buf, &chunk);
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
