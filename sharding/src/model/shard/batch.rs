//! Decode steps of several sessions computed as one batch.
//!
//! Decoding streams every weight once per step whatever the number of rows, so one step over
//! the rows of k sessions costs little more than one session's step. The projections and the
//! feed-forward run over all rows together; each row's keys, values and attention go to its
//! own session's cache. Every operation is row-local apart from attention, so a batched row
//! gets the same bits as the same step run alone with [`Shard::forward`].

use super::{row_angles, Input, Output, Shard};
use crate::kv::KvCache;
use crate::model::{ops, StepError};

/// Most steps one [`Shard::forward_batch`] call takes.
pub const MAX_BATCH: usize = 16;

/// Why a batch was refused. The shard is unchanged after any of these: no step ran.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// A batch with no steps.
    #[error("empty batch")]
    Empty,
    /// More steps than [`MAX_BATCH`].
    #[error("batch of {steps} steps exceeds the limit of {max}")]
    TooLarge {
        /// Steps given.
        steps: usize,
        /// The limit.
        max: usize,
    },
    /// The input is the wrong kind for this shard, or does not hold one row per step.
    #[error(transparent)]
    Input(StepError),
    /// Two steps of the same session.
    #[error("steps {first} and {index} are both for session {session}")]
    Duplicate {
        /// The session.
        session: u64,
        /// Its first step.
        first: usize,
        /// The repeated step.
        index: usize,
    },
    /// One step cannot run: unknown session, wrong position, full context, bad token id.
    #[error("step {index}: {error}")]
    Step {
        /// The step.
        index: usize,
        /// Why, as [`Shard::forward`] would say for that step alone.
        error: StepError,
    },
}

impl BatchError {
    /// The step at fault, when the rest of the batch can run without it.
    pub fn step(&self) -> Option<usize> {
        match self {
            BatchError::Duplicate { index, .. } | BatchError::Step { index, .. } => Some(*index),
            BatchError::Empty | BatchError::TooLarge { .. } | BatchError::Input(_) => None,
        }
    }
}

impl Shard {
    /// Runs one position of each of several sessions as one batch: step `i` is
    /// `steps[i] = (session, pos)` and takes row `i` of `input` (one token id or one hidden
    /// row per step). Every step must continue its session where it stands, and a session may
    /// appear once. Writes one row per step, in step order, into `out`: hidden states, or the
    /// logits of every row when the shard has the head (`steps.len() × vocab_size`).
    ///
    /// Each row equals, bit for bit, what [`Shard::forward`] gives for that step alone.
    pub fn forward_batch(
        &mut self,
        steps: &[(u64, usize)],
        input: Input<'_>,
        out: &mut Vec<f32>,
    ) -> Result<Output, BatchError> {
        let n = steps.len();
        if n == 0 {
            return Err(BatchError::Empty);
        }
        if n > MAX_BATCH {
            return Err(BatchError::TooLarge {
                steps: n,
                max: MAX_BATCH,
            });
        }
        self.check_batch_input(n, input)?;
        for (index, &(id, pos)) in steps.iter().enumerate() {
            if let Some(first) = steps[..index].iter().position(|s| s.0 == id) {
                return Err(BatchError::Duplicate {
                    session: id,
                    first,
                    index,
                });
            }
            let step = |error| BatchError::Step { index, error };
            let cache = self
                .sessions
                .get_mut(&id)
                .ok_or(step(StepError::UnknownSession(id)))?;
            if cache.len() != pos {
                return Err(step(StepError::PositionMismatch {
                    session: id,
                    expected: cache.len(),
                    got: pos,
                }));
            }
            // Growing the storage is not a visible change: the length stays.
            if !cache.reserve(1) {
                return Err(step(StepError::ContextFull {
                    session: id,
                    len: cache.len(),
                    adding: 1,
                    max: cache.max_positions(),
                }));
            }
        }

        let mut x = std::mem::take(&mut self.hidden);
        match input {
            Input::Tokens(tokens) => {
                if let Err(e) = self.embed(tokens, &mut x) {
                    self.hidden = x;
                    return Err(BatchError::Input(e));
                }
            }
            Input::Hidden(h) => {
                x.clear();
                x.extend_from_slice(h);
            }
        }
        // The batch's caches in step order, on the stack: nothing is allocated per step.
        let mut caches: [Option<&mut KvCache>; MAX_BATCH] = Default::default();
        for (id, cache) in self.sessions.iter_mut() {
            if let Some(i) = steps.iter().position(|s| s.0 == *id) {
                caches[i] = Some(cache);
            }
        }
        let caches = &mut caches[..n];
        if let Some(index) = caches.iter().position(Option::is_none) {
            // Unreachable: every session was looked up above.
            self.hidden = x;
            return Err(BatchError::Step {
                index,
                error: StepError::UnknownSession(steps[index].0),
            });
        }

        let cfg = &self.config;
        let s = &mut self.scratch;
        s.ensure(cfg, n);
        for (t, &(_, pos)) in steps.iter().enumerate() {
            row_angles(cfg, self.rope_freqs.as_deref(), t, pos, s);
        }
        let pool = &self.pool;
        let blocks = &self.blocks;
        let head = &self.head;
        let result = super::on_pool(pool, || {
            for (il, block) in blocks.iter().enumerate() {
                block.project(cfg, &x, s, pool);
                for (t, (cache, &(_, pos))) in caches.iter_mut().flatten().zip(steps).enumerate() {
                    block.attend_rows(cfg, t..t + 1, pos, &mut cache.layers[il], s, pool);
                }
                block.finish(cfg, &mut x, s, pool);
            }
            for cache in caches.iter_mut().flatten() {
                cache.commit(1);
            }
            match head {
                None => {
                    out.clear();
                    out.extend_from_slice(&x);
                    Output::Hidden
                }
                Some(head) => {
                    ops::rms_norm(&mut x, &head.norm, cfg.rms_eps);
                    out.clear();
                    out.resize(n * cfg.vocab_size, 0.0);
                    head.output.mul(&x, out, &mut s.qbuf, pool);
                    Output::Logits
                }
            }
        });
        self.hidden = x;
        Ok(result)
    }

    /// [`Shard::logits`] of several sessions at once: the logits of every row of `hidden`
    /// (one row per session), `vocab_size` per row in row order, into `out`. Each row gets
    /// the same bits as a [`Shard::logits`] call on it alone.
    pub fn logits_each(&mut self, hidden: &[f32], out: &mut Vec<f32>) -> Result<(), StepError> {
        let e = self.config.n_embd;
        if hidden.is_empty() || !hidden.len().is_multiple_of(e) {
            return Err(StepError::BadHiddenLen {
                len: hidden.len(),
                n_embd: e,
            });
        }
        let head = self.head.as_ref().ok_or(StepError::WrongInput {
            expected: "token ids or hidden states for its layers (this shard has no head)",
        })?;
        let rows = &mut self.hidden;
        rows.clear();
        rows.extend_from_slice(hidden);
        ops::rms_norm(rows, &head.norm, self.config.rms_eps);
        out.clear();
        out.resize(hidden.len() / e * self.config.vocab_size, 0.0);
        head.output
            .mul(rows, out, &mut self.scratch.qbuf, &self.pool);
        Ok(())
    }

    /// Checks that `input` suits this shard and holds one row per step of `n`.
    fn check_batch_input(&self, n: usize, input: Input<'_>) -> Result<(), BatchError> {
        let wrong = |expected| Err(BatchError::Input(StepError::WrongInput { expected }));
        match (input, &self.embed) {
            (Input::Tokens(t), Some(_)) => {
                if t.len() != n {
                    return wrong("one token id per step");
                }
                let vocab = self.config.vocab_size;
                if let Some(index) = t.iter().position(|&id| id as usize >= vocab) {
                    return Err(BatchError::Step {
                        index,
                        error: StepError::TokenOutOfRange {
                            id: t[index],
                            vocab,
                        },
                    });
                }
                Ok(())
            }
            (Input::Hidden(h), None) if h.len() != n * self.config.n_embd => {
                wrong("one hidden-state row per step")
            }
            (Input::Hidden(_), None) => Ok(()),
            (Input::Tokens(_), None) => wrong("hidden states"),
            (Input::Hidden(_), Some(_)) => wrong("token ids"),
        }
    }
}
