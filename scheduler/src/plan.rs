//! A partition of a model over an ordered list of devices, with its predicted costs.

use std::fmt::{self, Write as _};
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// What the planner minimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Objective {
    /// Per-token latency of one stream: every stage's compute plus every hop, including the
    /// hop back to the head node.
    #[default]
    Latency,
    /// Pipelined throughput of many streams: the slowest stage or link.
    Throughput,
}

/// One pipeline stage: a device and the contiguous layers it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Peer id of the device.
    pub device: String,
    /// Layers `start..end` this stage runs.
    pub layers: Range<u32>,
    /// Whether the stage holds the embedding table (always the first stage).
    pub embed: bool,
    /// Whether the stage runs final norm + output head (always the last stage).
    pub head: bool,
    /// Predicted decode compute per token, in milliseconds.
    pub compute_ms: f64,
    /// Predicted prefill compute per prompt token, in milliseconds.
    pub prefill_ms: f64,
    /// Bytes the stage needs: weights, reserved KV, embedding/head, overhead.
    pub memory_bytes: u64,
    /// The device's memory budget, for context in [`Plan::explain`].
    pub memory_budget: u64,
    /// Slowdown factor applied to the device's measured cost when planning (1.0 = healthy);
    /// the straggler monitor divides it out to recover the nominal expectation.
    pub slowdown: f64,
}

/// One network hop a token takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// Sending peer id.
    pub from: String,
    /// Receiving peer id.
    pub to: String,
    /// Bytes per token on this hop.
    pub bytes: u64,
    /// One-way latency per token: rtt/2 + bytes/bandwidth.
    pub latency_ms: f64,
    /// Link busy time per token: bytes/bandwidth (limits throughput).
    pub transfer_ms: f64,
}

/// A complete partition and its predicted cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Model the plan is for.
    pub model_sha256: String,
    /// Objective the plan was optimized for.
    pub objective: Objective,
    /// Head node that feeds tokens in and samples; `None` when the plan ignores it.
    pub head_node: Option<String>,
    /// Stages in pipeline order; their layer ranges tile `0..n_layers`.
    pub stages: Vec<Stage>,
    /// Hops in order: head -> first stage (if the head node is elsewhere), stage -> stage,
    /// last stage -> head (if elsewhere).
    pub hops: Vec<Hop>,
    /// Predicted per-token decode latency of one stream (compute + hops).
    pub predicted_ms_per_token: f64,
    /// Slowest stage or link per token: the pipelined throughput limit.
    pub bottleneck_ms: f64,
    /// Predicted prefill compute per prompt token, summed over stages.
    pub predicted_prefill_ms_per_token: f64,
}

impl Plan {
    /// Predicted tokens per second of one stream.
    pub fn single_stream_tokens_per_s(&self) -> f64 {
        1000.0 / self.predicted_ms_per_token
    }

    /// Predicted aggregate tokens per second with enough streams to fill the pipeline.
    pub fn pipelined_tokens_per_s(&self) -> f64 {
        1000.0 / self.bottleneck_ms
    }

    /// The value of the plan's own objective (lower is better).
    pub fn objective_ms(&self) -> f64 {
        match self.objective {
            Objective::Latency => self.predicted_ms_per_token,
            Objective::Throughput => self.bottleneck_ms,
        }
    }

    /// The stage running `layer`, if any.
    pub fn stage_of_layer(&self, layer: u32) -> Option<&Stage> {
        self.stages.iter().find(|s| s.layers.contains(&layer))
    }

    /// A human-readable account of the plan: per stage layers, compute, memory; per hop
    /// latency; the totals and which part is the bottleneck.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_explain(&mut out);
        out
    }

    fn write_explain(&self, out: &mut String) -> fmt::Result {
        writeln!(
            out,
            "plan for model {} ({:?} objective), {} stage(s)",
            self.model_sha256,
            self.objective,
            self.stages.len()
        )?;
        for (i, s) in self.stages.iter().enumerate() {
            let mut extras = Vec::new();
            if s.embed {
                extras.push("embed");
            }
            if s.head {
                extras.push("head");
            }
            let extras = if extras.is_empty() {
                String::new()
            } else {
                format!(" +{}", extras.join("+"))
            };
            let slow = if s.slowdown == 1.0 {
                String::new()
            } else {
                format!(", slowed x{:.2}", s.slowdown)
            };
            writeln!(
                out,
                "  stage {i}: {} layers {}..{} ({} layers{extras}): {:.3} ms/token decode, \
                 {:.3} ms/token prefill, memory {:.1} / {:.1} MiB{slow}",
                s.device,
                s.layers.start,
                s.layers.end,
                s.layers.len(),
                s.compute_ms,
                s.prefill_ms,
                mib(s.memory_bytes),
                mib(s.memory_budget),
            )?;
        }
        for h in &self.hops {
            writeln!(
                out,
                "  hop {} -> {}: {} B, {:.3} ms latency ({:.3} ms transfer)",
                h.from, h.to, h.bytes, h.latency_ms, h.transfer_ms
            )?;
        }
        let compute: f64 = self.stages.iter().map(|s| s.compute_ms).sum();
        let network: f64 = self.hops.iter().map(|h| h.latency_ms).sum();
        writeln!(
            out,
            "  latency {:.3} ms/token ({:.3} compute + {:.3} network) = {:.1} tok/s single stream",
            self.predicted_ms_per_token,
            compute,
            network,
            self.single_stream_tokens_per_s()
        )?;
        write!(
            out,
            "  bottleneck {:.3} ms ({}) = {:.1} tok/s pipelined",
            self.bottleneck_ms,
            self.bottleneck_name(),
            self.pipelined_tokens_per_s()
        )
    }

    fn bottleneck_name(&self) -> String {
        let stage = self
            .stages
            .iter()
            .find(|s| s.compute_ms >= self.bottleneck_ms)
            .map(|s| format!("stage on {}", s.device));
        let hop = || {
            self.hops
                .iter()
                .find(|h| h.transfer_ms >= self.bottleneck_ms)
                .map(|h| format!("link {} -> {}", h.from, h.to))
        };
        stage.or_else(hop).unwrap_or_else(|| "none".to_owned())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explain())
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
