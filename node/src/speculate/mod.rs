//! Speculative decoding through the pipeline: drafts proposed at the head, verified by the
//! whole ring in one pass, so a pass's hops are paid once for up to `k + 1` tokens.
//!
//! - [`ngram`]: prompt lookup (no model);
//! - [`draft`]: a small GGUF with the same vocabulary, run at the head;
//! - [`adaptive`]: how many drafts a pass should carry;
//! - `run`: a request's decoding with speculation ([`Speculation`]).
//!
//! Greedy output is the plain decoding's, token for token: a verification row is computed
//! exactly as a single-row step is, and a draft is kept only when it is the token the
//! sampler picks. With temperature, drafts are accepted by the speculative-sampling rule,
//! which leaves the tokens' distribution unchanged.

pub mod adaptive;
pub mod draft;
pub mod ngram;
mod run;

pub use adaptive::AdaptiveK;
pub use draft::{DraftModel, DraftSession};
pub use ngram::Ngram;
pub use run::{Speculation, StepError};

/// How the head drafts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No drafts: one token per pass.
    Off,
    /// Prompt lookup: n-grams of the prompt and the output propose what followed them.
    #[default]
    Ngram,
    /// A draft model (`--draft-model`) proposes its greedy continuation.
    Draft,
}

/// Most drafts one pass carries (rejected positions roll back at most this far).
pub const MAX_DRAFTS: usize = 8;
const _: () = assert!(MAX_DRAFTS < crate::pipeline::protocol::MAX_ROLLBACK);

/// A request's drafter.
pub enum Drafter {
    /// Prompt lookup.
    Ngram(Ngram),
    /// A draft model's session.
    Model(DraftSession),
}

impl Drafter {
    /// Up to `k` drafts after the tokens decided so far, into `out`.
    pub fn propose(&mut self, k: usize, out: &mut Vec<u32>) {
        match self {
            Drafter::Ngram(n) => n.propose(k, out),
            Drafter::Model(m) => m.propose(k, out),
        }
    }

    /// Which kind of proposal comes next, before it is made: drafts of one kind are kept
    /// about as often as each other, so the controller tracks each kind's acceptance apart.
    /// For prompt lookup, the length of the matched ending (`1..=`[`ngram::MAX_N`]); for a
    /// draft model, 0. `None`: there is nothing to propose.
    pub fn outlook(&mut self) -> Option<usize> {
        match self {
            Drafter::Ngram(n) => n.match_len(),
            Drafter::Model(_) => Some(0),
        }
    }

    /// The decided tokens grew by `tokens`.
    pub fn extend(&mut self, tokens: &[u32]) {
        match self {
            Drafter::Ngram(n) => n.extend(tokens),
            Drafter::Model(m) => m.extend(tokens),
        }
    }
}

/// What a request's speculation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Passes through the ring.
    pub passes: u64,
    /// Drafts sent for verification.
    pub drafted: u64,
    /// Drafts kept.
    pub accepted: u64,
    /// Drafts chosen for the latest pass.
    pub k: usize,
}
