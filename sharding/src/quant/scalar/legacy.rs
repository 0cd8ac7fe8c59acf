//! Scalar reference kernels for the float types and the "legacy" 32-element block formats
//! (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights; Q8_0/Q8_1 activations).
//!
//! These define the numerics every SIMD twin must reproduce. They follow ggml's CPU backend
//! as built for x86 with AVX2, with one deliberate choice: activation quantization rounds to
//! nearest-even (as ggml's AVX2 `quantize_row_q8_0/1` do), not half-away-from-zero (as
//! ggml's portable reference does), so every implementation here is bit-identical to
//! llama.cpp on x86.
//!
//! Blocks are read field by field from little-endian bytes, so rows need no alignment.

use half::f16;

use crate::quant::blocks::QK;
use crate::quant::{DequantizeFn, GgmlType, QuantizeFn, TypeKernels, VecDotFn};

/// The scalar kernels for `ty`, if it is one of the float or legacy block types.
pub(super) fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    let (vec_dot, quantize_activations, dequantize): (VecDotFn, QuantizeFn, DequantizeFn) = match ty
    {
        GgmlType::F32 => (vec_dot_f32, quantize_f32, dequantize_f32),
        GgmlType::F16 => (vec_dot_f16, quantize_f16, dequantize_f16),
        GgmlType::BF16 => (vec_dot_bf16, quantize_bf16, dequantize_bf16),
        GgmlType::Q4_0 => (vec_dot_q4_0_q8_0, quantize_q8_0, dequantize_q4_0),
        GgmlType::Q4_1 => (vec_dot_q4_1_q8_1, quantize_q8_1, dequantize_q4_1),
        GgmlType::Q5_0 => (vec_dot_q5_0_q8_0, quantize_q8_0, dequantize_q5_0),
        GgmlType::Q5_1 => (vec_dot_q5_1_q8_1, quantize_q8_1, dequantize_q5_1),
        GgmlType::Q8_0 => (vec_dot_q8_0_q8_0, quantize_q8_0, dequantize_q8_0),
        _ => return None,
    };
    Some(TypeKernels {
        ty,
        vec_dot,
        quantize_activations,
        dequantize,
        vec_dot_4: None,
        vec_dot_4x4: None,
        isa: "scalar",
    })
}

const Q4_0_BYTES: usize = 18;
const Q4_1_BYTES: usize = 20;
const Q5_0_BYTES: usize = 22;
const Q5_1_BYTES: usize = 24;
const Q8_0_BYTES: usize = 34;
const Q8_1_BYTES: usize = 36;

/// The f16 at byte offset `at` of `b`, widened to f32 (exact).
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// f32 to the f16 bits ggml stores (round to nearest-even, as F16C's `vcvtps2ph`).
fn f16_bits(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// f32 to bf16 bits as ggml's `GGML_FP32_TO_BF16`: round to nearest-even, NaNs kept quiet.
fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        ((u >> 16) | 64) as u16
    } else {
        (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
    }
}

/// The 32 unsigned 4-bit values of a 16-byte `qs` field: low nibbles are elements 0..16,
/// high nibbles elements 16..32.
fn nibbles(qs: &[u8]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for (j, &b) in qs[..QK / 2].iter().enumerate() {
        q[j] = b & 0x0f;
        q[j + QK / 2] = b >> 4;
    }
    q
}

/// The 32 unsigned 5-bit values of a Q5 block: bit `j` of the little-endian `qh` word is the
/// fifth bit of element `j`.
fn five_bits(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let hi = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((hi >> j) & 1) as u8) << 4;
    }
    q
}

/// The activation quants of a Q8 block.
fn q8_values(qs: &[u8]) -> [i32; QK] {
    std::array::from_fn(|j| i32::from(qs[j] as i8))
}

/// The blocks of `n` elements in `row`.
///
/// # Panics
/// If `row` is shorter than `n / QK` blocks of `block_bytes`: callers pass rows whose size
/// the tensor index checked, so a short row is a bug, not bad input.
fn blocks(row: &[u8], n: usize, block_bytes: usize) -> std::slice::ChunksExact<'_, u8> {
    let nb = n / QK;
    assert!(
        row.len() >= nb * block_bytes,
        "row shorter than {n} elements"
    );
    row[..nb * block_bytes].chunks_exact(block_bytes)
}

/// ggml's AVX2 accumulation, which llama.cpp runs on x86 and which our SIMD kernels share:
/// per block, eight lanes each hold the exact integer dot of 4 consecutive elements; every
/// lane accumulates `fma(d_w·d_a, lane, acc)` over the blocks; the lanes are then summed as
/// `hsum_float_8` does. The min term of Q4_1/Q5_1 accumulates as `fma(m_w, s_a, sum)` (GCC
/// contracts ggml's `summs += m*s`). Reproducing this order makes our logits bit-identical.
struct LaneAcc {
    lanes: [f32; 8],
    mins: f32,
}

impl LaneAcc {
    fn new() -> Self {
        LaneAcc {
            lanes: [0.0; 8],
            mins: 0.0,
        }
    }

    /// Adds one block: weight values `w` (offset already removed), activation values `a`.
    fn block(&mut self, w: &[i32; QK], a: &[i32; QK], d: f32) {
        for (l, acc) in self.lanes.iter_mut().enumerate() {
            let p: i32 = (4 * l..4 * l + 4).map(|j| w[j] * a[j]).sum();
            *acc = d.mul_add(p as f32, *acc);
        }
    }

    fn min(&mut self, m: f32, s: f32) {
        self.mins = m.mul_add(s, self.mins);
    }

    fn finish(self) -> f32 {
        super::hsum8(self.lanes) + self.mins
    }
}

fn values(q: &[u8; QK], offset: i32) -> [i32; QK] {
    std::array::from_fn(|j| i32::from(q[j]) - offset)
}

fn vec_dot_q4_0_q8_0(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let mut acc = LaneAcc::new();
    for (w, a) in blocks(weights, n, Q4_0_BYTES).zip(blocks(activations, n, Q8_0_BYTES)) {
        let d = f16_at(w, 0) * f16_at(a, 0);
        acc.block(&values(&nibbles(&w[2..]), 8), &q8_values(&a[2..]), d);
    }
    acc.finish()
}

fn vec_dot_q4_1_q8_1(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let mut acc = LaneAcc::new();
    for (w, a) in blocks(weights, n, Q4_1_BYTES).zip(blocks(activations, n, Q8_1_BYTES)) {
        acc.min(f16_at(w, 2), f16_at(a, 2));
        let d = f16_at(w, 0) * f16_at(a, 0);
        acc.block(&values(&nibbles(&w[4..]), 0), &q8_values(&a[4..]), d);
    }
    acc.finish()
}

fn vec_dot_q5_0_q8_0(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let mut acc = LaneAcc::new();
    for (w, a) in blocks(weights, n, Q5_0_BYTES).zip(blocks(activations, n, Q8_0_BYTES)) {
        let d = f16_at(w, 0) * f16_at(a, 0);
        acc.block(
            &values(&five_bits(&w[2..6], &w[6..]), 16),
            &q8_values(&a[2..]),
            d,
        );
    }
    acc.finish()
}

fn vec_dot_q5_1_q8_1(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let mut acc = LaneAcc::new();
    for (w, a) in blocks(weights, n, Q5_1_BYTES).zip(blocks(activations, n, Q8_1_BYTES)) {
        acc.min(f16_at(w, 2), f16_at(a, 2));
        let d = f16_at(w, 0) * f16_at(a, 0);
        acc.block(
            &values(&five_bits(&w[4..8], &w[8..]), 0),
            &q8_values(&a[4..]),
            d,
        );
    }
    acc.finish()
}

fn vec_dot_q8_0_q8_0(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    let mut acc = LaneAcc::new();
    for (w, a) in blocks(weights, n, Q8_0_BYTES).zip(blocks(activations, n, Q8_0_BYTES)) {
        let d = f16_at(w, 0) * f16_at(a, 0);
        acc.block(&q8_values(&w[2..]), &q8_values(&a[2..]), d);
    }
    acc.finish()
}

/// Float rows: products are exact in f64, and the f64 sum (as ggml's scalar `ggml_float`
/// accumulator) is the most accurate reference for the SIMD twins.
/// A float row dot in ggml's AVX2 order (`ggml_vec_dot_f32`/`_f16` as our x86 kernels
/// run it): four 8-lane accumulators fed 32 elements at a time with fused multiply-adds,
/// then 8 at a time into the first; the four added pairwise, the lanes summed by
/// [`super::hsum8`], and the last `n % 8` elements added one product at a time.
fn float_dot(n: usize, w: &[u8], a: &[u8], width: usize, to_f32: fn(&[u8]) -> f32) -> f32 {
    assert!(
        w.len() >= n * width && a.len() >= n * width,
        "row shorter than {n} elements"
    );
    let x = |j: usize| to_f32(&w[j * width..]);
    let y = |j: usize| to_f32(&a[j * width..]);
    let mut acc = [[0.0f32; 8]; 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, lanes) in acc.iter_mut().enumerate() {
            for (l, lane) in lanes.iter_mut().enumerate() {
                let j = i + 8 * k + l;
                *lane = x(j).mul_add(y(j), *lane);
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        for (l, lane) in acc[0].iter_mut().enumerate() {
            *lane = x(i + l).mul_add(y(i + l), *lane);
        }
        i += 8;
    }
    let lanes = std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]));
    let mut sum = super::hsum8(lanes);
    for j in i..n {
        sum += x(j) * y(j);
    }
    sum
}

fn f32_from(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn f16_from(b: &[u8]) -> f32 {
    f16_at(b, 0)
}

fn bf16_from(b: &[u8]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
}

fn vec_dot_f32(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    float_dot(n, weights, activations, 4, f32_from)
}

fn vec_dot_f16(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    float_dot(n, weights, activations, 2, f16_from)
}

fn vec_dot_bf16(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
    float_dot(n, weights, activations, 2, bf16_from)
}

/// Quantizes one block of 32 as ggml's AVX2 path does: `d = amax/127`, multiplier
/// `127/amax` (not `1/d`: the two differ in the last bit), round to nearest-even.
/// Returns the f32 scale (before its f16 rounding), the quants and their sum.
/// x86's `vroundps` (nearest-even) then `vcvtps2dq`: a value outside the i32 range, or
/// NaN, becomes `i32::MIN` ("integer indefinite"). ggml's AVX2 quantizer, and so the
/// canonical arithmetic, does this; it matters only for blocks whose largest magnitude is
/// below 127 / f32::MAX, where the multiplier overflows.
pub(crate) fn round_to_i32(v: f32) -> i32 {
    let r = v.round_ties_even();
    if (-2_147_483_648.0..2_147_483_648.0).contains(&r) {
        r as i32
    } else {
        i32::MIN
    }
}

/// One Q8 block as ggml's AVX2 `quantize_row_q8_0/1`: multiplier `127/amax`, each value
/// rounded by [`round_to_i32`] then saturated to i8 (`vpackssdw`, `vpacksswb`); the sum is
/// the wrapping sum of the unsaturated i32 values.
fn quantize_block_q8(x: &[f32]) -> (f32, [i8; QK], i32) {
    let amax = x[..QK].iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let i: [i32; QK] = std::array::from_fn(|j| round_to_i32(x[j] * id));
    let q = i.map(|v| v.clamp(-128, 127) as i8);
    let sum = i.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    (d, q, sum)
}

fn check_quantize(x: &[f32], out: &[u8], block_bytes: usize) -> usize {
    assert_eq!(x.len() % QK, 0, "activations are not whole blocks");
    let nb = x.len() / QK;
    assert!(out.len() >= nb * block_bytes, "quantize output too short");
    nb
}

fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    let nb = check_quantize(x, out, Q8_0_BYTES);
    for (xb, ob) in x
        .chunks_exact(QK)
        .zip(out[..nb * Q8_0_BYTES].chunks_exact_mut(Q8_0_BYTES))
    {
        let (d, q, _) = quantize_block_q8(xb);
        ob[..2].copy_from_slice(&f16_bits(d));
        for (o, v) in ob[2..].iter_mut().zip(q) {
            *o = v as u8;
        }
    }
}

fn quantize_q8_1(x: &[f32], out: &mut [u8]) {
    let nb = check_quantize(x, out, Q8_1_BYTES);
    for (xb, ob) in x
        .chunks_exact(QK)
        .zip(out[..nb * Q8_1_BYTES].chunks_exact_mut(Q8_1_BYTES))
    {
        let (d, q, sum) = quantize_block_q8(xb);
        ob[..2].copy_from_slice(&f16_bits(d));
        // ggml's AVX2 path: the f32 scale (not its f16) times the integer sum.
        ob[2..4].copy_from_slice(&f16_bits(d * sum as f32));
        for (o, v) in ob[4..].iter_mut().zip(q) {
            *o = v as u8;
        }
    }
}

/// Checks a float-row conversion's shapes; returns the element count.
fn check_float(x: &[f32], out: &[u8], width: usize) -> usize {
    assert!(out.len() >= x.len() * width, "conversion output too short");
    x.len()
}

fn quantize_f32(x: &[f32], out: &mut [u8]) {
    let n = check_float(x, out, 4);
    for (o, v) in out[..n * 4].chunks_exact_mut(4).zip(x) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

fn quantize_f16(x: &[f32], out: &mut [u8]) {
    let n = check_float(x, out, 2);
    for (o, &v) in out[..n * 2].chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&f16_bits(v));
    }
}

fn quantize_bf16(x: &[f32], out: &mut [u8]) {
    let n = check_float(x, out, 2);
    for (o, &v) in out[..n * 2].chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&bf16_bits(v).to_le_bytes());
    }
}

fn dequantize_float(row: &[u8], out: &mut [f32], width: usize, to_f32: fn(&[u8]) -> f32) {
    let n = out.len();
    assert!(row.len() >= n * width, "row shorter than {n} elements");
    for (o, b) in out.iter_mut().zip(row.chunks_exact(width)) {
        *o = to_f32(b);
    }
}

fn dequantize_f32(row: &[u8], out: &mut [f32]) {
    dequantize_float(row, out, 4, f32_from);
}

fn dequantize_f16(row: &[u8], out: &mut [f32]) {
    dequantize_float(row, out, 2, f16_from);
}

fn dequantize_bf16(row: &[u8], out: &mut [f32]) {
    dequantize_float(row, out, 2, bf16_from);
}

/// Dequantizes a block row: `values` yields a block's 32 integer quants, `out = q*d (+ m)`.
/// Multiply then add, unfused, as ggml's generic `dequantize_row_*` compile.
fn dequantize_blocks(
    row: &[u8],
    out: &mut [f32],
    block_bytes: usize,
    has_min: bool,
    values: impl Fn(&[u8]) -> [i32; QK],
) {
    assert_eq!(out.len() % QK, 0, "output is not whole blocks");
    for (b, o) in blocks(row, out.len(), block_bytes).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let m = if has_min { f16_at(b, 2) } else { 0.0 };
        for (o, q) in o.iter_mut().zip(values(b)) {
            *o = if has_min {
                q as f32 * d + m
            } else {
                q as f32 * d
            };
        }
    }
}

fn dequantize_q4_0(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(row, out, Q4_0_BYTES, false, |b| {
        nibbles(&b[2..]).map(|q| i32::from(q) - 8)
    });
}

fn dequantize_q4_1(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(row, out, Q4_1_BYTES, true, |b| {
        nibbles(&b[4..]).map(i32::from)
    });
}

fn dequantize_q5_0(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(row, out, Q5_0_BYTES, false, |b| {
        five_bits(&b[2..6], &b[6..]).map(|q| i32::from(q) - 16)
    });
}

fn dequantize_q5_1(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(row, out, Q5_1_BYTES, true, |b| {
        five_bits(&b[4..8], &b[8..]).map(i32::from)
    });
}

fn dequantize_q8_0(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(row, out, Q8_0_BYTES, false, |b| q8_values(&b[2..]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WEIGHT_TYPES: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ];

    fn k(ty: GgmlType) -> TypeKernels {
        kernels(ty).expect("legacy type")
    }

    /// `x` converted to the activation format of weight type `ty`.
    fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; ty.vec_dot_type().row_bytes(x.len()).expect("whole blocks")];
        (k(ty).quantize_activations)(x, &mut out);
        out
    }

    #[test]
    fn q8_0_quantize_rounds_ties_to_even() {
        let mut x = [0.0f32; QK];
        x[..6].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -0.5, -2.5]);
        let q = quantize(GgmlType::Q4_0, &x);
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), f16::ONE.to_bits());
        let qs: Vec<i8> = q[2..8].iter().map(|&b| b as i8).collect();
        assert_eq!(qs, [127, 0, 2, 2, 0, -2]);
    }

    #[test]
    fn q8_1_stores_scaled_sum() {
        let x: Vec<f32> = (0..QK).map(|i| i as f32 - 16.0).collect();
        let q = quantize(GgmlType::Q4_1, &x);
        // amax 16: multiplier 127/16 = 7.9375 exactly, so q = round(7.9375 * x).
        let expect: Vec<i8> = x
            .iter()
            .map(|v| (v * 7.9375).round_ties_even() as i8)
            .collect();
        let got: Vec<i8> = q[4..].iter().map(|&b| b as i8).collect();
        assert_eq!(got, expect);
        let sum: i32 = expect.iter().map(|&v| i32::from(v)).sum();
        assert_eq!(f16_at(&q, 0), f16::from_f32(16.0 / 127.0).to_f32());
        assert_eq!(
            f16_at(&q, 2),
            f16::from_f32(16.0 / 127.0 * sum as f32).to_f32()
        );
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        let q = quantize(GgmlType::Q8_0, &[0.0; QK]);
        assert!(q.iter().all(|&b| b == 0));
    }

    #[test]
    fn hand_computed_dots() {
        // Q4_0, d = 1: low nibbles 8 (-> 0), high nibbles 9 (-> 1).
        let mut w = vec![0u8; Q4_0_BYTES];
        w[..2].copy_from_slice(&f16_bits(1.0));
        w[2..].fill(0x98);
        let mut out = [0.0f32; QK];
        dequantize_q4_0(&w, &mut out);
        assert_eq!(&out[..16], &[0.0; 16]);
        assert_eq!(&out[16..], &[1.0; 16]);
        // Activations: d = 0.5, q = 2 everywhere -> dot = 0.5 * 1 * (16 * 1 * 2) = 16.
        let mut a = vec![2u8; Q8_0_BYTES];
        a[..2].copy_from_slice(&f16_bits(0.5));
        assert_eq!(vec_dot_q4_0_q8_0(QK, &w, &a), 16.0);

        // Q4_1, d = 2, m = -1, all nibbles 3 -> every element 5.
        let mut w = vec![0x33u8; Q4_1_BYTES];
        w[..2].copy_from_slice(&f16_bits(2.0));
        w[2..4].copy_from_slice(&f16_bits(-1.0));
        dequantize_q4_1(&w, &mut out);
        assert_eq!(out, [5.0; QK]);
        // Activations q = 1, d = 0.25, s = 0.25 * 32 = 8: dot = 2*0.25*96 + (-1)*8 = 40 = 32*5*0.25.
        let mut a = vec![1u8; Q8_1_BYTES];
        a[..2].copy_from_slice(&f16_bits(0.25));
        a[2..4].copy_from_slice(&f16_bits(8.0));
        assert_eq!(vec_dot_q4_1_q8_1(QK, &w, &a), 40.0);

        // Q5_0, d = 1, nibbles 0, qh bits set for elements 0 and 31 -> 0 and 31 are 0, rest -16.
        let mut w = vec![0u8; Q5_0_BYTES];
        w[..2].copy_from_slice(&f16_bits(1.0));
        w[2..6].copy_from_slice(&(1u32 | 1 << 31).to_le_bytes());
        dequantize_q5_0(&w, &mut out);
        let mut expect = [-16.0f32; QK];
        expect[0] = 0.0;
        expect[31] = 0.0;
        assert_eq!(out, expect);

        // Q5_1, d = 1, m = 0.5, nibbles 0xF, qh bit 16 -> element 16 is 31.5, the rest 15.5.
        let mut w = vec![0xffu8; Q5_1_BYTES];
        w[..2].copy_from_slice(&f16_bits(1.0));
        w[2..4].copy_from_slice(&f16_bits(0.5));
        w[4..8].copy_from_slice(&(1u32 << 16).to_le_bytes());
        dequantize_q5_1(&w, &mut out);
        let mut expect = [15.5f32; QK];
        expect[16] = 31.5;
        assert_eq!(out, expect);

        // Q8_0 · Q8_0: q_w = -3, q_a = 5, d = 1 and 0.5 -> 32 * -15 * 0.5.
        let mut w = vec![(-3i8) as u8; Q8_0_BYTES];
        w[..2].copy_from_slice(&f16_bits(1.0));
        let mut a = vec![5u8; Q8_0_BYTES];
        a[..2].copy_from_slice(&f16_bits(0.5));
        assert_eq!(vec_dot_q8_0_q8_0(QK, &w, &a), -240.0);
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nans() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // Exactly halfway between 0x3f80 and 0x3f81: ties to the even 0x3f80.
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
    }

    #[test]
    fn only_legacy_types_have_kernels() {
        for ty in WEIGHT_TYPES {
            assert_eq!(k(ty).ty, ty);
        }
        assert!(kernels(GgmlType::Q4_K).is_none());
        assert!(kernels(GgmlType::Q8_1).is_none());
    }

    /// A valid weight row of `n` elements of `ty` from a seed: random quants, finite f16
    /// scales (and mins) in [-1, 1].
    fn weight_row(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let x: Vec<f32> = (0..n)
                    .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                quantize(ty, &x)
            }
            _ => {
                let bytes = ty.block_bytes();
                let halves = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    2
                } else {
                    1
                };
                let mut row: Vec<u8> = (0..n / QK * bytes).map(|_| next() as u8).collect();
                for b in row.chunks_exact_mut(bytes) {
                    for h in 0..halves {
                        let v = (next() % 2001) as f32 / 1000.0 - 1.0;
                        b[2 * h..2 * h + 2].copy_from_slice(&f16_bits(v));
                    }
                }
                row
            }
        }
    }

    /// The activation values the kernel for `ty` multiplies with, and for Q4_1/Q5_1 the
    /// correction `Σ m_w (s_a - d_a Σ q_a)` that the stored f16 sum introduces.
    fn activation_values(ty: GgmlType, w: &[u8], aq: &[u8], n: usize) -> (Vec<f64>, f64) {
        match ty.vec_dot_type() {
            GgmlType::Q8_1 => {
                let mut vals = Vec::with_capacity(n);
                let mut correction = 0.0;
                for (b, wb) in aq
                    .chunks_exact(Q8_1_BYTES)
                    .zip(w.chunks_exact(ty.block_bytes()))
                {
                    let d = f64::from(f16_at(b, 0));
                    let q = q8_values(&b[4..]);
                    vals.extend(q.iter().map(|&v| d * f64::from(v)));
                    let sum: i32 = q.iter().sum();
                    correction +=
                        f64::from(f16_at(wb, 2)) * (f64::from(f16_at(b, 2)) - d * f64::from(sum));
                }
                (vals, correction)
            }
            vt => {
                let mut vals = vec![0.0f32; n];
                (k(vt).dequantize)(aq, &mut vals);
                (vals.into_iter().map(f64::from).collect(), 0.0)
            }
        }
    }

    /// Rows of `nb` blocks of x in [-scale, scale].
    fn floats(nb: usize) -> impl Strategy<Value = Vec<f32>> {
        (
            prop::collection::vec(-1.0f32..1.0, nb * QK),
            prop::sample::select(vec![1e-3f32, 1.0, 30.0]),
        )
            .prop_map(|(v, s)| v.into_iter().map(|x| x * s).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Quantizing then dequantizing lands within half a step of every element.
        #[test]
        fn round_trips_are_close(x in floats(4)) {
            for ty in WEIGHT_TYPES {
                // Q8_0 is the only block type whose activation format is its own.
                if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0) {
                    continue;
                }
                let q = quantize(ty, &x);
                let mut back = vec![0.0f32; x.len()];
                (k(ty).dequantize)(&q, &mut back);
                for (blk, bb) in x.chunks(QK).zip(back.chunks(QK)) {
                    let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    // Half a quantization step, plus what the f16 rounding of the scale
                    // (subnormal for tiny blocks) costs the largest quant.
                    let d = amax / 127.0;
                    let d_err = (f16::from_f32(d).to_f32() - d).abs() * 127.0;
                    let tol = match ty {
                        GgmlType::F32 => 0.0,
                        GgmlType::F16 => amax * 1e-3 + 6e-8,
                        GgmlType::BF16 => amax * 4e-3,
                        _ => d * 0.51 + d_err + amax * 1e-6,
                    };
                    for (a, b) in blk.iter().zip(bb) {
                        prop_assert!((a - b).abs() <= tol, "{ty}: {a} vs {b}");
                    }
                }
            }
        }

        /// Each kernel dot equals the f64 dot of the dequantized rows (plus, for the "_1"
        /// types, the f16 rounding of the stored activation sum `s`).
        #[test]
        fn dots_match_dequantized_dots(seed in any::<u64>(), a in floats(3)) {
            for ty in WEIGHT_TYPES {
                let kt = k(ty);
                let wq = weight_row(ty, a.len(), seed);
                let aq = quantize(ty, &a);
                let got = (kt.vec_dot)(a.len(), &wq, &aq);
                let mut wf = vec![0.0f32; a.len()];
                (kt.dequantize)(&wq, &mut wf);
                let (af, correction) = activation_values(ty, &wq, &aq, a.len());
                let exact: f64 = wf.iter().zip(&af).map(|(x, y)| f64::from(*x) * y).sum::<f64>() + correction;
                let mag: f64 = wf.iter().zip(&af).map(|(x, y)| (f64::from(*x) * y).abs()).sum();
                prop_assert!((f64::from(got) - exact).abs() <= mag * 1e-5 + correction.abs() * 1e-5 + 1e-30,
                    "{ty}: {got} vs {exact}");
            }
        }
    }
}
