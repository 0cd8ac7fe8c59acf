//! A model's token embedding table, apart from the shard that loaded it: looking rows up
//! only reads the (shared, memory-mapped) table, so a pipeline head embeds the next token
//! while its shard computes another request's logits.

use super::config::ModelConfig;
use super::matmul::QMatrix;
use super::StepError;

/// The token embedding of a shard that has one ([`super::Shard::embedding`]). Cheap to
/// clone; its rows are the shard's.
#[derive(Clone)]
pub struct Embedding {
    table: QMatrix,
    vocab: usize,
    n_embd: usize,
    scale: Option<f32>,
}

impl Embedding {
    pub(crate) fn new(table: QMatrix, config: &ModelConfig) -> Embedding {
        Embedding {
            table,
            vocab: config.vocab_size,
            n_embd: config.n_embd,
            scale: config.embed_scale,
        }
    }

    /// Looks up (and scales) the embeddings of `tokens` into `out` (`n × n_embd`).
    pub fn rows(&self, tokens: &[u32], out: &mut Vec<f32>) -> Result<(), StepError> {
        let vocab = self.vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(StepError::TokenOutOfRange { id: bad, vocab });
        }
        let e = self.n_embd;
        out.clear();
        out.resize(tokens.len() * e, 0.0);
        for (row, &t) in out.chunks_exact_mut(e).zip(tokens) {
            self.table.dequantize_row(t as usize, row);
            if let Some(s) = self.scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        Ok(())
    }
}
