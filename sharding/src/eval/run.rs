//! The chunk loop of llama-perplexity: the text's tokens cut into chunks of `n_ctx`, each
//! evaluated from an empty context (its first token replaced by BOS for models that add
//! one), and the logits of positions `n_ctx / 2 ..= n_ctx - 2` scored against the token
//! that follows each.

use std::io::{Read, Write};

use super::logits_file::{rows_per_chunk, BaseReader, BaseWriter};
use super::source::LogitSource;
use super::stats::{row_nll, KlDivergence, Nll};
use super::EvalError;
use crate::tokenizer::Tokenizer;

/// The tokens llama-perplexity evaluates for the contents of a text file: one trailing
/// newline dropped (as its `--file` does), special tokens added as the model asks, control
/// tokens written in the text left as text.
pub fn tokenize_text(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    tokenizer.encode(text, true, false)
}

/// Chunks of `n_ctx` evaluated over `n_tokens` tokens (at most `max_chunks` when given).
/// llama-perplexity refuses fewer than two contexts' worth of tokens; so does this.
pub fn chunk_count(
    n_tokens: usize,
    n_ctx: usize,
    max_chunks: Option<usize>,
) -> Result<usize, EvalError> {
    if n_ctx < 4 {
        return Err(EvalError::ContextTooSmall(n_ctx));
    }
    if n_tokens < 2 * n_ctx {
        return Err(EvalError::NotEnoughTokens {
            have: n_tokens,
            need: 2 * n_ctx,
            n_ctx,
        });
    }
    let all = n_tokens / n_ctx;
    Ok(max_chunks.map_or(all, |m| m.clamp(1, all)))
}

/// Runs one chunk on `source`: the logits of its scored rows into `out`.
fn chunk_logits<S: LogitSource>(
    source: &mut S,
    chunk: &[u32],
    index: usize,
    bos: Option<u32>,
    scratch: &mut Vec<u32>,
    out: &mut Vec<f32>,
) -> Result<(), EvalError> {
    scratch.clear();
    scratch.extend_from_slice(chunk);
    if let Some(bos) = bos {
        scratch[0] = bos;
    }
    let n_ctx = chunk.len();
    let first = n_ctx / 2;
    let rows = rows_per_chunk(n_ctx);
    source
        .logits(scratch, first..first + rows, out)
        .map_err(|e| EvalError::Source {
            chunk: index + 1,
            error: Box::new(e),
        })?;
    let n_vocab = source.n_vocab();
    if out.len() != rows * n_vocab {
        return Err(EvalError::SourceShape {
            got: out.len(),
            rows,
            n_vocab,
        });
    }
    Ok(())
}

/// Perplexity of `source` over the first `n_chunk` chunks of `tokens`. With `base_out`,
/// every scored row is also written there (a base for [`kl_divergence`] or for
/// llama-perplexity's). `on_chunk` sees the running totals after each chunk.
pub fn perplexity<S: LogitSource, W: Write>(
    source: &mut S,
    tokens: &[u32],
    n_ctx: usize,
    n_chunk: usize,
    bos: Option<u32>,
    mut base_out: Option<&mut BaseWriter<W>>,
    mut on_chunk: impl FnMut(usize, &Nll),
) -> Result<Nll, EvalError> {
    let first = n_ctx / 2;
    let rows = rows_per_chunk(n_ctx);
    let n_vocab = source.n_vocab();
    let (mut scratch, mut logits) = (Vec::new(), Vec::new());
    let mut nll = Nll::default();
    for (i, chunk) in tokens.chunks_exact(n_ctx).take(n_chunk).enumerate() {
        chunk_logits(source, chunk, i, bos, &mut scratch, &mut logits)?;
        let targets = &chunk[first + 1..first + 1 + rows];
        match base_out.as_deref_mut() {
            Some(writer) => {
                for v in writer.write_chunk(&logits, targets)? {
                    nll.add(v);
                }
            }
            None => {
                for (row, &t) in logits.chunks_exact(n_vocab).zip(targets) {
                    nll.add(row_nll(row, t as usize));
                }
            }
        }
        on_chunk(i + 1, &nll);
    }
    Ok(nll)
}

/// Compares `source` with the base in `base`, chunk by chunk over the base's own tokens.
/// `on_chunk` sees the running comparison after each chunk.
pub fn kl_divergence<S: LogitSource, R: Read>(
    source: &mut S,
    base: &mut BaseReader<R>,
    bos: Option<u32>,
    mut on_chunk: impl FnMut(usize, &KlDivergence),
) -> Result<KlDivergence, EvalError> {
    let header = base.header().clone();
    if header.n_vocab != source.n_vocab() {
        return Err(EvalError::VocabMismatch {
            base: header.n_vocab,
            model: source.n_vocab(),
        });
    }
    let (n_ctx, n_vocab) = (header.n_ctx, header.n_vocab);
    if n_ctx < 4 {
        return Err(EvalError::ContextTooSmall(n_ctx));
    }
    let first = n_ctx / 2;
    let (rows, words) = (header.rows_per_chunk(), header.row_words());
    let (mut scratch, mut logits) = (Vec::new(), Vec::new());
    let mut kl = KlDivergence::default();
    for (i, chunk) in header.tokens.chunks_exact(n_ctx).enumerate() {
        chunk_logits(source, chunk, i, bos, &mut scratch, &mut logits)?;
        let stored = base
            .next_chunk()?
            .ok_or(super::LogitsFileError::Truncated("chunks"))?;
        let targets = &chunk[first + 1..first + 1 + rows];
        for ((row, base_row), &t) in logits
            .chunks_exact(n_vocab)
            .zip(stored.chunks_exact(words))
            .zip(targets)
        {
            kl.add_row(row, base_row, t as usize);
        }
        on_chunk(i + 1, &kl);
    }
    Ok(kl)
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::*;
    use crate::eval::logits_file::BaseWriter;

    /// A model whose logits depend on the chunk's first token and the position only: enough
    /// to see which rows and targets the loop scores.
    struct Toy {
        vocab: usize,
        seen: Vec<Vec<u32>>,
    }

    impl LogitSource for Toy {
        type Error = std::io::Error;
        fn n_vocab(&self) -> usize {
            self.vocab
        }
        fn logits(
            &mut self,
            t: &[u32],
            rows: Range<usize>,
            out: &mut Vec<f32>,
        ) -> Result<(), Self::Error> {
            self.seen.push(t.to_vec());
            out.clear();
            for pos in rows {
                // Predicts token (pos + 1) % vocab with most of the mass.
                out.extend((0..self.vocab).map(|v| {
                    if v == (pos + 1) % self.vocab {
                        4.0
                    } else {
                        0.0
                    }
                }));
            }
            Ok(())
        }
    }

    #[test]
    fn scores_the_second_half_of_each_chunk_and_puts_bos_first() {
        let vocab = 16;
        // Each chunk of 8 reads 0, 1, .., 7: the token after position p is p + 1.
        let tokens: Vec<u32> = (0..40).map(|i| i % 8).collect();
        let mut toy = Toy {
            vocab,
            seen: vec![],
        };
        let n = chunk_count(tokens.len(), 8, None).unwrap();
        assert_eq!(n, 5);
        let nll =
            perplexity::<_, Vec<u8>>(&mut toy, &tokens, 8, n, Some(15), None, |_, _| {}).unwrap();
        // Rows at positions 4, 5, 6 of each chunk; every target is the predicted token.
        assert_eq!(nll.count, 5 * 3);
        let p_top = 4f64.exp() / (4f64.exp() + 15.0);
        assert!((nll.ppl() - 1.0 / p_top).abs() < 1e-6, "{}", nll.ppl());
        assert!(toy.seen.iter().all(|c| c[0] == 15 && c.len() == 8));
    }

    #[test]
    fn a_written_base_reads_back_as_no_divergence() {
        let vocab = 16;
        let tokens: Vec<u32> = (0..40).map(|i| (i * 7 % vocab) as u32).collect();
        let mut toy = Toy {
            vocab,
            seen: vec![],
        };
        let mut w = BaseWriter::new(Vec::new(), 8, vocab, &tokens[..40]).unwrap();
        let ppl = perplexity(&mut toy, &tokens, 8, 5, None, Some(&mut w), |_, _| {}).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = BaseReader::new(&bytes[..]).unwrap();
        let kl = kl_divergence(&mut toy, &mut r, None, |_, _| {}).unwrap();
        assert_eq!(kl.count(), 15);
        assert!(kl.mean_kld().0.abs() < 1e-6);
        assert_eq!(kl.same_top().0, 1.0);
        assert!((kl.ppl().0 - ppl.ppl()).abs() < 1e-4);
        assert!((kl.ppl_base().0 - ppl.ppl()).abs() < 1e-2);
    }

    #[test]
    fn refuses_short_texts_and_tiny_contexts() {
        assert!(matches!(
            chunk_count(100, 64, None),
            Err(EvalError::NotEnoughTokens { need: 128, .. })
        ));
        assert!(matches!(
            chunk_count(100, 2, None),
            Err(EvalError::ContextTooSmall(2))
        ));
        assert_eq!(chunk_count(1000, 100, Some(3)).unwrap(), 3);
    }
}
