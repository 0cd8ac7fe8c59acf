//! AVX-512 (VNNI) kernels for one K-quant weight row against four Q8_K activation rows
//! (prefill, batched decode).
//!
//! Each weight block is unpacked once (quants, 6-bit scales, their per-lane spread) and used
//! for all four rows. Per row, the operations and their order are exactly those of the
//! AVX-512 one-row kernels in `kquants.rs`, so every result is bit-identical to a `vec_dot`
//! call on an AVX-512 machine.
//!
//! Every `unsafe fn` here needs its `target_feature`s; `kquants::kernels` hands out the safe
//! wrappers only after `is_x86_feature_detected!` confirmed them.

use std::arch::x86_64::*;

use super::kquants::{
    add_scaled_dot, f16_at, f16_pair_at, hsum_epi32_128, mins_dot, q4k_group_scales,
    q4k_nibbles512, q6k_group_scales, q6k_half, q6k_offset512, q8k_d, scales_mins_k4, Q4K_BYTES,
    Q6K_BYTES, Q8K_BSUMS, Q8K_BYTES, Q8K_QS,
};
use super::kquants4::rows4;
use crate::quant::scalar::q4k_accumulate;
use crate::quant::GgmlType;

pub(super) fn vec_dot_4_q4k_avx512(
    n: usize,
    weights: &[u8],
    activations: [&[u8]; 4],
    out: &mut [f32; 4],
) {
    let nb = rows4(GgmlType::Q4_K, n, weights, &activations);
    let a = activations.map(<[u8]>::as_ptr);
    // SAFETY: `kernels` hands this out only with AVX-512 F/BW/VL/VNNI (and AVX2, FMA, F16C)
    // detected; lengths checked above.
    unsafe { q4k_4_avx512(nb, weights.as_ptr(), a, out) }
}

/// # Safety
/// `w` must hold `nb` Q4_K blocks and every `a[r]` `nb` Q8_K blocks; AVX-512 F/BW/VL/VNNI,
/// FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k_4_avx512(nb: usize, w: *const u8, a: [*const u8; 4], out: &mut [f32; 4]) {
    let (mut acc, mut acc_min) = ([0.0f32; 4], [0.0f32; 4]);
    for i in 0..nb {
        let wb = w.add(i * Q4K_BYTES);
        let ab = a.map(|p| p.add(i * Q8K_BYTES));
        let (d, dmin) = f16_pair_at(wb);
        let (sc, mn) = scales_mins_k4(&*wb.add(4).cast::<[u8; 12]>());
        let scales = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64));
        let mut isum = [_mm512_setzero_si512(); 4];
        for j in 0..4 {
            let q = q4k_nibbles512(wb.add(16 + 32 * j));
            let s = q4k_group_scales(scales, j);
            for r in 0..4 {
                let y = _mm512_loadu_si512(ab[r].add(Q8K_QS + 64 * j).cast());
                isum[r] = add_scaled_dot(isum[r], q, y, s);
            }
        }
        for r in 0..4 {
            let dy = q8k_d(ab[r]);
            let m = hsum_epi32_128(mins_dot(ab[r].add(Q8K_BSUMS), mn));
            let (dd, dm) = (d * dy, dmin * dy);
            let isum = _mm512_reduce_add_epi32(isum[r]);
            q4k_accumulate(&mut acc[r], &mut acc_min[r], isum, m, dd, dm);
        }
    }
    for r in 0..4 {
        out[r] = acc[r] - acc_min[r];
    }
}

pub(super) fn vec_dot_4_q6k_avx512(
    n: usize,
    weights: &[u8],
    activations: [&[u8]; 4],
    out: &mut [f32; 4],
) {
    let nb = rows4(GgmlType::Q6_K, n, weights, &activations);
    let a = activations.map(<[u8]>::as_ptr);
    // SAFETY: `kernels` hands this out only with AVX-512 F/BW/VL/VNNI (and AVX2, FMA, F16C)
    // detected; lengths checked above.
    unsafe { q6k_4_avx512(nb, weights.as_ptr(), a, out) }
}

/// # Safety
/// `w` must hold `nb` Q6_K blocks and every `a[r]` `nb` Q8_K blocks; AVX-512 F/BW/VL/VNNI,
/// FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6k_4_avx512(nb: usize, w: *const u8, a: [*const u8; 4], out: &mut [f32; 4]) {
    let mut acc = [_mm512_setzero_ps(); 4];
    for i in 0..nb {
        let wb = w.add(i * Q6K_BYTES);
        let ab = a.map(|p| p.add(i * Q8K_BYTES));
        let d = f16_at(wb.add(208));
        let scales = _mm512_cvtepi8_epi32(_mm_loadu_si128(wb.add(192).cast()));
        let mut isum = ab.map(|p| q6k_offset512(wb, p));
        for half in 0..2 {
            let q = q6k_half(wb.add(64 * half), wb.add(128 + 32 * half));
            for pair in 0..2 {
                let qq =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q[2 * pair]), q[2 * pair + 1]);
                let s = q6k_group_scales(scales, 8 * half + 4 * pair);
                for r in 0..4 {
                    let y = _mm512_loadu_si512(ab[r].add(Q8K_QS + 128 * half + 64 * pair).cast());
                    isum[r] = add_scaled_dot(isum[r], qq, y, s);
                }
            }
        }
        for r in 0..4 {
            let dd = d * q8k_d(ab[r]);
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(dd), _mm512_cvtepi32_ps(isum[r]), acc[r]);
        }
    }
    for r in 0..4 {
        out[r] = _mm512_reduce_add_ps(acc[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::avx512_enabled;
    use super::super::kquants::{has_avx2, vec_dot_q4k_avx512, vec_dot_q6k_avx512};
    use super::super::kquants4::testing::{check_dot4, check_dot4_bits, extreme_case};
    use super::*;
    use crate::quant::scalar::kquant_testing::case;
    use proptest::prelude::*;

    /// Whether this CPU runs the kernels; the tests pass vacuously where it does not.
    fn avx512() -> bool {
        has_avx2() && avx512_enabled()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn avx512_q4k_dot4_matches_dot(c in case(GgmlType::Q4_K)) {
            if avx512() {
                check_dot4(GgmlType::Q4_K, vec_dot_4_q4k_avx512, vec_dot_q4k_avx512, &c)
            }
        }

        #[test]
        fn avx512_q6k_dot4_matches_dot(c in case(GgmlType::Q6_K)) {
            if avx512() {
                check_dot4(GgmlType::Q6_K, vec_dot_4_q6k_avx512, vec_dot_q6k_avx512, &c)
            }
        }

        #[test]
        fn avx512_q4k_dot4_matches_dot_at_extreme_scales(c in extreme_case(GgmlType::Q4_K)) {
            if avx512() {
                check_dot4_bits(GgmlType::Q4_K, vec_dot_4_q4k_avx512, vec_dot_q4k_avx512, &c);
            }
        }

        #[test]
        fn avx512_q6k_dot4_matches_dot_at_extreme_scales(c in extreme_case(GgmlType::Q6_K)) {
            if avx512() {
                check_dot4_bits(GgmlType::Q6_K, vec_dot_4_q6k_avx512, vec_dot_q6k_avx512, &c);
            }
        }
    }

    #[test]
    #[should_panic(expected = "Q4_K row has the wrong byte length")]
    fn short_q4k_weight_row_is_rejected() {
        let n = 256;
        let w = vec![0_u8; Q4K_BYTES - 1];
        let a = vec![0_u8; Q8K_BYTES];
        let mut out = [0.0; 4];
        vec_dot_4_q4k_avx512(n, &w, [&a, &a, &a, &a], &mut out);
    }

    #[test]
    #[should_panic(expected = "Q6_K row has the wrong byte length")]
    fn short_q6k_weight_row_is_rejected() {
        let n = 256;
        let w = vec![0_u8; Q6K_BYTES - 1];
        let a = vec![0_u8; Q8K_BYTES];
        let mut out = [0.0; 4];
        vec_dot_4_q6k_avx512(n, &w, [&a, &a, &a, &a], &mut out);
    }
}
