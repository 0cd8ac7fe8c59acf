//! One request's generation, shared by both endpoints, streamed or not.
//!
//! The generation runs in its own task and reports text through a channel, so it ends as
//! soon as whoever reads it (the SSE body, or the handler collecting a whole answer) goes
//! away: a client that disconnects stops its tokens being computed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sharding::sampling::{Sampler, TokenLogprobs};
use sharding::tokenizer::Tokenizer;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::openai::{FinishReason, TokenLogprob, TopLogprob, Usage};
use super::stop::StopMatcher;
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::pipeline::Head;
use crate::speculate::{Speculation, Stats, StepError, MAX_DRAFTS};

/// How long an accepted request waits for room on a busy stage before it fails.
const BUSY_PATIENCE: Duration = Duration::from_secs(120);

/// What to generate.
pub(crate) struct Job {
    /// Prompt token ids (not empty).
    pub(crate) prompt: Vec<u32>,
    /// At least one; prompt plus this fits the context.
    pub(crate) max_tokens: usize,
    /// Sampler for this request, built from its settings.
    pub(crate) sampler: Sampler,
    /// Stop sequences.
    pub(crate) stop: Vec<String>,
    /// When the request arrived (time to first token counts from here).
    pub(crate) arrived: Instant,
    /// Log-probabilities of each token with this many alternatives, or none.
    pub(crate) logprobs: Option<usize>,
}

/// What a generation reports, in order: text pieces, then one `Done` or `Failed`.
pub(crate) enum Event {
    /// New text, and the log-probabilities of the tokens generated since the last event
    /// when the request asked for them (never both empty).
    Text(String, Vec<TokenLogprob>),
    /// Generation ended normally.
    Done(FinishReason, Usage),
    /// Generation failed; text already sent stays valid.
    Failed(ApiError),
}

/// Starts `job` on `head`; the receiver yields its events.
pub(crate) fn start(
    head: Head,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    job: Job,
) -> mpsc::Receiver<Event> {
    // Each token sends at most one event, the end at most two: the channel never fills, so
    // sending never waits and a full channel can only mean a bug, not a slow client.
    let (tx, rx) = mpsc::channel(job.max_tokens + 2);
    tokio::spawn(async move {
        let _session = metrics.session();
        let event = run(&head, backend.as_ref(), &metrics, job, &tx).await;
        let _ = tx.try_send(event);
    });
    rx
}

async fn run(
    head: &Head,
    backend: &dyn Backend,
    metrics: &Metrics,
    job: Job,
    tx: &mpsc::Sender<Event>,
) -> Event {
    let Job {
        prompt,
        max_tokens,
        mut sampler,
        stop,
        arrived,
        logprobs,
    } = job;
    metrics.prompt_tokens(prompt.len());
    let tokenizer = &backend.model().tokenizer;
    for &t in &prompt {
        sampler.accept(t);
    }
    let mut decoder = tokenizer.decoder();
    let mut stops = StopMatcher::new(stop);
    let mut finish = FinishReason::Length;
    let mut hit_stop = false;
    let mut last_token: Option<Instant> = None;
    let open = || {
        let generation = head.open(&prompt, prompt.len() + max_tokens);
        let mut decoding = Speculation::new(
            generation,
            head.clone(),
            backend.drafter(&prompt),
            MAX_DRAFTS,
        );
        if let Some(top) = logprobs {
            decoding.keep_logprobs(top);
        }
        decoding
    };
    let mut decoding = open();
    // A stage without room for one more session refuses it as busy before any token:
    // the request was accepted, so it waits for room rather than failing.
    let patient_until = Instant::now() + BUSY_PATIENCE;
    let mut pause = Duration::from_millis(20);
    // Log-probabilities of tokens whose text the decoder or the stop matcher holds back.
    let mut pending = Vec::new();
    let mut generated = 0;
    let mut batch = Vec::new();
    let mut reported = Stats::default();
    'decode: while generated < max_tokens {
        let room = max_tokens - generated;
        match decoding.next(&mut sampler, room, &mut batch).await {
            Ok(()) => {}
            Err(StepError::Pipeline(e))
                if e.is_busy()
                    && generated == 0
                    && Instant::now() < patient_until
                    && !tx.is_closed() =>
            {
                drop(decoding);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                decoding = open();
                continue;
            }
            Err(StepError::Pipeline(e)) => return Event::Failed(e.into()),
            Err(StepError::Sampling(e)) => {
                return Event::Failed(ApiError::Internal(format!("sampling failed: {e}")))
            }
        }
        let stats = decoding.stats();
        metrics.speculated(&reported, &stats);
        reported = stats;
        for (i, &id) in batch.iter().enumerate() {
            generated += 1;
            let now = Instant::now();
            match last_token.replace(now) {
                None => metrics.first_token(now.duration_since(arrived).as_secs_f64()),
                Some(prev) => metrics.next_token(now.duration_since(prev).as_secs_f64()),
            }
            metrics.token_generated();
            if tx.is_closed() {
                // Nobody reads the answer any more: stop computing it.
                break 'decode;
            }
            if tokenizer.is_eog(id) {
                finish = FinishReason::Stop;
                break 'decode;
            }
            if let Some(lp) = decoding.logprobs().get(i) {
                pending.push(wire_logprob(tokenizer, lp));
            }
            let (text, hit) = stops.push(decoder.push(id));
            if !text.is_empty()
                && tx
                    .try_send(Event::Text(text.to_owned(), std::mem::take(&mut pending)))
                    .is_err()
            {
                break 'decode;
            }
            if hit {
                hit_stop = true;
                finish = FinishReason::Stop;
                break 'decode;
            }
        }
    }
    drop(decoding);
    if !hit_stop {
        // Bytes the decoder and the matcher held back are final now (a stop may still
        // complete inside the decoder's last bytes).
        let tail = decoder.finish();
        let (text, hit) = stops.push(&tail);
        let mut rest = text.to_owned();
        if hit {
            finish = FinishReason::Stop;
        } else {
            rest.push_str(&stops.finish());
        }
        if !rest.is_empty() || !pending.is_empty() {
            let _ = tx.try_send(Event::Text(rest, std::mem::take(&mut pending)));
        }
    } else if !pending.is_empty() {
        let _ = tx.try_send(Event::Text(String::new(), pending));
    }
    Event::Done(finish, Usage::new(prompt.len(), generated))
}

/// A whole answer.
pub(crate) struct Answer {
    pub(crate) text: String,
    /// Each token's log-probabilities, when asked for.
    pub(crate) logprobs: Vec<TokenLogprob>,
    pub(crate) finish: FinishReason,
    pub(crate) usage: Usage,
}

/// Waits for a whole answer.
pub(crate) async fn collect(mut events: mpsc::Receiver<Event>) -> Result<Answer, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(piece, lp) => {
                text.push_str(&piece);
                logprobs.extend(lp);
            }
            Event::Done(finish, usage) => {
                return Ok(Answer {
                    text,
                    logprobs,
                    finish,
                    usage,
                })
            }
            Event::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::Internal("generation ended unexpectedly".into()))
}

/// A token's log-probabilities in OpenAI's terms: token text (lossy where a token holds
/// part of a character) and its bytes.
fn wire_logprob(tokenizer: &Tokenizer, lp: &TokenLogprobs) -> TokenLogprob {
    let piece = |id: u32| {
        let bytes = tokenizer.piece(id).to_vec();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    let (token, bytes) = piece(lp.id);
    TokenLogprob {
        token,
        logprob: lp.logprob,
        bytes,
        top_logprobs: lp
            .top
            .iter()
            .map(|&(id, logprob)| {
                let (token, bytes) = piece(id);
                TopLogprob {
                    token,
                    logprob,
                    bytes,
                }
            })
            .collect(),
    }
}
