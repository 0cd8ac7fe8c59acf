//! Server-sent events as OpenAI streams them: one `data: {json}\n\n` per chunk, then
//! `data: [DONE]`. A failure after the stream started becomes a `data: {"error": ...}` event
//! and the stream ends (the status line is already sent).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::mpsc;

use super::generation::Event;
use super::openai::{FinishReason, TokenLogprob, Usage};

/// How one endpoint writes its chunks into an SSE buffer (see [`frame`]).
pub(crate) trait Chunks: Send + 'static {
    /// Written before any text (the chat role chunk).
    fn opening(&self, buf: &mut Vec<u8>);
    /// A piece of text and the log-probabilities of its tokens (empty unless asked for).
    fn text(&self, buf: &mut Vec<u8>, text: &str, logprobs: &[TokenLogprob]);
    /// The chunk carrying the finish reason.
    fn finish(&self, buf: &mut Vec<u8>, reason: FinishReason);
    /// The usage chunk of `stream_options.include_usage`.
    fn usage(&self, buf: &mut Vec<u8>, usage: Usage);
}

/// Appends one `data:` event holding `value` as JSON.
pub(crate) fn frame(buf: &mut Vec<u8>, value: &impl Serialize) {
    buf.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *buf, value).is_err() {
        buf.extend_from_slice(
            br#"{"error":{"message":"unencodable chunk","type":"server_error"}}"#,
        );
    }
    buf.extend_from_slice(b"\n\n");
}

enum Phase {
    Opening,
    Body,
    Ended,
}

/// The streaming response for the events of one generation. Dropping the body (the client
/// went away) drops the receiver, which stops the generation.
pub(crate) fn response<C: Chunks>(
    chunks: C,
    include_usage: bool,
    events: mpsc::Receiver<Event>,
) -> Response {
    let state = (chunks, events, Phase::Opening);
    let stream = futures::stream::unfold(state, move |(chunks, mut events, phase)| async move {
        let mut buf = Vec::with_capacity(256);
        let phase = match phase {
            Phase::Ended => return None,
            Phase::Opening => {
                chunks.opening(&mut buf);
                Phase::Body
            }
            Phase::Body => match events.recv().await {
                Some(Event::Text(text, logprobs)) => {
                    chunks.text(&mut buf, &text, &logprobs);
                    Phase::Body
                }
                Some(Event::Done(reason, usage)) => {
                    chunks.finish(&mut buf, reason);
                    if include_usage {
                        chunks.usage(&mut buf, usage);
                    }
                    buf.extend_from_slice(b"data: [DONE]\n\n");
                    Phase::Ended
                }
                Some(Event::Failed(error)) => {
                    buf.extend_from_slice(b"data: ");
                    buf.extend_from_slice(error.body().as_bytes());
                    buf.extend_from_slice(b"\n\n");
                    Phase::Ended
                }
                None => {
                    buf.extend_from_slice(
                        br#"data: {"error":{"message":"generation ended unexpectedly","type":"server_error","param":null,"code":null}}"#,
                    );
                    buf.extend_from_slice(b"\n\n");
                    Phase::Ended
                }
            },
        };
        Some((
            Ok::<_, Infallible>(Bytes::from(buf)),
            (chunks, events, phase),
        ))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
