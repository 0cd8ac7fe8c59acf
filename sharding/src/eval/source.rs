//! Where logits come from: [`LogitSource`] runs one chunk of tokens from an empty context
//! and returns the logits of the positions asked for. [`LocalSource`] runs the whole model
//! in this process; the node crate has one that runs chunks through a cluster's pipeline,
//! so one evaluator scores both.

use std::ops::Range;

use crate::gguf::GgufFile;
use crate::model::{Input, LoadError, Shard, ShardOptions, ShardSpec, StepError};

/// Logits of a chunk of tokens, evaluated from an empty context.
pub trait LogitSource {
    /// What can go wrong while evaluating.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Entries per row of logits.
    fn n_vocab(&self) -> usize;

    /// Runs `tokens` at positions `0..tokens.len()` of a fresh context and writes the
    /// logits of the positions in `rows`, `n_vocab` each and in order, into `out`.
    fn logits(
        &mut self,
        tokens: &[u32],
        rows: Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), Self::Error>;
}

/// The whole model in this process: the layers with the embedding in one shard, the final
/// norm and output head in another, so every position's hidden state can be kept and
/// turned into logits (a shard with the head gives only the last position's).
pub struct LocalSource {
    body: Shard,
    head: Shard,
    batch: usize,
    hidden: Vec<f32>,
    rows: Vec<f32>,
}

impl LocalSource {
    /// Loads `file` with `threads` workers for chunks of up to `max_ctx` positions, fed to
    /// the model `batch` positions per step.
    pub fn load(
        file: &GgufFile,
        threads: usize,
        max_ctx: usize,
        batch: usize,
    ) -> Result<LocalSource, LoadError> {
        let body = Shard::load(
            file,
            ShardSpec {
                layers: 0..n_layers(file)?,
                embed: true,
                head: false,
            },
            ShardOptions {
                threads,
                max_sessions: 1,
                max_context: max_ctx,
            },
        )?;
        let n = body.config().n_layers;
        let head = Shard::load(
            file,
            ShardSpec {
                layers: n..n,
                embed: false,
                head: true,
            },
            ShardOptions {
                threads,
                max_sessions: 1,
                max_context: 1,
            },
        )?;
        Ok(LocalSource {
            body,
            head,
            batch: batch.max(1),
            hidden: Vec::new(),
            rows: Vec::new(),
        })
    }
}

fn n_layers(file: &GgufFile) -> Result<usize, LoadError> {
    Ok(crate::model::ModelConfig::from_metadata(file.metadata())?.n_layers)
}

impl LogitSource for LocalSource {
    type Error = StepError;

    fn n_vocab(&self) -> usize {
        self.body.config().vocab_size
    }

    fn logits(
        &mut self,
        tokens: &[u32],
        rows: Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), StepError> {
        if rows.end > tokens.len() || rows.is_empty() {
            return Err(StepError::Empty);
        }
        const SESSION: u64 = 0;
        self.body.open_session(SESSION, tokens.len())?;
        let e = self.body.config().n_embd;
        self.rows.clear();
        let mut result = Ok(());
        for (i, step) in tokens.chunks(self.batch).enumerate() {
            // Every position runs, as in llama.cpp, even those after the last row asked
            // for: the shape of each step stays the one a caller chose with `batch`.
            let pos = i * self.batch;
            result = self
                .body
                .forward(SESSION, pos, Input::Tokens(step), &mut self.hidden)
                .map(|_| ());
            if result.is_err() {
                break;
            }
            let keep = rows.start.max(pos)..rows.end.min(pos + step.len());
            if !keep.is_empty() {
                let (a, b) = (keep.start - pos, keep.end - pos);
                self.rows.extend_from_slice(&self.hidden[a * e..b * e]);
            }
        }
        self.body.close_session(SESSION);
        result?;
        self.head.logits_each(&self.rows, out)
    }
}
