//! The layer-range executor: a [`Shard`] runs blocks `a..b` of a model, optionally with the
//! token embedding in front and the final norm + output head behind.
//!
//! Running shard `0..k` and then shard `k..n` on the hidden state gives bit-identical results
//! to one shard `0..n`: every operation is row-local or per-position, the kernels do not
//! depend on how many threads run them, and the cache is per shard and per session. The
//! pipeline and failover (rebuilding a cache by replaying a session's hidden states) rest on
//! that property.

mod attention;
mod block;
mod config;
mod embedding;
mod matmul;
mod ops;
mod scratch;
mod shard;
mod weights;

pub use config::{Activation, Arch, ConfigError, ModelConfig, RopeStyle};
pub use embedding::Embedding;
pub use shard::{BatchError, Input, Output, Shard, ShardOptions, ShardSpec, MAX_BATCH};

use crate::gguf::GgufError;

/// Why a shard could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is unreadable or a tensor is missing or unsupported.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The model's metadata cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A tensor's shape is not what the metadata implies.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Expected dimensions (innermost first).
        expected: Vec<u64>,
        /// Dimensions in the file.
        found: Vec<u64>,
    },
    /// A tensor type that is valid GGUF but has no kernels here.
    #[error("tensor {name:?} has type {ty}, which has no kernels")]
    NoKernels {
        /// Tensor name.
        name: String,
        /// Its type.
        ty: &'static str,
    },
    /// The layer range does not fit the model.
    #[error("layer range {start}..{end} is invalid for a model of {n_layers} layers")]
    BadRange {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Layers in the model.
        n_layers: usize,
    },
    /// Memory for the weights could not be allocated.
    #[error("cannot allocate memory for the weights: {why}")]
    Memory {
        /// The reason.
        why: String,
    },
    /// The worker threads could not be started.
    #[error("cannot start {threads} worker threads: {why}")]
    Threads {
        /// Requested threads.
        threads: usize,
        /// The reason.
        why: String,
    },
}

/// Why a forward step was refused. The shard is unchanged after any of these.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StepError {
    /// No session with this id is open.
    #[error("unknown session {0}")]
    UnknownSession(u64),
    /// A session with this id is already open.
    #[error("session {0} already exists")]
    SessionExists(u64),
    /// The shard holds its maximum number of sessions.
    #[error("too many sessions (limit {0})")]
    TooManySessions(usize),
    /// The requested context exceeds what this shard allows.
    #[error("context of {requested} positions exceeds the limit of {limit}")]
    ContextTooLong {
        /// Positions asked for.
        requested: usize,
        /// The limit.
        limit: usize,
    },
    /// The step would pass the session's context.
    #[error("session {session}: {len} + {adding} positions exceed its context of {max}")]
    ContextFull {
        /// Session id.
        session: u64,
        /// Positions already cached.
        len: usize,
        /// Positions in this step.
        adding: usize,
        /// The session's limit.
        max: usize,
    },
    /// The step does not continue the session where it stands.
    #[error("session {session}: step starts at position {got}, expected {expected}")]
    PositionMismatch {
        /// Session id.
        session: u64,
        /// Next position of the session.
        expected: usize,
        /// Position the step claims.
        got: usize,
    },
    /// Token ids given to a shard without the embedding, or hidden states to one with it.
    #[error("this shard takes {expected} as input")]
    WrongInput {
        /// What the shard expects.
        expected: &'static str,
    },
    /// A hidden state whose length is not a whole number of rows.
    #[error("hidden state of {len} floats is not a multiple of the hidden size {n_embd}")]
    BadHiddenLen {
        /// Floats given.
        len: usize,
        /// Hidden size.
        n_embd: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A step with no positions.
    #[error("empty input")]
    Empty,
    /// No cache is kept under this key (never kept, or evicted), or it holds fewer positions
    /// than asked for: the session must compute them.
    #[error("no kept cache {key} of {len} positions")]
    PrefixMissing {
        /// The key asked for.
        key: u64,
        /// The positions asked for.
        len: usize,
    },
}
