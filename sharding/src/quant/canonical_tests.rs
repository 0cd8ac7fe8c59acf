//! The canonical arithmetic, checked: every SIMD kernel set this CPU can run (AVX2 and
//! AVX-512 on x86; NEON and NEON + dotprod on aarch64, under qemu in CI via
//! `scripts/test-aarch64`) gives the scalar reference's bits, for every weight type and
//! every op: activation quantization, one-row, four-row and four-by-four dot products.
//!
//! Inputs are random and adversarial: quantization ties (values at exact halves of the
//! step), subnormal and tiny blocks (whose multiplier overflows), values near `f32::MAX`,
//! zero blocks, and weight scales that are zero, subnormal or the largest f16.

use half::f16;
use proptest::prelude::*;

use super::blocks::{QK, QK_K};
use super::{reference_kernels, simd_kernel_sets, GgmlType, TypeKernels, WEIGHT_TYPES};

/// One activation block of `len` values, of one of the adversarial kinds.
fn activation_block(len: usize) -> impl Strategy<Value = Vec<f32>> {
    let plain = (prop::collection::vec(-1.0f32..1.0, len), 0usize..5).prop_map(|(v, s)| {
        let scale = [1e-3f32, 1.0, 50.0, 1e4, 1e30][s];
        v.into_iter().map(|x| x * scale).collect::<Vec<_>>()
    });
    // Largest magnitude 127 (Q8_0/Q8_1 multiplier exactly 1; Q8_K's -127/max is 1 when
    // the first is -127) and the rest at halves: every value is a rounding tie.
    let ties = prop::collection::vec(-254i32..=254, len).prop_map(|v| {
        let mut x: Vec<f32> = v.into_iter().map(|k| k as f32 / 2.0).collect();
        x[0] = -127.0;
        x
    });
    // Subnormal and tiny blocks: 127 / amax overflows to infinity below ~3.7e-37.
    let tiny = (prop::collection::vec(-1.0f32..1.0, len), 0usize..3).prop_map(|(v, s)| {
        let scale = [1e-38f32, 1e-42, 4e-37][s];
        v.into_iter().map(|x| x * scale).collect::<Vec<_>>()
    });
    let extreme = prop::collection::vec(
        prop_oneof![
            Just(f32::MAX),
            Just(-f32::MAX),
            Just(f32::MIN_POSITIVE),
            Just(-0.0f32),
            -1.0f32..1.0,
        ],
        len,
    );
    let zero = Just(vec![0.0f32; len]);
    prop_oneof![4 => plain, 2 => ties, 1 => tiny, 1 => extreme, 1 => zero]
}

/// An activation row of `n` values built from adversarial blocks of `block` values.
fn activations(n: usize, block: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(activation_block(block), n / block).prop_map(|b| b.concat())
}

/// An f16 scale: ordinary, zero, subnormal, or the largest finite.
fn f16_scale() -> impl Strategy<Value = [u8; 2]> {
    prop_oneof![
        6 => (-2.0f32..2.0).prop_map(|x| f16::from_f32(x).to_le_bytes()),
        1 => Just([0u8, 0]),
        1 => (1u16..0x400).prop_map(|b| (b | (u16::from(b % 2 == 0) << 15)).to_le_bytes()),
        1 => Just(f16::MAX.to_le_bytes()),
        1 => Just(f16::MIN.to_le_bytes()),
    ]
}

/// Byte offsets of the f16 scale fields of one block of `ty`.
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// A weight row of `n` elements of `ty`: random quant bytes with adversarial f16 scales,
/// or (float types) adversarial values converted by the reference.
fn weights(ty: GgmlType, n: usize) -> BoxedStrategy<Vec<u8>> {
    if ty.block_len() == 1 {
        return activations(n, n)
            .prop_map(move |x| {
                let kt = reference_kernels(ty).expect("float type");
                let mut out = vec![0u8; ty.row_bytes(n).expect("any length")];
                (kt.quantize_activations)(&x, &mut out);
                out
            })
            .boxed();
    }
    let blocks = n / ty.block_len();
    let fields = scale_fields(ty);
    (
        prop::collection::vec(any::<u8>(), blocks * ty.block_bytes()),
        prop::collection::vec(f16_scale(), blocks * fields.len()),
    )
        .prop_map(move |(mut row, scales)| {
            let mut scales = scales.into_iter();
            for block in row.chunks_exact_mut(ty.block_bytes()) {
                for &at in fields {
                    let s = scales.next().expect("one scale per field");
                    block[at..at + 2].copy_from_slice(&s);
                }
            }
            row
        })
        .boxed()
}

/// A case for `ty`: element count, weight rows (4) and activation rows (4).
/// A row length, weight rows as raw blocks, and activation rows.
type Case = (usize, Vec<Vec<u8>>, Vec<Vec<f32>>);

fn case(ty: GgmlType) -> BoxedStrategy<Case> {
    let n = match ty.block_len() {
        1 => (1usize..80).boxed(),
        QK => (1usize..=8).prop_map(|b| b * QK).boxed(),
        _ => (1usize..=2).prop_map(|b| b * QK_K).boxed(),
    };
    n.prop_flat_map(move |n| {
        let block = if ty.block_len() == 1 {
            n
        } else {
            ty.vec_dot_type().block_len()
        };
        (
            Just(n),
            prop::collection::vec(weights(ty, n), 4),
            prop::collection::vec(activations(n, block), 4),
        )
    })
    .boxed()
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Every op of `simd` against the reference on one case.
fn check(
    simd: &TypeKernels,
    (n, w, x): &(usize, Vec<Vec<u8>>, Vec<Vec<f32>>),
) -> Result<(), TestCaseError> {
    let ty = simd.ty;
    let reference = reference_kernels(ty).expect("reference for every weight type");
    let row_bytes = ty.vec_dot_type().row_bytes(*n).expect("whole blocks");
    let mut a = Vec::new();
    for x in x {
        let (mut got, mut want) = (vec![0xAAu8; row_bytes], vec![0x55u8; row_bytes]);
        (simd.quantize_activations)(x, &mut got);
        (reference.quantize_activations)(x, &mut want);
        prop_assert_eq!(&got, &want, "{} {}: activation quantization", ty, simd.isa);
        a.push(want);
    }
    let want: Vec<Vec<f32>> = w
        .iter()
        .map(|w| a.iter().map(|a| (reference.vec_dot)(*n, w, a)).collect())
        .collect();
    for (k, w) in w.iter().enumerate() {
        for (r, a) in a.iter().enumerate() {
            let got = (simd.vec_dot)(*n, w, a);
            prop_assert!(
                same(got, want[k][r]),
                "{} {} dot: {} vs {}",
                ty,
                simd.isa,
                got,
                want[k][r]
            );
        }
    }
    let rows = [&a[0][..], &a[1], &a[2], &a[3]];
    if let Some(dot4) = simd.vec_dot_4 {
        let mut out = [0.0f32; 4];
        dot4(*n, &w[0], rows, &mut out);
        for r in 0..4 {
            prop_assert!(
                same(out[r], want[0][r]),
                "{} {} dot4 row {}: {} vs {}",
                ty,
                simd.isa,
                r,
                out[r],
                want[0][r]
            );
        }
    }
    if let Some(dot4x4) = simd.vec_dot_4x4 {
        let mut tile = [[0.0f32; 4]; 4];
        dot4x4(*n, [&w[0][..], &w[1], &w[2], &w[3]], rows, &mut tile);
        for k in 0..4 {
            for r in 0..4 {
                prop_assert!(
                    same(tile[k][r], want[k][r]),
                    "{} {} dot4x4 {},{}",
                    ty,
                    simd.isa,
                    k,
                    r
                );
            }
        }
    }
    Ok(())
}

/// The kernel sets compared on this host; an empty list would make the tests vacuous, so
/// x86-64 and aarch64 hosts must find some.
fn sets(ty: GgmlType) -> Vec<TypeKernels> {
    let sets = simd_kernel_sets(ty);
    if cfg!(target_arch = "aarch64") && ty != GgmlType::F16 {
        assert!(!sets.is_empty(), "no NEON kernels for {ty}");
    }
    sets
}

macro_rules! canonical {
    ($($name:ident => $ty:expr,)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            $(
                #[test]
                fn $name(c in case($ty)) {
                    for simd in sets($ty) {
                        check(&simd, &c)?;
                    }
                }
            )*
        }
    };
}

canonical! {
    f32_is_canonical => GgmlType::F32,
    f16_is_canonical => GgmlType::F16,
    bf16_is_canonical => GgmlType::BF16,
    q4_0_is_canonical => GgmlType::Q4_0,
    q4_1_is_canonical => GgmlType::Q4_1,
    q5_0_is_canonical => GgmlType::Q5_0,
    q5_1_is_canonical => GgmlType::Q5_1,
    q8_0_is_canonical => GgmlType::Q8_0,
    q4_k_is_canonical => GgmlType::Q4_K,
    q5_k_is_canonical => GgmlType::Q5_K,
    q6_k_is_canonical => GgmlType::Q6_K,
}

#[test]
fn every_weight_type_has_a_simd_kernel_set_on_x86_and_aarch64() {
    #[cfg(target_arch = "x86_64")]
    if !std::is_x86_feature_detected!("avx2") {
        return;
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return;
    for ty in WEIGHT_TYPES {
        // NEON has no F16 row kernel (Rust's f16 vector intrinsics are unstable): the
        // scalar reference is its kernel, canonical by definition.
        if cfg!(target_arch = "aarch64") && ty == GgmlType::F16 {
            continue;
        }
        assert!(!simd_kernel_sets(ty).is_empty(), "{ty}");
    }
}
