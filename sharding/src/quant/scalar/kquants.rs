//! Scalar reference kernels for the K-quant weight types (Q4_K, Q5_K, Q6_K) and their Q8_K
//! activations.
//!
//! These define the numerics every SIMD twin must reproduce: Q8_K quantization is bit-for-bit
//! ggml's `quantize_row_q8_K_ref` (the function ggml's CPU backend calls on x86 and ARM), the
//! integer part of each dot product is exact, and dequantization follows ggml's
//! `dequantize_row_q*_K` operation by operation.
//!
//! Blocks are read straight from byte slices at fixed offsets, so rows need no alignment.

use std::mem::{offset_of, size_of};

use half::f16;

use crate::quant::blocks::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, K_SCALE_SIZE, QK_K};
use crate::quant::{DequantizeFn, GgmlType, TypeKernels, VecDotFn};

/// Bytes of one Q4_K super-block.
const Q4K_BYTES: usize = size_of::<BlockQ4K>();
/// Bytes of one Q5_K super-block.
const Q5K_BYTES: usize = size_of::<BlockQ5K>();
/// Bytes of one Q6_K super-block.
const Q6K_BYTES: usize = size_of::<BlockQ6K>();
/// Bytes of one Q8_K super-block.
const Q8K_BYTES: usize = size_of::<BlockQ8K>();

const Q4K_D: usize = offset_of!(BlockQ4K, d);
const Q4K_DMIN: usize = offset_of!(BlockQ4K, dmin);
const Q4K_SCALES: usize = offset_of!(BlockQ4K, scales);
const Q4K_QS: usize = offset_of!(BlockQ4K, qs);
const Q5K_D: usize = offset_of!(BlockQ5K, d);
const Q5K_DMIN: usize = offset_of!(BlockQ5K, dmin);
const Q5K_SCALES: usize = offset_of!(BlockQ5K, scales);
const Q5K_QH: usize = offset_of!(BlockQ5K, qh);
const Q5K_QS: usize = offset_of!(BlockQ5K, qs);
const Q6K_QL: usize = offset_of!(BlockQ6K, ql);
const Q6K_QH: usize = offset_of!(BlockQ6K, qh);
const Q6K_SCALES: usize = offset_of!(BlockQ6K, scales);
const Q6K_D: usize = offset_of!(BlockQ6K, d);
const Q8K_D: usize = offset_of!(BlockQ8K, d);
const Q8K_QS: usize = offset_of!(BlockQ8K, qs);
const Q8K_BSUMS: usize = offset_of!(BlockQ8K, bsums);

/// The scalar kernels for `ty` if it is a K-quant weight type.
pub(super) fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    let (vec_dot, dequantize): (VecDotFn, DequantizeFn) = match ty {
        GgmlType::Q4_K => (vec_dot_q4k, dequantize_q4k),
        GgmlType::Q5_K => (vec_dot_q5k, dequantize_q5k),
        GgmlType::Q6_K => (vec_dot_q6k, dequantize_q6k),
        _ => return None,
    };
    Some(TypeKernels {
        ty,
        vec_dot,
        quantize_activations: quantize_q8k,
        dequantize,
        vec_dot_4: None,
        vec_dot_4x4: None,
        isa: "scalar",
    })
}

/// Checks the kernel contract: `bytes` is exactly a row of `n` elements of `ty`.
///
/// # Panics
/// When it is not; callers size rows from the validated tensor index, so a mismatch is a bug.
fn check_row(ty: GgmlType, n: usize, bytes: usize) {
    assert_eq!(
        ty.row_bytes(n),
        Some(bytes),
        "{ty} row of {n} elements has the wrong byte length"
    );
}

/// The `f32` value of the little-endian `f16` at `bytes[at..at + 2]`.
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K/Q5_K block.
///
/// Sub-blocks 0..4 keep their 6 bits in the low bits of bytes `j` and `j + 4`; sub-blocks 4..8
/// put their low 4 bits in byte `j + 4` and borrow the top 2 bits of bytes `j - 4` and `j`
/// (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// A Q8_K super-block read from bytes.
struct Q8K<'a> {
    bytes: &'a [u8],
}

impl Q8K<'_> {
    fn d(&self) -> f32 {
        let b = &self.bytes[Q8K_D..Q8K_D + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn q(&self, i: usize) -> i32 {
        i32::from(self.bytes[Q8K_QS + i] as i8)
    }

    fn bsum(&self, k: usize) -> i32 {
        let at = Q8K_BSUMS + 2 * k;
        i32::from(i16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]))
    }
}

/// ggml's `nearest_int`: round to nearest, ties to even, by adding 1.5 * 2^23 and reading the
/// mantissa. Kept literally (not `round_ties_even`) so non-finite inputs map to the same
/// integers as in ggml.
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0_f32).to_bits();
    (bits & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// Quantizes one super-block of 256 activations to Q8_K (ggml's `quantize_row_q8_K_ref`).
///
/// The element of largest magnitude (the first, on ties) maps to exactly -127; an all-zero
/// block gets `d = 0` and zero quants and sums.
fn quantize_block_q8k(x: &[f32], out: &mut [u8]) {
    let mut amax = 0.0_f32;
    let mut max = 0.0_f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        out.fill(0);
        return;
    }
    let iscale = -127.0_f32 / max;
    write_q8k_block(x, iscale, out);
}

/// Writes quants, block sums and `d` of a Q8_K block quantized with `iscale`.
fn write_q8k_block(x: &[f32], iscale: f32, out: &mut [u8]) {
    for (q, &v) in out[Q8K_QS..Q8K_QS + QK_K].iter_mut().zip(x) {
        // `as i8` keeps the low byte, as ggml's store to `int8_t` does.
        *q = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    fill_q8k_bsums(out);
    out[Q8K_D..Q8K_D + 4].copy_from_slice(&(1.0_f32 / iscale).to_le_bytes());
}

/// Fills the 16 per-16-element sums of a Q8_K block whose quants are already written.
fn fill_q8k_bsums(out: &mut [u8]) {
    for k in 0..QK_K / 16 {
        let sum: i32 = out[Q8K_QS + 16 * k..Q8K_QS + 16 * k + 16]
            .iter()
            .map(|&q| i32::from(q as i8))
            .sum();
        // At most 16 * 128 in magnitude: fits an i16.
        let at = Q8K_BSUMS + 2 * k;
        out[at..at + 2].copy_from_slice(&(sum as i16).to_le_bytes());
    }
}

/// Quantizes a row of activations to Q8_K.
///
/// # Panics
/// When `x` is not a whole number of super-blocks or `out` is not exactly their Q8_K size.
fn quantize_q8k(x: &[f32], out: &mut [u8]) {
    check_row(GgmlType::Q8_K, x.len(), out.len());
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q8K_BYTES)) {
        quantize_block_q8k(xb, ob);
    }
}

fn vec_dot_q4k(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    check_row(GgmlType::Q4_K, n, weights.len());
    check_row(GgmlType::Q8_K, n, activations.len());
    let (mut acc, mut acc_min) = (0.0_f32, 0.0_f32);
    for (w, a) in weights
        .chunks_exact(Q4K_BYTES)
        .zip(activations.chunks_exact(Q8K_BYTES))
    {
        let y = Q8K { bytes: a };
        let scales = &w[Q4K_SCALES..Q4K_SCALES + K_SCALE_SIZE];
        let qs = &w[Q4K_QS..Q4K_QS + QK_K / 2];
        let (mut isum, mut msum) = (0_i32, 0_i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let shift = 4 * (j % 2);
            let packed = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let dot: i32 = (0..32)
                .map(|l| i32::from((packed[l] >> shift) & 0x0F) * y.q(32 * j + l))
                .sum();
            isum += i32::from(sc) * dot;
            msum += i32::from(m) * (y.bsum(2 * j) + y.bsum(2 * j + 1));
        }
        let d = f16_at(w, Q4K_D) * y.d();
        let dmin = f16_at(w, Q4K_DMIN) * y.d();
        q4k_accumulate(&mut acc, &mut acc_min, isum, msum, d, dmin);
    }
    acc - acc_min
}

/// Adds one Q4_K super-block to a row's dot product the way llama.cpp's repacked Q4_K
/// kernels (`q4_K_8x8`) do: its CPU backend repacks every Q4_K matrix with a multiple of 8
/// rows on AVX2 machines and runs prompt and decode through them, so its tokens rest on
/// this rounding. The block's integer sums (`isum = Σ scale·q·a`, `msum = Σ min·bsum`) are
/// exact; each goes into its own running sum with one fused multiply-add by `d·d_y` and
/// `dmin·d_y`; the row's result is `acc - acc_min`. (ggml's `vec_dot_q4_K_q8_K`, which it
/// uses elsewhere, sums in lanes instead: Gemma 3's greedy text parts from llama.cpp's at
/// token 11 with that rounding.)
#[inline(always)]
pub(crate) fn q4k_accumulate(
    acc: &mut f32,
    acc_min: &mut f32,
    isum: i32,
    msum: i32,
    d: f32,
    dmin: f32,
) {
    *acc = (isum as f32).mul_add(d, *acc);
    *acc_min = (msum as f32).mul_add(dmin, *acc_min);
}

/// Q5_K's dot product in the AVX2 kernel's lanes, so every machine rounds it alike.
///
/// Lane `l` (0..8) of a super-block holds the exact `Σ_s scale_s · Σ q·y` over elements
/// `4l..4l+4` of each sub-block `s`; the mins go into four lanes, lane `k` holding
/// `min_2k · (bsum_4k + bsum_4k+1) + min_2k+1 · (bsum_4k+2 + bsum_4k+3)`. Per super-block
/// each lane adds `d·d_y · lane` (or `dmin·d_y · lane`) with one fused multiply-add. The
/// result is the eight lanes summed by [`super::hsum8`] minus the four min lanes summed the
/// same way with four zero lanes.
fn vec_dot_q5k(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    check_row(GgmlType::Q5_K, n, weights.len());
    check_row(GgmlType::Q8_K, n, activations.len());
    let mut acc = [0.0_f32; 8];
    let mut acc_min = [0.0_f32; 4];
    for (w, a) in weights
        .chunks_exact(Q5K_BYTES)
        .zip(activations.chunks_exact(Q8K_BYTES))
    {
        let y = Q8K { bytes: a };
        let scales = &w[Q5K_SCALES..Q5K_SCALES + K_SCALE_SIZE];
        let qh = &w[Q5K_QH..Q5K_QH + QK_K / 8];
        let qs = &w[Q5K_QS..Q5K_QS + QK_K / 2];
        let d = f16_at(w, Q5K_D) * y.d();
        let dmin = f16_at(w, Q5K_DMIN) * y.d();
        let sm: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, scales));
        for (k, lane) in acc_min.iter_mut().enumerate() {
            let pair = |j: usize| i32::from(sm[j].1) * (y.bsum(2 * j) + y.bsum(2 * j + 1));
            *lane = dmin.mul_add((pair(2 * k) + pair(2 * k + 1)) as f32, *lane);
        }
        let mut isum = [0_i32; 8];
        for (j, &(sc, _)) in sm.iter().enumerate() {
            let shift = 4 * (j % 2);
            let packed = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            for l in 0..32 {
                let q = ((packed[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
                isum[l / 4] += i32::from(sc) * i32::from(q) * y.q(32 * j + l);
            }
        }
        for (acc, &isum) in acc.iter_mut().zip(&isum) {
            *acc = d.mul_add(isum as f32, *acc);
        }
    }
    let m = acc_min;
    super::hsum8(acc) - super::hsum8([m[0], m[1], m[2], m[3], 0.0, 0.0, 0.0, 0.0])
}

/// The 6-bit quant of element `e` (0..256) of a Q6_K block, before the -32 offset.
///
/// Per half of 128 elements, `ql` holds 64 bytes whose low nibbles serve elements 0..64 and
/// high nibbles 64..128; `qh` holds 32 bytes with 2 bits for each of 4 groups of 32.
fn q6k_quant(ql: &[u8], qh: &[u8], e: usize) -> u8 {
    let (half, r) = (e / 128, e % 128);
    let low = ql[64 * half + r % 64] >> (4 * (r / 64)) & 0x0F;
    let high = (qh[32 * half + r % 32] >> (2 * (r / 32))) & 3;
    low | (high << 4)
}

/// Q6_K's dot product, summed in 16 lanes as the SIMD kernels do (one rounding on every
/// machine, so a layer gives the same bits wherever it runs).
///
/// Element `e` of a super-block belongs to lane `8 * (g % 2) + (e % 32) / 4`, where `g` is
/// its 32-element group within its half of 128. Each lane's integer sum is exact; the -32
/// offset of every quant is taken from the block sums into lanes 0..8 (lane `k` gets the
/// sub-blocks `2k` and `2k + 1`). Per block each lane adds `d · d_y · sum` with one fused
/// multiply-add; at the end lanes `k` and `k + 8` are added, then `k` and `k + 4`, then
/// `k` and `k + 2`, then the last two.
fn vec_dot_q6k(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    check_row(GgmlType::Q6_K, n, weights.len());
    check_row(GgmlType::Q8_K, n, activations.len());
    let mut acc = [0.0_f32; 16];
    for (w, a) in weights
        .chunks_exact(Q6K_BYTES)
        .zip(activations.chunks_exact(Q8K_BYTES))
    {
        let y = Q8K { bytes: a };
        let ql = &w[Q6K_QL..Q6K_QL + QK_K / 2];
        let qh = &w[Q6K_QH..Q6K_QH + QK_K / 4];
        let scale = |k: usize| i32::from(w[Q6K_SCALES + k] as i8);
        let mut isum = [0_i32; 16];
        for (k, lane) in isum.iter_mut().enumerate().take(8) {
            *lane = -32 * (scale(2 * k) * y.bsum(2 * k) + scale(2 * k + 1) * y.bsum(2 * k + 1));
        }
        for e in 0..QK_K {
            let g = (e % 128) / 32;
            let lane = 8 * (g % 2) + (e % 32) / 4;
            isum[lane] += scale(e / 16) * i32::from(q6k_quant(ql, qh, e)) * y.q(e);
        }
        let d = f16_at(w, Q6K_D) * y.d();
        for (acc, &isum) in acc.iter_mut().zip(&isum) {
            *acc = d.mul_add(isum as f32, *acc);
        }
    }
    let t: [f32; 8] = std::array::from_fn(|k| acc[k] + acc[k + 8]);
    let u: [f32; 4] = std::array::from_fn(|k| t[k] + t[k + 4]);
    (u[0] + u[2]) + (u[1] + u[3])
}

/// Panics unless `row` holds exactly `out.len()` elements of `ty`.
fn check_dequantize(ty: GgmlType, row: &[u8], out: &[f32]) {
    check_row(ty, out.len(), row.len());
}

fn dequantize_q4k(row: &[u8], out: &mut [f32]) {
    check_dequantize(GgmlType::Q4_K, row, out);
    for (w, y) in row.chunks_exact(Q4K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(w, Q4K_D);
        let dmin = f16_at(w, Q4K_DMIN);
        let scales = &w[Q4K_SCALES..Q4K_SCALES + K_SCALE_SIZE];
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
            let shift = 4 * (j % 2);
            let packed = &w[Q4K_QS + 32 * (j / 2)..Q4K_QS + 32 * (j / 2) + 32];
            for (o, &p) in y[32 * j..32 * j + 32].iter_mut().zip(packed) {
                *o = dl * f32::from((p >> shift) & 0x0F) - ml;
            }
        }
    }
}

fn dequantize_q5k(row: &[u8], out: &mut [f32]) {
    check_dequantize(GgmlType::Q5_K, row, out);
    for (w, y) in row.chunks_exact(Q5K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(w, Q5K_D);
        let dmin = f16_at(w, Q5K_DMIN);
        let scales = &w[Q5K_SCALES..Q5K_SCALES + K_SCALE_SIZE];
        let qh = &w[Q5K_QH..Q5K_QH + QK_K / 8];
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
            let shift = 4 * (j % 2);
            let packed = &w[Q5K_QS + 32 * (j / 2)..Q5K_QS + 32 * (j / 2) + 32];
            for (l, o) in y[32 * j..32 * j + 32].iter_mut().enumerate() {
                let q = ((packed[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
                *o = dl * f32::from(q) - ml;
            }
        }
    }
}

fn dequantize_q6k(row: &[u8], out: &mut [f32]) {
    check_dequantize(GgmlType::Q6_K, row, out);
    for (w, y) in row.chunks_exact(Q6K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(w, Q6K_D);
        let ql = &w[Q6K_QL..Q6K_QL + QK_K / 2];
        let qh = &w[Q6K_QH..Q6K_QH + QK_K / 4];
        for (e, o) in y.iter_mut().enumerate() {
            let sc = f32::from(w[Q6K_SCALES + e / 16] as i8);
            let q = f32::from(i16::from(q6k_quant(ql, qh, e)) - 32);
            // ggml computes `d * sc * q` left to right.
            *o = d * sc * q;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: [u8; 2] = [0x00, 0x3C];
    const HALF: [u8; 2] = [0x00, 0x38];

    /// A Q8_K block with `d = 1` and every quant equal to `q`.
    fn q8k_const(q: i8) -> Vec<u8> {
        let mut b = vec![0_u8; Q8K_BYTES];
        b[Q8K_D..Q8K_D + 4].copy_from_slice(&1.0_f32.to_le_bytes());
        b[Q8K_QS..Q8K_QS + QK_K].fill(q as u8);
        fill_q8k_bsums(&mut b);
        b
    }

    fn q8k_quants(b: &[u8]) -> Vec<i8> {
        b[Q8K_QS..Q8K_QS + QK_K].iter().map(|&q| q as i8).collect()
    }

    #[test]
    fn q8k_rounds_half_to_even_and_maps_max_to_minus_127() {
        let mut x = [0.0_f32; QK_K];
        x[..4].copy_from_slice(&[0.5, 1.5, 2.5, -127.0]);
        x[20] = 100.25;
        let mut out = vec![0_u8; Q8K_BYTES];
        quantize_q8k(&x, &mut out);
        let q = q8k_quants(&out);
        // iscale = -127 / -127 = 1: ties go to even.
        assert_eq!(&q[..4], &[0, 2, 2, -127]);
        assert_eq!(q[20], 100);
        let y = Q8K { bytes: &out };
        assert_eq!(y.d(), 1.0);
        assert_eq!(y.bsum(0), 2 + 2 - 127);
        assert_eq!(y.bsum(1), 100);
        assert_eq!(y.bsum(2), 0);
    }

    #[test]
    fn q8k_takes_the_sign_of_the_first_largest_magnitude() {
        let mut x = [0.0_f32; QK_K];
        x[5] = 3.0;
        x[7] = -3.0;
        x[9] = 1.5;
        let mut out = vec![0_u8; Q8K_BYTES];
        quantize_q8k(&x, &mut out);
        let q = q8k_quants(&out);
        assert_eq!((q[5], q[7], q[9]), (-127, 127, -64));
        assert_eq!(Q8K { bytes: &out }.d(), 1.0 / (-127.0_f32 / 3.0));
    }

    #[test]
    fn q8k_zero_block_is_all_zero() {
        let mut out = vec![0xAA_u8; 2 * Q8K_BYTES];
        let mut x = [0.0_f32; 2 * QK_K];
        x[QK_K] = -0.0;
        x[QK_K + 1] = 1e-3;
        quantize_q8k(&x, &mut out);
        assert!(out[..Q8K_BYTES].iter().all(|&b| b == 0));
        assert_eq!(q8k_quants(&out[Q8K_BYTES..])[1], -127);
    }

    #[test]
    fn scale_min_k4_unpacks_six_bit_fields() {
        let mut q = [0_u8; 12];
        q[0] = 0b11_000001; // scale 0 = 1, top bits feed scale 4
        q[4] = 0b10_000101; // min 0 = 5, top bits feed min 4
        q[8] = 0x7C; // scale 4 low nibble 0xC, min 4 low nibble 7
        assert_eq!(scale_min_k4(0, &q), (1, 5));
        assert_eq!(scale_min_k4(4, &q), (0x3C, 0x27));
    }

    /// Q4_K block: d = 1, dmin = 0.5, every scale 2 and min 1, low nibbles 1, high nibbles 3.
    fn q4k_block() -> Vec<u8> {
        let mut b = vec![0_u8; Q4K_BYTES];
        b[Q4K_D..Q4K_D + 2].copy_from_slice(&ONE);
        b[Q4K_DMIN..Q4K_DMIN + 2].copy_from_slice(&HALF);
        let s = Q4K_SCALES;
        b[s..s + 4].fill(2);
        b[s + 4..s + 8].fill(1);
        b[s + 8..s + 12].fill(0x12);
        b[Q4K_QS..].fill(0x31);
        b
    }

    #[test]
    fn q4k_hand_checked() {
        let w = q4k_block();
        let mut deq = vec![0.0; QK_K];
        dequantize_q4k(&w, &mut deq);
        // Even sub-blocks: 2 * 1 - 0.5; odd ones: 2 * 3 - 0.5.
        assert_eq!(deq[0], 1.5);
        assert_eq!(deq[32], 5.5);
        assert_eq!(deq[255], 5.5);
        // 4 * 32 * (1.5 + 5.5) with all activations 1.
        assert_eq!(vec_dot_q4k(QK_K, &w, &q8k_const(1)), 896.0);
        assert_eq!(vec_dot_q4k(QK_K, &w, &q8k_const(-2)), -1792.0);
    }

    #[test]
    fn q5k_high_bits_add_16() {
        let mut w = vec![0_u8; Q5K_BYTES];
        w[Q5K_D..Q5K_D + 2].copy_from_slice(&ONE);
        w[Q5K_DMIN..Q5K_DMIN + 2].copy_from_slice(&HALF);
        w[Q5K_SCALES..Q5K_SCALES + 4].fill(1);
        w[Q5K_SCALES + 8..Q5K_SCALES + 12].fill(0x01);
        // Bit j of qh[l] belongs to element 32 j + l.
        w[Q5K_QH] = 0b0000_0010;
        w[Q5K_QH + 3] = 0b1000_0000;
        w[Q5K_QS] = 0x53;
        let mut deq = vec![0.0; QK_K];
        dequantize_q5k(&w, &mut deq);
        assert_eq!(deq[0], 3.0);
        assert_eq!(deq[32], 21.0);
        assert_eq!(deq[32 * 7 + 3], 16.0);
        assert_eq!(deq[1], 0.0);
        assert_eq!(vec_dot_q5k(QK_K, &w, &q8k_const(1)), 40.0);
    }

    #[test]
    fn q6k_hand_checked() {
        let mut w = vec![0_u8; Q6K_BYTES];
        w[Q6K_D..Q6K_D + 2].copy_from_slice(&ONE);
        w[Q6K_SCALES..Q6K_SCALES + 16].fill(1);
        w[Q6K_SCALES + 15] = (-2_i8) as u8;
        // Element 0: low 1, high 0; 32: low 3, high 1; 64: low 2, high 2; 96: low 4, high 3.
        w[Q6K_QL] = 0x21;
        w[Q6K_QL + 32] = 0x43;
        w[Q6K_QH] = 0b11_10_01_00;
        let mut deq = vec![0.0; QK_K];
        dequantize_q6k(&w, &mut deq);
        assert_eq!(
            [deq[0], deq[32], deq[64], deq[96]],
            [-31.0, -13.0, 2.0, 20.0]
        );
        assert_eq!(deq[1], -32.0);
        assert_eq!(deq[255], 64.0);
        // All 256 quants are -32 except the four above, which add 1 + 19 + 34 + 52.
        let expected = (15 * 16 * -32 - 2 * 16 * -32) + (1 + 19 + 34 + 52);
        assert_eq!(vec_dot_q6k(QK_K, &w, &q8k_const(1)), expected as f32);
    }

    #[test]
    fn dot_matches_dequantized_sum() {
        let w = q4k_block();
        let mut x = [0.0_f32; QK_K];
        for (i, v) in x.iter_mut().enumerate() {
            *v = (i as f32 * 0.37).sin();
        }
        let mut a = vec![0_u8; Q8K_BYTES];
        quantize_q8k(&x, &mut a);
        let mut deq = vec![0.0; QK_K];
        dequantize_q4k(&w, &mut deq);
        let y = Q8K { bytes: &a };
        let expected: f32 = (0..QK_K).map(|i| deq[i] * y.d() * y.q(i) as f32).sum();
        let got = vec_dot_q4k(QK_K, &w, &a);
        assert!(
            (got - expected).abs() < 1e-4 * expected.abs().max(1.0),
            "{got} vs {expected}"
        );
    }

    #[test]
    #[should_panic(expected = "wrong byte length")]
    fn short_row_is_rejected() {
        vec_dot_q6k(QK_K, &[0; Q6K_BYTES - 1], &q8k_const(1));
    }
}

/// Property-test helpers shared by the SIMD modules' tests (x86 and aarch64).
#[cfg(test)]
pub(crate) mod testing {
    use half::f16;
    use proptest::prelude::*;

    use super::{kernels, Q8K_BYTES, Q8K_QS};
    use crate::quant::blocks::QK_K;
    use crate::quant::{GgmlType, VecDotFn};

    /// Random weight blocks with finite `f16` scales, and Q8_K activations quantized from
    /// random floats by the scalar reference.
    pub(crate) fn case(ty: GgmlType) -> impl Strategy<Value = (usize, Vec<u8>, Vec<u8>)> {
        (1_usize..4).prop_flat_map(move |nb| {
            let bytes = nb * ty.block_bytes();
            (
                Just(nb * QK_K),
                prop::collection::vec(any::<u8>(), bytes),
                prop::collection::vec(prop::collection::vec(-1.0e3_f32..1.0e3, QK_K), nb),
                prop::collection::vec(-8.0_f32..8.0, 2 * nb),
            )
                .prop_map(move |(n, mut w, x, scales)| {
                    for (b, s) in w.chunks_exact_mut(ty.block_bytes()).zip(scales.chunks(2)) {
                        let d = f16::from_f32(s[0]).to_le_bytes();
                        let dmin = f16::from_f32(s[1]).to_le_bytes();
                        if ty == GgmlType::Q6_K {
                            b[208..210].copy_from_slice(&d);
                        } else {
                            b[0..2].copy_from_slice(&d);
                            b[2..4].copy_from_slice(&dmin);
                        }
                    }
                    let x: Vec<f32> = x.concat();
                    let mut a = vec![0_u8; n / QK_K * Q8K_BYTES];
                    (kernels(GgmlType::Q4_K)
                        .expect("scalar")
                        .quantize_activations)(&x, &mut a);
                    (n, w, a)
                })
        })
    }

    /// Sum of the magnitudes of every term of the dot product (`|d scale q y|` and
    /// `|dmin min y|` per element), the yardstick for two float accumulation orders of the
    /// same exact integer sums. Built from the scalar dequantizer with `d`/`dmin` set to 0 or
    /// 1, which yields the integer `scale * q` and `-min` exactly.
    pub(crate) fn abs_contributions(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
        let deq = kernels(ty).expect("scalar").dequantize;
        let n = w.len() / ty.block_bytes() * QK_K;
        let (one, zero) = (f16::ONE.to_le_bytes(), [0_u8; 2]);
        let unit = |d: [u8; 2], dmin: [u8; 2]| {
            let mut u = w.to_vec();
            for b in u.chunks_exact_mut(ty.block_bytes()) {
                if ty == GgmlType::Q6_K {
                    b[208..210].copy_from_slice(&d);
                } else {
                    b[0..2].copy_from_slice(&d);
                    b[2..4].copy_from_slice(&dmin);
                }
            }
            let mut out = vec![0.0_f32; n];
            deq(&u, &mut out);
            out
        };
        let (sq, mins) = (unit(one, zero), unit(zero, one));
        let mut total = 0.0_f32;
        for (b, (wb, ab)) in w
            .chunks_exact(ty.block_bytes())
            .zip(a.chunks_exact(Q8K_BYTES))
            .enumerate()
        {
            let dy = f32::from_le_bytes([ab[0], ab[1], ab[2], ab[3]]);
            let (d, dmin) = if ty == GgmlType::Q6_K {
                (f16::from_le_bytes([wb[208], wb[209]]).to_f32(), 0.0)
            } else {
                (
                    f16::from_le_bytes([wb[0], wb[1]]).to_f32(),
                    f16::from_le_bytes([wb[2], wb[3]]).to_f32(),
                )
            };
            for e in 0..QK_K {
                let y = f32::from(ab[Q8K_QS + e] as i8);
                let i = b * QK_K + e;
                total += (d * dy * sq[i] * y).abs() + (dmin * dy * mins[i] * y).abs();
            }
        }
        total
    }

    pub(crate) fn check_dot(ty: GgmlType, f: VecDotFn, (n, w, a): &(usize, Vec<u8>, Vec<u8>)) {
        let reference = (kernels(ty).expect("scalar").vec_dot)(*n, w, a);
        let got = f(*n, w, a);
        let tol = 1e-5 * abs_contributions(ty, w, a) + f32::MIN_POSITIVE;
        assert!(
            (got - reference).abs() <= tol,
            "{ty}: {got} vs {reference} (tol {tol})"
        );
    }
}
