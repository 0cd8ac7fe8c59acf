//! One transformer block: weights and the forward pass of a batch of positions.
//!
//! The pass is split in three so that a batch may mix sessions: the projections and the
//! feed-forward run over every row at once, attention per run of rows of one session.

use std::ops::Range;

use super::attention::{attend, AttnShape};
use super::config::{Activation, ModelConfig};
use super::matmul::QMatrix;
use super::ops;
use super::scratch::Scratch;
use super::weights::Weights;
use super::LoadError;
use crate::kv::LayerCache;

pub(crate) struct Block {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
    post_ffn_norm: Option<Vec<f32>>,
    /// Which rotary table this layer uses (sliding layers may have their own base).
    pub(crate) sliding: bool,
}

impl Block {
    pub(crate) fn load(w: &Weights<'_>, cfg: &ModelConfig, il: usize) -> Result<Self, LoadError> {
        let n = |s: &str| format!("blk.{il}.{s}");
        let (e, hd, hdv) = (cfg.n_embd, cfg.head_dim, cfg.head_dim_v);
        let q_dim = cfg.n_head * hd;
        let k_dim = cfg.n_head_kv * hd;
        let v_dim = cfg.n_head_kv * hdv;
        let bias = |s: &str, len| -> Result<Option<Vec<f32>>, LoadError> {
            if cfg.qkv_bias {
                w.vector(&n(s), len).map(Some)
            } else {
                w.opt_vector(&n(s), len)
            }
        };
        let need = |s: &str, len| -> Result<Option<Vec<f32>>, LoadError> {
            w.vector(&n(s), len).map(Some)
        };
        Ok(Block {
            attn_norm: w.vector(&n("attn_norm.weight"), e)?,
            wq: w.matrix(&n("attn_q.weight"), q_dim, e)?,
            wk: w.matrix(&n("attn_k.weight"), k_dim, e)?,
            wv: w.matrix(&n("attn_v.weight"), v_dim, e)?,
            wo: w.matrix(&n("attn_output.weight"), e, cfg.n_head * hdv)?,
            bq: bias("attn_q.bias", q_dim)?,
            bk: bias("attn_k.bias", k_dim)?,
            bv: bias("attn_v.bias", v_dim)?,
            q_norm: if cfg.qk_norm {
                need("attn_q_norm.weight", hd)?
            } else {
                None
            },
            k_norm: if cfg.qk_norm {
                need("attn_k_norm.weight", hd)?
            } else {
                None
            },
            post_attn_norm: if cfg.post_norms {
                need("post_attention_norm.weight", e)?
            } else {
                None
            },
            ffn_norm: w.vector(&n("ffn_norm.weight"), e)?,
            gate: w.matrix(&n("ffn_gate.weight"), cfg.n_ff, e)?,
            up: w.matrix(&n("ffn_up.weight"), cfg.n_ff, e)?,
            down: w.matrix(&n("ffn_down.weight"), e, cfg.n_ff)?,
            post_ffn_norm: if cfg.post_norms {
                need("post_ffw_norm.weight", e)?
            } else {
                None
            },
            sliding: cfg.is_sliding(il),
        })
    }

    /// The block's weight matrices, for relocation into the shard's arena.
    pub(crate) fn matrices_mut(&mut self) -> [&mut QMatrix; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }

    /// Bytes of weights this block reads per token.
    pub(crate) fn weight_bytes(&self) -> usize {
        [
            &self.wq, &self.wk, &self.wv, &self.wo, &self.gate, &self.up, &self.down,
        ]
        .iter()
        .map(|m| m.bytes())
        .sum()
    }

    /// Runs the block on `x` (`n` rows of hidden state, positions `pos0..pos0+n`), in place.
    /// The cache must already have room for the new positions.
    pub(crate) fn forward(
        &self,
        cfg: &ModelConfig,
        x: &mut [f32],
        pos0: usize,
        cache: &mut LayerCache,
        s: &mut Scratch,
        pool: &rayon::ThreadPool,
    ) {
        let n = x.len() / cfg.n_embd;
        self.project(cfg, x, s, pool);
        self.attend_rows(cfg, 0..n, pos0, cache, s, pool);
        self.finish(cfg, x, s, pool);
    }

    /// First part of [`Block::forward`], over every row of `x` whatever session it belongs
    /// to: the normalized queries, keys and values into `s.q`, `s.k`, `s.v`, rotated with
    /// row `t`'s angles from `s.angles` / `s.angles_swa`.
    pub(crate) fn project(
        &self,
        cfg: &ModelConfig,
        x: &[f32],
        s: &mut Scratch,
        pool: &rayon::ThreadPool,
    ) {
        let e = cfg.n_embd;
        let n = x.len() / e;
        let hd = cfg.head_dim;
        let k_dim = cfg.n_head_kv * hd;
        let v_dim = cfg.n_head_kv * cfg.head_dim_v;
        s.ensure(cfg, n);

        let cur = &mut s.cur[..n * e];
        cur.copy_from_slice(x);
        ops::rms_norm(cur, &self.attn_norm, cfg.rms_eps);
        let q = &mut s.q[..n * cfg.n_head * hd];
        let k = &mut s.k[..n * k_dim];
        let v = &mut s.v[..n * v_dim];
        self.wq.quantize_input(cur, &mut s.qbuf);
        let xq = s.qbuf.as_slice();
        self.wq.mul_quantized(xq, n, q, pool);
        for (m, out) in [(&self.wk, &mut *k), (&self.wv, &mut *v)] {
            if m.ty().vec_dot_type() == self.wq.ty().vec_dot_type() {
                m.mul_quantized(xq, n, out, pool);
            } else {
                m.mul(cur, out, &mut s.qbuf2, pool);
            }
        }
        if let Some(b) = &self.bq {
            ops::add_bias(q, b);
        }
        if let Some(b) = &self.bk {
            ops::add_bias(k, b);
        }
        if let Some(b) = &self.bv {
            ops::add_bias(v, b);
        }
        if let Some(w) = &self.q_norm {
            ops::rms_norm(q, w, cfg.rms_eps);
        }
        if let Some(w) = &self.k_norm {
            ops::rms_norm(k, w, cfg.rms_eps);
        }
        let angles = if self.sliding {
            &s.angles_swa
        } else {
            &s.angles
        };
        let per_pos = cfg.rope_dim;
        for t in 0..n {
            let a = &angles[t * per_pos..(t + 1) * per_pos];
            ops::rope(
                &mut q[t * cfg.n_head * hd..][..cfg.n_head * hd],
                hd,
                cfg.rope_dim,
                a,
                cfg.rope_style,
            );
            ops::rope(
                &mut k[t * k_dim..][..k_dim],
                hd,
                cfg.rope_dim,
                a,
                cfg.rope_style,
            );
        }
    }

    /// Middle part of [`Block::forward`] for `rows` of the batch, which are positions
    /// `pos0..pos0 + rows.len()` of one session: stores their keys and values in that
    /// session's `cache` (which must have room) and writes their attention into `s.att`.
    pub(crate) fn attend_rows(
        &self,
        cfg: &ModelConfig,
        rows: Range<usize>,
        pos0: usize,
        cache: &mut LayerCache,
        s: &mut Scratch,
        pool: &rayon::ThreadPool,
    ) {
        let (hd, hdv) = (cfg.head_dim, cfg.head_dim_v);
        let q_dim = cfg.n_head * hd;
        let k_dim = cfg.n_head_kv * hd;
        let v_dim = cfg.n_head_kv * hdv;
        let n = rows.len();
        let k = &s.k[rows.start * k_dim..rows.end * k_dim];
        let v = &s.v[rows.start * v_dim..rows.end * v_dim];
        let kc = &mut cache.k[pos0 * k_dim..(pos0 + n) * k_dim];
        for (d, &x) in kc.iter_mut().zip(k) {
            *d = half::f16::from_f32(x);
        }
        let vc = &mut cache.v[pos0 * v_dim..(pos0 + n) * v_dim];
        for (d, &x) in vc.iter_mut().zip(v) {
            *d = half::f16::from_f32(x);
        }
        let shape = AttnShape {
            n_head: cfg.n_head,
            n_head_kv: cfg.n_head_kv,
            head_dim: hd,
            head_dim_v: hdv,
            scale: cfg.attn_scale,
            window: if self.sliding {
                cfg.sliding_window
            } else {
                None
            },
        };
        let q = &s.q[rows.start * q_dim..rows.end * q_dim];
        let att = &mut s.att[rows.start * cfg.n_head * hdv..rows.end * cfg.n_head * hdv];
        attend(shape, q, &cache.k, &cache.v, pos0, att, pool);
    }

    /// Last part of [`Block::forward`], over every row again: the output projection of
    /// `s.att`, the residual, and the feed-forward, into `x`.
    pub(crate) fn finish(
        &self,
        cfg: &ModelConfig,
        x: &mut [f32],
        s: &mut Scratch,
        pool: &rayon::ThreadPool,
    ) {
        let e = cfg.n_embd;
        let n = x.len() / e;
        let att = &s.att[..n * cfg.n_head * cfg.head_dim_v];
        let cur = &mut s.cur[..n * e];
        self.wo.mul(att, cur, &mut s.qbuf, pool);
        if let Some(w) = &self.post_attn_norm {
            ops::rms_norm(cur, w, cfg.rms_eps);
        }
        ops::add_assign(x, cur);

        // Feed-forward.
        cur.copy_from_slice(x);
        ops::rms_norm(cur, &self.ffn_norm, cfg.rms_eps);
        let gate = &mut s.gate[..n * cfg.n_ff];
        let up = &mut s.up[..n * cfg.n_ff];
        self.gate.quantize_input(cur, &mut s.qbuf);
        let xq = s.qbuf.as_slice();
        self.gate.mul_quantized(xq, n, gate, pool);
        if self.up.ty().vec_dot_type() == self.gate.ty().vec_dot_type() {
            self.up.mul_quantized(xq, n, up, pool);
        } else {
            self.up.mul(cur, up, &mut s.qbuf2, pool);
        }
        match cfg.activation {
            Activation::SwiGlu => ops::swiglu(gate, up),
            Activation::GeGlu => ops::geglu(gate, up),
        }
        self.down.mul(gate, cur, &mut s.qbuf, pool);
        if let Some(w) = &self.post_ffn_norm {
            ops::rms_norm(cur, w, cfg.rms_eps);
        }
        ops::add_assign(x, cur);
    }
}
