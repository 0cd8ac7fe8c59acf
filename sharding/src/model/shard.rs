use std::collections::HashMap;
use std::ops::Range;

use super::block::Block;
use super::config::ModelConfig;
use super::embedding::Embedding;
use super::matmul::QMatrix;
use super::ops;
use super::scratch::Scratch;
use super::weights::Weights;
use super::{LoadError, StepError};
use crate::gguf::GgufFile;
use crate::kv::kept::Kept;
use crate::kv::KvCache;

mod batch;
mod prefix;
mod spec;

pub use batch::{BatchError, MAX_BATCH};
pub use spec::{ShardOptions, ShardSpec};

/// Input of a forward step.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Token ids (for a shard with the embedding).
    Tokens(&'a [u32]),
    /// Hidden states, `n × n_embd` floats (for a shard without it).
    Hidden(&'a [f32]),
}

/// What a forward step wrote into the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Hidden states of every input position (`n × n_embd`).
    Hidden,
    /// Logits of the last input position (`vocab_size`).
    Logits,
}

struct Head {
    norm: Vec<f32>,
    output: QMatrix,
}

/// A contiguous range of a model's layers, ready to run sessions.
pub struct Shard {
    config: ModelConfig,
    spec: ShardSpec,
    embed: Option<Embedding>,
    blocks: Vec<Block>,
    head: Option<Head>,
    rope_freqs: Option<Vec<f32>>,
    sessions: HashMap<u64, KvCache>,
    /// Finished sessions' caches kept for prefix reuse; they count against
    /// `opts.max_sessions` with the open sessions and give way to them.
    kept: Kept,
    opts: ShardOptions,
    pool: rayon::ThreadPool,
    scratch: Scratch,
    hidden: Vec<f32>,
}

impl Shard {
    /// Loads the tensors of `spec` from `file`. Only those tensors' pages are ever touched.
    pub fn load(file: &GgufFile, spec: ShardSpec, opts: ShardOptions) -> Result<Self, LoadError> {
        let config = ModelConfig::from_metadata(file.metadata())?;
        let Range { start, end } = spec.layers;
        if start > end || end > config.n_layers || (start == end && !spec.embed && !spec.head) {
            return Err(LoadError::BadRange {
                start,
                end,
                n_layers: config.n_layers,
            });
        }
        let w = Weights { file };
        let e = config.n_embd;
        let embed_matrix = || w.matrix("token_embd.weight", config.vocab_size, e);
        let embed = if spec.embed {
            Some(embed_matrix()?)
        } else {
            None
        };
        let mut blocks = spec
            .layers
            .clone()
            .map(|il| Block::load(&w, &config, il))
            .collect::<Result<Vec<_>, _>>()?;
        let mut head = if spec.head {
            let output = if file.has_tensor("output.weight") {
                w.matrix("output.weight", config.vocab_size, e)?
            } else {
                embed_matrix()?
            };
            Some(Head {
                norm: w.vector("output_norm.weight", e)?,
                output,
            })
        } else {
            None
        };
        let rope_freqs = w.opt_vector("rope_freqs.weight", config.rope_dim / 2)?;
        // Matrices read whole every token move to anonymous memory; the embedding of a shard
        // without the head stays mapped (only the looked-up rows are ever touched).
        let mut hot: Vec<&mut QMatrix> = blocks.iter_mut().flat_map(Block::matrices_mut).collect();
        if let Some(h) = head.as_mut() {
            hot.push(&mut h.output);
        }
        QMatrix::relocate(&mut hot).map_err(|e| LoadError::Memory { why: e.to_string() })?;
        let tied = !file.has_tensor("output.weight");
        let embed = match (embed, &head) {
            // Tied embeddings: look rows up in the head's copy instead of the file.
            (Some(_), Some(h)) if tied => Some(h.output.clone()),
            (e, _) => e,
        };
        let threads = opts.threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("shoal-shard-{i}"))
            .build()
            .map_err(|e| LoadError::Threads {
                threads,
                why: e.to_string(),
            })?;
        let opts = ShardOptions {
            threads,
            max_context: opts.max_context.min(config.context_length).max(1),
            ..opts
        };
        let embed = embed.map(|table| Embedding::new(table, &config));
        Ok(Shard {
            config,
            spec,
            embed,
            blocks,
            head,
            rope_freqs,
            sessions: HashMap::new(),
            kept: Kept::default(),
            opts,
            pool,
            scratch: Scratch::default(),
            hidden: Vec::new(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// What this shard runs.
    pub fn spec(&self) -> &ShardSpec {
        &self.spec
    }

    /// Effective limits.
    pub fn options(&self) -> &ShardOptions {
        &self.opts
    }

    /// Bytes of weights this shard streams per token (blocks, plus the head's matrix).
    pub fn weight_bytes(&self) -> usize {
        let blocks: usize = self.blocks.iter().map(Block::weight_bytes).sum();
        blocks + self.head.as_ref().map_or(0, |h| h.output.bytes())
    }

    /// Opens a session that may hold up to `max_positions` positions (0: the shard's limit).
    pub fn open_session(&mut self, id: u64, max_positions: usize) -> Result<(), StepError> {
        if self.sessions.contains_key(&id) {
            return Err(StepError::SessionExists(id));
        }
        let max = self.session_limit(max_positions)?;
        self.make_room()?;
        let c = &self.config;
        let cache = KvCache::new(
            self.blocks.len(),
            c.kv_dim(),
            c.n_head_kv * c.head_dim_v,
            max,
        );
        self.sessions.insert(id, cache);
        Ok(())
    }

    /// Closes a session and frees its cache; `false` if it was not open.
    pub fn close_session(&mut self, id: u64) -> bool {
        self.sessions.remove(&id).is_some()
    }

    /// The cache of session `id`.
    pub fn session(&self, id: u64) -> Option<&KvCache> {
        self.sessions.get(&id)
    }

    /// Drops the positions of session `id` from `len` on (e.g. before replaying them).
    pub fn truncate_session(&mut self, id: u64, len: usize) -> Result<(), StepError> {
        let cache = self
            .sessions
            .get_mut(&id)
            .ok_or(StepError::UnknownSession(id))?;
        cache.truncate(len);
        Ok(())
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes the open sessions' KV caches hold now (they grow with their positions), and
    /// the kept ones'.
    pub fn kv_bytes(&self) -> usize {
        self.sessions.values().map(KvCache::bytes).sum::<usize>() + self.kept.bytes()
    }

    /// Looks up (and scales) the embeddings of `tokens` into `out` (`n × n_embd`), without
    /// running any layer: the head of a pipeline embeds, then sends the rows to stage 1.
    pub fn embed(&self, tokens: &[u32], out: &mut Vec<f32>) -> Result<(), StepError> {
        self.embed
            .as_ref()
            .ok_or(StepError::WrongInput {
                expected: "hidden states (this shard has no embedding)",
            })?
            .rows(tokens, out)
    }

    /// The shard's token embedding, to look rows up without holding the shard (`None` when
    /// the shard has no embedding).
    pub fn embedding(&self) -> Option<Embedding> {
        self.embed.clone()
    }

    /// Applies the final norm and output head to the last row of `hidden`, writing
    /// `vocab_size` logits into `out`: the head of a pipeline turns the last stage's hidden
    /// state into the next token.
    pub fn logits(&mut self, hidden: &[f32], out: &mut Vec<f32>) -> Result<(), StepError> {
        let e = self.config.n_embd;
        if hidden.is_empty() || !hidden.len().is_multiple_of(e) {
            return Err(StepError::BadHiddenLen {
                len: hidden.len(),
                n_embd: e,
            });
        }
        self.logits_each(&hidden[hidden.len() - e..], out)
    }

    /// Runs the shard on `input` for positions `pos..pos + n` of session `id`, which must
    /// continue the session exactly where it stands. Writes hidden states of every position,
    /// or the logits of the last one when the shard has the head, into `out`.
    pub fn forward(
        &mut self,
        id: u64,
        pos: usize,
        input: Input<'_>,
        out: &mut Vec<f32>,
    ) -> Result<Output, StepError> {
        let e = self.config.n_embd;
        let n = match (input, &self.embed) {
            (Input::Tokens(t), Some(_)) => {
                let vocab = self.config.vocab_size;
                if let Some(&bad) = t.iter().find(|&&t| t as usize >= vocab) {
                    return Err(StepError::TokenOutOfRange { id: bad, vocab });
                }
                t.len()
            }
            (Input::Hidden(h), None) => {
                if h.len() % e != 0 {
                    return Err(StepError::BadHiddenLen {
                        len: h.len(),
                        n_embd: e,
                    });
                }
                h.len() / e
            }
            (Input::Tokens(_), None) => {
                return Err(StepError::WrongInput {
                    expected: "hidden states",
                })
            }
            (Input::Hidden(_), Some(_)) => {
                return Err(StepError::WrongInput {
                    expected: "token ids",
                })
            }
        };
        if n == 0 {
            return Err(StepError::Empty);
        }
        let cache = self
            .sessions
            .get_mut(&id)
            .ok_or(StepError::UnknownSession(id))?;
        if cache.len() != pos {
            return Err(StepError::PositionMismatch {
                session: id,
                expected: cache.len(),
                got: pos,
            });
        }
        if !cache.reserve(n) {
            return Err(StepError::ContextFull {
                session: id,
                len: cache.len(),
                adding: n,
                max: cache.max_positions(),
            });
        }

        let mut x = std::mem::take(&mut self.hidden);
        match input {
            Input::Tokens(tokens) => self.embed(tokens, &mut x)?,
            Input::Hidden(h) => {
                x.clear();
                x.extend_from_slice(h);
            }
        }
        let cache = self
            .sessions
            .get_mut(&id)
            .ok_or(StepError::UnknownSession(id))?;

        let cfg = &self.config;
        let s = &mut self.scratch;
        s.ensure(cfg, n);
        for t in 0..n {
            row_angles(cfg, self.rope_freqs.as_deref(), t, pos + t, s);
        }
        let pool = &self.pool;
        let blocks = &self.blocks;
        let head = &self.head;
        let result = on_pool(pool, || {
            for (block, layer) in blocks.iter().zip(cache.layers.iter_mut()) {
                block.forward(cfg, &mut x, pos, layer, s, pool);
            }
            cache.commit(n);
            match head {
                None => {
                    out.clear();
                    out.extend_from_slice(&x);
                    Output::Hidden
                }
                Some(head) => {
                    let last = &mut x[(n - 1) * e..];
                    ops::rms_norm(last, &head.norm, cfg.rms_eps);
                    out.clear();
                    out.resize(cfg.vocab_size, 0.0);
                    head.output.mul(last, out, &mut s.qbuf, pool);
                    Output::Logits
                }
            }
        });
        self.hidden = x;
        Ok(result)
    }
}

/// The rotary angles of position `pos` into row `row` of both of `s`'s tables.
/// Runs a whole step on a pool thread, so the matrix products inside split their rows among
/// the workers without waking the calling thread for each of them. A one-thread pool runs it
/// on the calling thread instead: handing it to the lone worker and waiting would cost two
/// thread wakeups per step and gain nothing.
pub(crate) fn on_pool<R: Send>(pool: &rayon::ThreadPool, step: impl FnOnce() -> R + Send) -> R {
    if pool.current_num_threads() <= 1 {
        step()
    } else {
        pool.install(step)
    }
}

fn row_angles(cfg: &ModelConfig, freqs: Option<&[f32]>, row: usize, pos: usize, s: &mut Scratch) {
    let rd = cfg.rope_dim;
    let full = &mut s.angles[row * rd..(row + 1) * rd];
    let swa = &mut s.angles_swa[row * rd..(row + 1) * rd];
    match freqs {
        None => {
            ops::rope_angles(pos, cfg.rope_base, rd, full);
            ops::rope_angles(pos, cfg.rope_base_swa, rd, swa);
        }
        Some(ff) => {
            freq_angles(cfg, ff, pos, full);
            freq_angles(cfg, ff, pos, swa);
        }
    }
}

/// The rotary angles of `pos` with per-pair frequency divisors (Llama 3 `rope_freqs`).
fn freq_angles(cfg: &ModelConfig, ff: &[f32], pos: usize, angles: &mut [f32]) {
    let theta_scale = crate::mathf::powf(cfg.rope_base, -2.0 / cfg.rope_dim as f32);
    let mut theta = pos as f32;
    for (pair, &f) in angles.chunks_exact_mut(2).zip(ff) {
        let th = theta / f;
        pair[0] = crate::mathf::cosf(th);
        pair[1] = crate::mathf::sinf(th);
        theta *= theta_scale;
    }
}
