//! Quantized block formats and their kernels.
//!
//! Weights stay in the file's block format. Before a dot product the activations are
//! quantized per block exactly as ggml does (Q8_0, Q8_1 or Q8_K, see
//! [`GgmlType::vec_dot_type`]): that is what makes our tokens equal llama.cpp's and what makes
//! the integer kernels fast.
//!
//! Each type has a scalar reference (`scalar/`) and SIMD kernels per architecture (`x86/`,
//! `aarch64/`), picked once at run time by [`kernels`]. The scalar reference spells out one
//! canonical arithmetic (ggml's AVX2 order of accumulation, fused multiply-adds and rounding,
//! which is what llama.cpp computes on x86), and every SIMD kernel on every architecture
//! reproduces it bit for bit, so a layer gives the same bits on whichever node runs it
//! (`canonical_tests` checks every kernel set the host can run).

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod blocks;
#[cfg(test)]
mod canonical_tests;
pub mod scalar;
pub mod wire;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use std::sync::OnceLock;

/// A ggml tensor type, with the id it has in GGUF files.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
}

impl GgmlType {
    /// The type with GGUF id `id`, or `None` for ids this crate does not support.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// The GGUF id of this type.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Q8_1 => {
                blocks::QK
            }
            Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::Q8_K => blocks::QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use std::mem::size_of;
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => size_of::<blocks::BlockQ4_0>(),
            Self::Q4_1 => size_of::<blocks::BlockQ4_1>(),
            Self::Q5_0 => size_of::<blocks::BlockQ5_0>(),
            Self::Q5_1 => size_of::<blocks::BlockQ5_1>(),
            Self::Q8_0 => size_of::<blocks::BlockQ8_0>(),
            Self::Q8_1 => size_of::<blocks::BlockQ8_1>(),
            Self::Q4_K => size_of::<blocks::BlockQ4K>(),
            Self::Q5_K => size_of::<blocks::BlockQ5K>(),
            Self::Q6_K => size_of::<blocks::BlockQ6K>(),
            Self::Q8_K => size_of::<blocks::BlockQ8K>(),
        }
    }

    /// Bytes of a row of `n` elements, or `None` when `n` is not a whole number of blocks
    /// (or the size overflows).
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    /// The type activations are converted to before a dot product with weights of this type,
    /// as ggml's CPU backend does.
    pub fn vec_dot_type(self) -> GgmlType {
        match self {
            Self::F32 => Self::F32,
            Self::F16 => Self::F16,
            Self::BF16 => Self::BF16,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => Self::Q8_0,
            Self::Q4_1 | Self::Q5_1 => Self::Q8_1,
            Self::Q8_1 => Self::Q8_1,
            Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::Q8_K => Self::Q8_K,
        }
    }

    /// Whether weights of this type can be used in a matrix product here (`Q8_1` and `Q8_K`
    /// are activation-only formats).
    pub fn is_weight_type(self) -> bool {
        !matches!(self, Self::Q8_1 | Self::Q8_K)
    }

    /// The name ggml uses, e.g. `"Q4_K"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::Q8_K => "Q8_K",
            Self::BF16 => "BF16",
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Dot product of one weight row with one activation row already in the weight type's
/// [`GgmlType::vec_dot_type`]. `n` is the number of elements; both slices hold exactly
/// `n` elements' worth of blocks.
pub type VecDotFn = fn(n: usize, weights: &[u8], activations: &[u8]) -> f32;
/// Converts `x` (a whole number of blocks) to a quantized row in `out`.
pub type QuantizeFn = fn(x: &[f32], out: &mut [u8]);
/// Converts a row of blocks back to `f32`; `out.len()` is the element count.
pub type DequantizeFn = fn(row: &[u8], out: &mut [f32]);
/// One weight row against four activation rows at once (prefill): `out[i]` is the dot
/// product with `activations[i]`. Reusing the unpacked weights for four rows saves most of
/// the unpacking work.
pub type VecDot4Fn = fn(n: usize, weights: &[u8], activations: [&[u8]; 4], out: &mut [f32; 4]);
/// Four weight rows against four activation rows (prefill): `out[k][r]` is the dot product
/// of `weights[k]` with `activations[r]`. Each activation block is loaded and prepared once
/// for the four weight rows, each weight block unpacked once for the four activation rows.
pub type VecDot4x4Fn =
    fn(n: usize, weights: [&[u8]; 4], activations: [&[u8]; 4], out: &mut [[f32; 4]; 4]);

/// The kernels for one weight type, as picked for this CPU.
#[derive(Clone, Copy, Debug)]
pub struct TypeKernels {
    /// Weight type these kernels serve.
    pub ty: GgmlType,
    /// Weight row · activation row (activations in `ty.vec_dot_type()`).
    pub vec_dot: VecDotFn,
    /// Quantizes activations to `ty.vec_dot_type()`.
    pub quantize_activations: QuantizeFn,
    /// Row of `ty` to f32 (embedding lookup, tests).
    pub dequantize: DequantizeFn,
    /// Four-activation-row variant of `vec_dot`, where a kernel exists for this CPU;
    /// results equal four `vec_dot` calls up to float rounding.
    pub vec_dot_4: Option<VecDot4Fn>,
    /// Four-weight-row variant of `vec_dot_4`, where a kernel exists for this CPU; results
    /// are bit-identical to `vec_dot_4` (and so to `vec_dot` wherever that one is).
    pub vec_dot_4x4: Option<VecDot4x4Fn>,
    /// Name of the instruction set the kernels use ("avx512", "avx2", "neon", "scalar").
    pub isa: &'static str,
}

/// The kernel table for this CPU, built on first use.
static TABLE: OnceLock<Vec<TypeKernels>> = OnceLock::new();

/// The kernels for weight type `ty` on this CPU, or `None` when `ty` is not a weight type.
pub fn kernels(ty: GgmlType) -> Option<&'static TypeKernels> {
    TABLE.get_or_init(build_table).iter().find(|k| k.ty == ty)
}

/// The kernel sets this CPU's matrix products run on, e.g. `avx512+avx2` (distinct
/// [`TypeKernels::isa`] names over the weight types, best first), for adverts and logs.
pub fn kernel_set() -> String {
    let mut names: Vec<&str> = Vec::new();
    for k in TABLE.get_or_init(build_table) {
        if !names.contains(&k.isa) {
            names.push(k.isa);
        }
    }
    names.join("+")
}

/// The scalar reference kernels for `ty`, whatever this CPU supports.
pub fn reference_kernels(ty: GgmlType) -> Option<TypeKernels> {
    scalar::kernels(ty)
}

/// Every SIMD kernel set for `ty` this CPU can run, lowest level first (e.g. AVX2 then
/// AVX-512); empty where only the scalar reference serves `ty`. All of them give the
/// reference's bits (`canonical_tests`).
pub fn simd_kernel_sets(ty: GgmlType) -> Vec<TypeKernels> {
    #[cfg(target_arch = "x86_64")]
    return x86::all_kernels(ty);
    #[cfg(target_arch = "aarch64")]
    return aarch64::all_kernels(ty);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = ty;
        Vec::new()
    }
}

/// Every weight type with kernels.
pub(crate) const WEIGHT_TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn build_table() -> Vec<TypeKernels> {
    WEIGHT_TYPES
        .iter()
        .filter_map(|&ty| best_kernels(ty).or_else(|| scalar::kernels(ty)))
        .collect()
}

#[cfg(target_arch = "x86_64")]
fn best_kernels(ty: GgmlType) -> Option<TypeKernels> {
    x86::kernels(ty)
}

#[cfg(target_arch = "aarch64")]
fn best_kernels(ty: GgmlType) -> Option<TypeKernels> {
    aarch64::kernels(ty)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn best_kernels(_ty: GgmlType) -> Option<TypeKernels> {
    None
}
