//! Scalar reference kernels: the definition of each format's numerics.

mod kquants;
mod legacy;

pub(crate) use kquants::q4k_accumulate;
#[cfg(test)]
pub(crate) use kquants::testing as kquant_testing;

use super::{GgmlType, TypeKernels};

/// The scalar kernels for weight type `ty`, if this module has them.
pub fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    legacy::kernels(ty).or_else(|| kquants::kernels(ty))
}
