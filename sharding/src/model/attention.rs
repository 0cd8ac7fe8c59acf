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
        one_head_dispatch(shape, qh, k, v, h, pos0 + t, o);
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

/// Runs [`one_head`] compiled for FMA when the CPU has it: the fused multiply-adds are part of
/// the numerics, and without the instruction `mul_add` is a slow library call.
fn one_head_dispatch(
    shape: AttnShape,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    h: usize,
    pos: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: both features were detected on the line above.
        return unsafe { one_head_fma(shape, q, k, v, h, pos, out) };
    }
    one_head(shape, q, k, v, h, pos, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,f16c")]
unsafe fn one_head_fma(
    shape: AttnShape,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    h: usize,
    pos: usize,
    out: &mut [f32],
) {
    one_head(shape, q, k, v, h, pos, out);
}

#[inline(always)]
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
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, &a) in out.iter_mut().zip(acc.iter()) {
        *o = a.to_f32() * inv;
    }
}

/// f16 dot product summed in ggml's AVX-512 order: four 16-lane accumulators fed 64
/// elements at a time, folded (0+2, 1+3, 0+1), then the lanes reduced as a tree.
#[inline(always)]
fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    let n = a.len();
    let main = n - n % 64;
    let mut acc = [[0.0f32; 16]; 4];
    for i in (0..main).step_by(64) {
        for (k, lanes) in acc.iter_mut().enumerate() {
            for (l, lane) in lanes.iter_mut().enumerate() {
                let j = i + 16 * k + l;
                *lane = a[j].to_f32().mul_add(b[j].to_f32(), *lane);
            }
        }
    }
    let mut x = [0.0f32; 16];
    for l in 0..16 {
        x[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let mut t3 = [0.0f32; 8];
    for i in 0..8 {
        t3[i] = x[8 + i] + x[i];
    }
    let t6 = [t3[4] + t3[0], t3[5] + t3[1], t3[6] + t3[2], t3[7] + t3[3]];
    let mut sum = f64::from((t6[0] + t6[2]) + (t6[1] + t6[3]));
    for j in main..n {
        sum += f64::from(a[j].to_f32() * b[j].to_f32());
    }
    sum as f32
}

#[inline(always)]
fn scale_f16(y: &mut [f16], s: f32) {
    for v in y {
        *v = f16::from_f32(v.to_f32() * s);
    }
}

#[inline(always)]
fn mad_f16(y: &mut [f16], x: &[f16], s: f32) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a = f16::from_f32(b.to_f32().mul_add(s, a.to_f32()));
    }
}
