//! A request's decoding with speculation: each pass sends the pending token and the drafts
//! after it through the ring as one step, keeps the drafts the sampler agrees with and one
//! token of the target's own, and rolls the rest back.

use std::time::Instant;

use sharding::sampling::{token_logprobs, Sampler, SamplingError, TokenLogprobs};
use tracing::debug;

use super::{AdaptiveK, Drafter, Stats, MAX_DRAFTS};
use crate::pipeline::{Generation, Head, PipelineError};

/// Why a speculative step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The pipeline failed the request.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The sampler could not pick a token.
    #[error("sampling failed: {0}")]
    Sampling(#[from] SamplingError),
}

/// One request's decoding: its [`Generation`], drafter and draft controller.
pub struct Speculation {
    generation: Generation,
    head: Head,
    drafter: Option<Drafter>,
    k: AdaptiveK,
    /// The token picked last, not yet sent.
    pending: Option<u32>,
    drafts: Vec<u32>,
    batch: Vec<u32>,
    /// What passes of `1..=MAX_DRAFTS + 1` rows cost (milliseconds), read before each pass.
    costs: [Option<f64>; MAX_DRAFTS + 1],
    stats: Stats,
    /// With `Some(top)`, each token's log-probabilities (and the `top` best) are kept.
    logprobs: Option<usize>,
    picked: Vec<TokenLogprobs>,
}

impl Speculation {
    /// Decoding of `generation` on `head`, drafting with `drafter` (none: plain decoding),
    /// at most `max_drafts` a pass.
    pub fn new(
        generation: Generation,
        head: Head,
        drafter: Option<Drafter>,
        max_drafts: usize,
    ) -> Speculation {
        Speculation::with(generation, head, drafter, AdaptiveK::new(max_drafts))
    }

    /// [`Speculation::new`] with a given draft controller.
    pub fn with(
        generation: Generation,
        head: Head,
        drafter: Option<Drafter>,
        k: AdaptiveK,
    ) -> Speculation {
        Speculation {
            generation,
            head,
            drafter,
            k,
            pending: None,
            drafts: Vec::new(),
            batch: Vec::new(),
            costs: [None; MAX_DRAFTS + 1],
            stats: Stats::default(),
            logprobs: None,
            picked: Vec::new(),
        }
    }

    /// Keeps the log-probability of every token [`Speculation::next`] returns, with the
    /// `top` most likely tokens at its position (see [`Speculation::logprobs`]).
    pub fn keep_logprobs(&mut self, top: usize) {
        self.logprobs = Some(top);
    }

    /// The log-probabilities of the tokens the last [`Speculation::next`] returned, one per
    /// token (empty unless [`Speculation::keep_logprobs`] was called).
    pub fn logprobs(&self) -> &[TokenLogprobs] {
        &self.picked
    }

    /// What this request's speculation did so far.
    pub fn stats(&self) -> Stats {
        Stats {
            k: self.k.current(),
            ..self.stats
        }
    }

    /// The next tokens (one or more, at most `room`), each picked by `sampler` exactly as
    /// plain decoding would pick it (greedily: the same tokens).
    pub async fn next(
        &mut self,
        sampler: &mut Sampler,
        room: usize,
        out: &mut Vec<u32>,
    ) -> Result<(), StepError> {
        out.clear();
        self.picked.clear();
        let Some(token) = self.pending.take() else {
            // The prompt's logits give the first token.
            let row = self.generation.logits().await?;
            let id = sampler.sample(row)?;
            if let Some(top) = self.logprobs {
                self.picked.extend(token_logprobs(row, id, top));
            }
            self.note(id);
            out.push(id);
            self.pending = Some(id);
            return Ok(());
        };
        let room = room.max(1);
        let mut kind = None;
        let k = match self.drafter.as_mut() {
            Some(drafter) => {
                kind = drafter.outlook();
                let chose = match kind {
                    Some(kind) => {
                        self.head.pass_costs(&mut self.costs);
                        self.k.choose(kind, room - 1, &self.costs)
                    }
                    None => {
                        self.k.none();
                        0
                    }
                };
                drafter.propose(chose, &mut self.drafts);
                self.drafts.len()
            }
            None => 0,
        };
        let started = Instant::now();
        if k == 0 {
            self.generation.push(token);
            let row = self.generation.logits().await?;
            let id = sampler.sample(row)?;
            if let Some(top) = self.logprobs {
                self.picked.extend(token_logprobs(row, id, top));
            }
            self.stats.passes += 1;
            debug!(
                rows = 1,
                kind,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "pass"
            );
            self.note(id);
            out.push(id);
            self.pending = Some(id);
            return Ok(());
        }
        self.batch.clear();
        self.batch.push(token);
        self.batch.extend_from_slice(&self.drafts);
        let rows = self.generation.verify(&self.batch).await?;
        let vocab = rows.len() / (k + 1);
        let mut kept = 0;
        let mut next = None;
        for (i, row) in rows.chunks_exact(vocab).enumerate() {
            if i < k {
                let id = sampler.sample_given_draft(row, self.drafts[i])?;
                if let Some(top) = self.logprobs {
                    self.picked.extend(token_logprobs(row, id, top));
                }
                out.push(id);
                if id == self.drafts[i] {
                    kept += 1;
                    continue;
                }
                next = Some(id);
            } else {
                // Every draft was kept: the last row gives one more token.
                let id = sampler.sample(row)?;
                if let Some(top) = self.logprobs {
                    self.picked.extend(token_logprobs(row, id, top));
                }
                next = Some(id);
                out.push(id);
            }
            break;
        }
        // The pending token and the kept drafts stay; the rest roll back at the next step.
        self.generation.accept(&self.batch, 1 + kept);
        let kind = kind.unwrap_or_default();
        self.k.record(kind, k, kept);
        debug!(
            rows = k + 1,
            kind,
            kept,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "pass"
        );
        self.stats.passes += 1;
        self.stats.drafted += k as u64;
        self.stats.accepted += kept as u64;
        for &id in out.iter() {
            self.note(id);
        }
        self.pending = next;
        Ok(())
    }

    /// The drafter learns each token as it is decided.
    fn note(&mut self, id: u32) {
        if let Some(drafter) = self.drafter.as_mut() {
            drafter.extend(&[id]);
        }
    }
}
