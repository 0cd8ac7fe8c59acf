//! aarch64 SIMD kernels, chosen at run time by CPU feature detection.

mod kquants;
mod legacy;

use super::{GgmlType, TypeKernels};

/// The aarch64 kernels for weight type `ty`, if this module has them and the CPU supports them.
pub(crate) fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    legacy::kernels(ty).or_else(|| kquants::kernels(ty))
}

/// Every aarch64 kernel set for `ty` this CPU can run, lowest level first.
pub(crate) fn all_kernels(ty: GgmlType) -> Vec<TypeKernels> {
    let mut sets = legacy::all(ty);
    sets.extend(kquants::all(ty));
    sets
}
