//! `POST /v1/chat/completions`: messages rendered with the model's chat template.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sharding::chat::Message;

use super::error::{ApiError, OpenAiJson};
use super::generation;
use super::openai::{ChatChoice, ChatCompletion, ChatMessage, ChatRequest, Content, Delta};
use super::openai::{ChatLogprobs, FinishReason, TokenLogprob, Usage};
use super::request::{chat_logprobs, prepare, response_id, unix_now};
use super::sse::{self, Chunks};
use super::AppState;

pub(crate) async fn handle(
    State(app): State<AppState>,
    OpenAiJson(req): OpenAiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let model = app.backend.model();
    let Some(template) = &model.template else {
        return Err(ApiError::invalid(
            "messages",
            "this model has no chat template; use /v1/completions",
        ));
    };
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let messages = req
        .messages
        .into_iter()
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    let text = template
        .render(&messages, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let max_tokens = req.params.max_completion_tokens.or(req.params.max_tokens);
    let logprobs = chat_logprobs(&req.params)?;
    let prepared = prepare(model, &text, max_tokens, req.params, logprobs, arrived)?;
    let head = app.backend.head().map_err(ApiError::Unavailable)?;
    let events = generation::start(head, app.backend.clone(), app.metrics.clone(), prepared.job);
    let stream = Stream {
        id: response_id("chatcmpl"),
        created: unix_now(),
        model: app.model_id().to_owned(),
        logprobs: logprobs.is_some(),
    };
    if prepared.stream {
        return Ok(sse::response(stream, prepared.include_usage, events));
    }
    let answer = generation::collect(events).await?;
    let choice = ChatChoice {
        index: 0,
        message: Some(Delta {
            role: Some("assistant"),
            content: Some(&answer.text),
        }),
        delta: None,
        logprobs: stream.logprobs(&answer.logprobs),
        finish_reason: Some(answer.finish),
    };
    let body = stream.response("chat.completion", Some(choice), Some(answer.usage));
    Ok(Json(body).into_response())
}

/// A request message as the template sees it: content parts are joined; only text parts
/// are understood.
fn message(m: ChatMessage) -> Result<Message, ApiError> {
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!("content parts of type {kind:?} are not supported"),
                        ))
                    }
                }
            }
            text
        }
    };
    Ok(Message::new(m.role, content))
}

/// The fixed fields of one response's chunks.
struct Stream {
    id: String,
    created: u64,
    model: String,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
}

impl Stream {
    fn logprobs<'a>(&self, content: &'a [TokenLogprob]) -> Option<ChatLogprobs<'a>> {
        self.logprobs.then_some(ChatLogprobs {
            content,
            refusal: None,
        })
    }

    fn response<'a>(
        &'a self,
        object: &'static str,
        choice: Option<ChatChoice<'a>>,
        usage: Option<Usage>,
    ) -> ChatCompletion<'a> {
        ChatCompletion {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices: choice,
            usage,
        }
    }

    fn delta<'a>(
        &'a self,
        delta: Delta<'a>,
        logprobs: Option<ChatLogprobs<'a>>,
        finish_reason: Option<FinishReason>,
    ) -> ChatCompletion<'a> {
        let choice = ChatChoice {
            index: 0,
            message: None,
            delta: Some(delta),
            logprobs,
            finish_reason,
        };
        self.response("chat.completion.chunk", Some(choice), None)
    }
}

impl Chunks for Stream {
    fn opening(&self, buf: &mut Vec<u8>) {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
        };
        sse::frame(buf, &self.delta(delta, None, None));
    }

    fn text(&self, buf: &mut Vec<u8>, text: &str, logprobs: &[TokenLogprob]) {
        let delta = Delta {
            role: None,
            content: Some(text),
        };
        sse::frame(buf, &self.delta(delta, self.logprobs(logprobs), None));
    }

    fn finish(&self, buf: &mut Vec<u8>, reason: FinishReason) {
        sse::frame(buf, &self.delta(Delta::default(), None, Some(reason)));
    }

    fn usage(&self, buf: &mut Vec<u8>, usage: Usage) {
        sse::frame(
            buf,
            &self.response("chat.completion.chunk", None, Some(usage)),
        );
    }
}
