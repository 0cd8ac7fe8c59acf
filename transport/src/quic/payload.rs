//! Payload codecs: f32 little-endian bytes, f16 (half the bytes, ~3 decimal digits) and
//! block q8 (per 32 values an f16 scale then 32 `i8`: 34 bytes instead of 128) for slow links.
//!
//! Pure functions over slices that append to a caller-owned buffer, so a stage can reuse
//! one allocation per hop. Decoders check sizes and return [`PayloadError`], never panic.

use half::f16;

/// Values per q8 block.
pub const Q8_BLOCK_VALUES: usize = 32;
/// Encoded bytes per q8 block: a 2-byte f16 scale then 32 `i8`.
pub const Q8_BLOCK_BYTES: usize = 2 + Q8_BLOCK_VALUES;

/// A payload's size does not fit the codec or the count the caller expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The byte length is not what `count` values of this codec take.
    #[error("payload of {len} bytes cannot hold {count} values of {codec}")]
    BadLength {
        /// Codec name.
        codec: &'static str,
        /// Payload bytes.
        len: usize,
        /// Values expected.
        count: usize,
    },
}

/// Appends `values` as little-endian f32 bytes to `out`.
pub fn f32_to_bytes(values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Appends the f32 values held in little-endian `bytes` to `out`.
pub fn f32_from_bytes(bytes: &[u8], out: &mut Vec<f32>) -> Result<(), PayloadError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(PayloadError::BadLength {
            codec: "f32",
            len: bytes.len(),
            count: bytes.len() / 4,
        });
    }
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    Ok(())
}

/// Appends `values` rounded to f16 (little-endian) to `out`. Values beyond ±65504 become
/// infinities, as f16 demands.
pub fn f32_to_f16_bytes(values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len() * 2);
    for v in values {
        out.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
    }
}

/// Appends the f16 values held in little-endian `bytes`, widened to f32, to `out`.
pub fn f32_from_f16_bytes(bytes: &[u8], out: &mut Vec<f32>) -> Result<(), PayloadError> {
    if !bytes.len().is_multiple_of(2) {
        return Err(PayloadError::BadLength {
            codec: "f16",
            len: bytes.len(),
            count: bytes.len() / 2,
        });
    }
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
    );
    Ok(())
}

/// Encoded size of `count` values in block q8 (the last block is padded).
pub fn q8_len(count: usize) -> usize {
    count.div_ceil(Q8_BLOCK_VALUES) * Q8_BLOCK_BYTES
}

/// Appends `values` in block q8 to `out`.
///
/// Each block stores `d = amax / 127` as f16 and `round(x / d)` as `i8`, so the round-trip
/// error of a value is at most `d / 2` plus the f16 rounding of `d`. The quantizer divides by
/// the f16-rounded `d`, the one the decoder will multiply by. NaN encodes as 0; scales beyond
/// the f16 range saturate to f16::MAX rather than turning into infinity.
pub fn f32_to_q8_bytes(values: &[f32], out: &mut Vec<u8>) {
    out.reserve(q8_len(values.len()));
    for block in values.chunks(Q8_BLOCK_VALUES) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32((amax / 127.0).min(f16::MAX.to_f32()));
        let d32 = d.to_f32();
        let inv = if d32 > 0.0 { 1.0 / d32 } else { 0.0 };
        out.extend_from_slice(&d.to_le_bytes());
        for i in 0..Q8_BLOCK_VALUES {
            let x = block.get(i).copied().unwrap_or(0.0);
            // `as i8` saturates and maps NaN to 0; the clamp keeps the code symmetric.
            let q = (x * inv).round().clamp(-127.0, 127.0) as i8;
            out.push(q as u8);
        }
    }
}

/// Appends `count` values decoded from block q8 `bytes` to `out`; `bytes` must be exactly
/// [`q8_len`]`(count)` long.
pub fn f32_from_q8_bytes(
    bytes: &[u8],
    count: usize,
    out: &mut Vec<f32>,
) -> Result<(), PayloadError> {
    if bytes.len() != q8_len(count) {
        return Err(PayloadError::BadLength {
            codec: "q8 block",
            len: bytes.len(),
            count,
        });
    }
    out.reserve(count);
    let mut left = count;
    for block in bytes.chunks_exact(Q8_BLOCK_BYTES) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let take = left.min(Q8_BLOCK_VALUES);
        out.extend(block[2..2 + take].iter().map(|&q| f32::from(q as i8) * d));
        left -= take;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic activation-like values: a mix of scales and signs, some outliers.
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

    #[test]
    fn f32_round_trip_is_exact() {
        let v = activations(576, 1);
        let mut bytes = Vec::new();
        f32_to_bytes(&v, &mut bytes);
        assert_eq!(bytes.len(), 576 * 4);
        let mut back = Vec::new();
        f32_from_bytes(&bytes, &mut back).expect("decode");
        assert_eq!(back, v);
        assert!(f32_from_bytes(&bytes[1..], &mut back).is_err());
    }

    #[test]
    fn f16_round_trip_error_is_within_half_an_ulp() {
        let v = activations(4096, 2);
        let mut bytes = Vec::new();
        f32_to_f16_bytes(&v, &mut bytes);
        assert_eq!(bytes.len(), v.len() * 2);
        let mut back = Vec::new();
        f32_from_f16_bytes(&bytes, &mut back).expect("decode");
        let worst_rel = v
            .iter()
            .zip(&back)
            .filter(|(a, _)| a.abs() > 1e-4)
            .map(|(a, b)| ((a - b) / a).abs())
            .fold(0.0f32, f32::max);
        // f16 has an 11-bit significand: relative rounding error <= 2^-11 for normal values.
        assert!(
            worst_rel <= 1.0 / 2048.0,
            "worst relative error {worst_rel}"
        );
        assert!(worst_rel > 0.0, "f16 must actually round");
        assert!(f32_from_f16_bytes(&bytes[1..], &mut back).is_err());
    }

    #[test]
    fn q8_round_trip_error_is_bounded_per_block() {
        let v = activations(576, 3);
        let mut bytes = Vec::new();
        f32_to_q8_bytes(&v, &mut bytes);
        assert_eq!(bytes.len(), 18 * Q8_BLOCK_BYTES);
        let mut back = Vec::new();
        f32_from_q8_bytes(&bytes, v.len(), &mut back).expect("decode");
        assert_eq!(back.len(), v.len());
        let mut worst_ratio = 0.0f32;
        let mut sq_err = 0.0f64;
        let mut sq = 0.0f64;
        for (block, got) in v.chunks(32).zip(back.chunks(32)) {
            let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            for (a, b) in block.iter().zip(got) {
                // Half a quantization step, with slack for the f16 rounding of the scale.
                worst_ratio = worst_ratio.max((a - b).abs() / (amax / 254.0 * 1.01));
                sq_err += f64::from(a - b).powi(2);
                sq += f64::from(*a).powi(2);
            }
        }
        assert!(
            worst_ratio <= 1.0,
            "error beyond half a step: {worst_ratio}"
        );
        let rel_rms = (sq_err / sq).sqrt();
        assert!(rel_rms < 0.02, "relative RMS error {rel_rms}");
    }

    #[test]
    fn q8_handles_padding_zeros_and_non_finite_input() {
        let v = [0.5f32, -0.25, 0.0];
        let mut bytes = Vec::new();
        f32_to_q8_bytes(&v, &mut bytes);
        assert_eq!(bytes.len(), Q8_BLOCK_BYTES);
        let mut back = Vec::new();
        f32_from_q8_bytes(&bytes, 3, &mut back).expect("decode");
        assert!((back[0] - 0.5).abs() < 0.002 && (back[1] + 0.25).abs() < 0.002);
        assert_eq!(back[2], 0.0);

        let zeros = [0.0f32; 32];
        bytes.clear();
        back.clear();
        f32_to_q8_bytes(&zeros, &mut bytes);
        f32_from_q8_bytes(&bytes, 32, &mut back).expect("decode");
        assert_eq!(back, zeros);

        bytes.clear();
        back.clear();
        f32_to_q8_bytes(&[f32::NAN, 1.0, f32::INFINITY, 1e30], &mut bytes);
        f32_from_q8_bytes(&bytes, 4, &mut back).expect("decode");
        assert!(back.iter().all(|x| x.is_finite()), "{back:?}");

        assert!(f32_from_q8_bytes(&bytes, 33, &mut back).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn q8_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), count in 0usize..200) {
            let mut out = Vec::new();
            let _ = f32_from_q8_bytes(&bytes, count, &mut out);
        }

        #[test]
        fn q8_error_is_within_half_a_step(values in proptest::collection::vec(-1000.0f32..1000.0, 1..100)) {
            let mut bytes = Vec::new();
            f32_to_q8_bytes(&values, &mut bytes);
            let mut back = Vec::new();
            f32_from_q8_bytes(&bytes, values.len(), &mut back).expect("decode");
            for (block, got) in values.chunks(32).zip(back.chunks(32)) {
                let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                for (a, b) in block.iter().zip(got) {
                    prop_assert!((a - b).abs() <= amax / 254.0 * 1.01 + 1e-6, "{a} -> {b}");
                }
            }
        }
    }
}
