//! Prefill kernels for four weight rows against four activation rows (AVX-512 VNNI), for
//! the formats without a min (Q4_0, Q5_0, Q8_0: the weights of Qwen2 and Gemma 3).
//!
//! A 4×4 tile does per block what [`super::vnni`]'s `dot4` does for one weight row, but
//! shares the activation side across the four weight rows: each activation block is loaded
//! once, its scale converted once, and for the offset formats its `Σ o·a` term (the part of
//! the integer dot that does not depend on the weights) computed once and used as the
//! accumulator `vpdpbusd` starts from. Per (weight row, activation row) pair the block's
//! integer lanes are exact and the float steps are `dot`'s, in the same order, so every
//! result is bit-identical to `vec_dot`.

use std::arch::x86_64::*;

use super::vnni::{activation_quants, weight_quants};
use super::{
    activation_bytes, check_rows, f16_scales4, has_min, hsum, spread4, weight_bytes, Q4_0, Q5_0, QK,
};

/// The unsigned offset format `f`'s quants carry (`q - o` is the weight), 0 for Q8_0.
const fn offset(f: u8) -> i8 {
    match f {
        Q4_0 => 8,
        Q5_0 => 16,
        _ => 0,
    }
}

/// Four weight rows · four activation rows for block format `F` (no min).
pub(in crate::quant::x86) fn dot4x4<const F: u8>(
    n: usize,
    weights: [&[u8]; 4],
    activations: [&[u8]; 4],
    out: &mut [[f32; 4]; 4],
) {
    const { assert!(!has_min(F)) };
    for w in weights {
        check_rows(F, n, w, &activations);
    }
    let w = weights.map(<[u8]>::as_ptr);
    let a = activations.map(<[u8]>::as_ptr);
    // SAFETY: handed out by `table` only at the AVX-512 level, which the CPU was detected to
    // support; every row checked to hold n / QK blocks.
    unsafe { dot4x4_blocks::<F>(n / QK, w, a, out) }
}

/// # Safety
/// The CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; every `w[k]` and `a[r]` holds `nb`
/// blocks of its format.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot4x4_blocks<const F: u8>(
    nb: usize,
    w: [*const u8; 4],
    a: [*const u8; 4],
    out: &mut [[f32; 4]; 4],
) {
    let mut acc = [[_mm256_setzero_ps(); 4]; 4];
    let o = _mm256_set1_epi8(offset(F));
    for i in 0..nb {
        let ab = a.map(|p| p.add(i * activation_bytes(F)));
        let aq = ab.map(|p| activation_quants::<F>(p));
        // -Σ o·a per lane: `dot`'s `Σ q·a - Σ o·a` with the subtraction done first (exact).
        let base = aq.map(|x| {
            if offset(F) == 0 {
                _mm256_setzero_si256()
            } else {
                _mm256_sub_epi32(
                    _mm256_setzero_si256(),
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), o, x),
                )
            }
        });
        let da = spread4(f16_scales4(ab));
        for k in 0..4 {
            let wb = w[k].add(i * weight_bytes(F));
            let q = weight_quants::<F>(wb);
            let dw = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                wb.cast::<i16>().read_unaligned(),
            ))));
            // Q8_0 is signed × signed: the sign moves onto the activations, as in `dot`.
            let qa = if offset(F) == 0 {
                _mm256_abs_epi8(q)
            } else {
                q
            };
            for r in 0..4 {
                let x = if offset(F) == 0 {
                    _mm256_sign_epi8(aq[r], q)
                } else {
                    aq[r]
                };
                let l = _mm256_dpbusd_epi32(base[r], qa, x);
                // d_w · d_a[r]: the same single rounding as `dot`'s scale product.
                let s = _mm256_mul_ps(dw, da[r]);
                acc[k][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(l), s, acc[k][r]);
            }
        }
    }
    for k in 0..4 {
        for r in 0..4 {
            out[k][r] = hsum(acc[k][r]);
        }
    }
}
