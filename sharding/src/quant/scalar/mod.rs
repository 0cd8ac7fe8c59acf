//! Scalar reference kernels: the definition of each format's numerics.

mod kquants;
mod legacy;

pub(crate) use kquants::q4k_accumulate;
#[cfg(test)]
pub(crate) use kquants::testing as kquant_testing;

use super::{GgmlType, TypeKernels};

/// The sum of eight lanes as AVX2 code folds a `__m256` (`hsum_float_8`): the upper half onto
/// the lower, then lanes 2..4 onto 0..2, then lane 1 onto lane 0.
pub(crate) fn hsum8(x: [f32; 8]) -> f32 {
    let r = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// The scalar kernels for weight type `ty`, if this module has them.
pub fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    legacy::kernels(ty).or_else(|| kquants::kernels(ty))
}
