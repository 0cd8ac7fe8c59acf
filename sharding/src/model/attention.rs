//! Causal self-attention over the f16 cache, with llama.cpp's CPU flash-attention numerics:
//! the query rounded to f16, f16·f16 scores, an online softmax, and the weighted sum of values
//! accumulated in f16. Matching these roundings is what keeps greedy tokens identical.

use half::f16;
use rayon::prelude::*;

/// Shape of one attention call.
#[derive(Clone, Copy)]
pub(crate) struct AttnShape {
    pub(crate) n_head: usize,
    pub(crate) n_head_kv: usize,
    pub(crate) head_dim: usize,
    pub(crate) head_dim_v: usize,
    pub(crate) scale: f32,
    /// Keys further back than this many positions are masked (sliding-window layers).
    pub(crate) window: Option<usize>,
}

/// Attention for `n` new positions starting at `pos0`. `q` is `[n][n_head][head_dim]`,
/// `k`/`v` the layer cache (holding positions `0..pos0 + n`), `out` is `[n][n_head][head_dim_v]`.
pub(crate) fn attend(
    shape: AttnShape,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    pos0: usize,
    out: &mut [f32],
    pool: &rayon::ThreadPool,
) {
    let hd = shape.head_dim;
    let hdv = shape.head_dim_v;
    let n = q.len() / (shape.n_head * hd);
    let work = |(idx, o): (usize, &mut [f32])| {
        let t = idx / shape.n_head;
        let h = idx % shape.n_head;
        let qh = &q[idx * hd..(idx + 1) * hd];
        one_head(shape, qh, k, v, h, pos0 + t, o);
    };
    let cells = n * shape.n_head;
    let positions = pos0 + n;
    // Splitting pays only when there is enough work per task.
    if pool.current_num_threads() > 1 && cells * positions * hd >= 1 << 16 {
        pool.install(|| out.par_chunks_mut(hdv).enumerate().for_each(work));
    } else {
        out.chunks_mut(hdv).enumerate().for_each(work);
    }
}

fn one_head(
    shape: AttnShape,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    h: usize,
    pos: usize,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let hdv = shape.head_dim_v;
    let kv_head = h / (shape.n_head / shape.n_head_kv);
    let k_stride = shape.n_head_kv * hd;
    let v_stride = shape.n_head_kv * hdv;
    let first = match shape.window {
        Some(w) => (pos + 1).saturating_sub(w),
        None => 0,
    };
    let mut q16 = [f16::ZERO; 512];
    let q16 = &mut q16[..hd];
    for (d, &s) in q16.iter_mut().zip(q) {
        *d = f16::from_f32(s);
    }
    let mut acc = [f16::ZERO; 512];
    let acc = &mut acc[..hdv];
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0.0f32;
    for j in first..=pos {
        let kr = &k[j * k_stride + kv_head * hd..][..hd];
        let s = dot_f16(kr, q16) * shape.scale;
        let mut ms = 1.0f32;
        let mut vs = 1.0f32;
        if s > max {
            ms = (max - s).exp();
            max = s;
            scale_f16(acc, ms);
        } else {
            vs = (s - max).exp();
        }
        let vr = &v[j * v_stride + kv_head * hdv..][..hdv];
        mad_f16(acc, vr, vs);
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, &a) in out.iter_mut().zip(acc.iter()) {
        *o = a.to_f32() * inv;
    }
}

fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    let mut s = 0.0f32;
    for (&x, &y) in a.iter().zip(b) {
        s += x.to_f32() * y.to_f32();
    }
    s
}

fn scale_f16(y: &mut [f16], s: f32) {
    for v in y {
        *v = f16::from_f32(v.to_f32() * s);
    }
}

fn mad_f16(y: &mut [f16], x: &[f16], s: f32) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a = f16::from_f32(b.to_f32().mul_add(s, a.to_f32()));
    }
}
