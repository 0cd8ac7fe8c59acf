//! legacy kernels (scalar). Not yet written.

use crate::quant::{GgmlType, TypeKernels};

pub(super) fn kernels(_ty: GgmlType) -> Option<TypeKernels> {
    None
}
