use super::*;

fn sample(n_vocab: usize, seed: u32) -> Vec<f32> {
    (0..n_vocab)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 40.0 - 12.0
        })
        .collect()
}

#[test]
fn header_layout_is_llama_cpps() {
    let tokens: Vec<u32> = (0..16).collect();
    let w = BaseWriter::new(Vec::new(), 8, 33, &tokens).unwrap();
    let bytes = w.finish().unwrap();
    assert_eq!(&bytes[..8], b"_logits_");
    assert_eq!(i32::from_le_bytes(bytes[8..12].try_into().unwrap()), 8);
    assert_eq!(i32::from_le_bytes(bytes[12..16].try_into().unwrap()), 33);
    assert_eq!(i32::from_le_bytes(bytes[16..20].try_into().unwrap()), 2);
    assert_eq!(
        u32::from_le_bytes(bytes[20 + 4 * 5..24 + 4 * 5].try_into().unwrap()),
        5
    );
    assert_eq!(bytes.len(), 20 + 16 * 4);
    // An odd vocabulary pads each row to an even number of words, plus the two floats.
    assert_eq!(row_words(33), 38);
    assert_eq!(row_words(49152), 49156);
    assert_eq!(rows_per_chunk(256), 127);
}

#[test]
fn rows_round_trip_within_the_quantization_step() {
    let n_vocab = 33;
    let tokens: Vec<u32> = (0..16).map(|i| i % 33).collect();
    let mut w = BaseWriter::new(Vec::new(), 8, n_vocab, &tokens).unwrap();
    for chunk in 0..2 {
        let logits: Vec<f32> = (0..3)
            .flat_map(|r| sample(n_vocab, chunk * 10 + r))
            .collect();
        w.write_chunk(&logits, &[1, 2, 3]).unwrap();
    }
    let bytes = w.finish().unwrap();
    assert_eq!(bytes.len(), 20 + 64 + 2 * 3 * 38 * 2);
    let mut r = BaseReader::new(&bytes[..]).unwrap();
    assert_eq!(r.header().tokens, tokens);
    for chunk in 0..2 {
        let words = r.next_chunk().unwrap().unwrap().to_vec();
        for (row, stored) in words.chunks_exact(38).enumerate() {
            let logits = sample(n_vocab, chunk * 10 + row as u32);
            let max = logits.iter().copied().fold(f32::MIN, f32::max);
            let lse = logits
                .iter()
                .map(|&l| ((l - max) as f64).exp())
                .sum::<f64>()
                .ln() as f32;
            let (scale, min, q) = decode_row(stored);
            assert!(scale > 0.0 && scale < 16.0 / 65000.0);
            for (i, &l) in logits.iter().enumerate() {
                let exact = l - max - lse;
                if exact > min {
                    let got = scale * f32::from(q[i]) + min;
                    assert!((got - exact).abs() <= scale, "{got} vs {exact}");
                }
            }
        }
    }
    assert!(r.next_chunk().unwrap().is_none());
}

#[test]
fn bad_files_are_refused_with_reasons() {
    assert!(matches!(
        BaseReader::new(&b"_logitz_aaaaaaaaaaaa"[..]),
        Err(LogitsFileError::NotLogits)
    ));
    assert!(matches!(
        BaseReader::new(&b"_logi"[..]),
        Err(LogitsFileError::Truncated(_))
    ));
    let mut h = b"_logits_".to_vec();
    for v in [-5i32, 10, 1] {
        h.extend(v.to_le_bytes());
    }
    assert!(matches!(
        BaseReader::new(&h[..]),
        Err(LogitsFileError::BadHeader(_))
    ));
    let tokens: Vec<u32> = (0..16).collect();
    let bytes = BaseWriter::new(Vec::new(), 8, 20, &tokens)
        .unwrap()
        .finish()
        .unwrap();
    let mut r = BaseReader::new(&bytes[..]).unwrap();
    assert!(matches!(r.next_chunk(), Err(LogitsFileError::Truncated(_))));
    // A token outside the vocabulary.
    let bytes = BaseWriter::new(Vec::new(), 8, 10, &tokens)
        .unwrap()
        .finish()
        .unwrap();
    assert!(matches!(
        BaseReader::new(&bytes[..]),
        Err(LogitsFileError::BadHeader(_))
    ));
    // Rows of the wrong width.
    let mut w = BaseWriter::new(Vec::new(), 8, 20, &tokens).unwrap();
    assert!(matches!(
        w.write_chunk(&[0.0; 10], &[1, 2, 3]),
        Err(LogitsFileError::RowLength { .. })
    ));
}
