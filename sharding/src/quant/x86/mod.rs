//! x86 SIMD kernels, chosen at run time by CPU feature detection.

mod kquants;
mod kquants4;
mod kquants4_avx512;
mod legacy;

use super::{GgmlType, TypeKernels};

/// The x86 kernels for weight type `ty`, if this module has them and the CPU supports them.
pub(crate) fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    legacy::kernels(ty).or_else(|| kquants::kernels(ty))
}
