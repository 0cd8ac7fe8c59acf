//! aarch64 NEON kernels for the legacy 32-element block formats, plus F32 and BF16 rows.
//!
//! Block dots use `sdot` (`vdotq_s32`) when the CPU has the dotprod extension, else widening
//! multiplies (`smull` + `sadalp`); both sum each block exactly in integers. Activation
//! quantization rounds with `fcvtns` (nearest-even), so it is bit-identical to the scalar
//! reference and to ggml's x86 path. F16 rows keep the scalar kernels (Rust's `float16x4_t`
//! intrinsics are not stable yet); dequantization is the scalar reference's everywhere.

use std::arch::aarch64::*;
use std::arch::is_aarch64_feature_detected;

use crate::quant::blocks::QK;
use crate::quant::{scalar, GgmlType, QuantizeFn, TypeKernels, VecDotFn};

/// Which NEON kernel set this CPU can run (NEON itself is part of the aarch64 baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Neon,
    DotProd,
}

impl Level {
    fn detect() -> Self {
        if is_aarch64_feature_detected!("dotprod") {
            Self::DotProd
        } else {
            Self::Neon
        }
    }
}

/// The NEON kernels for `ty` at the best level this CPU supports.
pub(super) fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    table(ty, Level::detect())
}

/// Every kernel set for `ty` this CPU can run (plain NEON, then dotprod where present).
pub(super) fn all(ty: GgmlType) -> Vec<TypeKernels> {
    let levels: &[Level] = match Level::detect() {
        Level::DotProd => &[Level::Neon, Level::DotProd],
        Level::Neon => &[Level::Neon],
    };
    levels.iter().filter_map(|&l| table(ty, l)).collect()
}

/// Kernels for `ty` at `level`; `Level::DotProd` only where [`Level::detect`] found it.
fn table(ty: GgmlType, level: Level) -> Option<TypeKernels> {
    let reference = scalar::kernels(ty)?;
    let vec_dot: VecDotFn = match (ty, level) {
        (GgmlType::F32, _) => floats::dot_f32,
        (GgmlType::BF16, _) => floats::dot_bf16,
        (GgmlType::Q4_0, Level::Neon) => plain::dot::<Q4_0>,
        (GgmlType::Q4_1, Level::Neon) => plain::dot::<Q4_1>,
        (GgmlType::Q5_0, Level::Neon) => plain::dot::<Q5_0>,
        (GgmlType::Q5_1, Level::Neon) => plain::dot::<Q5_1>,
        (GgmlType::Q8_0, Level::Neon) => plain::dot::<Q8_0>,
        (GgmlType::Q4_0, Level::DotProd) => dotprod::dot::<Q4_0>,
        (GgmlType::Q4_1, Level::DotProd) => dotprod::dot::<Q4_1>,
        (GgmlType::Q5_0, Level::DotProd) => dotprod::dot::<Q5_0>,
        (GgmlType::Q5_1, Level::DotProd) => dotprod::dot::<Q5_1>,
        (GgmlType::Q8_0, Level::DotProd) => dotprod::dot::<Q8_0>,
        _ => return None,
    };
    let quantize_activations: QuantizeFn = match ty.vec_dot_type() {
        GgmlType::Q8_0 => q8::quantize_q8_0,
        GgmlType::Q8_1 => q8::quantize_q8_1,
        _ => reference.quantize_activations,
    };
    Some(TypeKernels {
        ty,
        vec_dot,
        quantize_activations,
        dequantize: reference.dequantize,
        vec_dot_4: None,
        vec_dot_4x4: None,
        isa: "neon",
    })
}

// Block formats, as const-generic parameters of the shared block loop.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

const fn weight_bytes(f: u8) -> usize {
    match f {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

/// Whether format `f` has a min (and pairs with Q8_1 activations).
const fn has_min(f: u8) -> bool {
    matches!(f, Q4_1 | Q5_1)
}

const fn activation_bytes(f: u8) -> usize {
    if has_min(f) {
        36
    } else {
        34
    }
}

/// The f16 at `p` as f32 (exact).
fn f16_at(p: *const u8) -> f32 {
    // SAFETY: callers pass a pointer to two readable bytes inside a checked row.
    half::f16::from_bits(unsafe { p.cast::<u16>().read_unaligned() }).to_f32()
}

/// Checks both rows hold `n` elements of format `f`.
///
/// # Panics
/// On short rows: the loops read by pointer, so this keeps them in bounds. Callers pass rows
/// the tensor index sized, so a panic is a caller bug.
fn check_rows(f: u8, n: usize, weights: &[u8], activations: &[u8]) {
    let nb = n / QK;
    assert!(
        weights.len() >= nb * weight_bytes(f) && activations.len() >= nb * activation_bytes(f),
        "row shorter than {n} elements"
    );
}

/// A weight block's 32 quants as signed bytes (elements 0..16, 16..32), offsets applied.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn weight_quants<const F: u8>(wb: *const u8) -> [int8x16_t; 2] {
    let nibbles = |p: *const u8| {
        let v = vld1q_u8(p);
        [vandq_u8(v, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(v)]
    };
    let fifth_bits = |p: *const u8| {
        // Spread qh byte k to elements 8k..8k+8, then test one bit per element.
        let qh = vreinterpretq_u8_u32(vdupq_n_u32(p.cast::<u32>().read_unaligned()));
        let bits = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
        let spread = |idx: u64| {
            let idx = vreinterpretq_u8_u64(vcombine_u64(
                vcreate_u64(idx),
                vcreate_u64(idx + 0x0101_0101_0101_0101),
            ));
            vandq_u8(vtstq_u8(vqtbl1q_u8(qh, idx), bits), vdupq_n_u8(0x10))
        };
        [spread(0), spread(0x0202_0202_0202_0202)]
    };
    let (q, offset) = match F {
        Q4_0 => (nibbles(wb.add(2)), 8),
        Q4_1 => (nibbles(wb.add(4)), 0),
        Q5_0 => {
            let (n, h) = (nibbles(wb.add(6)), fifth_bits(wb.add(2)));
            ([vorrq_u8(n[0], h[0]), vorrq_u8(n[1], h[1])], 16)
        }
        Q5_1 => {
            let (n, h) = (nibbles(wb.add(8)), fifth_bits(wb.add(4)));
            ([vorrq_u8(n[0], h[0]), vorrq_u8(n[1], h[1])], 0)
        }
        _ => return [vld1q_s8(wb.add(2).cast()), vld1q_s8(wb.add(18).cast())],
    };
    let off = vdupq_n_u8(offset);
    [
        vreinterpretq_s8_u8(vsubq_u8(q[0], off)),
        vreinterpretq_s8_u8(vsubq_u8(q[1], off)),
    ]
}

/// Exact i8·i8 dot of 32 elements in the eight i32 lanes of AVX2's `vpmaddwd` result, as a
/// pair of NEON registers: lane `l` of half `h` sums elements `16h + 4l .. 16h + 4l + 4`.
/// With `sdot`; inline assembly because Rust's `vdotq_s32` is still unstable
/// (`stdarch_neon_dotprod`).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn dot_dotprod(w: [int8x16_t; 2], a: [int8x16_t; 2]) -> [int32x4_t; 2] {
    [0, 1].map(|k| {
        let mut acc = vdupq_n_s32(0);
        // SAFETY: `sdot` only reads and writes the named registers; the CPU has dotprod
        // (this fn's target feature).
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
                acc = inout(vreg) acc,
                w = in(vreg) w[k],
                a = in(vreg) a[k],
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    })
}

/// [`dot_dotprod`] with widening multiplies: products of pairs, then pairs of pairs.
#[inline]
#[target_feature(enable = "neon")]
fn dot_plain(w: [int8x16_t; 2], a: [int8x16_t; 2]) -> [int32x4_t; 2] {
    [0, 1].map(|k| {
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(w[k]), vget_low_s8(a[k])));
        let hi = vpaddlq_s16(vmull_high_s8(w[k], a[k]));
        vpaddq_s32(lo, hi)
    })
}

/// The canonical (AVX2) sum of eight lanes carried as two NEON registers.
#[inline]
#[target_feature(enable = "neon")]
fn hsum_pair(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let mut x = [0.0f32; 8];
    // SAFETY: `x` has room for the eight lanes.
    unsafe {
        vst1q_f32(x.as_mut_ptr(), lo);
        vst1q_f32(x.as_mut_ptr().add(4), hi);
    }
    scalar::hsum8(x)
}

macro_rules! block_kernels {
    ($module:ident, $features:literal, $dot:ident) => {
        mod $module {
            use super::*;

            /// # Safety
            /// CPU has `$features`; `w` and `a` hold `nb` blocks.
            #[target_feature(enable = $features)]
            unsafe fn dot_blocks<const F: u8>(nb: usize, w: *const u8, a: *const u8) -> f32 {
                // AVX2's one chain of eight lanes, in block order, as two 4-lane halves; the
                // min terms in their own fused chain (see scalar::legacy::LaneAcc).
                let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                let mut mins = 0.0f32;
                let qs_at = if has_min(F) { 4 } else { 2 };
                for i in 0..nb {
                    let wb = w.add(i * weight_bytes(F));
                    let ab = a.add(i * activation_bytes(F));
                    let aq = [
                        vld1q_s8(ab.add(qs_at).cast()),
                        vld1q_s8(ab.add(qs_at + 16).cast()),
                    ];
                    let l = $dot(weight_quants::<F>(wb), aq);
                    let d = f16_at(wb) * f16_at(ab);
                    lo = vfmaq_n_f32(lo, vcvtq_f32_s32(l[0]), d);
                    hi = vfmaq_n_f32(hi, vcvtq_f32_s32(l[1]), d);
                    if has_min(F) {
                        mins = f16_at(wb.add(2)).mul_add(f16_at(ab.add(2)), mins);
                    }
                }
                hsum_pair(lo, hi) + mins
            }

            /// Weight row · activation row for block format `F`.
            pub(super) fn dot<const F: u8>(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
                check_rows(F, n, weights, activations);
                // SAFETY: handed out by `table` only for a level the CPU supports; rows
                // checked to hold n / QK blocks.
                unsafe { dot_blocks::<F>(n / QK, weights.as_ptr(), activations.as_ptr()) }
            }
        }
    };
}

block_kernels!(plain, "neon", dot_plain);
block_kernels!(dotprod, "neon,dotprod", dot_dotprod);

/// Q8_0 / Q8_1 activation quantization, bit-identical to the scalar reference.
mod q8 {
    use super::*;

    /// Quantizes the 32 floats at `x` into `q`: multiplier `127/amax`, nearest-even.
    /// Returns the f32 scale and the quants' sum.
    ///
    /// # Safety
    /// `x` holds 32 floats, `q` 32 writable bytes.
    #[target_feature(enable = "neon")]
    unsafe fn block(x: *const f32, q: *mut i8) -> (f32, i32) {
        let v: [float32x4_t; 8] = std::array::from_fn(|k| vld1q_f32(x.add(4 * k)));
        let mut m = vabsq_f32(v[0]);
        for vk in &v[1..] {
            m = vmaxq_f32(m, vabsq_f32(*vk));
        }
        let amax = vmaxvq_f32(m);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        // `fcvtns` saturates and maps NaN to 0; x86's `vcvtps2dq` (the canonical one, see
        // scalar::legacy::round_to_i32) gives i32::MIN for both.
        let limit = vdupq_n_f32(2_147_483_648.0);
        let indefinite = vdupq_n_s32(i32::MIN);
        let i: [int32x4_t; 8] = v.map(|vk| {
            let p = vmulq_n_f32(vk, id);
            vbslq_s32(vcaltq_f32(p, limit), vcvtnq_s32_f32(p), indefinite)
        });
        let mut sum = i[0];
        for ik in &i[1..] {
            sum = vaddq_s32(sum, *ik);
        }
        for half in 0..2 {
            let j = 4 * half;
            let lo = vcombine_s16(vqmovn_s32(i[j]), vqmovn_s32(i[j + 1]));
            let hi = vcombine_s16(vqmovn_s32(i[j + 2]), vqmovn_s32(i[j + 3]));
            vst1q_s8(
                q.add(16 * half),
                vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)),
            );
        }
        (d, vaddvq_s32(sum))
    }

    fn check(x: &[f32], out: &[u8], block_bytes: usize) -> usize {
        assert_eq!(x.len() % QK, 0, "activations are not whole blocks");
        let nb = x.len() / QK;
        assert!(out.len() >= nb * block_bytes, "quantize output too short");
        nb
    }

    fn f16_bytes(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    pub(super) fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
        let nb = check(x, out, 34);
        for (xb, ob) in x.chunks_exact(QK).zip(out[..nb * 34].chunks_exact_mut(34)) {
            // SAFETY: NEON is baseline on aarch64; 32 floats in, 32 bytes out.
            let (d, _) = unsafe { block(xb.as_ptr(), ob[2..].as_mut_ptr().cast()) };
            ob[..2].copy_from_slice(&f16_bytes(d));
        }
    }

    pub(super) fn quantize_q8_1(x: &[f32], out: &mut [u8]) {
        let nb = check(x, out, 36);
        for (xb, ob) in x.chunks_exact(QK).zip(out[..nb * 36].chunks_exact_mut(36)) {
            // SAFETY: as in quantize_q8_0.
            let (d, sum) = unsafe { block(xb.as_ptr(), ob[4..].as_mut_ptr().cast()) };
            ob[..2].copy_from_slice(&f16_bytes(d));
            ob[2..4].copy_from_slice(&f16_bytes(d * sum as f32));
        }
    }
}

/// F32 and BF16 rows in the AVX2 kernel's order (see scalar::legacy::float_dot): four
/// 8-lane accumulators, each a pair of NEON registers.
mod floats {
    use super::*;

    /// Dot of `n` elements loaded 4 at a time by `load`, remainder by `one`.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn dot_with(
        n: usize,
        load: impl Fn(usize) -> (float32x4_t, float32x4_t),
        one: impl Fn(usize) -> f32,
    ) -> f32 {
        let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                for (h, half) in acc.iter_mut().enumerate() {
                    let (x, y) = load(i + 8 * k + 4 * h);
                    *half = vfmaq_f32(*half, x, y);
                }
            }
            i += 32;
        }
        while i + 8 <= n {
            for (h, half) in acc[0].iter_mut().enumerate() {
                let (x, y) = load(i + 4 * h);
                *half = vfmaq_f32(*half, x, y);
            }
            i += 8;
        }
        let fold = |h: usize| {
            vaddq_f32(
                vaddq_f32(acc[0][h], acc[1][h]),
                vaddq_f32(acc[2][h], acc[3][h]),
            )
        };
        let mut sum = hsum_pair(fold(0), fold(1));
        for j in i..n {
            sum += one(j);
        }
        sum
    }

    fn check(n: usize, w: &[u8], a: &[u8], width: usize) {
        assert!(
            w.len() >= n * width && a.len() >= n * width,
            "row shorter than {n} elements"
        );
    }

    pub(super) fn dot_f32(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
        check(n, weights, activations, 4);
        let (w, a) = (
            weights.as_ptr().cast::<f32>(),
            activations.as_ptr().cast::<f32>(),
        );
        // SAFETY: NEON is baseline; every read is below n elements, checked above.
        unsafe {
            dot_with(
                n,
                |i| (vld1q_f32(w.add(i)), vld1q_f32(a.add(i))),
                |i| w.add(i).read_unaligned() * a.add(i).read_unaligned(),
            )
        }
    }

    pub(super) fn dot_bf16(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
        check(n, weights, activations, 2);
        let (w, a) = (
            weights.as_ptr().cast::<u16>(),
            activations.as_ptr().cast::<u16>(),
        );
        let load = |p: *const u16| unsafe {
            // SAFETY: callers read 4 elements below n.
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p)))
        };
        let one = |p: *const u16| unsafe {
            // SAFETY: callers read one element below n.
            f32::from_bits(u32::from(p.read_unaligned()) << 16)
        };
        // SAFETY: NEON is baseline; every read is below n elements, checked above.
        unsafe {
            dot_with(
                n,
                |i| (load(w.add(i)), load(a.add(i))),
                |i| one(w.add(i)) * one(a.add(i)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TYPES: [GgmlType; 7] = [
        GgmlType::F32,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ];

    fn levels() -> Vec<Level> {
        match Level::detect() {
            Level::DotProd => vec![Level::Neon, Level::DotProd],
            Level::Neon => vec![Level::Neon],
        }
    }

    fn reference(ty: GgmlType) -> TypeKernels {
        scalar::kernels(ty).expect("legacy type")
    }

    fn quantize(kt: &TypeKernels, x: &[f32]) -> Vec<u8> {
        let vt = kt.ty.vec_dot_type();
        let mut out = vec![0u8; vt.row_bytes(x.len()).expect("whole blocks")];
        (kt.quantize_activations)(x, &mut out);
        out
    }

    /// A valid row of `n` elements of `ty`: random quants, finite f16 scales in [-1, 1].
    fn weight_row(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut unit = move || (next() % 2001) as f32 / 1000.0 - 1.0;
        match ty {
            GgmlType::F32 | GgmlType::BF16 => {
                let x: Vec<f32> = (0..n).map(|_| unit()).collect();
                quantize(&reference(ty), &x)
            }
            _ => {
                let bytes = ty.block_bytes();
                let halves = if has_min(format(ty)) { 2 } else { 1 };
                let mut row: Vec<u8> = (0..n / QK * bytes)
                    .map(|_| (unit().to_bits() >> 7) as u8)
                    .collect();
                for b in row.chunks_exact_mut(bytes) {
                    for h in 0..halves {
                        let bits = half::f16::from_f32(unit()).to_bits().to_le_bytes();
                        b[2 * h..2 * h + 2].copy_from_slice(&bits);
                    }
                }
                row
            }
        }
    }

    fn format(ty: GgmlType) -> u8 {
        match ty {
            GgmlType::Q4_0 => Q4_0,
            GgmlType::Q4_1 => Q4_1,
            GgmlType::Q5_0 => Q5_0,
            GgmlType::Q5_1 => Q5_1,
            _ => Q8_0,
        }
    }

    /// Σ |w·a| over the dequantized rows (Q8_1 read as d·q), doubled for the min terms.
    fn magnitude(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f32 {
        let mut wf = vec![0.0f32; n];
        (reference(ty).dequantize)(w, &mut wf);
        let af: Vec<f32> = match ty.vec_dot_type() {
            GgmlType::Q8_1 => a
                .chunks_exact(36)
                .flat_map(|b| {
                    let d = f16_at(b.as_ptr());
                    b[4..]
                        .iter()
                        .map(move |&q| f32::from(q as i8) * d)
                        .collect::<Vec<_>>()
                })
                .collect(),
            vt => {
                let mut af = vec![0.0f32; n];
                (reference(vt).dequantize)(a, &mut af);
                af
            }
        };
        wf.iter().zip(&af).map(|(x, y)| (x * y).abs()).sum::<f32>() * 2.0
    }

    /// Blocks whose largest magnitude is 127 (multiplier exactly 1) and whose other values
    /// are halves, so quantization meets exact ties and must round them to even.
    fn ties(blocks: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-254i32..=254, blocks * QK).prop_map(|v| {
            let mut x: Vec<f32> = v.into_iter().map(|k| k as f32 / 2.0).collect();
            for b in x.chunks_mut(QK) {
                b[0] = 127.0;
            }
            x
        })
    }

    fn floats(len: usize) -> impl Strategy<Value = Vec<f32>> {
        (
            prop::collection::vec(-1.0f32..1.0, len),
            prop::sample::select(vec![1e-3f32, 1.0, 50.0]),
        )
            .prop_map(|(v, s)| v.into_iter().map(|x| x * s).collect())
    }

    #[test]
    fn f16_falls_back_to_scalar() {
        assert!(kernels(GgmlType::F16).is_none());
        assert_eq!(kernels(GgmlType::Q4_1).expect("legacy type").isa, "neon");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn quantize_is_bit_identical(x in floats(7 * QK), t in ties(4)) {
            for (level, x) in levels().into_iter().flat_map(|l| [(l, &x), (l, &t)]) {
                for ty in TYPES {
                    let simd = table(ty, level).expect("legacy type");
                    prop_assert_eq!(quantize(&simd, x), quantize(&reference(ty), x), "{} {:?}", ty, level);
                }
            }
        }

        #[test]
        fn dots_match_reference(seed in any::<u64>(), blocks in 1usize..12, x in floats(12 * QK)) {
            let n = blocks * QK;
            for level in levels() {
                for ty in TYPES {
                    let simd = table(ty, level).expect("legacy type");
                    let w = weight_row(ty, n, seed);
                    let a = quantize(&simd, &x[..n]);
                    let want = (reference(ty).vec_dot)(n, &w, &a);
                    let got = (simd.vec_dot)(n, &w, &a);
                    let tol = magnitude(ty, &w, &a, n) * 1e-6 + f32::MIN_POSITIVE;
                    prop_assert!((got - want).abs() <= tol, "{} {:?}: {} vs {}", ty, level, got, want);
                }
            }
        }

        #[test]
        fn float_dots_match_reference(seed in any::<u64>(), n in 1usize..60, x in floats(60)) {
            for ty in [GgmlType::F32, GgmlType::BF16] {
                let simd = table(ty, Level::Neon).expect("float type");
                let w = weight_row(ty, n, seed);
                let a = quantize(&simd, &x[..n]);
                let want = (reference(ty).vec_dot)(n, &w, &a);
                let got = (simd.vec_dot)(n, &w, &a);
                let tol = magnitude(ty, &w, &a, n) * 1e-6 + f32::MIN_POSITIVE;
                prop_assert!((got - want).abs() <= tol, "{}: {} vs {}", ty, got, want);
            }
        }
    }
}
