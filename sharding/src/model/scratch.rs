//! Buffers reused across forward calls, so that decoding allocates nothing per token.

use super::config::ModelConfig;
use super::matmul::AlignedBuf;

#[derive(Default)]
pub(crate) struct Scratch {
    rows: usize,
    pub(crate) cur: Vec<f32>,
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) att: Vec<f32>,
    pub(crate) gate: Vec<f32>,
    pub(crate) up: Vec<f32>,
    /// Rotary cos/sin per position of the current batch, full-attention base.
    pub(crate) angles: Vec<f32>,
    /// Same for the sliding-window base.
    pub(crate) angles_swa: Vec<f32>,
    pub(crate) qbuf: AlignedBuf,
    pub(crate) qbuf2: AlignedBuf,
}

impl Scratch {
    /// Makes every buffer large enough for `n` positions.
    pub(crate) fn ensure(&mut self, cfg: &ModelConfig, n: usize) {
        if n <= self.rows {
            return;
        }
        self.rows = n;
        self.cur.resize(n * cfg.n_embd, 0.0);
        self.q.resize(n * cfg.n_head * cfg.head_dim, 0.0);
        self.k.resize(n * cfg.n_head_kv * cfg.head_dim, 0.0);
        self.v.resize(n * cfg.n_head_kv * cfg.head_dim_v, 0.0);
        self.att.resize(n * cfg.n_head * cfg.head_dim_v, 0.0);
        self.gate.resize(n * cfg.n_ff, 0.0);
        self.up.resize(n * cfg.n_ff, 0.0);
        self.angles.resize(n * cfg.rope_dim, 0.0);
        self.angles_swa.resize(n * cfg.rope_dim, 0.0);
    }
}
