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

/// Runs [`one_head`] with the x86 kernels when the CPU has AVX2, FMA and F16C, else with
/// the portable ones; both give the same bits (tested below).
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
    if x86::available() {
        // SAFETY: the features `x86::Avx2` needs were detected on the line above.
        return unsafe { x86::one_head_avx2(shape, q, k, v, h, pos, out) };
    }
    one_head::<Portable>(shape, q, k, v, h, pos, out);
}

/// The three inner loops of attention over f16 rows.
trait Kernels {
    /// f16 dot product in ggml's AVX-512 summation order.
    fn dot(a: &[f16], b: &[f16]) -> f32;
    /// `y *= s`, rounding to f16.
    fn scale(y: &mut [f16], s: f32);
    /// `y += x * s` (fused), rounding to f16.
    fn mad(y: &mut [f16], x: &[f16], s: f32);
}

/// Scalar kernels: the reference, and the path on CPUs without F16C.
struct Portable;

impl Kernels for Portable {
    #[inline(always)]
    fn dot(a: &[f16], b: &[f16]) -> f32 {
        dot_f16(a, b)
    }
    #[inline(always)]
    fn scale(y: &mut [f16], s: f32) {
        scale_f16(y, s)
    }
    #[inline(always)]
    fn mad(y: &mut [f16], x: &[f16], s: f32) {
        mad_f16(y, x, s)
    }
}

#[inline(always)]
fn one_head<K: Kernels>(
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
        let s = K::dot(kr, q16) * shape.scale;
        let mut ms = 1.0f32;
        let mut vs = 1.0f32;
        if s > max {
            ms = crate::mathf::expf(max - s);
            max = s;
            K::scale(acc, ms);
        } else {
            vs = crate::mathf::expf(s - max);
        }
        let vr = &v[j * v_stride + kv_head * hdv..][..hdv];
        K::mad(acc, vr, vs);
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 + F16C versions of the attention loops. The 16-lane accumulators of ggml's
    //! AVX-512 dot are kept as pairs of 8-lane registers, so the bits match on any AVX2 CPU.

    use std::arch::x86_64::*;

    use half::f16;

    use super::{one_head, AttnShape, Kernels};

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    pub(super) struct Avx2;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn one_head_avx2(
        shape: AttnShape,
        q: &[f32],
        k: &[f16],
        v: &[f16],
        h: usize,
        pos: usize,
        out: &mut [f32],
    ) {
        one_head::<Avx2>(shape, q, k, v, h, pos, out);
    }

    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    #[inline(always)]
    unsafe fn store8(p: *mut f16, x: __m256) {
        _mm_storeu_si128(p.cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
    }

    impl Kernels for Avx2 {
        #[inline(always)]
        fn dot(a: &[f16], b: &[f16]) -> f32 {
            let n = a.len().min(b.len());
            let main = n - n % 64;
            // SAFETY: only reached from `one_head_avx2`, whose caller checked the features;
            // every load is inside `a[..main]` / `b[..main]`.
            unsafe {
                let mut acc = [_mm256_setzero_ps(); 8];
                let (pa, pb) = (a.as_ptr(), b.as_ptr());
                for i in (0..main).step_by(64) {
                    for (j, accj) in acc.iter_mut().enumerate() {
                        let off = i + 8 * j;
                        *accj = _mm256_fmadd_ps(load8(pa.add(off)), load8(pb.add(off)), *accj);
                    }
                }
                // acc[2k] / acc[2k+1] are lanes 0..8 / 8..16 of 16-lane accumulator k.
                let lo =
                    _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
                let hi =
                    _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
                let t3 = _mm256_add_ps(hi, lo);
                let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
                let t8 = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
                let r = _mm_add_ss(t8, _mm_movehdup_ps(t8));
                let mut sum = f64::from(_mm_cvtss_f32(r));
                for j in main..n {
                    sum += f64::from(a[j].to_f32() * b[j].to_f32());
                }
                sum as f32
            }
        }

        #[inline(always)]
        fn scale(y: &mut [f16], s: f32) {
            let main = y.len() - y.len() % 8;
            // SAFETY: features checked by the caller of `one_head_avx2`; chunks in bounds.
            unsafe {
                let vs = _mm256_set1_ps(s);
                for i in (0..main).step_by(8) {
                    let p = y.as_mut_ptr().add(i);
                    store8(p, _mm256_mul_ps(load8(p), vs));
                }
            }
            super::scale_f16(&mut y[main..], s);
        }

        #[inline(always)]
        fn mad(y: &mut [f16], x: &[f16], s: f32) {
            let n = y.len().min(x.len());
            let main = n - n % 8;
            // SAFETY: as in `scale`.
            unsafe {
                let vs = _mm256_set1_ps(s);
                for i in (0..main).step_by(8) {
                    let p = y.as_mut_ptr().add(i);
                    store8(p, _mm256_fmadd_ps(load8(x.as_ptr().add(i)), vs, load8(p)));
                }
            }
            super::mad_f16(&mut y[main..n], &x[main..n], s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    fn rows(n: usize, seed: u32) -> Vec<f16> {
        let mut x = seed.wrapping_mul(2654435761) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                f16::from_f32((x % 2001) as f32 / 1000.0 - 1.0)
            })
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_kernels_match_portable_bit_for_bit() {
        if !x86::available() {
            return;
        }
        for n in [8, 16, 64, 100, 128, 256] {
            let (a, b) = (rows(n, 1), rows(n, 2));
            let want = Portable::dot(&a, &b);
            // SAFETY: features checked above; `one_head_avx2` is the only caller in the crate,
            // here we only need the kernels' bits, exercised through a whole head below.
            let shape = AttnShape {
                n_head: 1,
                n_head_kv: 1,
                head_dim: n,
                head_dim_v: n,
                scale: 0.125,
                window: None,
            };
            let pos = 9;
            let k = rows(n * (pos + 1), 3);
            let v = rows(n * (pos + 1), 4);
            let q: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
            let mut slow = vec![0.0; n];
            let mut fast = vec![0.0; n];
            one_head::<Portable>(shape, &q, &k, &v, 0, pos, &mut slow);
            unsafe { x86::one_head_avx2(shape, &q, &k, &v, 0, pos, &mut fast) };
            assert_eq!(
                slow.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "head of {n}"
            );
            assert!(want.is_finite());
        }
    }

    #[test]
    fn sliding_window_masks_old_keys() {
        let shape = AttnShape {
            n_head: 1,
            n_head_kv: 1,
            head_dim: 8,
            head_dim_v: 8,
            scale: 1.0,
            window: Some(2),
        };
        // Values: position j holds j everywhere; with a window of 2 at position 5 only
        // positions 4 and 5 are visible, so the output lies between 4 and 5.
        let k: Vec<f16> = vec![f16::ZERO; 8 * 6];
        let v: Vec<f16> = (0..6)
            .flat_map(|j| vec![f16::from_f32(j as f32); 8])
            .collect();
        let mut out = vec![0.0; 8];
        one_head::<Portable>(shape, &[0.0; 8], &k, &v, 0, 5, &mut out);
        assert!(out.iter().all(|&x| (x - 4.5).abs() < 1e-3), "{out:?}");
    }
}
