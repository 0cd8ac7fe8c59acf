//! The GGUF reader against files built in memory: round trips and every kind of corruption.

use sharding::gguf::write::GgufWriter;
use sharding::gguf::{Array, GgufError, Header, Value};
use sharding::quant::GgmlType;

fn sample() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()))
        .meta("llama.block_count", Value::U32(2))
        .meta("llama.rope.freq_base", Value::F32(10000.0))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vec!["a".into(), "b".into()])),
        )
        .meta(
            "nested",
            Value::Array(Array::Array(vec![Array::I32(vec![1, -2])])),
        );
    w.tensor("a", &[4, 2], GgmlType::F32, vec![0u8; 32]);
    w.tensor("b", &[32], GgmlType::Q8_0, vec![1u8; 34]);
    w.to_bytes()
}

#[test]
fn round_trip() {
    let bytes = sample();
    let h = Header::parse(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.metadata.str("general.architecture").unwrap(), "llama");
    assert_eq!(h.metadata.usize("llama.block_count").unwrap(), 2);
    assert_eq!(h.metadata.f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(
        h.metadata.strings("tokenizer.ggml.tokens").unwrap(),
        ["a", "b"]
    );
    let a = h.tensor("a").unwrap();
    assert_eq!((a.row_len(), a.rows(), a.len), (4, 2, 32));
    let b = h.tensor("b").unwrap();
    assert_eq!(b.ty, Some(GgmlType::Q8_0));
    assert_eq!(b.start % 32, 0);
    assert_eq!(&bytes[b.start..b.start + b.len], &[1u8; 34][..]);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    let data_start = Header::parse(&bytes).unwrap().tensor("b").unwrap().start;
    for cut in 0..data_start + 34 {
        let err = Header::parse(&bytes[..cut]);
        assert!(err.is_err(), "cut at {cut} parsed");
    }
}

#[test]
fn bad_magic_and_version() {
    let mut bytes = sample();
    bytes[0] = b'X';
    assert!(matches!(Header::parse(&bytes), Err(GgufError::BadMagic(_))));
    let mut bytes = sample();
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(
        Header::parse(&bytes),
        Err(GgufError::UnsupportedVersion(1))
    ));
}

#[test]
fn lying_counts_are_rejected_without_allocation() {
    let mut bytes = sample();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        Header::parse(&bytes),
        Err(GgufError::Implausible { .. })
    ));
}

#[test]
fn unsupported_type_is_named_on_use() {
    let mut w = GgufWriter::new();
    w.tensor("t", &[32], GgmlType::Q8_0, vec![0u8; 34]);
    let mut bytes = w.to_bytes();
    // Patch the type id (after name, n_dims, one dim) to 20 (IQ4_NL: not supported here).
    let pos = 24 + 8 + 1 + 4 + 8;
    bytes[pos..pos + 4].copy_from_slice(&20u32.to_le_bytes());
    let h = Header::parse(&bytes).unwrap();
    assert_eq!(h.tensor("t").unwrap().ty, None);
    assert_eq!(h.tensor("t").unwrap().type_id, 20);
}

#[test]
fn data_out_of_bounds() {
    let mut w = GgufWriter::new();
    w.tensor("t", &[32], GgmlType::Q8_0, vec![0u8; 34]);
    let mut bytes = w.to_bytes();
    let pos = 24 + 8 + 1 + 4 + 8 + 4;
    bytes[pos..pos + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        Header::parse(&bytes),
        Err(GgufError::OutOfBounds { .. })
    ));
    bytes[pos..pos + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(Header::parse(&bytes).is_err());
}

#[test]
fn shape_errors() {
    let mut w = GgufWriter::new();
    w.tensor("t", &[32], GgmlType::Q8_0, vec![0u8; 34]);
    let mut bytes = w.to_bytes();
    let dim = 24 + 8 + 1 + 4;
    bytes[dim..dim + 8].copy_from_slice(&31u64.to_le_bytes());
    assert!(matches!(
        Header::parse(&bytes),
        Err(GgufError::BadShape { .. })
    ));
    bytes[dim..dim + 8].copy_from_slice(&0u64.to_le_bytes());
    assert!(matches!(
        Header::parse(&bytes),
        Err(GgufError::BadShape { .. })
    ));
}
