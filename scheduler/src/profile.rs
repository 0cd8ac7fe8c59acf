//! The cost model: what a model's pieces weigh in memory and cost in compute.
//!
//! Every number the planner compares comes from here, so `shoal plan`, the coordinator and
//! the straggler monitor price a device the same way:
//!
//! - memory of a device = its process overhead (advertised) + the weights of its layers +
//!   KV for `context_tokens` positions on each of them + the output product if it holds a
//!   whole head + its vocabulary slices. The embedding is read row by row from the mapped
//!   file and costs nothing resident; a tied table is the output product and counted once.
//! - decode compute of a device = layers × measured ms per layer (+ its share of the
//!   output product), × slowdown.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::PlanError;

/// Size and wire facts about one model, enough to price any partition of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelProfile {
    /// sha256 (hex) of the model file; only devices holding it are eligible.
    pub sha256: String,
    /// Number of transformer layers.
    pub n_layers: u32,
    /// Weight bytes of the largest layer (as quantized on disk / in memory).
    pub bytes_per_layer: u64,
    /// Weight bytes of each layer in order; empty when every layer weighs
    /// `bytes_per_layer`.
    #[serde(default)]
    pub layer_bytes: Vec<u64>,
    /// Bytes of the token embedding table. Lookups read only the rows they need from the
    /// mapped file, so it is never counted as resident unless it is the output product
    /// (tied, `head_bytes` is `None`).
    pub embedding_bytes: u64,
    /// Bytes of final norm + output projection, or `None` when embeddings are tied and the
    /// output product is the embedding table.
    pub head_bytes: Option<u64>,
    /// Compute of final norm + output projection in units of one layer's decode cost, for
    /// devices that do not advertise a measured [`crate::Device::head_ms`].
    pub head_cost_layers: f64,
    /// KV cache bytes per token per layer (K and V together).
    pub kv_bytes_per_token_per_layer: u64,
    /// Positions of KV cache every layer must hold (the KV pool a node sizes for the plan).
    pub context_tokens: u32,
    /// Bytes of one token's hidden state on the wire between stages (and from the head to
    /// the first stage, the last stage to the head, the head to each vocabulary slice).
    pub hidden_bytes_per_token: u64,
    /// Vocabulary size: the rows of the output product.
    pub vocab_size: u32,
}

impl ModelProfile {
    /// Head compute in layer units estimated from weight bytes when nothing was measured.
    ///
    /// Decode streams every weight once per token, so time follows bytes, but not one for
    /// one: a layer also runs attention, norms and activation quantization for each of its
    /// seven products, while the output product is one large matrix-vector product that
    /// streams faster per byte. [`HEAD_BYTE_COST`] is that ratio, measured.
    pub fn head_cost_from_bytes(&self) -> f64 {
        let per_layer = self.mean_layer_bytes();
        if per_layer == 0.0 {
            0.0
        } else {
            HEAD_BYTE_COST * self.output_bytes() as f64 / per_layer
        }
    }

    /// Bytes of a whole output product resident on a device that holds it (the embedding
    /// table when tied, counted once).
    pub fn output_bytes(&self) -> u64 {
        self.head_bytes.unwrap_or(self.embedding_bytes)
    }

    /// Bytes of one vocabulary row of the output product (rounded up).
    pub fn row_bytes(&self) -> u64 {
        self.output_bytes()
            .div_ceil(u64::from(self.vocab_size.max(1)))
    }

    /// Bytes of a vocabulary slice of `rows` rows.
    pub fn slice_bytes(&self, rows: u32) -> u64 {
        self.row_bytes().saturating_mul(u64::from(rows))
    }

    /// KV bytes one layer reserves: bytes per token per layer × `context_tokens`.
    pub fn kv_bytes_per_layer(&self) -> u64 {
        self.kv_bytes_per_token_per_layer
            .saturating_mul(u64::from(self.context_tokens))
    }

    /// Weight bytes of layer `layer`.
    pub fn layer_weight_bytes(&self, layer: u32) -> u64 {
        self.layer_bytes
            .get(layer as usize)
            .copied()
            .unwrap_or(self.bytes_per_layer)
    }

    /// Memory layers `range` take on a stage: weights plus KV for the reserved context.
    pub fn range_bytes(&self, range: Range<u32>) -> u64 {
        let n = u64::from(range.end.saturating_sub(range.start));
        let weights = range.fold(0u64, |a, l| a.saturating_add(self.layer_weight_bytes(l)));
        weights.saturating_add(self.kv_bytes_per_layer().saturating_mul(n))
    }

    /// Memory one layer takes on a stage (the largest): weights plus reserved KV.
    pub fn layer_memory_bytes(&self) -> u64 {
        self.bytes_per_layer
            .saturating_add(self.kv_bytes_per_layer())
    }

    /// Bytes of all layers with their KV, and one whole output product: the model in one
    /// piece, without any overhead.
    pub fn total_bytes(&self) -> u64 {
        self.range_bytes(0..self.n_layers)
            .saturating_add(self.output_bytes())
    }

    fn mean_layer_bytes(&self) -> f64 {
        if self.layer_bytes.is_empty() {
            self.bytes_per_layer as f64
        } else {
            self.layer_bytes.iter().sum::<u64>() as f64 / self.layer_bytes.len() as f64
        }
    }

    pub(crate) fn validate(&self) -> Result<(), PlanError> {
        if self.n_layers == 0 {
            return Err(PlanError::InvalidModel("n_layers is 0"));
        }
        if !(self.head_cost_layers.is_finite() && self.head_cost_layers >= 0.0) {
            return Err(PlanError::InvalidModel(
                "head_cost_layers must be finite and >= 0",
            ));
        }
        if !self.layer_bytes.is_empty() && self.layer_bytes.len() != self.n_layers as usize {
            return Err(PlanError::InvalidModel(
                "layer_bytes must be empty or list every layer",
            ));
        }
        if self.vocab_size == 0 {
            return Err(PlanError::InvalidModel("vocab_size is 0"));
        }
        Ok(())
    }
}

/// Cost of the output product per weight byte, relative to a transformer layer's.
///
/// Measured with `cargo run --release -p sharding --example head_cost -- MODEL 1` (one
/// thread, fastest of 7 alternating rounds, 2-vCPU Zen 4 VM under load): time per byte of
/// the head over a middle layer's, 0.57-0.58 for SmolLM2-135M (Q8_0 head, Q4_1 layers),
/// 0.68 for Gemma-3-270M and 0.70 for Qwen2.5-Coder-0.5B (Q8_0 heads, K-quant layers).
/// Pricing the head by bytes alone (1.0) over-predicted SmolLM2's token by ~6 layers.
/// One figure is within 13 % of all three; a node that times its own head does better.
pub const HEAD_BYTE_COST: f64 = 0.65;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// SmolLM2-135M, Q4_1: 30 layers of ~2.2 MB, tied 49152 x 576 Q8_0 embedding (~30 MB),
    /// 3 KV heads x 64 dims x K,V x f16 = 768 B/token/layer, hidden 576 f32 on the wire.
    pub(crate) fn smollm2() -> ModelProfile {
        let mut m = ModelProfile {
            sha256: "smollm2".into(),
            n_layers: 30,
            bytes_per_layer: 2_216_448,
            layer_bytes: Vec::new(),
            embedding_bytes: 30_081_024,
            head_bytes: None,
            head_cost_layers: 0.0,
            kv_bytes_per_token_per_layer: 768,
            context_tokens: 2048,
            hidden_bytes_per_token: 576 * 4,
            vocab_size: 49_152,
        };
        m.head_cost_layers = m.head_cost_from_bytes();
        m
    }

    #[test]
    fn tied_output_product_is_the_embedding_counted_once() {
        let m = smollm2();
        assert_eq!(m.output_bytes(), 30_081_024);
        assert_eq!(m.row_bytes(), 612);
        assert_eq!(m.slice_bytes(100), 61_200);
        let untied = ModelProfile {
            head_bytes: Some(5),
            ..m.clone()
        };
        assert_eq!(untied.output_bytes(), 5);
        assert_eq!(untied.row_bytes(), 1);
    }

    #[test]
    fn range_memory_counts_each_layers_weights_and_kv() {
        let mut m = smollm2();
        let kv = 768 * 2048;
        assert_eq!(m.range_bytes(0..3), 3 * (2_216_448 + kv));
        assert_eq!(m.total_bytes(), 30 * (2_216_448 + kv) + 30_081_024);
        m.n_layers = 3;
        m.layer_bytes = vec![10, 20, 30];
        assert_eq!(m.range_bytes(1..3), 50 + 2 * kv);
        assert_eq!(m.range_bytes(2..2), 0);
        assert!(m.validate().is_ok());
        m.layer_bytes.pop();
        assert!(m.validate().is_err());
    }
}
