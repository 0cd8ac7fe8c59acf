//! Logits of a chunk through a pipeline of stages: the evaluator's [`LogitSource`] backed by
//! a [`Head`], so `shoal perplexity --pipeline` scores the ring as one model
//! (`sharding::eval` holds the evaluator).
//!
//! A chunk is one request: its positions up to the first scored one go as the prompt (in
//! the head's prefill chunks), and the rest as verification steps that return every row's
//! logits — the path speculative drafts take, each step accepted whole.

use std::ops::Range;

use crate::pipeline::{Head, PipelineError};
use tokio::runtime::Handle;

use sharding::eval::LogitSource;

/// Positions per verification step: a prompt chunk's size, so no message is larger than
/// the ones the prefill already sends.
const STEP: usize = crate::pipeline::protocol::PREFILL_CHUNK;

/// A running head on a runtime the calling thread may block on (so not a thread of that
/// runtime: call it from a blocking task or a plain thread).
pub struct PipelineSource {
    head: Head,
    runtime: Handle,
    n_vocab: usize,
}

impl PipelineSource {
    /// A source sending chunks through `head`, whose model has `n_vocab` entries.
    pub fn new(head: Head, runtime: Handle, n_vocab: usize) -> PipelineSource {
        PipelineSource {
            head,
            runtime,
            n_vocab,
        }
    }
}

impl LogitSource for PipelineSource {
    type Error = PipelineError;

    fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    fn logits(
        &mut self,
        tokens: &[u32],
        rows: Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), PipelineError> {
        out.clear();
        if rows.is_empty() || rows.end > tokens.len() {
            return Ok(());
        }
        self.runtime.block_on(async {
            let mut generation = self.head.open(&tokens[..=rows.start], tokens.len());
            out.extend_from_slice(generation.logits().await?);
            for step in tokens[rows.start + 1..rows.end].chunks(STEP) {
                out.extend_from_slice(generation.verify(step).await?);
                generation.accept(step, step.len());
            }
            Ok(())
        })
    }
}
