//! The OpenAI wire types this API reads and writes.
//!
//! Requests accept (and ignore) fields we do not implement, as OpenAI-compatible servers
//! commonly do, except where ignoring would silently change the answer (`n` > 1). Response
//! chunks borrow their strings, so a streamed token costs one JSON buffer and nothing else.

use serde::{Deserialize, Serialize};

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    /// A single stop sequence.
    One(String),
    /// Several stop sequences.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    /// Send a last chunk with `usage` before `[DONE]`.
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// The generation settings shared by both endpoints. `model` is not read: this server has
/// one model and answers with its name whatever the client asked for.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    pub(crate) max_tokens: Option<u64>,
    /// The chat endpoint's newer name for `max_tokens`.
    pub(crate) max_completion_tokens: Option<u64>,
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    pub(crate) frequency_penalty: Option<f32>,
    pub(crate) presence_penalty: Option<f32>,
    pub(crate) seed: Option<i64>,
    pub(crate) stop: Option<Stop>,
    pub(crate) n: Option<u32>,
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    /// Chat: `true` to return each token's log-probability; completions: how many most
    /// likely tokens to list with each (0 to 5).
    pub(crate) logprobs: Option<LogprobsParam>,
    /// Chat: most likely tokens listed with each token (0 to 20; needs `logprobs`).
    pub(crate) top_logprobs: Option<u32>,
}

/// `logprobs`: a flag (chat) or a count (completions).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub(crate) enum LogprobsParam {
    /// The chat endpoint's form.
    Flag(bool),
    /// The completions endpoint's form.
    Count(u32),
}

/// `prompt`: a string, or an array holding exactly one string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    /// The prompt text.
    One(String),
    /// A batch; only batches of one are served.
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) prompt: Prompt,
    #[serde(flatten)]
    pub(crate) params: Params,
}

/// A chat message's `content`: text, an array of parts, or absent.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    /// Plain text.
    Text(String),
    /// Content parts; only `text` parts are understood.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) text: Option<String>,
}

/// One chat message of a request.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub(crate) params: Params,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: usize,
    pub(crate) completion_tokens: usize,
    pub(crate) total_tokens: usize,
}

impl Usage {
    /// Counts for a prompt and a completion.
    pub(crate) fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FinishReason {
    /// An end-of-generation token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// A completion response or stream chunk (`object` tells which).
#[derive(Debug, Serialize)]
pub(crate) struct Completion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    /// Zero or one choice, written as a JSON list (no allocation per chunk).
    #[serde(serialize_with = "as_list")]
    pub(crate) choices: Option<CompletionChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}

fn as_list<S: serde::Serializer, T: Serialize>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(value.iter())
}

/// One choice of a completion.
#[derive(Debug, Serialize)]
pub(crate) struct CompletionChoice<'a> {
    pub(crate) index: u32,
    pub(crate) text: &'a str,
    pub(crate) logprobs: Option<CompletionLogprobs<'a>>,
    pub(crate) finish_reason: Option<FinishReason>,
}

/// A chat response or stream chunk (`object` tells which).
#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    /// Zero or one choice, written as a JSON list.
    #[serde(serialize_with = "as_list")]
    pub(crate) choices: Option<ChatChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}

/// One choice of a chat response (`message`) or chunk (`delta`).
#[derive(Debug, Serialize)]
pub(crate) struct ChatChoice<'a> {
    pub(crate) index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<Delta<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delta: Option<Delta<'a>>,
    pub(crate) logprobs: Option<ChatLogprobs<'a>>,
    pub(crate) finish_reason: Option<FinishReason>,
}

/// A message or message delta of the assistant.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<&'a str>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelList<'a> {
    pub(crate) object: &'static str,
    pub(crate) data: [ModelCard<'a>; 1],
}

/// One model of `/v1/models`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelCard<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) owned_by: &'static str,
}

/// One generated token's log-probability as the chat endpoint reports it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TokenLogprob {
    pub(crate) token: String,
    pub(crate) logprob: f32,
    /// The token's UTF-8 bytes (a token may hold part of a character).
    pub(crate) bytes: Vec<u8>,
    pub(crate) top_logprobs: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TopLogprob {
    pub(crate) token: String,
    pub(crate) logprob: f32,
    pub(crate) bytes: Vec<u8>,
}

/// A chat choice's `logprobs`.
#[derive(Debug, Serialize)]
pub(crate) struct ChatLogprobs<'a> {
    pub(crate) content: &'a [TokenLogprob],
    pub(crate) refusal: Option<()>,
}

/// A completion choice's `logprobs`, in the legacy endpoint's column form.
#[derive(Debug)]
pub(crate) struct CompletionLogprobs<'a> {
    pub(crate) tokens: &'a [TokenLogprob],
    /// Byte offset of the first token in the choice's text.
    pub(crate) offset: usize,
}

impl Serialize for CompletionLogprobs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Top<'a>(&'a [TopLogprob]);
        impl Serialize for Top<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|t| (&t.token, t.logprob)))
            }
        }
        let mut offsets = Vec::with_capacity(self.tokens.len());
        let mut at = self.offset;
        for t in self.tokens {
            offsets.push(at);
            at += t.token.len();
        }
        let mut s = serializer.serialize_struct("Logprobs", 4)?;
        s.serialize_field(
            "tokens",
            &self.tokens.iter().map(|t| &t.token).collect::<Vec<_>>(),
        )?;
        s.serialize_field(
            "token_logprobs",
            &self.tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        )?;
        s.serialize_field(
            "top_logprobs",
            &self
                .tokens
                .iter()
                .map(|t| Top(&t.top_logprobs))
                .collect::<Vec<_>>(),
        )?;
        s.serialize_field("text_offset", &offsets)?;
        s.end()
    }
}
