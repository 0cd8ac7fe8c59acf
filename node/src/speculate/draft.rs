//! A draft model at the head: a small GGUF with the same vocabulary as the served model,
//! whole on this node, proposing its greedy continuation. Each request has a session in it;
//! the drafts it ran are rolled back after every proposal, so its cache holds only decided
//! tokens.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context};
use sharding::gguf::GgufFile;
use sharding::model::{Input, Shard, ShardOptions, ShardSpec};
use sharding::tokenizer::Tokenizer;
use tracing::warn;

/// A loaded draft model, shared by the requests of a head.
#[derive(Clone)]
pub struct DraftModel {
    shard: Arc<Mutex<Shard>>,
    next_session: Arc<AtomicU64>,
}

impl DraftModel {
    /// Loads `path` whole and checks that its vocabulary is `served`'s, token for token.
    pub fn load(
        path: &Path,
        served: &Tokenizer,
        threads: usize,
        context: usize,
    ) -> anyhow::Result<Self> {
        let file = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
        let tokenizer =
            Tokenizer::from_gguf(file.metadata()).context("the draft model's tokenizer")?;
        ensure!(
            tokenizer.n_vocab() == served.n_vocab()
                && (0..served.n_vocab() as u32).all(|id| tokenizer.piece(id) == served.piece(id)),
            "the draft model {} has another vocabulary than the served model ({} tokens against {}): \
             drafts would be other tokens",
            path.display(),
            tokenizer.n_vocab(),
            served.n_vocab()
        );
        let n_layers = sharding::model::ModelConfig::from_metadata(file.metadata())?.n_layers;
        let options = ShardOptions {
            threads,
            max_context: context,
            ..ShardOptions::default()
        };
        let shard = Shard::load(&file, ShardSpec::full(n_layers), options)?;
        Ok(DraftModel {
            shard: Arc::new(Mutex::new(shard)),
            next_session: Arc::new(AtomicU64::new(1)),
        })
    }

    /// A session for one request whose prompt is `prompt`.
    pub fn session(&self, prompt: &[u32]) -> DraftSession {
        DraftSession {
            model: self.clone(),
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            tokens: prompt.to_vec(),
            cached: 0,
            open: false,
            failed: false,
            logits: Vec::new(),
        }
    }
}

/// One request's state in the draft model.
pub struct DraftSession {
    model: DraftModel,
    id: u64,
    /// The decided tokens.
    tokens: Vec<u32>,
    /// How many of them the draft model's cache holds.
    cached: usize,
    open: bool,
    /// The draft model failed (its context is full, say): no more drafts.
    failed: bool,
    logits: Vec<f32>,
}

impl DraftSession {
    /// The decided tokens grew by `tokens`.
    pub fn extend(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// Up to `k` greedy drafts after the decided tokens, into `out`.
    pub fn propose(&mut self, k: usize, out: &mut Vec<u32>) {
        out.clear();
        if k == 0 || self.failed {
            return;
        }
        let model = self.model.shard.clone();
        let run = || {
            let mut shard = model.lock().unwrap_or_else(|e| e.into_inner());
            self.run(&mut shard, k, out)
        };
        let result = crate::blocking::run_blocking(run);
        if let Err(e) = result {
            warn!(error = %e, "the draft model failed; this request goes on without drafts");
            self.failed = true;
            out.clear();
        }
    }

    fn run(&mut self, shard: &mut Shard, k: usize, out: &mut Vec<u32>) -> anyhow::Result<()> {
        if !self.open {
            shard.open_session(self.id, 0)?;
            self.open = true;
        }
        // Feed what was decided since the last proposal (its drafts were rolled back).
        let fresh = &self.tokens[self.cached..];
        ensure!(!fresh.is_empty(), "nothing decided since the last proposal");
        shard.forward(self.id, self.cached, Input::Tokens(fresh), &mut self.logits)?;
        self.cached = self.tokens.len();
        let mut pos = self.cached;
        for i in 0..k {
            let next = argmax(&self.logits);
            out.push(next);
            if i + 1 < k {
                shard.forward(self.id, pos, Input::Tokens(&[next]), &mut self.logits)?;
                pos += 1;
            }
        }
        shard.truncate_session(self.id, self.cached)?;
        Ok(())
    }
}

impl Drop for DraftSession {
    fn drop(&mut self) {
        if self.open {
            let mut shard = self.model.shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.close_session(self.id);
        }
    }
}

/// The id of the largest logit, the lowest on ties.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}
