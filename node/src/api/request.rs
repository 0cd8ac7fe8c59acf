//! Turning a request's settings and prompt text into a [`Job`], refusing what cannot run.

use std::hash::{BuildHasher, Hasher};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sharding::sampling::{Sampler, SamplerConfig, MAX_TOP_LOGPROBS};

use super::error::ApiError;
use super::generation::Job;
use super::openai::{LogprobsParam, Params, Stop};
use crate::backend::ModelInfo;

/// Tokens generated when the request does not say, if the context has room.
const DEFAULT_MAX_TOKENS: usize = 256;

/// A request ready to run.
pub(crate) struct Prepared {
    pub(crate) job: Job,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

/// Validates `params`, tokenizes `text` and checks that prompt and completion fit the
/// context. `max_tokens` is the request's limit (each endpoint names it its own way).
pub(crate) fn prepare(
    model: &ModelInfo,
    text: &str,
    max_tokens: Option<u64>,
    params: Params,
    logprobs: Option<usize>,
    arrived: Instant,
) -> Result<Prepared, ApiError> {
    if params.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    let sampler = sampler(&params)?;
    let stop = match params.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let prompt = model.tokenizer.encode(text, true, true);
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    let room = model.context.saturating_sub(prompt.len());
    let max_tokens = match max_tokens {
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ))
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => DEFAULT_MAX_TOKENS.min(room),
    };
    if max_tokens == 0 || max_tokens > room {
        return Err(ApiError::BadRequest {
            message: format!(
                "this model's context is {} tokens; the prompt has {} and {} more were \
                 requested; shorten the prompt or lower max_tokens",
                model.context,
                prompt.len(),
                max_tokens.max(1),
            ),
            param: Some("max_tokens"),
            code: Some("context_length_exceeded"),
        });
    }
    Ok(Prepared {
        job: Job {
            prompt,
            max_tokens,
            sampler,
            stop,
            arrived,
            logprobs,
        },
        stream: params.stream,
        include_usage: params.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// The chat endpoint's `logprobs` (a flag) and `top_logprobs` (0 to 20): how many likely
/// tokens to list with each generated token, or `None` for no log-probabilities.
pub(crate) fn chat_logprobs(params: &Params) -> Result<Option<usize>, ApiError> {
    let top = params.top_logprobs.map(|n| n as usize);
    if top.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
        return Err(ApiError::invalid(
            "top_logprobs",
            format!("top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]"),
        ));
    }
    match params.logprobs {
        Some(LogprobsParam::Flag(true)) => Ok(Some(top.unwrap_or(0))),
        Some(LogprobsParam::Count(_)) => Err(ApiError::invalid(
            "logprobs",
            "logprobs is a boolean here; top_logprobs says how many alternatives",
        )),
        _ if top.is_some_and(|n| n > 0) => Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        )),
        _ => Ok(None),
    }
}

/// The completions endpoint's `logprobs`: how many likely tokens to list (0 to 5).
pub(crate) fn completion_logprobs(params: &Params) -> Result<Option<usize>, ApiError> {
    match params.logprobs {
        None | Some(LogprobsParam::Flag(false)) => Ok(None),
        Some(LogprobsParam::Flag(true)) => Ok(Some(0)),
        Some(LogprobsParam::Count(n)) if n <= MAX_COMPLETION_LOGPROBS => Ok(Some(n as usize)),
        Some(LogprobsParam::Count(_)) => Err(ApiError::invalid(
            "logprobs",
            format!("logprobs must be in [0, {MAX_COMPLETION_LOGPROBS}]"),
        )),
    }
}

/// OpenAI's limit of the completions endpoint's `logprobs`.
const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// OpenAI's sampling: temperature (default 1, 0 is greedy) and nucleus only, no top-k or
/// min-p; an absent seed is random.
fn sampler(params: &Params) -> Result<Sampler, ApiError> {
    let temperature = params.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            "temperature must be in [0, 2]",
        ));
    }
    let top_p = params.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
    }
    let config = SamplerConfig {
        temperature,
        top_k: 0,
        top_p,
        min_p: 0.0,
        repetition_penalty: 1.0,
        frequency_penalty: params.frequency_penalty.unwrap_or(0.0),
        presence_penalty: params.presence_penalty.unwrap_or(0.0),
        seed: params.seed.map_or_else(random_u64, |s| s as u64),
        ..SamplerConfig::default()
    };
    Sampler::new(config).map_err(|e| ApiError::BadRequest {
        message: e.to_string(),
        param: None,
        code: None,
    })
}

/// A fresh random number (std's per-map random keys; no RNG crate needed for ids and seeds).
pub(crate) fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A response id: `prefix` and 24 random hex digits, as OpenAI's look.
pub(crate) fn response_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}{:08x}", random_u64(), random_u64() as u32)
}

/// Seconds since the epoch (`created`).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
