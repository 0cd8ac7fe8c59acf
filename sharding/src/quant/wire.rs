//! Hidden states as they travel between nodes: f32 (lossless), f16 (half the bytes) or
//! blocks of Q8_0 (34 bytes per 32 values, 0.27x of f32) for slow links.
//!
//! Q8_0 is the engine's own activation block ([`super::blocks::BlockQ8_0`]), quantized by the
//! scalar reference quantizer, so every node encodes the same bytes whatever its CPU. A row
//! that is not whole blocks is padded with zeros in its last block. Decoders check sizes and
//! return [`WireError`], never panic: the bytes come from another node.

use half::f16;

use super::{reference_kernels, GgmlType};

/// Values per Q8_0 block.
pub const Q8_BLOCK_VALUES: usize = 32;
/// Bytes per Q8_0 block: an f16 scale then 32 `i8`.
pub const Q8_BLOCK_BYTES: usize = 34;

/// How hidden-state values are encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wire {
    /// Little-endian f32: bit-exact.
    F32,
    /// Little-endian IEEE f16 (values beyond ±65504 become infinities).
    F16,
    /// Q8_0 blocks.
    Q8_0,
}

/// Encoded bytes that do not hold the values the caller expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes of {wire:?} cannot hold {count} values")]
pub struct WireError {
    /// The encoding.
    pub wire: Wire,
    /// Bytes received.
    pub len: usize,
    /// Values expected.
    pub count: usize,
}

impl Wire {
    /// Encoded size of `count` values (`None` on overflow).
    pub fn byte_len(self, count: usize) -> Option<usize> {
        match self {
            Wire::F32 => count.checked_mul(4),
            Wire::F16 => count.checked_mul(2),
            Wire::Q8_0 => count.div_ceil(Q8_BLOCK_VALUES).checked_mul(Q8_BLOCK_BYTES),
        }
    }

    /// Appends `values` encoded to `out`.
    pub fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            Wire::F32 => {
                out.reserve(values.len() * 4);
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Wire::F16 => {
                out.reserve(values.len() * 2);
                for v in values {
                    out.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
                }
            }
            Wire::Q8_0 => encode_q8_0(values, out),
        }
    }

    /// Appends the `count` values held in `bytes` to `out`; `bytes` must be exactly
    /// [`Wire::byte_len`]`(count)` long.
    pub fn decode(self, bytes: &[u8], count: usize, out: &mut Vec<f32>) -> Result<(), WireError> {
        if self.byte_len(count) != Some(bytes.len()) {
            return Err(WireError {
                wire: self,
                len: bytes.len(),
                count,
            });
        }
        out.reserve(count);
        match self {
            Wire::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Wire::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            Wire::Q8_0 => {
                let mut left = count;
                for block in bytes.chunks_exact(Q8_BLOCK_BYTES) {
                    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let take = left.min(Q8_BLOCK_VALUES);
                    out.extend(block[2..2 + take].iter().map(|&q| f32::from(q as i8) * d));
                    left -= take;
                }
            }
        }
        Ok(())
    }
}

/// Q8_0 blocks of `values` through the reference quantizer, the last block zero-padded.
fn encode_q8_0(values: &[f32], out: &mut Vec<u8>) {
    let q = reference_kernels(GgmlType::Q8_0)
        .expect("Q8_0 is a weight type with a reference quantizer")
        .quantize_activations;
    let whole = values.len() / Q8_BLOCK_VALUES * Q8_BLOCK_VALUES;
    let start = out.len();
    out.resize(start + Wire::Q8_0.byte_len(values.len()).unwrap_or(0), 0);
    let (head, tail) = values.split_at(whole);
    let blocks = whole / Q8_BLOCK_VALUES * Q8_BLOCK_BYTES;
    if !head.is_empty() {
        q(head, &mut out[start..start + blocks]);
    }
    if !tail.is_empty() {
        let mut padded = [0.0f32; Q8_BLOCK_VALUES];
        padded[..tail.len()].copy_from_slice(tail);
        q(&padded, &mut out[start + blocks..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Activation-like values: mixed scales and signs, some outliers.
    fn activations(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = (s as f32 / u32::MAX as f32) * 2.0 - 1.0;
                if i % 97 == 0 {
                    u * 40.0
                } else {
                    u * 1.5
                }
            })
            .collect()
    }

    fn round_trip(wire: Wire, v: &[f32]) -> Vec<f32> {
        let mut bytes = Vec::new();
        wire.encode(v, &mut bytes);
        assert_eq!(Some(bytes.len()), wire.byte_len(v.len()));
        let mut back = Vec::new();
        wire.decode(&bytes, v.len(), &mut back).expect("decode");
        back
    }

    /// How far a Q8_0 value may land from the original: half a step, plus the f16 rounding
    /// of the scale times the largest code (ggml quantizes with the f32 scale and stores its
    /// f16; the engine's activations do the same).
    fn q8_0_bound(amax: f32) -> f32 {
        amax / 254.0 + amax / 2048.0 + 1e-6
    }

    #[test]
    fn f32_is_exact_and_lengths_are_checked() {
        let v = activations(576, 1);
        assert_eq!(round_trip(Wire::F32, &v), v);
        let mut out = Vec::new();
        assert!(Wire::F32.decode(&[0; 7], 2, &mut out).is_err());
        assert!(Wire::F16.decode(&[0; 3], 2, &mut out).is_err());
        assert!(Wire::Q8_0.decode(&[0; 34], 33, &mut out).is_err());
    }

    #[test]
    fn f16_error_is_within_half_an_ulp() {
        let v = activations(4096, 2);
        let back = round_trip(Wire::F16, &v);
        let worst = v
            .iter()
            .zip(&back)
            .filter(|(a, _)| a.abs() > 1e-4)
            .map(|(a, b)| ((a - b) / a).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1.0 / 2048.0 && worst > 0.0, "{worst}");
    }

    #[test]
    fn q8_0_is_the_engines_block_and_pads_the_last_one() {
        let v = activations(40, 3);
        let mut bytes = Vec::new();
        Wire::Q8_0.encode(&v, &mut bytes);
        assert_eq!(bytes.len(), 2 * Q8_BLOCK_BYTES);
        // The first block is exactly what the engine's quantizer makes of it.
        let mut block = [0u8; Q8_BLOCK_BYTES];
        (reference_kernels(GgmlType::Q8_0)
            .unwrap()
            .quantize_activations)(&v[..32], &mut block);
        assert_eq!(bytes[..Q8_BLOCK_BYTES], block);
        let back = round_trip(Wire::Q8_0, &v);
        assert_eq!(back.len(), 40);
        for (chunk, got) in v.chunks(32).zip(back.chunks(32)) {
            let amax = chunk.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            for (a, b) in chunk.iter().zip(got) {
                assert!((a - b).abs() <= q8_0_bound(amax), "{a} -> {b}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), count in 0usize..200) {
            let mut out = Vec::new();
            for wire in [Wire::F32, Wire::F16, Wire::Q8_0] {
                let _ = wire.decode(&bytes, count, &mut out);
            }
        }

        #[test]
        fn q8_0_error_is_within_half_a_step(values in proptest::collection::vec(-1000.0f32..1000.0, 1..100)) {
            let back = round_trip(Wire::Q8_0, &values);
            for (block, got) in values.chunks(32).zip(back.chunks(32)) {
                let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                for (a, b) in block.iter().zip(got) {
                    prop_assert!((a - b).abs() <= q8_0_bound(amax), "{a} -> {b}");
                }
            }
        }
    }
}
