//! The cost model: what a model needs per layer and what a stage costs on a device.

use serde::{Deserialize, Serialize};

use crate::error::PlanError;
use crate::graph::Device;

/// Size and wire facts about one model, enough to price any partition of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelProfile {
    /// sha256 (hex) of the model file; only devices holding it are eligible.
    pub sha256: String,
    /// Number of transformer layers.
    pub n_layers: u32,
    /// Weight bytes of one layer (as quantized on disk / in memory).
    pub bytes_per_layer: u64,
    /// Bytes of the token embedding table (lives on the first stage).
    pub embedding_bytes: u64,
    /// Bytes of final norm + output projection, or `None` when embeddings are tied and the
    /// head reuses the embedding table (then the last stage must hold the embedding table
    /// too, unless it is also the first stage).
    pub head_bytes: Option<u64>,
    /// Compute of final norm + output projection, in units of one layer's decode cost.
    /// Decode is memory-bound, so [`ModelProfile::head_cost_from_bytes`] is a good estimate.
    pub head_cost_layers: f64,
    /// KV cache bytes per token per layer (K and V together).
    pub kv_bytes_per_token_per_layer: u64,
    /// Context length whose KV cache is reserved on every stage.
    pub context_tokens: u32,
    /// Bytes of one token's hidden state on the wire between stages.
    pub hidden_bytes_per_token: u64,
    /// Vocabulary size; sizes the logits the last stage returns when the head node samples.
    pub vocab_size: u32,
}

/// Which pieces besides transformer layers a stage carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Role {
    /// Holds the embedding table and turns token ids into hidden states.
    pub(crate) embed: bool,
    /// Runs final norm + output projection.
    pub(crate) head: bool,
}

impl ModelProfile {
    /// Head compute in layer units estimated from weight bytes: decode streams every weight
    /// once per token, so time scales with bytes read.
    pub fn head_cost_from_bytes(&self) -> f64 {
        let head = self.head_bytes.unwrap_or(self.embedding_bytes) as f64;
        if self.bytes_per_layer == 0 {
            0.0
        } else {
            head / self.bytes_per_layer as f64
        }
    }

    /// Memory one layer takes on a stage: weights plus KV for the reserved context.
    pub fn layer_memory_bytes(&self) -> u64 {
        self.bytes_per_layer.saturating_add(
            self.kv_bytes_per_token_per_layer
                .saturating_mul(u64::from(self.context_tokens)),
        )
    }

    /// Memory a stage's non-layer pieces take (embedding table, head weights).
    pub(crate) fn role_bytes(&self, role: Role) -> u64 {
        let embed = if role.embed { self.embedding_bytes } else { 0 };
        let head = match (role.head, self.head_bytes) {
            (false, _) => 0,
            (true, Some(bytes)) => bytes,
            // Tied: the head reads the embedding table; load it unless already present.
            (true, None) if role.embed => 0,
            (true, None) => self.embedding_bytes,
        };
        embed.saturating_add(head)
    }

    /// Total bytes of a stage with `layers` layers and the given role, plus `overhead`.
    pub(crate) fn stage_bytes(&self, layers: u32, role: Role, overhead: u64) -> u64 {
        self.layer_memory_bytes()
            .saturating_mul(u64::from(layers))
            .saturating_add(self.role_bytes(role))
            .saturating_add(overhead)
    }

    /// Bytes of the whole model placed on one device, without overhead.
    pub fn total_bytes(&self) -> u64 {
        self.stage_bytes(
            self.n_layers,
            Role {
                embed: true,
                head: true,
            },
            0,
        )
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
        Ok(())
    }
}

/// Per-token cost of one stage on one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StageCost {
    /// Decode milliseconds per token.
    pub(crate) decode_ms: f64,
    /// Prefill milliseconds per prompt token.
    pub(crate) prefill_ms: f64,
}

/// Compute cost of `layers` layers (+ head if the role says so) on `device`, with its measured
/// cost multiplied by `slowdown` (1.0 when healthy). The embedding lookup is a row copy and
/// is priced at zero.
pub(crate) fn stage_cost(
    device: &Device,
    model: &ModelProfile,
    layers: u32,
    role: Role,
    slowdown: f64,
) -> StageCost {
    let units = f64::from(layers)
        + if role.head {
            model.head_cost_layers
        } else {
            0.0
        };
    StageCost {
        decode_ms: units * device.decode_ms_per_layer * slowdown,
        prefill_ms: units * device.prefill_ms_per_layer * slowdown,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// SmolLM2-135M, Q4_1: 30 layers of ~2.9 MB, tied 49152 x 576 embedding (Q8_0 ~ 30 MB),
    /// 3 KV heads x 64 dims x K,V x f16 = 768 B/token/layer, hidden 576 f32 on the wire.
    pub(crate) fn smollm2() -> ModelProfile {
        let mut m = ModelProfile {
            sha256: "smollm2".into(),
            n_layers: 30,
            bytes_per_layer: 2_900_000,
            embedding_bytes: 30_000_000,
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
    fn tied_head_needs_embedding_only_once() {
        let m = smollm2();
        let both = Role {
            embed: true,
            head: true,
        };
        let head_only = Role {
            embed: false,
            head: true,
        };
        assert_eq!(m.role_bytes(both), 30_000_000);
        assert_eq!(m.role_bytes(head_only), 30_000_000);
        let untied = ModelProfile {
            head_bytes: Some(5),
            ..m.clone()
        };
        assert_eq!(untied.role_bytes(both), 30_000_005);
    }

    #[test]
    fn stage_memory_counts_weights_kv_roles_and_overhead() {
        let m = smollm2();
        let plain = Role {
            embed: false,
            head: false,
        };
        let per_layer = 2_900_000 + 768 * 2048;
        assert_eq!(m.stage_bytes(3, plain, 7), 3 * per_layer + 7);
        assert_eq!(m.total_bytes(), 30 * per_layer + 30_000_000);
    }

    #[test]
    fn head_compute_counts_on_head_stage_only() {
        let m = smollm2();
        let d = Device {
            id: "a".into(),
            memory_bytes: 0,
            threads: 1,
            decode_ms_per_layer: 0.3,
            prefill_ms_per_layer: 0.1,
            model_sha256: None,
        };
        let plain = Role {
            embed: true,
            head: false,
        };
        let head = Role {
            embed: false,
            head: true,
        };
        assert!((stage_cost(&d, &m, 10, plain, 1.0).decode_ms - 3.0).abs() < 1e-9);
        let with_head = stage_cost(&d, &m, 10, head, 2.0).decode_ms;
        assert!((with_head - (10.0 + 30.0 / 2.9) * 0.6).abs() < 1e-9);
    }
}
