//! What part of a model a shard runs, and with which limits.

use std::ops::Range;

use crate::gguf::Header;

/// Which part of the model a shard runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    /// Transformer blocks, `start..end`.
    pub layers: Range<usize>,
    /// Whether the shard looks up token embeddings (takes token ids as input).
    pub embed: bool,
    /// Whether the shard applies the final norm and output head (returns logits).
    pub head: bool,
}

impl ShardSpec {
    /// The whole model in one shard.
    pub fn full(n_layers: usize) -> Self {
        ShardSpec {
            layers: 0..n_layers,
            embed: true,
            head: true,
        }
    }

    /// The file byte ranges of every tensor [`super::Shard::load`] reads for this spec, in file
    /// order: what a node holding only part of a model must have before loading it.
    pub fn byte_ranges(&self, header: &Header) -> Vec<Range<usize>> {
        let tied = header.tensor("output.weight").is_none();
        let wanted = |name: &str| -> bool {
            match name {
                "token_embd.weight" => self.embed || (self.head && tied),
                "output.weight" | "output_norm.weight" => self.head,
                "rope_freqs.weight" => true,
                _ => name
                    .strip_prefix("blk.")
                    .and_then(|rest| rest.split_once('.'))
                    .and_then(|(layer, _)| layer.parse::<usize>().ok())
                    .is_some_and(|layer| self.layers.contains(&layer)),
            }
        };
        let mut ranges: Vec<Range<usize>> = header
            .tensors
            .iter()
            .filter(|t| wanted(&t.name))
            .map(|t| t.start..t.start + t.len)
            .collect();
        ranges.sort_by_key(|r| r.start);
        ranges
    }
}

/// Resource limits and threading of a shard.
#[derive(Clone, Debug)]
pub struct ShardOptions {
    /// Worker threads for matrix products and attention.
    pub threads: usize,
    /// Sessions open at once.
    pub max_sessions: usize,
    /// Positions one session may hold (capped by the model's trained context).
    pub max_context: usize,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            threads: 1,
            max_sessions: 64,
            max_context: 4096,
        }
    }
}
