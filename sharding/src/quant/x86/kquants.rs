//! x86_64 kernels for the K-quant weight types: AVX2 + FMA, and AVX-512 (BW/VL/VNNI) for the
//! dot products where the CPU has it.
//!
//! The integer sums are exactly the scalar reference's; only the float accumulation order
//! differs. Q8_K quantization is bit-identical to the reference. Dequantization is not on a
//! hot path (embedding rows, tests), so the scalar version is handed out.
//!
//! Every `unsafe fn` here needs its `target_feature`s; [`kernels`] hands out the safe
//! wrappers only after `is_x86_feature_detected!` confirmed them.

use std::arch::x86_64::*;

use super::avx512_enabled;
use super::kquants4::{vec_dot_4_q4k_avx2, vec_dot_4_q6k_avx2};
use super::kquants4_avx512::{vec_dot_4_q4k_avx512, vec_dot_4_q6k_avx512};
use crate::quant::blocks::QK_K;
use crate::quant::{scalar, GgmlType, QuantizeFn, TypeKernels, VecDot4Fn, VecDotFn};

/// Byte layout of the blocks (checked against `blocks.rs` in the tests).
pub(super) const Q4K_BYTES: usize = 144;
const Q5K_BYTES: usize = 176;
pub(super) const Q6K_BYTES: usize = 210;
pub(super) const Q8K_BYTES: usize = 292;
pub(super) const Q8K_QS: usize = 4;
pub(super) const Q8K_BSUMS: usize = 260;

/// The x86 kernels for `ty` if it is a K-quant weight type and the CPU has AVX2 and FMA.
pub(super) fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    if !has_avx2() {
        return None;
    }
    table(ty, avx512_enabled())
}

/// Every kernel set for `ty` this CPU can run (AVX2, then AVX-512 where present).
pub(super) fn all(ty: GgmlType) -> Vec<TypeKernels> {
    if !has_avx2() {
        return Vec::new();
    }
    let levels: &[bool] = if avx512_enabled() {
        &[false, true]
    } else {
        &[false]
    };
    levels.iter().filter_map(|&l| table(ty, l)).collect()
}

/// Kernels for `ty`, with the AVX-512 ones when `avx512`; only call with AVX2 detected (and
/// AVX-512 when asked for).
fn table(ty: GgmlType, avx512: bool) -> Option<TypeKernels> {
    let reference = scalar::kernels(ty)?;
    // Each four-row kernel is bit-identical per row to the one-row kernel it is paired
    // with: a prompt rounds as the one-row path that matched llama.cpp's tokens does, and a
    // batched decode row equals the same step alone. So the pairs never mix instruction
    // sets (the AVX2 and AVX-512 kernels sum in different orders). Q5_K has no four-row
    // kernel yet.
    let (vec_dot, vec_dot_4, isa): (VecDotFn, Option<VecDot4Fn>, _) = match (ty, avx512) {
        (GgmlType::Q4_K, true) => (vec_dot_q4k_avx512, Some(vec_dot_4_q4k_avx512), "avx512"),
        (GgmlType::Q4_K, false) => (vec_dot_q4k_avx2, Some(vec_dot_4_q4k_avx2), "avx2"),
        (GgmlType::Q5_K, _) => (vec_dot_q5k_avx2, None, "avx2"),
        (GgmlType::Q6_K, true) => (vec_dot_q6k_avx512, Some(vec_dot_4_q6k_avx512), "avx512"),
        (GgmlType::Q6_K, false) => (vec_dot_q6k_avx2, Some(vec_dot_4_q6k_avx2), "avx2"),
        _ => return None,
    };
    let quantize_activations: QuantizeFn = quantize_q8k_avx2;
    Some(TypeKernels {
        ty,
        vec_dot,
        quantize_activations,
        dequantize: reference.dequantize,
        vec_dot_4,
        vec_dot_4x4: None,
        isa,
    })
}

/// Whether AVX2, FMA and F16C (every AVX2 CPU has the latter two) are present.
pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Number of super-blocks in the row pair, after checking both byte lengths.
///
/// # Panics
/// When a slice does not hold exactly `n` elements of its type: the unsafe kernels rely on
/// it, and callers size rows from the validated tensor index.
pub(super) fn super_blocks(ty: GgmlType, n: usize, weights: &[u8], activations: &[u8]) -> usize {
    assert_eq!(
        ty.row_bytes(n),
        Some(weights.len()),
        "{ty} row has the wrong byte length"
    );
    assert_eq!(
        GgmlType::Q8_K.row_bytes(n),
        Some(activations.len()),
        "Q8_K row has the wrong byte length"
    );
    n / QK_K
}

/// The `f32` value of the little-endian `f16` at `p` (a Q6_K block's `d`).
///
/// # Safety
/// `p` must be valid for reading 2 bytes; F16C must be available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes(p.cast::<[u8; 2]>().read());
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The two little-endian `f16`s at `p` (a K-quant block's `d` and `dmin`) as `f32`s.
///
/// # Safety
/// `p` must be valid for reading 4 bytes; F16C must be available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_pair_at(p: *const u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// The Q8_K scale at the start of the block at `p`.
///
/// # Safety
/// `p` must be valid for reading 4 bytes.
pub(super) unsafe fn q8k_d(p: *const u8) -> f32 {
    f32::from_le_bytes(p.cast::<[u8; 4]>().read())
}

/// Unpacks the 12 bytes of 6-bit scales and mins of a Q4_K/Q5_K block into 8 scales and 8
/// mins, byte `j` of each word for sub-block `j` (ggml's `get_scale_min_k4` for all eight
/// sub-blocks at once). Words, not arrays, so they go to a vector register without a
/// store-to-load round trip.
pub(super) fn scales_mins_k4(q: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([q[i], q[i + 1], q[i + 2], q[i + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const TOP2: u32 = 0xC0C0_C0C0;
    let sc_lo = w0 & LOW6;
    let mn_lo = w1 & LOW6;
    // Sub-blocks 4..8: low nibbles of bytes 8..12 plus the top two bits of bytes 0..4 (scales)
    // or bytes 4..8 (mins), moved to bits 4..6.
    let sc_hi = (w2 & LOW4) | ((w0 & TOP2) >> 2);
    let mn_hi = ((w2 >> 4) & LOW4) | ((w1 & TOP2) >> 2);
    let join = |a: u32, b: u32| u64::from(a) | (u64::from(b) << 32);
    (join(sc_lo, sc_hi), join(mn_lo, mn_hi))
}

/// Horizontal sum of 8 floats.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The sum of the four i32 lanes of `v` (exact).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum_epi32_128(v: __m128i) -> i32 {
    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
    _mm_cvtsi128_si32(v)
}

/// The sum of the eight i32 lanes of `v` (exact).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum_epi32_256(v: __m256i) -> i32 {
    hsum_epi32_128(_mm_add_epi32(
        _mm256_castsi256_si128(v),
        _mm256_extracti128_si256::<1>(v),
    ))
}

/// `Σ_j mins[j] * (bsums[2j] + bsums[2j+1])` as 4 partial i32 sums.
///
/// # Safety
/// `bsums` must be valid for reading 32 bytes; AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn mins_dot(bsums: *const u8, mins: u64) -> __m128i {
    let lo = _mm_loadu_si128(bsums.cast());
    let hi = _mm_loadu_si128(bsums.add(16).cast());
    // Pair sums are at most 2 * 16 * 128 in magnitude: no i16 overflow.
    let pairs = _mm_hadd_epi16(lo, hi);
    let m = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mins as i64));
    _mm_madd_epi16(pairs, m)
}

/// Shuffle masks picking i16 word `k` of a 128-bit lane into every word.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn word_broadcast_mask(k: i16) -> __m256i {
    _mm256_set1_epi16(((2 * k + 1) << 8) | (2 * k))
}

pub(super) fn vec_dot_q4k_avx2(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let nb = super_blocks(GgmlType::Q4_K, n, weights, activations);
    // SAFETY: `kernels` hands this out only with AVX2 + FMA + F16C detected; lengths checked above.
    unsafe { q4k_avx2(nb, weights.as_ptr(), activations.as_ptr()) }
}

/// # Safety
/// `w` and `a` must hold `nb` Q4_K and Q8_K blocks; AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_avx2(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let nibble = _mm256_set1_epi8(0x0F);
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for i in 0..nb {
        let (wb, ab) = (w.add(i * Q4K_BYTES), a.add(i * Q8K_BYTES));
        let dy = q8k_d(ab);
        let (d, dmin) = f16_pair_at(wb);
        let (d, dmin) = (d * dy, dmin * dy);
        let (sc, mn) = scales_mins_k4(&*wb.add(4).cast::<[u8; 12]>());
        let m = hsum_epi32_128(mins_dot(ab.add(Q8K_BSUMS), mn));

        let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        let mut isum = _mm256_setzero_si256();
        for j in 0..4 {
            let q4 = _mm256_loadu_si256(wb.add(16 + 32 * j).cast());
            let lo = _mm256_and_si256(q4, nibble);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), nibble);
            let y_lo = _mm256_loadu_si256(ab.add(Q8K_QS + 64 * j).cast());
            let y_hi = _mm256_loadu_si256(ab.add(Q8K_QS + 64 * j + 32).cast());
            // u4 * i8 pair sums stay below 2 * 15 * 128: maddubs cannot saturate.
            let p_lo = _mm256_maddubs_epi16(lo, y_lo);
            let p_hi = _mm256_maddubs_epi16(hi, y_hi);
            let s_lo = _mm256_shuffle_epi8(scales, word_broadcast_mask(2 * j as i16));
            let s_hi = _mm256_shuffle_epi8(scales, word_broadcast_mask(2 * j as i16 + 1));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p_lo, s_lo));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p_hi, s_hi));
        }
        scalar::q4k_accumulate(&mut acc, &mut acc_min, hsum_epi32_256(isum), m, d, dmin);
    }
    acc - acc_min
}

fn vec_dot_q5k_avx2(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let nb = super_blocks(GgmlType::Q5_K, n, weights, activations);
    // SAFETY: `kernels` hands this out only with AVX2 + FMA + F16C detected; lengths checked above.
    unsafe { q5k_avx2(nb, weights.as_ptr(), activations.as_ptr()) }
}

/// # Safety
/// `w` and `a` must hold `nb` Q5_K and Q8_K blocks; AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5k_avx2(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let nibble = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = _mm_setzero_ps();
    for i in 0..nb {
        let (wb, ab) = (w.add(i * Q5K_BYTES), a.add(i * Q8K_BYTES));
        let dy = q8k_d(ab);
        let (d, dmin) = f16_pair_at(wb);
        let (d, dmin) = (d * dy, dmin * dy);
        let (sc, mn) = scales_mins_k4(&*wb.add(4).cast::<[u8; 12]>());
        let m = mins_dot(ab.add(Q8K_BSUMS), mn);
        acc_min = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(m), acc_min);

        let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        // Bit j of byte l is the fifth bit of element 32 j + l; consumed two bits per step.
        let mut hbits = _mm256_loadu_si256(wb.add(16).cast());
        let mut isum = _mm256_setzero_si256();
        for j in 0..4 {
            let q4 = _mm256_loadu_si256(wb.add(48 + 32 * j).cast());
            let h_lo = _mm256_slli_epi16::<4>(_mm256_and_si256(hbits, one));
            let h_hi = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(hbits), one));
            hbits = _mm256_srli_epi16::<2>(hbits);
            let lo = _mm256_or_si256(_mm256_and_si256(q4, nibble), h_lo);
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4), nibble), h_hi);
            let y_lo = _mm256_loadu_si256(ab.add(Q8K_QS + 64 * j).cast());
            let y_hi = _mm256_loadu_si256(ab.add(Q8K_QS + 64 * j + 32).cast());
            let p_lo = _mm256_maddubs_epi16(lo, y_lo);
            let p_hi = _mm256_maddubs_epi16(hi, y_hi);
            let s_lo = _mm256_shuffle_epi8(scales, word_broadcast_mask(2 * j as i16));
            let s_hi = _mm256_shuffle_epi8(scales, word_broadcast_mask(2 * j as i16 + 1));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p_lo, s_lo));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p_hi, s_hi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    }
    // Zero-extended: `castps128_ps256` leaves the upper lanes undefined.
    hsum_ps(acc) - hsum_ps(_mm256_zextps128_ps256(acc_min))
}

/// The four 32-byte vectors of unsigned 6-bit quants (0..64) of one 128-element half of a
/// Q6_K block, in element order.
///
/// # Safety
/// `ql` must be valid for 64 bytes and `qh` for 32; AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn q6k_half(ql: *const u8, qh: *const u8) -> [__m256i; 4] {
    let nibble = _mm256_set1_epi8(0x0F);
    let two = _mm256_set1_epi8(3);
    let l0 = _mm256_loadu_si256(ql.cast());
    let l1 = _mm256_loadu_si256(ql.add(32).cast());
    let h = _mm256_loadu_si256(qh.cast());
    // Bits 2k..2k+2 of `h` go to bits 4..6 of group k.
    let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(h, two));
    let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(h, _mm256_slli_epi16::<2>(two)));
    let h2 = _mm256_and_si256(h, _mm256_slli_epi16::<4>(two));
    let h3 = _mm256_srli_epi16::<2>(_mm256_and_si256(h, _mm256_slli_epi16::<6>(two)));
    [
        _mm256_or_si256(_mm256_and_si256(l0, nibble), h0),
        _mm256_or_si256(_mm256_and_si256(l1, nibble), h1),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), nibble), h2),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), nibble), h3),
    ]
}

/// `32 * Σ_k scale_k * bsum_k` as 8 partial i32 sums: the -32 offset of every Q6_K quant.
///
/// # Safety
/// `scales` must be valid for 16 bytes, `bsums` for 32; AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn q6k_offset(scales: *const u8, bsums: *const u8) -> __m256i {
    let s = _mm256_cvtepi8_epi16(_mm_loadu_si128(scales.cast()));
    let b = _mm256_loadu_si256(bsums.cast());
    _mm256_slli_epi32::<5>(_mm256_madd_epi16(s, b))
}

pub(super) fn vec_dot_q6k_avx2(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let nb = super_blocks(GgmlType::Q6_K, n, weights, activations);
    // SAFETY: `kernels` hands this out only with AVX2 + FMA + F16C detected; lengths checked above.
    unsafe { q6k_avx2(nb, weights.as_ptr(), activations.as_ptr()) }
}

/// # Safety
/// `w` and `a` must hold `nb` Q6_K and Q8_K blocks; AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_avx2(nb: usize, w: *const u8, a: *const u8) -> f32 {
    // Two accumulators, for the even and the odd 32-element groups: the lanes of the
    // AVX-512 kernel's one 16-lane accumulator, so both instruction sets round alike.
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in 0..nb {
        let (wb, ab) = (w.add(i * Q6K_BYTES), a.add(i * Q8K_BYTES));
        let d = f16_at(wb.add(208)) * q8k_d(ab);
        let mut isum = [
            _mm256_sub_epi32(
                _mm256_setzero_si256(),
                q6k_offset(wb.add(192), ab.add(Q8K_BSUMS)),
            ),
            _mm256_setzero_si256(),
        ];
        for half in 0..2 {
            let q = q6k_half(wb.add(64 * half), wb.add(128 + 32 * half));
            let sc8 = _mm_loadl_epi64(wb.add(192 + 8 * half).cast());
            let scales = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(sc8));
            for (g, qg) in q.iter().enumerate() {
                let y = _mm256_loadu_si256(ab.add(Q8K_QS + 128 * half + 32 * g).cast());
                // u6 * i8 pair sums stay below 2 * 63 * 128: no saturation.
                let p = _mm256_maddubs_epi16(*qg, y);
                let s = _mm256_shuffle_epi8(scales, q6k_scale_mask(g));
                isum[g % 2] = _mm256_add_epi32(isum[g % 2], _mm256_madd_epi16(p, s));
            }
        }
        for k in 0..2 {
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum[k]), acc[k]);
        }
    }
    hsum_ps(_mm256_add_ps(acc[0], acc[1]))
}

/// The shuffle that spreads the scales of 32-element group `g` of a Q6_K half block over
/// the i16 words of its products: the low 128-bit lane holds elements of scale 2g, the high
/// lane of scale 2g + 1.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn q6k_scale_mask(g: usize) -> __m256i {
    _mm256_set_m128i(
        _mm256_castsi256_si128(word_broadcast_mask(2 * g as i16 + 1)),
        _mm256_castsi256_si128(word_broadcast_mask(2 * g as i16)),
    )
}

pub(super) fn vec_dot_q4k_avx512(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let nb = super_blocks(GgmlType::Q4_K, n, weights, activations);
    // SAFETY: `kernels` hands this out only with AVX-512 F/BW/VL/VNNI detected; lengths
    // checked above.
    unsafe { q4k_avx512(nb, weights.as_ptr(), activations.as_ptr()) }
}

/// Q4_K · Q8_K with 512-bit VNNI: one `vpdpbusd` per 64 elements, the per-sub-block scales
/// applied to the i32 sums.
///
/// # Safety
/// `w` and `a` must hold `nb` Q4_K and Q8_K blocks; AVX-512 F/BW/VL/VNNI, FMA and F16C
/// must be available.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k_avx512(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for i in 0..nb {
        let (wb, ab) = (w.add(i * Q4K_BYTES), a.add(i * Q8K_BYTES));
        let dy = q8k_d(ab);
        let (d, dmin) = f16_pair_at(wb);
        let (d, dmin) = (d * dy, dmin * dy);
        let (sc, mn) = scales_mins_k4(&*wb.add(4).cast::<[u8; 12]>());
        let m = hsum_epi32_128(mins_dot(ab.add(Q8K_BSUMS), mn));
        let scales = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64));
        let mut isum = _mm512_setzero_si512();
        for j in 0..4 {
            let q = q4k_nibbles512(wb.add(16 + 32 * j));
            let y = _mm512_loadu_si512(ab.add(Q8K_QS + 64 * j).cast());
            isum = add_scaled_dot(isum, q, y, q4k_group_scales(scales, j));
        }
        let isum = _mm512_reduce_add_epi32(isum);
        scalar::q4k_accumulate(&mut acc, &mut acc_min, isum, m, d, dmin);
    }
    acc - acc_min
}

/// The 64 unsigned quants of the 32 Q4_K bytes at `p` (sub-blocks 2j and 2j + 1): low
/// nibbles in bytes 0..32, high nibbles in bytes 32..64, the order of the Q8_K quants.
///
/// # Safety
/// `p` must be valid for reading 32 bytes; AVX-512 F/BW/VL must be available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q4k_nibbles512(p: *const u8) -> __m512i {
    let q4 = _mm256_loadu_si256(p.cast());
    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q4), _mm256_srli_epi16::<4>(q4));
    _mm512_and_si512(both, _mm512_set1_epi8(0x0F))
}

/// The scale of every i32 lane of 64-element group `j` of a Q4_K block, from the eight
/// sub-block scales in lanes 0..8 of `scales`: lanes 0..8 belong to sub-block 2j, lanes
/// 8..16 to 2j + 1.
///
/// # Safety
/// AVX-512 F must be available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q4k_group_scales(scales: __m512i, j: usize) -> __m512i {
    let lane_sub = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let idx = _mm512_add_epi32(lane_sub, _mm512_set1_epi32(2 * j as i32));
    _mm512_permutexvar_epi32(idx, scales)
}

/// `isum + s * dot`, lane-wise, where `dot` is `vpdpbusd`'s sum of each lane's four
/// unsigned `q` × signed `y` byte products. All exact in i32.
///
/// # Safety
/// AVX-512 F/VNNI must be available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn add_scaled_dot(isum: __m512i, q: __m512i, y: __m512i, s: __m512i) -> __m512i {
    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
    _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, s))
}

pub(super) fn vec_dot_q6k_avx512(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let nb = super_blocks(GgmlType::Q6_K, n, weights, activations);
    // SAFETY: `kernels` hands this out only with AVX-512 F/BW/VL/VNNI detected; lengths
    // checked above.
    unsafe { q6k_avx512(nb, weights.as_ptr(), activations.as_ptr()) }
}

/// Q6_K · Q8_K with 512-bit VNNI: 64 elements (4 scale groups) per `vpdpbusd`.
///
/// # Safety
/// `w` and `a` must hold `nb` Q6_K and Q8_K blocks; AVX-512 F/BW/VL/VNNI and FMA must be
/// available.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6k_avx512(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm512_setzero_ps();
    for i in 0..nb {
        let (wb, ab) = (w.add(i * Q6K_BYTES), a.add(i * Q8K_BYTES));
        let d = f16_at(wb.add(208)) * q8k_d(ab);
        let scales = _mm512_cvtepi8_epi32(_mm_loadu_si128(wb.add(192).cast()));
        let mut isum = q6k_offset512(wb, ab);
        for half in 0..2 {
            let q = q6k_half(wb.add(64 * half), wb.add(128 + 32 * half));
            for pair in 0..2 {
                let qq =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q[2 * pair]), q[2 * pair + 1]);
                let y = _mm512_loadu_si512(ab.add(Q8K_QS + 128 * half + 64 * pair).cast());
                let s = q6k_group_scales(scales, 8 * half + 4 * pair);
                isum = add_scaled_dot(isum, qq, y, s);
            }
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(isum), acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// The starting i32 sums of a Q6_K block `wb` against the Q8_K block `ab`: minus the -32
/// offset of every quant ([`q6k_offset`]) in lanes 0..8, zero in lanes 8..16.
///
/// # Safety
/// `wb` and `ab` must be one Q6_K and one Q8_K block; AVX-512 F must be available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q6k_offset512(wb: *const u8, ab: *const u8) -> __m512i {
    let offset = q6k_offset(wb.add(192), ab.add(Q8K_BSUMS));
    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(offset))
}

/// The scale of every i32 lane of a 64-element Q6_K group whose first 16-element scale group
/// is `first`, from the 16 scales in `scales`: lanes 4k..4k+4 belong to group `first + k`.
///
/// # Safety
/// AVX-512 F must be available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q6k_group_scales(scales: __m512i, first: usize) -> __m512i {
    let lane_group = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let idx = _mm512_add_epi32(lane_group, _mm512_set1_epi32(first as i32));
    _mm512_permutexvar_epi32(idx, scales)
}

/// Q8_K quantization, bit-identical to the scalar reference.
///
/// # Panics
/// When `x` is not a whole number of super-blocks or `out` is not exactly their Q8_K size.
fn quantize_q8k_avx2(x: &[f32], out: &mut [u8]) {
    assert_eq!(
        GgmlType::Q8_K.row_bytes(x.len()),
        Some(out.len()),
        "Q8_K row has the wrong byte length"
    );
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q8K_BYTES)) {
        // SAFETY: `kernels` hands this out only with AVX2 + FMA detected; the chunks have
        // exactly one block each.
        let xb: &[f32; QK_K] = xb.try_into().expect("chunk of QK_K");
        unsafe { quantize_block_avx2(xb, ob) };
        fill_bsums(ob);
    }
}

/// Quants and `d` of one Q8_K block (the caller fills the sums).
///
/// # Safety
/// AVX2 must be available; `out` must be at least [`Q8K_BYTES`] long.
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block_avx2(x: &[f32; QK_K], out: &mut [u8]) {
    assert!(out.len() >= Q8K_BYTES);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let p = x.as_ptr();
    let mut vmax = _mm256_setzero_ps();
    for k in 0..QK_K / 8 {
        // `maxps` returns its second operand when the first is NaN, so NaNs are skipped as
        // the reference's `ax > amax` skips them.
        vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(p.add(8 * k)), abs_mask), vmax);
    }
    let m4 = _mm_max_ps(
        _mm256_castps256_ps128(vmax),
        _mm256_extractf128_ps::<1>(vmax),
    );
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    if amax == 0.0 {
        out[..Q8K_BYTES].fill(0);
        return;
    }
    // The reference keeps the first element of largest magnitude, sign included.
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
    let iscale = -127.0_f32 / max;
    let quant = Q8Consts {
        scale: _mm256_set1_ps(iscale),
        magic: _mm256_set1_ps(12_582_912.0),
        mantissa: _mm256_set1_epi32(0x007F_FFFF),
        bias: _mm256_set1_epi32(0x0040_0000),
        top: _mm256_set1_epi32(127),
        low_byte: _mm256_set1_epi32(0xFF),
    };
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for c in 0..QK_K / 32 {
        let a = quant8(&quant, p.add(32 * c));
        let b = quant8(&quant, p.add(32 * c + 8));
        let e = quant8(&quant, p.add(32 * c + 16));
        let f = quant8(&quant, p.add(32 * c + 24));
        let bytes = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(e, f));
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        _mm256_storeu_si256(out.as_mut_ptr().add(Q8K_QS + 32 * c).cast(), bytes);
    }
    out[..4].copy_from_slice(&(1.0_f32 / iscale).to_le_bytes());
}

/// Constants of the Q8_K rounding for one block.
struct Q8Consts {
    scale: __m256,
    magic: __m256,
    mantissa: __m256i,
    bias: __m256i,
    top: __m256i,
    low_byte: __m256i,
}

/// Quants of the 8 floats at `p` as i32 lanes holding the quant's low byte.
///
/// # Safety
/// `p` must be valid for reading 8 floats; AVX2 must be available.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn quant8(c: &Q8Consts, p: *const f32) -> __m256i {
    // Multiply, then add the magic number: two roundings, as in the reference (no FMA).
    let v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(p), c.scale), c.magic);
    let i = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(v), c.mantissa), c.bias);
    // Keep the low byte, as the reference's store to `int8_t` does; packing 0..=255 with
    // unsigned saturation then moves it unchanged.
    _mm256_and_si256(_mm256_min_epi32(i, c.top), c.low_byte)
}

/// Fills the 16 per-16-element sums of a Q8_K block whose quants are written.
fn fill_bsums(out: &mut [u8]) {
    for k in 0..QK_K / 16 {
        let at = Q8K_QS + 16 * k;
        let sum: i32 = out[at..at + 16].iter().map(|&q| i32::from(q as i8)).sum();
        let to = Q8K_BSUMS + 2 * k;
        // At most 16 * 128 in magnitude: fits an i16.
        out[to..to + 2].copy_from_slice(&(sum as i16).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
    use proptest::prelude::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layout_constants_match_blocks() {
        assert_eq!(Q4K_BYTES, size_of::<BlockQ4K>());
        assert_eq!(Q5K_BYTES, size_of::<BlockQ5K>());
        assert_eq!(Q6K_BYTES, size_of::<BlockQ6K>());
        assert_eq!(Q8K_BYTES, size_of::<BlockQ8K>());
        assert_eq!(Q8K_QS, offset_of!(BlockQ8K, qs));
        assert_eq!(Q8K_BSUMS, offset_of!(BlockQ8K, bsums));
        assert_eq!(16, offset_of!(BlockQ4K, qs));
        assert_eq!(
            (16, 48),
            (offset_of!(BlockQ5K, qh), offset_of!(BlockQ5K, qs))
        );
        assert_eq!(
            (128, 192, 208),
            (
                offset_of!(BlockQ6K, qh),
                offset_of!(BlockQ6K, scales),
                offset_of!(BlockQ6K, d)
            )
        );
    }

    #[test]
    fn scales_mins_match_get_scale_min_k4() {
        let q: [u8; 12] = [
            0xC1, 0x7F, 0x80, 0x3A, 0x85, 0xFF, 0x40, 0x01, 0x7C, 0xA5, 0x0F, 0xF0,
        ];
        let (sc, mn) = scales_mins_k4(&q);
        for j in 0..8 {
            let expected = if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            };
            assert_eq!(
                (sc.to_le_bytes()[j], mn.to_le_bytes()[j]),
                expected,
                "sub-block {j}"
            );
        }
    }

    use super::super::kquants4::testing::{check_dot4_bits, extreme_case};
    use crate::quant::scalar::kquant_testing::{case, check_dot};

    fn avx2() -> bool {
        has_avx2()
    }

    /// What `model::matmul` relies on: the four-row kernel handed out for `ty` equals the
    /// one-row kernel handed out with it, bit for bit, whichever instruction set this CPU
    /// gets.
    fn check_handed_out_pair(ty: GgmlType, c: &(usize, Vec<u8>, Vec<u8>)) {
        if let Some(k) = kernels(ty) {
            if let Some(dot4) = k.vec_dot_4 {
                check_dot4_bits(ty, dot4, k.vec_dot, c);
            }
        }
    }

    /// The AVX2 and (where the CPU has it) AVX-512 kernels give the scalar reference's bits
    /// (NaN for NaN).
    fn check_bits(
        ty: GgmlType,
        avx2_dot: VecDotFn,
        avx512_dot: VecDotFn,
        (n, w, a): &(usize, Vec<u8>, Vec<u8>),
    ) -> Result<(), TestCaseError> {
        let want = (scalar::kernels(ty).expect("scalar").vec_dot)(*n, w, a);
        let mut kernels: Vec<(&str, VecDotFn)> = Vec::new();
        if avx2() {
            kernels.push(("avx2", avx2_dot));
        }
        if avx2() && avx512_enabled() {
            kernels.push(("avx512", avx512_dot));
        }
        for (isa, f) in kernels {
            let got = f(*n, w, a);
            prop_assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{} {}: {} vs {}",
                ty,
                isa,
                got,
                want
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn avx2_q4k_matches_scalar(c in case(GgmlType::Q4_K)) {
            if avx2() { check_dot(GgmlType::Q4_K, vec_dot_q4k_avx2, &c) }
        }

        #[test]
        fn avx2_q5k_matches_scalar(c in case(GgmlType::Q5_K)) {
            if avx2() { check_dot(GgmlType::Q5_K, vec_dot_q5k_avx2, &c) }
        }

        #[test]
        fn avx2_q6k_matches_scalar(c in case(GgmlType::Q6_K)) {
            if avx2() { check_dot(GgmlType::Q6_K, vec_dot_q6k_avx2, &c) }
        }

        #[test]
        fn avx512_q4k_matches_scalar(c in case(GgmlType::Q4_K)) {
            if avx2() && avx512_enabled() { check_dot(GgmlType::Q4_K, vec_dot_q4k_avx512, &c) }
        }

        /// Q4_K sums as llama.cpp's repacked kernels do (`scalar::q4k_accumulate`): exact
        /// integers per super-block, then scalar fused multiply-adds. Every kernel therefore
        /// equals the scalar reference bit for bit, not only within rounding.
        #[test]
        fn q4k_kernels_equal_scalar_bit_for_bit(
            c in prop_oneof![case(GgmlType::Q4_K), extreme_case(GgmlType::Q4_K)],
        ) {
            check_bits(GgmlType::Q4_K, vec_dot_q4k_avx2, vec_dot_q4k_avx512, &c)?;
        }

        /// Q6_K sums in the scalar reference's 16 lanes on both instruction sets.
        #[test]
        fn q6k_kernels_equal_scalar_bit_for_bit(
            c in prop_oneof![case(GgmlType::Q6_K), extreme_case(GgmlType::Q6_K)],
        ) {
            check_bits(GgmlType::Q6_K, vec_dot_q6k_avx2, vec_dot_q6k_avx512, &c)?;
        }

        #[test]
        fn avx512_q6k_matches_scalar(c in case(GgmlType::Q6_K)) {
            if avx2() && avx512_enabled() { check_dot(GgmlType::Q6_K, vec_dot_q6k_avx512, &c) }
        }

        #[test]
        fn handed_out_q4k_dot4_matches_dot(
            c in prop_oneof![case(GgmlType::Q4_K), extreme_case(GgmlType::Q4_K)],
        ) {
            check_handed_out_pair(GgmlType::Q4_K, &c)
        }

        #[test]
        fn handed_out_q6k_dot4_matches_dot(
            c in prop_oneof![case(GgmlType::Q6_K), extreme_case(GgmlType::Q6_K)],
        ) {
            check_handed_out_pair(GgmlType::Q6_K, &c)
        }

        #[test]
        fn avx2_quantize_is_bit_identical(
            x in prop::collection::vec(
                prop_oneof![
                    4 => -1.0e4_f32..1.0e4,
                    1 => Just(0.0_f32),
                    1 => (-300_i32..300).prop_map(|i| i as f32 * 0.5),
                ],
                QK_K * 2,
            ),
        ) {
            if avx2() {
                let mut expected = vec![0_u8; 2 * Q8K_BYTES];
                let mut got = vec![0xAA_u8; 2 * Q8K_BYTES];
                (scalar::kernels(GgmlType::Q6_K).expect("scalar").quantize_activations)(
                    &x, &mut expected,
                );
                quantize_q8k_avx2(&x, &mut got);
                prop_assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn avx2_quantize_handles_nan_and_zero_blocks_like_scalar() {
        let mut x = vec![0.0_f32; 3 * QK_K];
        x[QK_K + 3] = f32::NAN;
        x[QK_K + 4] = -2.5;
        x[QK_K + 9] = 2.5;
        x[2 * QK_K] = f32::NAN;
        if avx2() {
            let mut expected = vec![0_u8; 3 * Q8K_BYTES];
            let mut got = vec![0xAA_u8; 3 * Q8K_BYTES];
            (scalar::kernels(GgmlType::Q4_K)
                .expect("scalar")
                .quantize_activations)(&x, &mut expected);
            quantize_q8k_avx2(&x, &mut got);
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn kernels_name_their_isa() {
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            if let Some(k) = kernels(ty) {
                assert_eq!(k.ty, ty);
                assert!(["avx2", "avx512"].contains(&k.isa));
                // Both instruction sets have four-row twins of Q4_K and Q6_K.
                assert_eq!(k.vec_dot_4.is_some(), ty != GgmlType::Q5_K, "{ty}");
            }
        }
        assert!(kernels(GgmlType::Q8_0).is_none());
    }
}
