//! x86-64 kernels for the float types and the legacy 32-element block formats.
//!
//! Two levels, picked at run time:
//! - `avx2`: AVX2 + FMA + F16C. Integer block dots with `vpmaddubsw` + `vpmaddwd`.
//! - `avx512`: additionally AVX-512 F/BW/VL + VNNI. The same 256-bit loop, but block dots with
//!   one `vpdpbusd` and the Q5 fifth bits expanded from a mask register.
//!
//! Integer sums per block are exact, so vec_dot results differ from the scalar reference only
//! by float rounding (lane-wise accumulation). Activation quantization is bit-identical to
//! the scalar reference (and to ggml's AVX2 `quantize_row_q8_0/1`). Dequantization is not hot
//! (embedding rows), so it is the scalar reference's.

use std::arch::x86_64::*;

use crate::quant::blocks::QK;
use crate::quant::{scalar, GgmlType, QuantizeFn, TypeKernels, VecDot4Fn, VecDot4x4Fn, VecDotFn};

mod tile;

/// Which x86 kernel set this CPU can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Avx2,
    Avx512,
}

impl Level {
    /// The best level the running CPU supports, or `None` without AVX2/FMA/F16C.
    fn detect() -> Option<Self> {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return None;
        }
        Some(if super::avx512_enabled() {
            Self::Avx512
        } else {
            Self::Avx2
        })
    }
}

/// The x86 kernels for `ty` at the best level this CPU supports.
pub(super) fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    table(ty, Level::detect()?)
}

/// Every kernel set for `ty` this CPU can run (AVX2, then AVX-512 where present).
pub(super) fn all(ty: GgmlType) -> Vec<TypeKernels> {
    let levels: &[Level] = match Level::detect() {
        Some(Level::Avx512) => &[Level::Avx2, Level::Avx512],
        Some(Level::Avx2) => &[Level::Avx2],
        None => &[],
    };
    levels.iter().filter_map(|&l| table(ty, l)).collect()
}

/// Kernels for `ty` at `level`. Only call with a level [`Level::detect`] returned (or a
/// lower one): the functions handed out assume the CPU has the level's features.
fn table(ty: GgmlType, level: Level) -> Option<TypeKernels> {
    let (vec_dot, vec_dot_4): (VecDotFn, Option<VecDot4Fn>) = match (ty, level) {
        (GgmlType::F32, _) => (floats::dot_f32, None),
        (GgmlType::F16, _) => (floats::dot_f16, None),
        (GgmlType::BF16, _) => (floats::dot_bf16, None),
        (GgmlType::Q4_0, Level::Avx2) => (avx2::dot::<Q4_0>, Some(avx2::dot4::<Q4_0>)),
        (GgmlType::Q4_1, Level::Avx2) => (avx2::dot::<Q4_1>, Some(avx2::dot4::<Q4_1>)),
        (GgmlType::Q5_0, Level::Avx2) => (avx2::dot::<Q5_0>, Some(avx2::dot4::<Q5_0>)),
        (GgmlType::Q5_1, Level::Avx2) => (avx2::dot::<Q5_1>, Some(avx2::dot4::<Q5_1>)),
        (GgmlType::Q8_0, Level::Avx2) => (avx2::dot::<Q8_0>, Some(avx2::dot4::<Q8_0>)),
        (GgmlType::Q4_0, Level::Avx512) => (vnni::dot::<Q4_0>, Some(vnni::dot4::<Q4_0>)),
        (GgmlType::Q4_1, Level::Avx512) => (vnni::dot::<Q4_1>, Some(vnni::dot4::<Q4_1>)),
        (GgmlType::Q5_0, Level::Avx512) => (vnni::dot::<Q5_0>, Some(vnni::dot4::<Q5_0>)),
        (GgmlType::Q5_1, Level::Avx512) => (vnni::dot::<Q5_1>, Some(vnni::dot4::<Q5_1>)),
        (GgmlType::Q8_0, Level::Avx512) => (vnni::dot::<Q8_0>, Some(vnni::dot4::<Q8_0>)),
        _ => return None,
    };
    // Four weight rows at a time only where there are registers for the 16 accumulators.
    let vec_dot_4x4: Option<VecDot4x4Fn> = match (ty, level) {
        (GgmlType::Q4_0, Level::Avx512) => Some(tile::dot4x4::<Q4_0>),
        (GgmlType::Q5_0, Level::Avx512) => Some(tile::dot4x4::<Q5_0>),
        (GgmlType::Q8_0, Level::Avx512) => Some(tile::dot4x4::<Q8_0>),
        _ => None,
    };
    let quantize_activations: QuantizeFn = match ty.vec_dot_type() {
        GgmlType::F32 => floats::to_f32,
        GgmlType::F16 => floats::to_f16,
        GgmlType::BF16 => floats::to_bf16,
        GgmlType::Q8_0 => q8::quantize_q8_0,
        GgmlType::Q8_1 => q8::quantize_q8_1,
        _ => return None,
    };
    let reference = scalar::kernels(ty)?;
    Some(TypeKernels {
        ty,
        vec_dot,
        quantize_activations,
        dequantize: reference.dequantize,
        vec_dot_4,
        vec_dot_4x4,
        isa: match level {
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        },
    })
}

// Block formats, as const-generic parameters of the shared block loop.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

/// Bytes of one weight block of format `f`.
const fn weight_bytes(f: u8) -> usize {
    match f {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

/// Whether format `f` has a min (and so pairs with Q8_1 activations, whose `s` it uses).
const fn has_min(f: u8) -> bool {
    matches!(f, Q4_1 | Q5_1)
}

/// Bytes of one activation block for format `f`: Q8_1 or Q8_0.
const fn activation_bytes(f: u8) -> usize {
    if has_min(f) {
        36
    } else {
        34
    }
}

/// Checks that both rows hold `n` elements of format `f`.
///
/// # Panics
/// On short rows: the SIMD loops read by pointer, so this check is what keeps them in
/// bounds. Callers pass rows the tensor index sized, so a panic here is a caller bug.
fn check_rows(f: u8, n: usize, weights: &[u8], activations: &[&[u8]]) {
    let nb = n / QK;
    assert!(
        weights.len() >= nb * weight_bytes(f),
        "weight row shorter than {n} elements"
    );
    for a in activations {
        assert!(
            a.len() >= nb * activation_bytes(f),
            "activation row shorter than {n} elements"
        );
    }
}

/// The f16 at `p`, widened to f32 (exact) with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = p.cast::<u16>().read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The f16 `d` at the start of each of four blocks, as f32 in lanes 0..4.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_scales4(p: [*const u8; 4]) -> __m128 {
    let d = |p: *const u8| p.cast::<i16>().read_unaligned();
    _mm_cvtph_ps(_mm_setr_epi16(
        d(p[0]),
        d(p[1]),
        d(p[2]),
        d(p[3]),
        0,
        0,
        0,
        0,
    ))
}

/// Lane r of `v` in all eight lanes of vector r.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn spread4(v: __m128) -> [__m256; 4] {
    let v = _mm256_set_m128(v, v);
    [
        _mm256_permute_ps::<0x00>(v),
        _mm256_permute_ps::<0x55>(v),
        _mm256_permute_ps::<0xAA>(v),
        _mm256_permute_ps::<0xFF>(v),
    ]
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The 32 4-bit values of 16 bytes at `p` as bytes, in element order: low nibbles in the low
/// 128-bit lane (elements 0..16), high nibbles in the high lane (16..32).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// The Q5 fifth bits of the little-endian word at `p` as 0x10 bytes (AVX2: shuffle each
/// qh byte to its 8 elements, then test one bit per byte).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn high_bits_avx2(p: *const u8) -> __m256i {
    let qh = p.cast::<i32>().read_unaligned();
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// [`high_bits_avx2`] with AVX-512BW: the word is the byte mask.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
unsafe fn high_bits_avx512(p: *const u8) -> __m256i {
    let qh = p.cast::<u32>().read_unaligned();
    _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10))
}

/// Unsigned u8 × signed i8 dot, summed in groups of 4 into 8 i32 lanes (AVX2). Exact while
/// each adjacent pair stays within i16: true for 5-bit weights, and for |w| ≤ 128 with
/// |a| ≤ 127 (`vpmaddubsw` saturates past ±32767).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(w: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
}

/// [`dot_avx2`] with VNNI: one `vpdpbusd`, never saturating.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
fn dot_vnni(w: __m256i, a: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
}

/// Σ (q - o) a for unsigned weight quants `q` and offset `o` (AVX2): one signed dot, the
/// sign moved onto the activations as ggml does, instead of two unsigned ones. `|q - o| ≤ 16`
/// and `|a| ≤ 127`, so no pair saturates. The `q - o` and `|q - o|` work is shared when the
/// same weights meet several activation rows.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn offset_dot_avx2(q: __m256i, a: __m256i, o: i8) -> __m256i {
    let s = _mm256_sub_epi8(q, _mm256_set1_epi8(o));
    dot_avx2(_mm256_abs_epi8(s), _mm256_sign_epi8(a, s))
}

/// [`offset_dot_avx2`] with VNNI: `vpdpbusd` is cheap enough to run twice.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
fn offset_dot_vnni(q: __m256i, a: __m256i, o: i8) -> __m256i {
    _mm256_sub_epi32(dot_vnni(q, a), dot_vnni(_mm256_set1_epi8(o), a))
}

/// The block loops, instantiated once per level with that level's target features and
/// integer primitives.
macro_rules! block_kernels {
    ($module:ident, $features:literal, $dot:ident, $offset_dot:ident, $high_bits:ident) => {
        mod $module {
            use super::*;

            /// A weight block's quants as bytes: unsigned for Q4/Q5 (the offset is applied
            /// in [`lanes`]), signed for Q8_0.
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn weight_quants<const F: u8>(wb: *const u8) -> __m256i {
                match F {
                    Q4_0 => nibbles(wb.add(2)),
                    Q4_1 => nibbles(wb.add(4)),
                    Q5_0 => _mm256_or_si256(nibbles(wb.add(6)), $high_bits(wb.add(2))),
                    Q5_1 => _mm256_or_si256(nibbles(wb.add(8)), $high_bits(wb.add(4))),
                    _ => _mm256_loadu_si256(wb.add(2).cast()),
                }
            }

            /// Exact integer dot of weight quants `q` (format `F`) with activation quants
            /// `a`, in 8 i32 lanes. Q8_0 is signed × signed: move the sign onto the
            /// activations (|a| ≤ 127, as quantized here).
            #[inline]
            #[target_feature(enable = $features)]
            fn lanes<const F: u8>(q: __m256i, a: __m256i) -> __m256i {
                match F {
                    Q4_0 => $offset_dot(q, a, 8),
                    Q5_0 => $offset_dot(q, a, 16),
                    Q8_0 => $dot(_mm256_abs_epi8(q), _mm256_sign_epi8(a, q)),
                    _ => $dot(q, a),
                }
            }

            /// Activation quants of the block at `ab`.
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn activation_quants<const F: u8>(ab: *const u8) -> __m256i {
                let at = if has_min(F) { 4 } else { 2 };
                _mm256_loadu_si256(ab.add(at).cast())
            }

            /// `[d_w, m_w, ..]` and `[d_a, s_a, ..]` of a block pair from one F16C conversion
            /// each (lane 1 is meaningful only for formats with a min).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn scales<const F: u8>(wb: *const u8, ab: *const u8) -> (__m128, __m128) {
                let word = |p: *const u8| {
                    if has_min(F) {
                        p.cast::<i32>().read_unaligned()
                    } else {
                        i32::from(p.cast::<u16>().read_unaligned())
                    }
                };
                let w = _mm_cvtph_ps(_mm_cvtsi32_si128(word(wb)));
                let a = _mm_cvtph_ps(_mm_cvtsi32_si128(word(ab)));
                (w, a)
            }

            /// `d_w * d_a[r]` spread over all lanes of vector r, for formats without a min
            /// (f16 `d` at the start of both blocks).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn scales4(wb: *const u8, ab: [*const u8; 4]) -> [__m256; 4] {
                let sw = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                    wb.cast::<i16>().read_unaligned(),
                )));
                spread4(_mm_mul_ps(_mm_broadcastss_ps(sw), f16_scales4(ab)))
            }

            /// Adds block `i` of the rows to `acc` (scaled integer lanes) and `mins`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn step<const F: u8>(
                i: usize,
                w: *const u8,
                a: *const u8,
                acc: &mut __m256,
                mins: &mut __m128,
            ) {
                let wb = w.add(i * weight_bytes(F));
                let ab = a.add(i * activation_bytes(F));
                let l = lanes::<F>(weight_quants::<F>(wb), activation_quants::<F>(ab));
                let (sw, sa) = scales::<F>(wb, ab);
                let s = _mm_mul_ps(sw, sa);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(l), _mm256_broadcastss_ps(s), *acc);
                if has_min(F) {
                    *mins = _mm_fmadd_ps(sw, sa, *mins);
                }
            }

            /// The dot from the lane accumulators and the min sums (lane 1 of `mins`).
            #[inline]
            #[target_feature(enable = $features)]
            fn finish<const F: u8>(acc: __m256, mins: __m128) -> f32 {
                let m = if has_min(F) {
                    _mm_cvtss_f32(_mm_movehdup_ps(mins))
                } else {
                    0.0
                };
                hsum(acc) + m
            }

            /// # Safety
            /// CPU has `$features`; `w` and `a` hold `nb` blocks.
            #[target_feature(enable = $features)]
            unsafe fn dot_blocks<const F: u8>(nb: usize, w: *const u8, a: *const u8) -> f32 {
                // One accumulator chain, in block order: the order is part of the numerics
                // (it is ggml's, see scalar::legacy::LaneAcc).
                let mut acc = _mm256_setzero_ps();
                let mut mins = _mm_setzero_ps();
                for i in 0..nb {
                    step::<F>(i, w, a, &mut acc, &mut mins);
                }
                finish::<F>(acc, mins)
            }

            /// # Safety
            /// CPU has `$features`; `w` and every `a[r]` hold `nb` blocks.
            #[target_feature(enable = $features)]
            unsafe fn dot4_blocks<const F: u8>(
                nb: usize,
                w: *const u8,
                a: [*const u8; 4],
                out: &mut [f32; 4],
            ) {
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut mins = [_mm_setzero_ps(); 4];
                for i in 0..nb {
                    let wb = w.add(i * weight_bytes(F));
                    let q = weight_quants::<F>(wb);
                    if !has_min(F) {
                        // The four rows' scale products from one conversion and one multiply;
                        // lane r is the `s` of `step`, rounded the same way.
                        let ab = a.map(|p| p.add(i * activation_bytes(F)));
                        let s = scales4(wb, ab);
                        for r in 0..4 {
                            let l = lanes::<F>(q, activation_quants::<F>(ab[r]));
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(l), s[r], acc[r]);
                        }
                        continue;
                    }
                    for r in 0..4 {
                        let ab = a[r].add(i * activation_bytes(F));
                        let l = lanes::<F>(q, activation_quants::<F>(ab));
                        let (sw, sa) = scales::<F>(wb, ab);
                        let s = _mm_mul_ps(sw, sa);
                        acc[r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(l),
                            _mm256_broadcastss_ps(s),
                            acc[r],
                        );
                        if has_min(F) {
                            mins[r] = _mm_fmadd_ps(sw, sa, mins[r]);
                        }
                    }
                }
                for r in 0..4 {
                    out[r] = finish::<F>(acc[r], mins[r]);
                }
            }

            /// Weight row · activation row for block format `F`.
            pub(super) fn dot<const F: u8>(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
                check_rows(F, n, weights, &[activations]);
                // SAFETY: handed out by `table` only for a level the CPU was detected to
                // support; rows checked to hold n / QK blocks.
                unsafe { dot_blocks::<F>(n / QK, weights.as_ptr(), activations.as_ptr()) }
            }

            /// One weight row against four activation rows for block format `F`.
            pub(super) fn dot4<const F: u8>(
                n: usize,
                weights: &[u8],
                activations: [&[u8]; 4],
                out: &mut [f32; 4],
            ) {
                check_rows(F, n, weights, &activations);
                let a = activations.map(<[u8]>::as_ptr);
                // SAFETY: as in `dot`.
                unsafe { dot4_blocks::<F>(n / QK, weights.as_ptr(), a, out) }
            }
        }
    };
}

block_kernels!(
    avx2,
    "avx2,fma,f16c",
    dot_avx2,
    offset_dot_avx2,
    high_bits_avx2
);
block_kernels!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot_vnni,
    offset_dot_vnni,
    high_bits_avx512
);

/// Q8_0 / Q8_1 activation quantization, bit-identical to the scalar reference.
mod q8 {
    use super::*;

    /// Quantizes one block of 32 at `x` into the quants at `q`; returns the f32 scale and
    /// the quants' sum. Multiplier `127/amax`, round to nearest-even, as ggml's AVX2 code.
    ///
    /// # Safety
    /// CPU has AVX2; `x` holds 32 floats, `q` 32 writable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block(x: *const f32, q: *mut u8) -> (f32, i32) {
        let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(x.add(o)));
        let abs = |v: __m256| _mm256_andnot_ps(_mm256_set1_ps(-0.0), v);
        let m = _mm256_max_ps(
            _mm256_max_ps(abs(v[0]), abs(v[1])),
            _mm256_max_ps(abs(v[2]), abs(v[3])),
        );
        let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let i = v.map(|v| {
            _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(_mm256_mul_ps(v, id)))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s4 = _mm_add_epi32(
            _mm256_extracti128_si256::<1>(sum),
            _mm256_castsi256_si128(sum),
        );
        let s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01>(s4));
        // The packs work per 128-bit lane; the permute restores element order.
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        );
        let ordered =
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.cast(), ordered);
        (d, _mm_cvtsi128_si32(s4))
    }

    /// Checks shapes as the scalar reference does; returns the block count.
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
            // SAFETY: handed out only after AVX2 was detected; 32 floats in, 32 bytes out.
            let (d, _) = unsafe { block(xb.as_ptr(), ob[2..].as_mut_ptr()) };
            ob[..2].copy_from_slice(&f16_bytes(d));
        }
    }

    pub(super) fn quantize_q8_1(x: &[f32], out: &mut [u8]) {
        let nb = check(x, out, 36);
        for (xb, ob) in x.chunks_exact(QK).zip(out[..nb * 36].chunks_exact_mut(36)) {
            // SAFETY: as in quantize_q8_0.
            let (d, sum) = unsafe { block(xb.as_ptr(), ob[4..].as_mut_ptr()) };
            ob[..2].copy_from_slice(&f16_bytes(d));
            ob[2..4].copy_from_slice(&f16_bytes(d * sum as f32));
        }
    }
}

/// F32 / F16 / BF16 rows: widen to f32 and FMA, 32 elements per step in 4 accumulators.
mod floats {
    use super::*;

    /// Checks both rows hold `n` elements of `width` bytes.
    fn check(n: usize, w: &[u8], a: &[u8], width: usize) {
        assert!(
            w.len() >= n * width && a.len() >= n * width,
            "row shorter than {n} elements"
        );
    }

    /// Dot of `n` elements loaded 8 at a time by `load` (element index -> 8 f32 lanes), with
    /// the remainder done by `one`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_with(
        n: usize,
        load: impl Fn(usize) -> (__m256, __m256),
        one: impl Fn(usize) -> f32,
    ) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let (x, y) = load(i + 8 * k);
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            let (x, y) = load(i);
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let mut sum = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        for j in i..n {
            sum += one(j);
        }
        sum
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f32_rows(n: usize, w: *const u8, a: *const u8) -> f32 {
        let w = w.cast::<f32>();
        let a = a.cast::<f32>();
        dot_with(
            n,
            |i| (_mm256_loadu_ps(w.add(i)), _mm256_loadu_ps(a.add(i))),
            |i| w.add(i).read_unaligned() * a.add(i).read_unaligned(),
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_rows(n: usize, w: *const u8, a: *const u8) -> f32 {
        let load = |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
        dot_with(
            n,
            |i| (load(w.add(2 * i)), load(a.add(2 * i))),
            |i| f16_at(w.add(2 * i)) * f16_at(a.add(2 * i)),
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bf16_rows(n: usize, w: *const u8, a: *const u8) -> f32 {
        let load = |p: *const u8| {
            let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
        };
        let one = |p: *const u8| f32::from_bits(u32::from(p.cast::<u16>().read_unaligned()) << 16);
        dot_with(
            n,
            |i| (load(w.add(2 * i)), load(a.add(2 * i))),
            |i| one(w.add(2 * i)) * one(a.add(2 * i)),
        )
    }

    pub(super) fn dot_f32(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
        check(n, weights, activations, 4);
        // SAFETY: handed out only after AVX2/FMA/F16C were detected; lengths checked.
        unsafe { f32_rows(n, weights.as_ptr(), activations.as_ptr()) }
    }

    pub(super) fn dot_f16(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
        check(n, weights, activations, 2);
        // SAFETY: as in dot_f32.
        unsafe { f16_rows(n, weights.as_ptr(), activations.as_ptr()) }
    }

    pub(super) fn dot_bf16(n: usize, weights: &[u8], activations: &[u8]) -> f32 {
        check(n, weights, activations, 2);
        // SAFETY: as in dot_f32.
        unsafe { bf16_rows(n, weights.as_ptr(), activations.as_ptr()) }
    }

    /// f32 activations: the raw little-endian bytes.
    pub(super) fn to_f32(x: &[f32], out: &mut [u8]) {
        assert!(out.len() >= x.len() * 4, "conversion output too short");
        for (o, v) in out.chunks_exact_mut(4).zip(x) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// f16 activations, 8 at a time with `vcvtps2ph` (round to nearest-even).
    pub(super) fn to_f16(x: &[f32], out: &mut [u8]) {
        assert!(out.len() >= x.len() * 2, "conversion output too short");
        let main = x.len() / 8 * 8;
        // SAFETY: handed out only after F16C was detected; 8 floats read and 16 bytes
        // written per step, within the lengths checked above.
        unsafe { f16_chunks(main, x.as_ptr(), out.as_mut_ptr()) };
        for (o, &v) in out[main * 2..x.len() * 2]
            .chunks_exact_mut(2)
            .zip(&x[main..])
        {
            o.copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_chunks(n: usize, x: *const f32, out: *mut u8) {
        for i in (0..n).step_by(8) {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(x.add(i)));
            _mm_storeu_si128(out.add(2 * i).cast(), h);
        }
    }

    /// bf16 activations with ggml's rounding (nearest-even; NaNs kept quiet).
    pub(super) fn to_bf16(x: &[f32], out: &mut [u8]) {
        assert!(out.len() >= x.len() * 2, "conversion output too short");
        for (o, &v) in out.chunks_exact_mut(2).zip(x) {
            let u = v.to_bits();
            let h = if u & 0x7fff_ffff > 0x7f80_0000 {
                (u >> 16) | 64
            } else {
                u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16
            };
            o.copy_from_slice(&(h as u16).to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
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

    /// Every level this CPU can run (empty without AVX2: the tests then check nothing x86).
    fn levels() -> Vec<Level> {
        match Level::detect() {
            Some(Level::Avx512) => vec![Level::Avx2, Level::Avx512],
            Some(Level::Avx2) => vec![Level::Avx2],
            None => vec![],
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

    /// A valid row of `n` elements of `ty` from a seed: random quants, finite scales.
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
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let x: Vec<f32> = (0..n).map(|_| unit()).collect();
                quantize(&reference(ty), &x)
            }
            _ => {
                let bytes = ty.block_bytes();
                let halves = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    2
                } else {
                    1
                };
                let mut row: Vec<u8> = (0..n / QK * bytes)
                    .map(|_| (unit().to_bits() >> 7) as u8)
                    .collect();
                for b in row.chunks_exact_mut(bytes) {
                    for h in 0..halves {
                        let bits = f16::from_f32(unit()).to_bits().to_le_bytes();
                        b[2 * h..2 * h + 2].copy_from_slice(&bits);
                    }
                }
                row
            }
        }
    }

    /// Σ over blocks of |weight scale · activation scale| · Σ|q_w q_a| (+ |m s|): the
    /// magnitude the float rounding of a lane-wise sum is relative to. Computed from the
    /// dequantized rows, which is the same up to the f16 `s`.
    fn magnitude(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f32 {
        let mut wf = vec![0.0f32; n];
        (reference(ty).dequantize)(w, &mut wf);
        let af: Vec<f32> = match ty.vec_dot_type() {
            GgmlType::Q8_1 => a
                .chunks_exact(36)
                .flat_map(|b| {
                    let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                    b[4..]
                        .iter()
                        .map(move |&q| f32::from(q as i8) * d)
                        .collect::<Vec<_>>()
                })
                .collect(),
            vt => {
                // F32, F16, BF16 and Q8_0 are their own activation formats.
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
    fn this_cpu_gets_simd_kernels() {
        // The build machine is AVX2-capable; a CPU without it just gets the scalar table.
        if let Some(level) = Level::detect() {
            for ty in WEIGHT_TYPES {
                assert_eq!(
                    kernels(ty).expect("legacy type").isa,
                    table(ty, level).expect("x").isa
                );
            }
        }
        assert!(kernels(GgmlType::Q4_K).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn quantize_is_bit_identical(x in floats(7 * QK), t in ties(4)) {
            for (level, x) in levels().into_iter().flat_map(|l| [(l, &x), (l, &t)]) {
                for ty in WEIGHT_TYPES {
                    let simd = table(ty, level).expect("legacy type");
                    prop_assert_eq!(quantize(&simd, x), quantize(&reference(ty), x), "{} {:?}", ty, level);
                }
            }
        }

        #[test]
        fn dots_match_reference(seed in any::<u64>(), blocks in 1usize..20, a_seed in floats(20 * QK)) {
            let n = blocks * QK;
            let x = &a_seed[..n];
            for level in levels() {
                for ty in WEIGHT_TYPES {
                    let simd = table(ty, level).expect("legacy type");
                    let w = weight_row(ty, n, seed);
                    let a = quantize(&simd, x);
                    let want = (reference(ty).vec_dot)(n, &w, &a);
                    let got = (simd.vec_dot)(n, &w, &a);
                    if ty.block_len() > 1 {
                        // Same lanes, same order as the reference: bit-identical, not just close.
                        prop_assert_eq!(got.to_bits(), want.to_bits(), "{} {:?}: {} vs {}", ty, level, got, want);
                    } else {
                        let tol = magnitude(ty, &w, &a, n) * 1e-6 + f32::MIN_POSITIVE;
                        prop_assert!((got - want).abs() <= tol, "{} {:?}: {} vs {} (tol {})", ty, level, got, want, tol);
                    }
                    if let Some(dot4) = simd.vec_dot_4 {
                        // Four different activation rows: rotations of x.
                        let rows: Vec<Vec<u8>> = (0..4)
                            .map(|r| {
                                let mut xr = x.to_vec();
                                xr.rotate_left(r * 5);
                                quantize(&simd, &xr)
                            })
                            .collect();
                        let mut out = [0.0f32; 4];
                        dot4(n, &w, [&rows[0], &rows[1], &rows[2], &rows[3]], &mut out);
                        for (r, row) in rows.iter().enumerate() {
                            let want = (reference(ty).vec_dot)(n, &w, row);
                            prop_assert_eq!(out[r].to_bits(), want.to_bits(), "{} {:?} row {}: {} vs {}", ty, level, r, out[r], want);
                        }
                        if let Some(dot4x4) = simd.vec_dot_4x4 {
                            let ws: Vec<Vec<u8>> =
                                (0..4).map(|k| weight_row(ty, n, seed ^ (k << 40))).collect();
                            let mut tile = [[0.0f32; 4]; 4];
                            dot4x4(n, [&ws[0], &ws[1], &ws[2], &ws[3]], [&rows[0], &rows[1], &rows[2], &rows[3]], &mut tile);
                            for (k, w) in ws.iter().enumerate() {
                                for (r, row) in rows.iter().enumerate() {
                                    let want = (reference(ty).vec_dot)(n, w, row);
                                    let got = tile[k][r];
                                    prop_assert_eq!(got.to_bits(), want.to_bits(), "{} {:?} tile {},{}: {} vs {}", ty, level, k, r, got, want);
                                }
                            }
                        }
                    }
                }
            }
        }

        /// Float rows of any length (not only whole blocks of 32) exercise the tails.
        #[test]
        fn float_dots_match_reference(seed in any::<u64>(), n in 1usize..100, x in floats(100)) {
            for level in levels() {
                for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
                    let simd = table(ty, level).expect("float type");
                    let w = weight_row(ty, n, seed);
                    let a = quantize(&simd, &x[..n]);
                    let want = (reference(ty).vec_dot)(n, &w, &a);
                    let got = (simd.vec_dot)(n, &w, &a);
                    let tol = magnitude(ty, &w, &a, n) * 1e-6 + f32::MIN_POSITIVE;
                    prop_assert!((got - want).abs() <= tol, "{} {:?}: {} vs {}", ty, level, got, want);
                }
            }
        }
    }
}
