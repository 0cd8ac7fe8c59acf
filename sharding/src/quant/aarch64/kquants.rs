//! aarch64 NEON kernels for the K-quant weight types, with `sdot` (the dotprod extension)
//! where the CPU has it.
//!
//! The integer sums are exactly the scalar reference's; only the float accumulation order
//! differs. Q8_K quantization is bit-identical to the reference. Dequantization is not on a
//! hot path (embedding rows, tests), so the scalar version is handed out.
//!
//! `vdotq_s32` is not stable in Rust yet, so the dotprod kernels issue `sdot` through
//! `asm!`; they are handed out only after `is_aarch64_feature_detected!("dotprod")`.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use crate::quant::blocks::QK_K;
use crate::quant::scalar::q4k_accumulate;
use crate::quant::{scalar, GgmlType, QuantizeFn, TypeKernels, VecDotFn};

/// Byte layout of the blocks (checked against `blocks.rs` in the tests).
const Q4K_BYTES: usize = 144;
const Q5K_BYTES: usize = 176;
const Q6K_BYTES: usize = 210;
const Q8K_BYTES: usize = 292;
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;

/// The aarch64 kernels for `ty` if it is a K-quant weight type (NEON is always present).
pub(super) fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    table(ty, std::arch::is_aarch64_feature_detected!("dotprod"))
}

/// Every kernel set for `ty` this CPU can run (plain NEON, then dotprod where present).
pub(super) fn all(ty: GgmlType) -> Vec<TypeKernels> {
    let levels: &[bool] = if std::arch::is_aarch64_feature_detected!("dotprod") {
        &[false, true]
    } else {
        &[false]
    };
    levels.iter().filter_map(|&l| table(ty, l)).collect()
}

/// Kernels for `ty`, with `sdot` when `dotprod` (only where the CPU has it).
fn table(ty: GgmlType, dotprod: bool) -> Option<TypeKernels> {
    let reference = scalar::kernels(ty)?;
    let (vec_dot, isa): (VecDotFn, &'static str) = match (ty, dotprod) {
        (GgmlType::Q4_K, true) => (sdot::vec_dot_q4k, "neon-dotprod"),
        (GgmlType::Q5_K, true) => (sdot::vec_dot_q5k, "neon-dotprod"),
        (GgmlType::Q6_K, true) => (sdot::vec_dot_q6k, "neon-dotprod"),
        (GgmlType::Q4_K, false) => (mull::vec_dot_q4k, "neon"),
        (GgmlType::Q5_K, false) => (mull::vec_dot_q5k, "neon"),
        (GgmlType::Q6_K, false) => (mull::vec_dot_q6k, "neon"),
        _ => return None,
    };
    let quantize_activations: QuantizeFn = quantize_q8k_neon;
    Some(TypeKernels {
        ty,
        vec_dot,
        quantize_activations,
        dequantize: reference.dequantize,
        vec_dot_4: None,
        vec_dot_4x4: None,
        isa,
    })
}

/// Number of super-blocks in the row pair, after checking both byte lengths.
///
/// # Panics
/// When a slice does not hold exactly `n` elements of its type: the unsafe kernels rely on
/// it, and callers size rows from the validated tensor index.
fn super_blocks(ty: GgmlType, n: usize, weights: &[u8], activations: &[u8]) -> usize {
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

/// The `f32` value of the little-endian `f16` at `p`.
///
/// # Safety
/// `p` must be valid for reading 2 bytes.
unsafe fn f16_at(p: *const u8) -> f32 {
    f16::from_bits(u16::from_le_bytes(p.cast::<[u8; 2]>().read())).to_f32()
}

/// The Q8_K scale at the start of the block at `p`.
///
/// # Safety
/// `p` must be valid for reading 4 bytes.
unsafe fn q8k_d(p: *const u8) -> f32 {
    f32::from_le_bytes(p.cast::<[u8; 4]>().read())
}

/// Unpacks the 12 bytes of 6-bit scales and mins of a Q4_K/Q5_K block into 8 scales and 8
/// mins, byte `j` of each word for sub-block `j` (ggml's `get_scale_min_k4` for all eight
/// sub-blocks at once).
fn scales_mins_k4(q: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([q[i], q[i + 1], q[i + 2], q[i + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const TOP2: u32 = 0xC0C0_C0C0;
    // Sub-blocks 4..8: low nibbles of bytes 8..12 plus the top two bits of bytes 0..4 (scales)
    // or bytes 4..8 (mins), moved to bits 4..6.
    let sc = (u64::from((w2 & LOW4) | ((w0 & TOP2) >> 2)) << 32) | u64::from(w0 & LOW6);
    let mn = (u64::from(((w2 >> 4) & LOW4) | ((w1 & TOP2) >> 2)) << 32) | u64::from(w1 & LOW6);
    (sc, mn)
}

/// `Σ_j mins[j] * (bsums[2j] + bsums[2j+1])`.
///
/// # Safety
/// `bsums` must be valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn mins_dot(bsums: *const u8, mins: u64) -> i32 {
    let lo = vld1q_s16(bsums.cast());
    let hi = vld1q_s16(bsums.add(16).cast());
    // Pair sums are at most 2 * 16 * 128 in magnitude: no i16 overflow.
    let pairs = vpaddq_s16(lo, hi);
    let m = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(mins)));
    let prod = vmlal_high_s16(vmull_s16(vget_low_s16(pairs), vget_low_s16(m)), pairs, m);
    vaddvq_s32(prod)
}

/// `acc + Σ a*b` over groups of four bytes, with the dotprod `sdot` instruction.
///
/// # Safety
/// The CPU must have the dotprod extension.
/// `mins[k] · (bsum 2k + bsum 2k+1)` summed in AVX2's `vpmaddwd` pairs: lane `k` of the
/// result holds sub-blocks `2k` and `2k + 1`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn mins_lanes(bsums: *const u8, mins: u64) -> int32x4_t {
    let lo = vld1q_s16(bsums.cast());
    let hi = vld1q_s16(bsums.add(16).cast());
    let pairs = vpaddq_s16(lo, hi);
    let m = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(mins)));
    let p_lo = vmull_s16(vget_low_s16(pairs), vget_low_s16(m));
    let p_hi = vmull_high_s16(pairs, m);
    vpaddq_s32(p_lo, p_hi)
}

/// The canonical (AVX2) sum of eight lanes carried as two registers.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn lanes8(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let mut x = [0.0f32; 8];
    vst1q_f32(x.as_mut_ptr(), lo);
    vst1q_f32(x.as_mut_ptr().add(4), hi);
    scalar::hsum8(x)
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only instruction; dotprod is enabled for this function.
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `acc + Σ a*b` in plain NEON, in `sdot`'s lanes (lane m sums the products of bytes
/// 4m..4m+4: the Q6_K kernel's lanes are part of its rounding): widening multiplies, then
/// pairwise adds. One product per i16, at most 128 * 128 in magnitude: no overflow.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_mull(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    let hi = vpaddlq_s16(vmull_high_s8(a, b));
    vaddq_s32(acc, vpaddq_s32(lo, hi))
}

/// The three dot-product kernels, instantiated once per integer dot primitive (each copy with
/// its own `target_feature` set, so the primitive inlines).
macro_rules! kquant_kernels {
    ($module:ident, $features:literal, $dot:ident) => {
        mod $module {
            use super::*;

            pub(super) fn vec_dot_q4k(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
                let nb = super_blocks(GgmlType::Q4_K, n, weights, activations);
                // SAFETY: `kernels` hands this out only when the CPU has `$features`;
                // lengths checked above.
                unsafe { q4k(nb, weights.as_ptr(), activations.as_ptr()) }
            }

            pub(super) fn vec_dot_q5k(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
                let nb = super_blocks(GgmlType::Q5_K, n, weights, activations);
                // SAFETY: as in `vec_dot_q4k`.
                unsafe { q5k(nb, weights.as_ptr(), activations.as_ptr()) }
            }

            pub(super) fn vec_dot_q6k(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
                let nb = super_blocks(GgmlType::Q6_K, n, weights, activations);
                // SAFETY: as in `vec_dot_q4k`.
                unsafe { q6k(nb, weights.as_ptr(), activations.as_ptr()) }
            }

            /// # Safety
            /// `w` and `a` must hold `nb` Q4_K and Q8_K blocks; the CPU must have `$features`.
            #[target_feature(enable = $features)]
            unsafe fn q4k(nb: usize, w: *const u8, a: *const u8) -> f32 {
                let nibble = vdupq_n_u8(0x0F);
                let (mut acc, mut acc_min) = (0.0_f32, 0.0_f32);
                for i in 0..nb {
                    let (wb, ab) = (w.add(i * Q4K_BYTES), a.add(i * Q8K_BYTES));
                    let (sc, mn) = scales_mins_k4(&*wb.add(4).cast::<[u8; 12]>());
                    let msum = mins_dot(ab.add(Q8K_BSUMS), mn);
                    let sc = sc.to_le_bytes();
                    let mut isum = vdupq_n_s32(0);
                    for j in 0..4 {
                        let q0 = vld1q_u8(wb.add(16 + 32 * j));
                        let q1 = vld1q_u8(wb.add(16 + 32 * j + 16));
                        let y = ab.add(Q8K_QS + 64 * j).cast::<i8>();
                        let lo = $dot(
                            $dot(
                                vdupq_n_s32(0),
                                vreinterpretq_s8_u8(vandq_u8(q0, nibble)),
                                vld1q_s8(y),
                            ),
                            vreinterpretq_s8_u8(vandq_u8(q1, nibble)),
                            vld1q_s8(y.add(16)),
                        );
                        let hi = $dot(
                            $dot(
                                vdupq_n_s32(0),
                                vreinterpretq_s8_u8(vshrq_n_u8::<4>(q0)),
                                vld1q_s8(y.add(32)),
                            ),
                            vreinterpretq_s8_u8(vshrq_n_u8::<4>(q1)),
                            vld1q_s8(y.add(48)),
                        );
                        isum = vmlaq_n_s32(isum, lo, i32::from(sc[2 * j]));
                        isum = vmlaq_n_s32(isum, hi, i32::from(sc[2 * j + 1]));
                    }
                    let dy = q8k_d(ab);
                    let (d, dmin) = (f16_at(wb) * dy, f16_at(wb.add(2)) * dy);
                    q4k_accumulate(&mut acc, &mut acc_min, vaddvq_s32(isum), msum, d, dmin);
                }
                acc - acc_min
            }

            /// # Safety
            /// `w` and `a` must hold `nb` Q5_K and Q8_K blocks; the CPU must have `$features`.
            #[target_feature(enable = $features)]
            unsafe fn q5k(nb: usize, w: *const u8, a: *const u8) -> f32 {
                // The AVX2 kernel's lanes (scalar::kquants::vec_dot_q5k): eight integer
                // lanes as two registers (elements 0..16 and 16..32 of each sub-block), four
                // min lanes, one fused multiply-add per lane and super-block.
                let nibble = vdupq_n_u8(0x0F);
                let sixteen = vdupq_n_u8(16);
                let mut acc = [vdupq_n_f32(0.0); 2];
                let mut acc_min = vdupq_n_f32(0.0);
                for i in 0..nb {
                    let (wb, ab) = (w.add(i * Q5K_BYTES), a.add(i * Q8K_BYTES));
                    let (sc, mn) = scales_mins_k4(&*wb.add(4).cast::<[u8; 12]>());
                    let m = mins_lanes(ab.add(Q8K_BSUMS), mn);
                    let sc = sc.to_le_bytes();
                    // Bit j of byte l is the fifth bit of element 32 j + l.
                    let (h0, h1) = (vld1q_u8(wb.add(16)), vld1q_u8(wb.add(32)));
                    let mut isum = [vdupq_n_s32(0); 2];
                    for j in 0..4 {
                        let q0 = vld1q_u8(wb.add(48 + 32 * j));
                        let q1 = vld1q_u8(wb.add(48 + 32 * j + 16));
                        let (bit_lo, bit_hi) = (vdupq_n_u8(1 << (2 * j)), vdupq_n_u8(2 << (2 * j)));
                        let fifth =
                            |h: uint8x16_t, bit: uint8x16_t| vandq_u8(vtstq_u8(h, bit), sixteen);
                        let l0 = vorrq_u8(vandq_u8(q0, nibble), fifth(h0, bit_lo));
                        let l1 = vorrq_u8(vandq_u8(q1, nibble), fifth(h1, bit_lo));
                        let u0 = vorrq_u8(vshrq_n_u8::<4>(q0), fifth(h0, bit_hi));
                        let u1 = vorrq_u8(vshrq_n_u8::<4>(q1), fifth(h1, bit_hi));
                        let y = ab.add(Q8K_QS + 64 * j).cast::<i8>();
                        let zero = vdupq_n_s32(0);
                        let dot = |q: uint8x16_t, y: *const i8| {
                            $dot(zero, vreinterpretq_s8_u8(q), vld1q_s8(y))
                        };
                        let (s_lo, s_hi) = (i32::from(sc[2 * j]), i32::from(sc[2 * j + 1]));
                        isum[0] = vmlaq_n_s32(isum[0], dot(l0, y), s_lo);
                        isum[1] = vmlaq_n_s32(isum[1], dot(l1, y.add(16)), s_lo);
                        isum[0] = vmlaq_n_s32(isum[0], dot(u0, y.add(32)), s_hi);
                        isum[1] = vmlaq_n_s32(isum[1], dot(u1, y.add(48)), s_hi);
                    }
                    let dy = q8k_d(ab);
                    let (d, dmin) = (f16_at(wb) * dy, f16_at(wb.add(2)) * dy);
                    acc_min = vfmaq_n_f32(acc_min, vcvtq_f32_s32(m), dmin);
                    for h in 0..2 {
                        acc[h] = vfmaq_n_f32(acc[h], vcvtq_f32_s32(isum[h]), d);
                    }
                }
                let zero = vdupq_n_f32(0.0);
                lanes8(acc[0], acc[1]) - lanes8(acc_min, zero)
            }

            #[target_feature(enable = $features)]
            unsafe fn q6k(nb: usize, w: *const u8, a: *const u8) -> f32 {
                // The scalar reference's 16 lanes (`scalar::kquants::vec_dot_q6k`) as four
                // vectors: vector `2 * (g % 2) + c` holds 16-element chunk `c` of every
                // group `g`, so every machine rounds Q6_K alike.
                let nibble = vdupq_n_u8(0x0F);
                let two = vdupq_n_u8(0x30);
                let mut acc = [vdupq_n_f32(0.0); 4];
                for i in 0..nb {
                    let (wb, ab) = (w.add(i * Q6K_BYTES), a.add(i * Q8K_BYTES));
                    let scale = |k: usize| i32::from(*wb.add(192 + k) as i8);
                    let bsum = |k: usize| {
                        i32::from(ab.add(Q8K_BSUMS + 2 * k).cast::<i16>().read_unaligned())
                    };
                    // The -32 offset of every quant, from the block sums, in lanes 0..8.
                    let offset: [i32; 8] = std::array::from_fn(|k| {
                        -32 * (scale(2 * k) * bsum(2 * k) + scale(2 * k + 1) * bsum(2 * k + 1))
                    });
                    let mut isum = [
                        vld1q_s32(offset.as_ptr()),
                        vld1q_s32(offset.as_ptr().add(4)),
                        vdupq_n_s32(0),
                        vdupq_n_s32(0),
                    ];
                    for half in 0..2 {
                        let ql = wb.add(64 * half);
                        let qh = wb.add(128 + 32 * half);
                        for c in 0..2 {
                            let l0 = vld1q_u8(ql.add(16 * c));
                            let l1 = vld1q_u8(ql.add(32 + 16 * c));
                            let h = vld1q_u8(qh.add(16 * c));
                            // Group g takes bits 2g..2g+2 of `h` into bits 4..6.
                            let groups = [
                                vorrq_u8(vandq_u8(l0, nibble), vandq_u8(vshlq_n_u8::<4>(h), two)),
                                vorrq_u8(vandq_u8(l1, nibble), vandq_u8(vshlq_n_u8::<2>(h), two)),
                                vorrq_u8(vshrq_n_u8::<4>(l0), vandq_u8(h, two)),
                                vorrq_u8(vshrq_n_u8::<4>(l1), vandq_u8(vshrq_n_u8::<2>(h), two)),
                            ];
                            for (g, q) in groups.into_iter().enumerate() {
                                let e = 128 * half + 32 * g + 16 * c;
                                // Quants are 0..64: as i8 they are the same numbers.
                                let y = vld1q_s8(ab.add(Q8K_QS + e).cast::<i8>());
                                let s = $dot(vdupq_n_s32(0), vreinterpretq_s8_u8(q), y);
                                let v = 2 * (g % 2) + c;
                                isum[v] = vmlaq_n_s32(isum[v], s, scale(e / 16));
                            }
                        }
                    }
                    let d = vdupq_n_f32(f16_at(wb.add(208)) * q8k_d(ab));
                    for v in 0..4 {
                        acc[v] = vfmaq_f32(acc[v], vcvtq_f32_s32(isum[v]), d);
                    }
                }
                // Lanes k and k + 8, then k and k + 4, then k and k + 2, then the last two.
                let t = vaddq_f32(vaddq_f32(acc[0], acc[2]), vaddq_f32(acc[1], acc[3]));
                let u = vadd_f32(vget_low_f32(t), vget_high_f32(t));
                vget_lane_f32::<0>(u) + vget_lane_f32::<1>(u)
            }
        }
    };
}

kquant_kernels!(sdot, "neon,dotprod", dot_sdot);
kquant_kernels!(mull, "neon", dot_mull);

/// Q8_K quantization, bit-identical to the scalar reference.
///
/// # Panics
/// When `x` is not a whole number of super-blocks or `out` is not exactly their Q8_K size.
fn quantize_q8k_neon(x: &[f32], out: &mut [u8]) {
    assert_eq!(
        GgmlType::Q8_K.row_bytes(x.len()),
        Some(out.len()),
        "Q8_K row has the wrong byte length"
    );
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q8K_BYTES)) {
        let xb: &[f32; QK_K] = xb.try_into().expect("chunk of QK_K");
        // SAFETY: NEON is part of the aarch64 baseline; `ob` is one whole block.
        unsafe { quantize_block_neon(xb, ob) };
        fill_bsums(ob);
    }
}

/// Quants and `d` of one Q8_K block (the caller fills the sums).
///
/// # Safety
/// `out` must be at least [`Q8K_BYTES`] long.
#[target_feature(enable = "neon")]
unsafe fn quantize_block_neon(x: &[f32; QK_K], out: &mut [u8]) {
    assert!(out.len() >= Q8K_BYTES);
    let p = x.as_ptr();
    let mut vmax = vdupq_n_f32(0.0);
    for k in 0..QK_K / 4 {
        // `fmaxnm` returns the number when the other operand is a quiet NaN, so NaNs are
        // skipped as the reference's `ax > amax` skips them.
        vmax = vmaxnmq_f32(vmax, vabsq_f32(vld1q_f32(p.add(4 * k))));
    }
    let amax = vmaxnmvq_f32(vmax);
    if amax == 0.0 {
        out[..Q8K_BYTES].fill(0);
        return;
    }
    // The reference keeps the first element of largest magnitude, sign included.
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
    let iscale = -127.0_f32 / max;
    let scale = vdupq_n_f32(iscale);
    let magic = vdupq_n_f32(12_582_912.0);
    let mantissa = vdupq_n_s32(0x007F_FFFF);
    let bias = vdupq_n_s32(0x0040_0000);
    let top = vdupq_n_s32(127);
    for c in 0..QK_K / 8 {
        let quant = |k: usize| {
            // Multiply, then add the magic number: two roundings, as in the reference.
            let v = vaddq_f32(vmulq_f32(vld1q_f32(p.add(8 * c + 4 * k)), scale), magic);
            let i = vsubq_s32(vandq_s32(vreinterpretq_s32_f32(v), mantissa), bias);
            vminq_s32(i, top)
        };
        // `xtn` keeps the low half of each lane, as the reference's store to `int8_t` does.
        let w = vcombine_s16(vmovn_s32(quant(0)), vmovn_s32(quant(1)));
        vst1_s8(out.as_mut_ptr().add(Q8K_QS + 8 * c).cast(), vmovn_s16(w));
    }
    out[..4].copy_from_slice(&(1.0_f32 / iscale).to_le_bytes());
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
    use proptest::prelude::*;

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

    use crate::quant::scalar::kquant_testing::{case, check_dot};

    fn dotprod() -> bool {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn neon_q4k_matches_scalar(c in case(GgmlType::Q4_K)) {
            check_dot(GgmlType::Q4_K, mull::vec_dot_q4k, &c);
            if dotprod() { check_dot(GgmlType::Q4_K, sdot::vec_dot_q4k, &c) }
            // Q4_K sums exactly as the scalar reference does (`scalar::q4k_accumulate`).
            let (n, w, a) = &c;
            let want = (scalar::kernels(GgmlType::Q4_K).unwrap().vec_dot)(*n, w, a);
            prop_assert_eq!(mull::vec_dot_q4k(*n, w, a).to_bits(), want.to_bits());
            if dotprod() { prop_assert_eq!(sdot::vec_dot_q4k(*n, w, a).to_bits(), want.to_bits()) }
        }

        #[test]
        fn neon_q5k_matches_scalar(c in case(GgmlType::Q5_K)) {
            check_dot(GgmlType::Q5_K, mull::vec_dot_q5k, &c);
            if dotprod() { check_dot(GgmlType::Q5_K, sdot::vec_dot_q5k, &c) }
        }

        #[test]
        fn neon_q6k_matches_scalar(c in case(GgmlType::Q6_K)) {
            check_dot(GgmlType::Q6_K, mull::vec_dot_q6k, &c);
            if dotprod() { check_dot(GgmlType::Q6_K, sdot::vec_dot_q6k, &c) }
            // Q6_K sums in the scalar reference's 16 lanes, as on x86.
            let (n, w, a) = &c;
            let want = (scalar::kernels(GgmlType::Q6_K).unwrap().vec_dot)(*n, w, a);
            prop_assert_eq!(mull::vec_dot_q6k(*n, w, a).to_bits(), want.to_bits());
            if dotprod() { prop_assert_eq!(sdot::vec_dot_q6k(*n, w, a).to_bits(), want.to_bits()) }
        }

        #[test]
        fn neon_quantize_is_bit_identical(
            x in prop::collection::vec(
                prop_oneof![
                    4 => -1.0e4_f32..1.0e4,
                    1 => Just(0.0_f32),
                    1 => (-300_i32..300).prop_map(|i| i as f32 * 0.5),
                ],
                QK_K * 2,
            ),
        ) {
            let mut expected = vec![0_u8; 2 * Q8K_BYTES];
            let mut got = vec![0xAA_u8; 2 * Q8K_BYTES];
            (scalar::kernels(GgmlType::Q6_K).expect("scalar").quantize_activations)(
                &x, &mut expected,
            );
            quantize_q8k_neon(&x, &mut got);
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn neon_quantize_handles_nan_and_zero_blocks_like_scalar() {
        let mut x = vec![0.0_f32; 3 * QK_K];
        x[QK_K + 3] = f32::NAN;
        x[QK_K + 4] = -2.5;
        x[QK_K + 9] = 2.5;
        x[2 * QK_K] = f32::NAN;
        let mut expected = vec![0_u8; 3 * Q8K_BYTES];
        let mut got = vec![0xAA_u8; 3 * Q8K_BYTES];
        (scalar::kernels(GgmlType::Q4_K)
            .expect("scalar")
            .quantize_activations)(&x, &mut expected);
        quantize_q8k_neon(&x, &mut got);
        assert_eq!(got, expected);
    }

    #[test]
    fn kernels_name_their_isa() {
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            let k = kernels(ty).expect("NEON is always present");
            assert_eq!(k.ty, ty);
            assert_eq!(k.isa, if dotprod() { "neon-dotprod" } else { "neon" });
        }
        assert!(kernels(GgmlType::Q8_0).is_none());
    }
}
