//! Model hyper-parameters, read from GGUF metadata.

use crate::gguf::{GgufError, Metadata};

/// Transformer families this executor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama, SmolLM2, TinyLlama, Llama 3: RMSNorm, SwiGLU, rotary pairs (x[2i], x[2i+1]).
    Llama,
    /// Qwen2 / Qwen2.5: Llama plus Q/K/V biases, NeoX rotary halves.
    Qwen2,
    /// Gemma 3: embedding scale, QK norm, post-norms, GeGLU, sliding-window layers.
    Gemma3,
}

impl Arch {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "gemma3" => Some(Self::Gemma3),
            _ => None,
        }
    }

    /// The `general.architecture` string.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma3 => "gemma3",
        }
    }
}

/// How rotary embedding pairs dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])` (ggml mode 0; GGUF Llama weights are permuted for it).
    Adjacent,
    /// Halves `(x[i], x[i + d/2])` (ggml NeoX mode).
    Halves,
}

/// Feed-forward gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up`.
    SwiGlu,
    /// `gelu_tanh(gate) * up`.
    GeGlu,
}

/// Why a model's metadata cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `general.architecture` names a family this executor does not run.
    #[error("unsupported architecture {0:?} (supported: llama, qwen2, gemma3)")]
    UnknownArch(String),
    /// A key is missing or has the wrong type.
    #[error(transparent)]
    Metadata(#[from] GgufError),
    /// Values that contradict each other.
    #[error("inconsistent hyper-parameters: {0}")]
    Inconsistent(String),
}

/// Everything the executor needs to know about the model's shape.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Family.
    pub arch: Arch,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Feed-forward inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Per-head size of queries and keys.
    pub head_dim: usize,
    /// Per-head size of values.
    pub head_dim_v: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Trained context length.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Rotary base of full-attention layers.
    pub rope_base: f32,
    /// Rotary base of sliding-window layers.
    pub rope_base_swa: f32,
    /// Dimensions rotated per head.
    pub rope_dim: usize,
    /// Pairing of rotated dimensions.
    pub rope_style: RopeStyle,
    /// Sliding window size for layers that use one.
    pub sliding_window: Option<usize>,
    /// Every `swa_period`-th layer (1-based) is full attention; the rest slide (Gemma 3: 6).
    pub swa_period: usize,
    /// Scale applied to looked-up embeddings (Gemma: sqrt(n_embd)).
    pub embed_scale: Option<f32>,
    /// Scale of attention scores.
    pub attn_scale: f32,

    /// Feed-forward activation.
    pub activation: Activation,
    /// Per-head RMSNorm of Q and K (Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm after attention and after the feed-forward block (Gemma 3).
    pub post_norms: bool,
    /// Q/K/V projections have biases (Qwen2).
    pub qkv_bias: bool,
}

impl ModelConfig {
    /// Reads the configuration of the model described by `meta`.
    pub fn from_metadata(meta: &Metadata) -> Result<Self, ConfigError> {
        let arch_name = meta.str("general.architecture")?;
        let arch =
            Arch::from_name(arch_name).ok_or_else(|| ConfigError::UnknownArch(arch_name.into()))?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let n_embd = meta.usize(&key("embedding_length"))?;
        let n_head = meta.usize(&key("attention.head_count"))?;
        let n_head_kv = meta
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || n_embd % n_head != 0 {
            return Err(ConfigError::Inconsistent(format!(
                "{n_head} heads, {n_head_kv} KV heads, hidden size {n_embd}"
            )));
        }
        let head_dim = meta
            .opt_usize(&key("attention.key_length"))?
            .unwrap_or(n_embd / n_head);
        let head_dim_v = meta
            .opt_usize(&key("attention.value_length"))?
            .unwrap_or(head_dim);
        let rope_dim = meta
            .opt_usize(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ConfigError::Inconsistent(format!(
                "rotary dimension {rope_dim} with head size {head_dim}"
            )));
        }
        let vocab_size = match meta.opt_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => meta.strings("tokenizer.ggml.tokens")?.len(),
        };
        let rope_base = meta.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let gemma = arch == Arch::Gemma3;
        Ok(ModelConfig {
            arch,
            n_layers: meta.usize(&key("block_count"))?,
            n_embd,
            n_ff: meta.usize(&key("feed_forward_length"))?,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            vocab_size,
            context_length: meta.usize(&key("context_length"))?,
            rms_eps: meta.f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base,
            rope_base_swa: meta
                .opt_f32(&key("rope.freq_base_swa"))?
                .unwrap_or(if gemma { 10_000.0 } else { rope_base }),
            rope_dim,
            rope_style: match arch {
                Arch::Llama => RopeStyle::Adjacent,
                Arch::Qwen2 | Arch::Gemma3 => RopeStyle::Halves,
            },
            sliding_window: if gemma {
                meta.opt_usize(&key("attention.sliding_window"))?
            } else {
                None
            },
            swa_period: 6,
            embed_scale: gemma.then(|| (n_embd as f32).sqrt()),
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            activation: if gemma {
                Activation::GeGlu
            } else {
                Activation::SwiGlu
            },
            qk_norm: gemma,
            post_norms: gemma,
            qkv_bias: arch == Arch::Qwen2,
        })
    }

    /// Whether layer `il` attends through a sliding window.
    pub fn is_sliding(&self, il: usize) -> bool {
        self.sliding_window.is_some() && (il % self.swa_period) < self.swa_period - 1
    }

    /// Width of the K (and V) rows of one position in one layer.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}
