//! x86 SIMD kernels, chosen at run time by CPU feature detection.

mod kquants;
mod kquants4;
mod kquants4_avx512;
mod legacy;

use super::{GgmlType, TypeKernels};

/// Whether the AVX-512 (F/BW/VL/VNNI) kernels may run: the CPU has them and the environment
/// variable `SHOAL_NO_AVX512` is unset. Setting it makes an AVX-512 machine run the AVX2
/// kernels, to check that path (`tests/engine_reference.rs` does) or to compare speeds; it is
/// read when the kernel table is first built.
pub(crate) fn avx512_enabled() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && std::env::var_os("SHOAL_NO_AVX512").is_none()
}

/// The x86 kernels for weight type `ty`, if this module has them and the CPU supports them.
pub(crate) fn kernels(ty: GgmlType) -> Option<TypeKernels> {
    legacy::kernels(ty).or_else(|| kquants::kernels(ty))
}

/// Every x86 kernel set for `ty` this CPU can run, lowest level first.
pub(crate) fn all_kernels(ty: GgmlType) -> Vec<TypeKernels> {
    let mut sets = legacy::all(ty);
    sets.extend(kquants::all(ty));
    sets
}
