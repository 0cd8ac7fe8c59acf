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
    /// Predicted decode compute of the stage's layers per token for one stream, in
    /// milliseconds (what the latency sums).
    pub compute_ms: f64,
    /// Predicted decode compute per token under load (CPU time over a quota): what the
    /// stage's reported step times are compared with, and what limits throughput.
    pub busy_ms: f64,
    /// Predicted prefill compute per prompt token, in milliseconds.
    pub prefill_ms: f64,
    /// Bytes the device needs in this plan (see [`DeviceMemory`]).
    pub memory_bytes: u64,
    /// The device's memory budget, for context in [`Plan::explain`].
    pub memory_budget: u64,
    /// Slowdown factor applied to the device's measured cost when planning (1.0 = healthy);
    /// the straggler monitor divides it out to recover the nominal expectation.
    pub slowdown: f64,
}

/// A contiguous range of the output product's vocabulary rows computed on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    /// Peer id of the device.
    pub device: String,
    /// Vocabulary rows `start..end`.
    pub rows: Range<u32>,
    /// Predicted milliseconds of the slice's share of the output product, one stream.
    pub compute_ms: f64,
    /// The same under load (CPU time over a quota).
    pub busy_ms: f64,
    /// What the head waits for this slice per token: hidden state there, the product, the
    /// slice's result back (0 hops when the slice is on the head itself).
    pub latency_ms: f64,
}

/// Where one device's memory goes in a plan: every term of the cost model, explicitly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceMemory {
    /// Peer id.
    pub device: String,
    /// The process overhead the device advertised.
    pub overhead_bytes: u64,
    /// Weights of its layers.
    pub layer_bytes: u64,
    /// KV cache of its layers: KV bytes per token per layer × `kv_tokens` × layers.
    pub kv_bytes: u64,
    /// Positions of KV each layer holds.
    pub kv_tokens: u32,
    /// A whole output product (a device that serves the API, when the head is not split).
    pub head_bytes: u64,
    /// Its vocabulary slices.
    pub slice_bytes: u64,
    /// The sum of the above.
    pub total_bytes: u64,
    /// Its budget.
    pub budget_bytes: u64,
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
    /// The head whose tokens the prediction is for (embeds, runs or gathers the output
    /// product, samples); `None` when the plan has no head (layers only).
    pub head_node: Option<String>,
    /// Stages in pipeline order; their layer ranges tile `0..n_layers`.
    pub stages: Vec<Stage>,
    /// Hops in order: head -> first stage (if the head node is elsewhere), stage -> stage,
    /// last stage -> head (if elsewhere). Each carries one hidden state.
    pub hops: Vec<Hop>,
    /// Devices holding a whole output product: those serving the API, when the plan does
    /// not split it.
    pub heads: Vec<String>,
    /// The output product split by vocabulary rows (empty when heads hold it whole). Every
    /// head sends its hidden state to each slice and combines their results.
    pub slices: Vec<Slice>,
    /// What the output product adds to a token at the head node: the whole product on the
    /// head, or the slowest slice with its hops.
    pub head_ms: f64,
    /// The whole output product's milliseconds on the head node under load (0 when split).
    pub head_busy_ms: f64,
    /// Memory of every device the plan puts something on.
    pub memory: Vec<DeviceMemory>,
    /// Predicted per-token decode latency of one stream: stage compute + hops + `head_ms`.
    pub predicted_ms_per_token: f64,
    /// Busiest device (its layers, slices and head) or link per token: the pipelined
    /// throughput limit.
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
            "plan for model {} ({:?} objective), {} stage(s), head {}",
            self.model_sha256,
            self.objective,
            self.stages.len(),
            self.head_node.as_deref().unwrap_or("none"),
        )?;
        for (i, s) in self.stages.iter().enumerate() {
            let slow = if s.slowdown == 1.0 {
                String::new()
            } else {
                format!(", slowed x{:.2}", s.slowdown)
            };
            writeln!(
                out,
                "  stage {i}: {} layers {}..{} ({} layers): {:.3} ms/token decode, \
                 {:.3} ms/token prefill{slow}",
                s.device,
                s.layers.start,
                s.layers.end,
                s.layers.len(),
                s.compute_ms,
                s.prefill_ms,
            )?;
        }
        if self.slices.is_empty() {
            let heads = if self.heads.is_empty() {
                "nobody".to_owned()
            } else {
                self.heads.join(", ")
            };
            writeln!(
                out,
                "  output head whole on {heads}: {:.3} ms/token",
                self.head_ms
            )?;
        } else {
            writeln!(
                out,
                "  output head split in {} vocabulary slices: {:.3} ms/token at the head",
                self.slices.len(),
                self.head_ms
            )?;
            for s in &self.slices {
                writeln!(
                    out,
                    "    slice {}..{} on {}: {:.3} ms compute, {:.3} ms with its hops",
                    s.rows.start, s.rows.end, s.device, s.compute_ms, s.latency_ms
                )?;
            }
        }
        for h in &self.hops {
            writeln!(
                out,
                "  hop {} -> {}: {} B, {:.3} ms latency ({:.3} ms transfer)",
                h.from, h.to, h.bytes, h.latency_ms, h.transfer_ms
            )?;
        }
        for m in &self.memory {
            writeln!(
                out,
                "  memory {}: {:.1} / {:.1} MiB (overhead {:.1}, layers {:.1}, KV {:.1} for \
                 {} tokens, head {:.1}, slices {:.1})",
                m.device,
                mib(m.total_bytes),
                mib(m.budget_bytes),
                mib(m.overhead_bytes),
                mib(m.layer_bytes),
                mib(m.kv_bytes),
                m.kv_tokens,
                mib(m.head_bytes),
                mib(m.slice_bytes),
            )?;
        }
        let compute: f64 = self.stages.iter().map(|s| s.compute_ms).sum();
        let network = self
            .hops
            .iter()
            .map(|h| h.latency_ms)
            .fold(0.0, |a, b| a + b);
        writeln!(
            out,
            "  latency {:.3} ms/token ({:.3} layers + {:.3} network + {:.3} output head) \
             = {:.1} tok/s single stream",
            self.predicted_ms_per_token,
            compute,
            network,
            self.head_ms,
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

    /// Busy milliseconds per token of each device in the plan: its layers, its slices, and
    /// the whole output product on the head node.
    pub fn device_busy_ms(&self) -> Vec<(String, f64)> {
        let mut busy: Vec<(String, f64)> = Vec::new();
        let mut add = |device: &str, ms: f64| match busy.iter_mut().find(|b| b.0 == device) {
            Some(b) => b.1 += ms,
            None => busy.push((device.to_owned(), ms)),
        };
        for s in &self.stages {
            add(&s.device, s.busy_ms);
        }
        for s in &self.slices {
            add(&s.device, s.busy_ms);
        }
        if let (true, Some(h)) = (self.slices.is_empty(), &self.head_node) {
            add(h, self.head_busy_ms);
        }
        busy
    }

    fn bottleneck_name(&self) -> String {
        let device = self
            .device_busy_ms()
            .into_iter()
            .find(|(_, ms)| *ms >= self.bottleneck_ms)
            .map(|(d, _)| format!("device {d}"));
        let hop = || {
            self.hops
                .iter()
                .find(|h| h.transfer_ms >= self.bottleneck_ms)
                .map(|h| format!("link {} -> {}", h.from, h.to))
        };
        device
            .or_else(hop)
            .unwrap_or_else(|| "a slice's link".to_owned())
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
