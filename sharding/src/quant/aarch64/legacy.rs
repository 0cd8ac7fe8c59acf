//! legacy kernels (aarch64). Not yet written.

use crate::quant::{GgmlType, TypeKernels};

pub(super) fn kernels(_ty: GgmlType) -> Option<TypeKernels> {
    None
}
