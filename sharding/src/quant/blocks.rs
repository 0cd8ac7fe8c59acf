//! Block layouts of ggml's quantized types, byte-for-byte as they sit in a GGUF file.
//!
//! Every struct is `#[repr(C)]` with a compile-time size check, so a row of raw bytes from the
//! file can be viewed as a slice of blocks (see [`as_blocks`]). `f16` scales are kept as raw
//! `u16` bits (`half::f16::from_bits`) to keep the structs `Copy` + plain-old-data.

/// Elements per block of the "legacy" types (Q4_0 … Q8_1).
pub const QK: usize = 32;
/// Elements per super-block of the K-quant types.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales/mins in a Q4_K/Q5_K super-block.
pub const K_SCALE_SIZE: usize = 12;

/// 4-bit, scale only: `x = d * (q - 8)`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; QK / 2],
}

/// 4-bit, scale and min: `x = d * q + m`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK / 2],
}

/// 5-bit, scale only: `x = d * (q - 16)`; `qh` holds the fifth bits.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 5-bit, scale and min: `x = d * q + m`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 8-bit, scale only. Also the activation format for Q4_0, Q5_0 and Q8_0 weights.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}

/// 8-bit activations for Q4_1/Q5_1 weights: `s = d * sum(qs)` is kept for the min term.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; QK],
}

/// 4-bit K-quant: 8 sub-blocks of 32 with 6-bit scales and mins.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

/// 5-bit K-quant.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 6-bit K-quant: 16 sub-blocks of 16 with 8-bit scales.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: u16,
}

/// 8-bit activations for K-quant weights: f32 scale and per-16 sums.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = {
    assert!(size_of::<BlockQ4_0>() == 18);
    assert!(size_of::<BlockQ4_1>() == 20);
    assert!(size_of::<BlockQ5_0>() == 22);
    assert!(size_of::<BlockQ5_1>() == 24);
    assert!(size_of::<BlockQ8_0>() == 34);
    assert!(size_of::<BlockQ8_1>() == 36);
    assert!(size_of::<BlockQ4K>() == 144);
    assert!(size_of::<BlockQ5K>() == 176);
    assert!(size_of::<BlockQ6K>() == 210);
    assert!(size_of::<BlockQ8K>() == 292);
};

/// Plain-old-data block types: every bit pattern is a valid value and there is no padding
/// that matters to readers (`BlockQ8K` has none either: 4 + 256 + 32 bytes).
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only integers, and have alignment `<=` their
/// natural field alignment so that [`as_blocks`] can check it.
pub unsafe trait Block: Copy + 'static {}
unsafe impl Block for BlockQ4_0 {}
unsafe impl Block for BlockQ4_1 {}
unsafe impl Block for BlockQ5_0 {}
unsafe impl Block for BlockQ5_1 {}
unsafe impl Block for BlockQ8_0 {}
unsafe impl Block for BlockQ8_1 {}
unsafe impl Block for BlockQ4K {}
unsafe impl Block for BlockQ5K {}
unsafe impl Block for BlockQ6K {}
unsafe impl Block for BlockQ8K {}

/// Views raw bytes as blocks.
///
/// # Panics
/// If `bytes.len()` is not a multiple of the block size or the pointer is misaligned for `B`.
/// Callers pass rows whose length the tensor index validated, so this is an invariant check.
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    let size = size_of::<B>();
    assert_eq!(bytes.len() % size, 0, "row is not a whole number of blocks");
    assert_eq!(
        bytes.as_ptr() as usize % align_of::<B>(),
        0,
        "misaligned blocks"
    );
    // SAFETY: B is plain old data (trait contract), length and alignment checked above.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) }
}

/// Mutable twin of [`as_blocks`].
pub fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    let size = size_of::<B>();
    assert_eq!(bytes.len() % size, 0, "row is not a whole number of blocks");
    assert_eq!(
        bytes.as_ptr() as usize % align_of::<B>(),
        0,
        "misaligned blocks"
    );
    // SAFETY: as in as_blocks; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / size) }
}
