//! One request's generation, pulled by its caller: [`Generation::logits`] gives the next
//! position's logits, [`Generation::push`] feeds back the token the caller picked. Sampling,
//! stop strings and text stay with the caller; the head only moves rows and computes logits.
//!
//! Failover lives here. When the plan under a request breaks (a node left, a stage could
//! not pass the session on, replies stopped), the next `logits` call waits for a newer plan
//! and replays the whole context there — prompt plus every pushed token, as one prompt —
//! which leaves the new stages' caches exactly where the old ones were: the logits, and so
//! the caller's tokens, are the ones the broken plan would have given.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, trace, warn};

use super::super::error::PipelineError;
use super::super::failover::Plans;
use super::super::protocol::{FailureCode, Phase, Reply, Resume};
use super::super::stage::HOP;
use super::attempt::Attempt;
use super::Head;

/// How long a broken request waits for a healthy plan before it fails.
const RECOVERY_WAIT: Duration = Duration::from_secs(20);
/// Replays one request may need before it gives up.
const MAX_RECOVERIES: usize = 3;

/// A request's generation on the pipeline. Dropping it frees its session on every stage.
pub struct Generation {
    head: Head,
    /// The prompt and every token pushed since.
    context: Vec<u32>,
    /// Positions the session may reach.
    reserve: usize,
    /// The session on the current plan, if one is open.
    attempt: Option<Attempt>,
    /// When the pushed token whose logits are not computed yet was sent (a pass is timed
    /// from there to its logits).
    awaiting: Option<Instant>,
    /// The logits of the position after the context, once computed.
    logits: Vec<f32>,
    fresh: bool,
    plans: Option<Plans>,
    /// The plan of the current (or last started) attempt.
    epoch: u64,
    /// The newest plan this request failed on.
    failed: Option<u64>,
    recoveries: usize,
    /// When the last plan broke under this request, until its next logits.
    broke_at: Option<Instant>,
    /// A failure found while pushing, reported by the next `logits`.
    error: Option<PipelineError>,
    /// The logits of the rows of the last [`Generation::verify`], row after row.
    rows: Vec<f32>,
}

impl Generation {
    pub(super) fn new(head: Head, prompt: &[u32], reserve: usize) -> Generation {
        let plans = head.plans.clone();
        Generation {
            head,
            context: prompt.to_vec(),
            reserve: reserve.max(prompt.len()),
            attempt: None,
            awaiting: None,
            logits: Vec::new(),
            fresh: false,
            plans,
            epoch: 0,
            failed: None,
            recoveries: 0,
            broke_at: None,
            error: None,
            rows: Vec::new(),
        }
    }

    /// The prompt and the tokens pushed since.
    pub fn tokens(&self) -> &[u32] {
        &self.context
    }

    /// Requests replayed on another plan so far.
    pub fn recoveries(&self) -> usize {
        self.recoveries
    }

    /// The logits of the position after the last token: the prompt's at first, then those
    /// following each [`Generation::push`]. Calling it again without a push returns the same
    /// logits.
    pub async fn logits(&mut self) -> Result<&[f32], PipelineError> {
        if self.fresh {
            return Ok(&self.logits);
        }
        loop {
            let result = match self.error.take() {
                Some(e) => Err(e),
                None => self.hidden().await,
            };
            let hidden = match result {
                Ok(hidden) => hidden,
                Err(e) if self.may_recover(&e) => {
                    self.recover(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let at = self.context.len() - 1;
            trace!(target: HOP, pos = at, "computing");
            self.logits = self.head.logits(hidden).await?;
            trace!(target: HOP, pos = at, "computed");
            if let Some(sent) = self.awaiting.take() {
                self.head.inner.record_pass(1, sent.elapsed());
            }
            self.note_recovered();
            self.head.inner.count_token();
            self.fresh = true;
            return Ok(&self.logits);
        }
    }

    /// Appends `token` (the one picked from the last logits) and starts computing the next
    /// position. A failure shows at the next [`Generation::logits`].
    pub fn push(&mut self, token: u32) {
        self.context.push(token);
        self.fresh = false;
        let pos = self.context.len() - 1;
        if let Some(attempt) = self.attempt.as_mut() {
            match attempt.push(pos, &[token], Phase::Decode, Reply::LastRow) {
                Ok(()) => self.awaiting = Some(Instant::now()),
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// Runs `tokens` at the positions after the context as one step and returns the logits
    /// of every row (`vocab_size` each, row after row): row `i` gives the position after
    /// `tokens[i]`. The context does not grow until [`Generation::accept`] says how many of
    /// `tokens` to keep; the positions of the others are rolled back on every stage by the
    /// next step. This verifies speculative drafts in one pass through the ring.
    pub async fn verify(&mut self, tokens: &[u32]) -> Result<&[f32], PipelineError> {
        self.fresh = false;
        loop {
            let result = match self.error.take() {
                Some(e) => Err(e),
                None => self.verify_once(tokens).await,
            };
            let hidden = match result {
                Ok(hidden) => hidden,
                Err(e) if self.may_recover(&e) => {
                    self.recover(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (hidden, sent) = hidden;
            self.rows = self.head.logits_rows(hidden).await?;
            self.head.inner.record_pass(tokens.len(), sent.elapsed());
            self.note_recovered();
            return Ok(&self.rows);
        }
    }

    /// Keeps the first `n` of the tokens the last [`Generation::verify`] ran (the rest were
    /// rejected). The next step starts after them.
    pub fn accept(&mut self, tokens: &[u32], n: usize) {
        let n = n.min(tokens.len());
        self.context.extend_from_slice(&tokens[..n]);
        for _ in 0..n {
            self.head.inner.count_token();
        }
        self.fresh = false;
    }

    /// The hidden states of `tokens` run after the context, and when they were sent.
    async fn verify_once(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, Instant), PipelineError> {
        if self.attempt.is_none() {
            // A new plan: replay the accepted context first; its last row is not needed.
            self.hidden().await?;
        }
        let pos = self.context.len();
        let attempt = self.attempt.as_mut().ok_or(PipelineError::NoRoute)?;
        attempt.push(pos, tokens, Phase::Decode, Reply::AllRows)?;
        let sent = Instant::now();
        let (_, hidden) = attempt.rows().await?;
        Ok((hidden, sent))
    }

    /// The hidden state of the context's last position, from the current plan or a new one.
    async fn hidden(&mut self) -> Result<Vec<f32>, PipelineError> {
        if let Some(attempt) = self.attempt.as_mut() {
            let (_, hidden) = attempt.rows().await?;
            return Ok(hidden);
        }
        let route = match self.plans.as_mut() {
            Some(plans) => plans.healthy(self.failed, RECOVERY_WAIT).await?,
            None => (0, self.head.first().ok_or(PipelineError::NoRoute)?),
        };
        self.epoch = route.0;
        let resume = self.kept_prefix(route);
        let (attempt, hidden) = match self.start(route, resume).await {
            Err(PipelineError::Stage(f))
                if f.code == FailureCode::PrefixMiss && resume.is_some() =>
            {
                // A stage lost the kept cache: forget it, and compute the whole context.
                let key = resume.map_or(0, |r| r.key);
                self.forget_prefix(route, key);
                debug!(
                    epoch = route.0,
                    key, "a kept prefix was missing; prefilling it all"
                );
                self.start(route, None).await?
            }
            started => {
                let (attempt, hidden) = started?;
                if let (Some(r), Some(m)) = (resume, &self.head.inner.metrics) {
                    m.prefix_reused(r.len as usize);
                }
                (attempt, hidden)
            }
        };
        self.attempt = Some(attempt);
        self.awaiting = None;
        Ok(hidden)
    }

    /// The first logits after the plan broke: how long the request stalled.
    fn note_recovered(&mut self) {
        if let Some(at) = self.broke_at.take() {
            let took = at.elapsed();
            info!(
                ms = took.as_millis() as u64,
                "request recovered: next token after the plan broke"
            );
            if let Some(m) = &self.head.inner.metrics {
                m.recovered(took.as_secs_f64());
            }
        }
    }

    /// Opens a session on `route` and runs the context through it, from a kept prefix or
    /// from nothing.
    async fn start(
        &self,
        route: (u64, SocketAddr),
        resume: Option<Resume>,
    ) -> Result<(Attempt, Vec<f32>), PipelineError> {
        let inner = self.head.inner.clone();
        let plans = self.plans.clone();
        Attempt::start(inner, route, plans, (&self.context, resume), self.reserve).await
    }

    /// A stage of plan `route` no longer holds the cache kept under `key`.
    fn forget_prefix(&self, route: (u64, SocketAddr), key: u64) {
        let inner = &self.head.inner;
        let mut prefixes = inner.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        prefixes.forget(route, key);
        if let Some(m) = &inner.metrics {
            m.prefix_missed();
        }
    }

    /// The longest kept prefix of the context on plan `route`, if worth resuming.
    fn kept_prefix(&self, route: (u64, SocketAddr)) -> Option<Resume> {
        if !self.head.prefix_cache {
            return None;
        }
        let inner = &self.head.inner;
        let mut prefixes = inner.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        let (key, len) = prefixes.find(route, &self.context)?;
        Some(Resume {
            key,
            len: len as u32,
        })
    }

    fn may_recover(&self, e: &PipelineError) -> bool {
        self.plans.is_some() && e.is_recoverable() && self.recoveries < MAX_RECOVERIES
    }

    /// Gives up the current plan: the next `hidden` replays the context on a newer one.
    fn recover(&mut self, e: PipelineError) {
        let epoch = self.epoch;
        warn!(
            epoch,
            context = self.context.len(),
            error = %e,
            "the pipeline broke mid-request; replaying on the next plan"
        );
        self.attempt = None;
        self.awaiting = None;
        self.failed = Some(self.failed.map_or(epoch, |f| f.max(epoch)));
        self.recoveries += 1;
        self.head.inner.count_recovery();
        self.broke_at.get_or_insert_with(Instant::now);
    }
}

impl Drop for Generation {
    /// Frees the session on every stage, or keeps its cache there for a later request that
    /// starts with the same tokens.
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            if self.head.prefix_cache && self.error.is_none() {
                attempt.close_keeping(&self.context);
            }
        }
    }
}
