//! Measuring a model the way llama.cpp's `llama-perplexity` does, so Shoal's figures and
//! llama.cpp's compare directly: perplexity over a text in chunks of `n_ctx` tokens (each
//! scored on its second half), and KL divergence against a base model's log-probabilities
//! stored in llama.cpp's own file format.
//!
//! - [`logits_file`]: the `--kl-divergence-base` file, read and written;
//! - [`stats`]: the running sums and the figures made from them;
//! - [`source`]: [`LogitSource`], what the evaluator asks for logits, and [`LocalSource`];
//! - [`run`]: the chunk loop ([`perplexity`], [`kl_divergence`]);
//! - [`report`]: llama-perplexity's printed layout.

pub mod logits_file;
pub mod report;
pub mod run;
pub mod source;
pub mod stats;

pub use logits_file::{BaseReader, BaseWriter, LogitsFileError};
pub use run::{chunk_count, kl_divergence, perplexity, tokenize_text};
pub use source::{LocalSource, LogitSource};
pub use stats::{KlDivergence, Nll};

/// Why an evaluation could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The text is too short for even one chunk's worth of comparison.
    #[error("the text tokenizes to {have} tokens; a context of {n_ctx} needs at least {need}")]
    NotEnoughTokens {
        /// Tokens in the text.
        have: usize,
        /// Tokens needed (two contexts, as llama-perplexity asks).
        need: usize,
        /// The context.
        n_ctx: usize,
    },
    /// A context too small to score any position.
    #[error("a context of {0} positions scores nothing (at least 4 are needed)")]
    ContextTooSmall(usize),
    /// The base file was made with another vocabulary.
    #[error("the base has a vocabulary of {base}, this model {model}")]
    VocabMismatch {
        /// The base file's vocabulary.
        base: usize,
        /// The model's.
        model: usize,
    },
    /// The base-logits file failed.
    #[error(transparent)]
    LogitsFile(#[from] LogitsFileError),
    /// The logit source failed.
    #[error("evaluating chunk {chunk}: {error}")]
    Source {
        /// The chunk (from 1).
        chunk: usize,
        /// What failed.
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The source returned the wrong number of logits.
    #[error("the source returned {got} logits for {rows} rows of {n_vocab}")]
    SourceShape {
        /// Floats returned.
        got: usize,
        /// Rows asked for.
        rows: usize,
        /// Vocabulary.
        n_vocab: usize,
    },
}
