//! AVX2 kernels for one K-quant weight row against four Q8_K activation rows (prefill).
//!
//! Each weight block is unpacked once (quants, 6-bit scales, their word-broadcast shuffles)
//! and used for all four rows. Per row, the operations and their order are exactly those of
//! the one-row kernels in `kquants.rs`, so every result is bit-identical to a `vec_dot` call.
//!
//! Every `unsafe fn` here needs its `target_feature`s; `kquants::kernels` hands out the safe
//! wrappers only after `is_x86_feature_detected!` confirmed them.

use std::arch::x86_64::*;

use super::kquants::{
    f16_at, f16_pair_at, hsum_epi32_128, hsum_epi32_256, hsum_ps, mins_dot, q6k_half, q6k_offset,
    q6k_scale_mask, q8k_d, scales_mins_k4, super_blocks, word_broadcast_mask, Q4K_BYTES, Q6K_BYTES,
    Q8K_BSUMS, Q8K_BYTES, Q8K_QS,
};
use crate::quant::scalar::q4k_accumulate;
use crate::quant::GgmlType;

/// Super-blocks of the row and the four activation pointers, after checking every length.
///
/// # Panics
/// When a row does not hold exactly `n` elements of its type (see `kquants::super_blocks`).
pub(super) fn rows4(ty: GgmlType, n: usize, weights: &[u8], activations: &[&[u8]; 4]) -> usize {
    for a in activations {
        super_blocks(ty, n, weights, a);
    }
    n / crate::quant::blocks::QK_K
}

pub(super) fn vec_dot_4_q4k_avx2(
    n: usize,
    weights: &[u8],
    activations: [&[u8]; 4],
    out: &mut [f32; 4],
) {
    let nb = rows4(GgmlType::Q4_K, n, weights, &activations);
    let a = activations.map(<[u8]>::as_ptr);
    // SAFETY: `kernels` hands this out only with AVX2 + FMA + F16C detected; lengths checked above.
    unsafe { q4k_4_avx2(nb, weights.as_ptr(), a, out) }
}

/// # Safety
/// `w` must hold `nb` Q4_K blocks and every `a[r]` `nb` Q8_K blocks; AVX2, FMA and F16C must
/// be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_4_avx2(nb: usize, w: *const u8, a: [*const u8; 4], out: &mut [f32; 4]) {
    let nibble = _mm256_set1_epi8(0x0F);
    let (mut acc, mut acc_min) = ([0.0f32; 4], [0.0f32; 4]);
    for i in 0..nb {
        let wb = w.add(i * Q4K_BYTES);
        let ab = a.map(|p| p.add(i * Q8K_BYTES));
        let (d, dmin) = f16_pair_at(wb);
        let (sc, mn) = scales_mins_k4(&*wb.add(4).cast::<[u8; 12]>());
        let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        let mut isum = [_mm256_setzero_si256(); 4];
        for j in 0..4 {
            let q4 = _mm256_loadu_si256(wb.add(16 + 32 * j).cast());
            let lo = _mm256_and_si256(q4, nibble);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), nibble);
            let s_lo = _mm256_shuffle_epi8(scales, word_broadcast_mask(2 * j as i16));
            let s_hi = _mm256_shuffle_epi8(scales, word_broadcast_mask(2 * j as i16 + 1));
            for r in 0..4 {
                let y_lo = _mm256_loadu_si256(ab[r].add(Q8K_QS + 64 * j).cast());
                let y_hi = _mm256_loadu_si256(ab[r].add(Q8K_QS + 64 * j + 32).cast());
                // u4 * i8 pair sums stay below 2 * 15 * 128: maddubs cannot saturate.
                let p_lo = _mm256_maddubs_epi16(lo, y_lo);
                let p_hi = _mm256_maddubs_epi16(hi, y_hi);
                isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(p_lo, s_lo));
                isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(p_hi, s_hi));
            }
        }
        for r in 0..4 {
            let dy = q8k_d(ab[r]);
            let m = hsum_epi32_128(mins_dot(ab[r].add(Q8K_BSUMS), mn));
            let (dd, dm) = (d * dy, dmin * dy);
            let isum = hsum_epi32_256(isum[r]);
            q4k_accumulate(&mut acc[r], &mut acc_min[r], isum, m, dd, dm);
        }
    }
    for r in 0..4 {
        out[r] = acc[r] - acc_min[r];
    }
}

pub(super) fn vec_dot_4_q6k_avx2(
    n: usize,
    weights: &[u8],
    activations: [&[u8]; 4],
    out: &mut [f32; 4],
) {
    let nb = rows4(GgmlType::Q6_K, n, weights, &activations);
    let a = activations.map(<[u8]>::as_ptr);
    // SAFETY: `kernels` hands this out only with AVX2 + FMA + F16C detected; lengths checked above.
    unsafe { q6k_4_avx2(nb, weights.as_ptr(), a, out) }
}

/// # Safety
/// `w` must hold `nb` Q6_K blocks and every `a[r]` `nb` Q8_K blocks; AVX2, FMA and F16C must
/// be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_4_avx2(nb: usize, w: *const u8, a: [*const u8; 4], out: &mut [f32; 4]) {
    // Even and odd 32-element groups apart, as in the one-row kernel.
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    for i in 0..nb {
        let wb = w.add(i * Q6K_BYTES);
        let ab = a.map(|p| p.add(i * Q8K_BYTES));
        let d = f16_at(wb.add(208));
        let mut isum = ab.map(|p| {
            [
                _mm256_sub_epi32(
                    _mm256_setzero_si256(),
                    q6k_offset(wb.add(192), p.add(Q8K_BSUMS)),
                ),
                _mm256_setzero_si256(),
            ]
        });
        for half in 0..2 {
            let q = q6k_half(wb.add(64 * half), wb.add(128 + 32 * half));
            let sc8 = _mm_loadl_epi64(wb.add(192 + 8 * half).cast());
            let scales = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(sc8));
            for (g, qg) in q.iter().enumerate() {
                let s = _mm256_shuffle_epi8(scales, q6k_scale_mask(g));
                for r in 0..4 {
                    let y = _mm256_loadu_si256(ab[r].add(Q8K_QS + 128 * half + 32 * g).cast());
                    // u6 * i8 pair sums stay below 2 * 63 * 128: no saturation.
                    let p = _mm256_maddubs_epi16(*qg, y);
                    let sum = &mut isum[r][g % 2];
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, s));
                }
            }
        }
        for r in 0..4 {
            let dd = _mm256_set1_ps(d * q8k_d(ab[r]));
            for k in 0..2 {
                acc[r][k] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(isum[r][k]), acc[r][k]);
            }
        }
    }
    for r in 0..4 {
        out[r] = hsum_ps(_mm256_add_ps(acc[r][0], acc[r][1]));
    }
}

/// Test helpers shared with the AVX-512 four-row kernels' tests.
#[cfg(test)]
pub(super) mod testing {
    use proptest::prelude::*;

    use super::super::kquants::{Q8K_BSUMS, Q8K_BYTES, Q8K_QS};
    use crate::quant::blocks::QK_K;
    use crate::quant::scalar::kquant_testing::{case, check_dot};
    use crate::quant::{GgmlType, VecDot4Fn, VecDotFn};

    /// Like `case`, but with extreme scales in every block: the weights' `d` (and `dmin`)
    /// among the largest finite `f16`, the smallest subnormal and normal ones, zeros and
    /// ordinary values, both signs; the activations' `d` among huge, tiny, subnormal and
    /// ordinary `f32`s. Products of the two overflow to infinity or vanish, so dot products
    /// may be infinite or NaN: fit for bit-for-bit comparisons of two kernels only.
    pub(in super::super) fn extreme_case(
        ty: GgmlType,
    ) -> impl Strategy<Value = (usize, Vec<u8>, Vec<u8>)> {
        const F16_BITS: [u16; 9] = [
            0x7BFF, 0xFBFF, 0x0001, 0x8001, 0x0400, 0x0000, 0x8000, 0x3C00, 0xAE66,
        ];
        const F32S: [f32; 9] = [
            3.0e38,
            -3.0e38,
            1.0e20,
            f32::MIN_POSITIVE,
            -1.0e-40,
            f32::from_bits(1),
            0.0,
            0.5,
            -7.25e-3,
        ];
        case(ty)
            .prop_flat_map(|(n, w, a)| {
                let nb = n / QK_K;
                (
                    Just((n, w, a)),
                    prop::collection::vec(prop::sample::select(&F16_BITS[..]), 2 * nb),
                    prop::collection::vec(prop::sample::select(&F32S[..]), nb),
                )
            })
            .prop_map(move |((n, mut w, mut a), halves, ds)| {
                for (b, h) in w.chunks_exact_mut(ty.block_bytes()).zip(halves.chunks(2)) {
                    if ty == GgmlType::Q6_K {
                        b[208..210].copy_from_slice(&h[0].to_le_bytes());
                    } else {
                        b[0..2].copy_from_slice(&h[0].to_le_bytes());
                        b[2..4].copy_from_slice(&h[1].to_le_bytes());
                    }
                }
                for (b, d) in a.chunks_exact_mut(Q8K_BYTES).zip(ds) {
                    b[0..4].copy_from_slice(&d.to_le_bytes());
                }
                (n, w, a)
            })
    }

    /// Four valid activation rows: the case's row and three made from it by rotating each
    /// block's quants (sums recomputed) and nudging its `d`.
    fn four_rows(a: &[u8]) -> [Vec<u8>; 4] {
        std::array::from_fn(|r| {
            let mut row = a.to_vec();
            for b in row.chunks_exact_mut(Q8K_BYTES) {
                b[Q8K_QS..Q8K_BSUMS].rotate_left(37 * r);
                for k in 0..16 {
                    let at = Q8K_QS + 16 * k;
                    let sum: i32 = b[at..at + 16].iter().map(|&q| i32::from(q as i8)).sum();
                    let to = Q8K_BSUMS + 2 * k;
                    b[to..to + 2].copy_from_slice(&(sum as i16).to_le_bytes());
                }
                // Lowest mantissa byte of the f32 scale: a slightly different `d`.
                b[0] = b[0].wrapping_add(r as u8);
            }
            row
        })
    }

    /// `dot4` equals four calls of the one-row SIMD kernel `dot` bit for bit (infinities and
    /// NaNs included); returns the four activation rows.
    pub(in super::super) fn check_dot4_bits(
        ty: GgmlType,
        dot4: VecDot4Fn,
        dot: VecDotFn,
        (n, w, a): &(usize, Vec<u8>, Vec<u8>),
    ) -> [Vec<u8>; 4] {
        let rows = four_rows(a);
        let mut out = [f32::NAN; 4];
        dot4(*n, w, [&rows[0], &rows[1], &rows[2], &rows[3]], &mut out);
        for (r, row) in rows.iter().enumerate() {
            let want = dot(*n, w, row);
            assert_eq!(
                out[r].to_bits(),
                want.to_bits(),
                "{ty} row {r}: {} vs {want}",
                out[r]
            );
        }
        rows
    }

    /// [`check_dot4_bits`], and each row within rounding of the scalar reference.
    pub(in super::super) fn check_dot4(
        ty: GgmlType,
        dot4: VecDot4Fn,
        dot: VecDotFn,
        c: &(usize, Vec<u8>, Vec<u8>),
    ) {
        for row in check_dot4_bits(ty, dot4, dot, c) {
            check_dot(ty, dot, &(c.0, c.1.clone(), row));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::kquants::{has_avx2, vec_dot_q4k_avx2, vec_dot_q6k_avx2};
    use super::testing::{check_dot4, check_dot4_bits, extreme_case};
    use super::*;
    use crate::quant::scalar::kquant_testing::case;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn avx2_q4k_dot4_matches_dot(c in case(GgmlType::Q4_K)) {
            if has_avx2() {
                check_dot4(GgmlType::Q4_K, vec_dot_4_q4k_avx2, vec_dot_q4k_avx2, &c)
            }
        }

        #[test]
        fn avx2_q6k_dot4_matches_dot(c in case(GgmlType::Q6_K)) {
            if has_avx2() {
                check_dot4(GgmlType::Q6_K, vec_dot_4_q6k_avx2, vec_dot_q6k_avx2, &c)
            }
        }

        #[test]
        fn avx2_q4k_dot4_matches_dot_at_extreme_scales(c in extreme_case(GgmlType::Q4_K)) {
            if has_avx2() {
                check_dot4_bits(GgmlType::Q4_K, vec_dot_4_q4k_avx2, vec_dot_q4k_avx2, &c);
            }
        }

        #[test]
        fn avx2_q6k_dot4_matches_dot_at_extreme_scales(c in extreme_case(GgmlType::Q6_K)) {
            if has_avx2() {
                check_dot4_bits(GgmlType::Q6_K, vec_dot_4_q6k_avx2, vec_dot_q6k_avx2, &c);
            }
        }
    }

    #[test]
    #[should_panic(expected = "Q8_K row has the wrong byte length")]
    fn short_activation_row_is_rejected() {
        let n = 256;
        let w = vec![0_u8; Q4K_BYTES];
        let a = vec![0_u8; Q8K_BYTES];
        let short = vec![0_u8; Q8K_BYTES - 1];
        let mut out = [0.0; 4];
        vec_dot_4_q4k_avx2(n, &w, [&a, &a, &a, &short], &mut out);
    }
}
