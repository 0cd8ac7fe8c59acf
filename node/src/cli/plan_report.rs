//! The `shoal plan` report: the chosen plan against the naive splits, as text or JSON.

use std::fmt::Write as _;

use scheduler::{Device, ModelProfile, Plan};
use serde::Serialize;
use shoal::cluster::profile::format_size;

/// A baseline that may not fit the fleet at all (an even split can overflow a small device).
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Plan(Plan),
    Error(String),
}

/// Everything `shoal plan` prints.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) model_name: String,
    pub(crate) model: ModelProfile,
    /// Where the devices came from.
    pub(crate) source: String,
    pub(crate) head: Option<String>,
    pub(crate) devices: Vec<Device>,
    /// The planner's choice.
    pub(crate) planned: Plan,
    pub(crate) even_split: Outcome,
    pub(crate) memory_proportional: Outcome,
}

impl Report {
    /// The human-readable report.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        let m = &self.model;
        let head = match m.head_bytes {
            Some(b) => format!("output head {}", format_size(b)),
            None => format!("output head tied to it ({} rows)", m.vocab_size),
        };
        writeln!(
            out,
            "model {}: {} layers up to {}, embedding {} (read from the file), {head}, KV {}/layer \
             at {} tokens; {} in one piece",
            self.model_name,
            m.n_layers,
            format_size(m.bytes_per_layer),
            format_size(m.embedding_bytes),
            format_size(m.kv_bytes_per_layer()),
            m.context_tokens,
            format_size(m.total_bytes()),
        )?;
        writeln!(
            out,
            "devices: {}, head node {}",
            self.source,
            self.head.as_deref().unwrap_or("none")
        )?;
        writeln!(
            out,
            "  {:<20} {:>7} {:>11} {:>10} {:>15} {:>16}  holds model, serves API",
            "device", "threads", "memory", "overhead", "decode ms/layer", "prefill ms/layer"
        )?;
        for d in &self.devices {
            let yes = |b: bool| if b { "yes" } else { "no" };
            writeln!(
                out,
                "  {:<20} {:>7} {:>11} {:>10} {:>15.3} {:>16.3}  {}, {}",
                d.id,
                d.threads,
                format_size(d.memory_bytes),
                format_size(d.overhead_bytes),
                d.decode_ms_per_layer,
                d.prefill_ms_per_layer,
                yes(d.holds(&m.sha256)),
                yes(d.serves_api),
            )?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "  {:<22} {:>6} {:>9} {:>14} {:>15}  layers",
            "plan", "stages", "ms/token", "tok/s 1 stream", "tok/s pipelined"
        )?;
        let planner = format!("planner ({:?})", self.planned.objective).to_lowercase();
        row(out, &planner, &Outcome::Plan(self.planned.clone()))?;
        row(out, "even split", &self.even_split)?;
        row(out, "memory-proportional", &self.memory_proportional)?;
        writeln!(out)?;
        writeln!(out, "chosen: {}", self.planned.explain())?;
        writeln!(out, "why: {}", self.comparison())
    }

    /// How much better the planner's choice is than each baseline, on its own objective.
    fn comparison(&self) -> String {
        let mine = self.planned.objective_ms();
        let versus = |name: &str, o: &Outcome| match o {
            Outcome::Plan(p) => {
                let theirs = match self.planned.objective {
                    scheduler::Objective::Latency => p.predicted_ms_per_token,
                    scheduler::Objective::Throughput => p.bottleneck_ms,
                };
                format!("the {name} {theirs:.2} ms ({:.2}x)", theirs / mine)
            }
            Outcome::Error(_) => format!("the {name} does not fit"),
        };
        format!(
            "{:.2} ms {} vs {}, {}",
            mine,
            match self.planned.objective {
                scheduler::Objective::Latency => "per token",
                scheduler::Objective::Throughput => "bottleneck",
            },
            versus("even split", &self.even_split),
            versus("memory-proportional split", &self.memory_proportional)
        )
    }
}

fn row(out: &mut String, name: &str, outcome: &Outcome) -> std::fmt::Result {
    match outcome {
        Outcome::Plan(p) => {
            let layers: Vec<String> = p
                .stages
                .iter()
                .map(|s| format!("{} {}..{}", s.device, s.layers.start, s.layers.end))
                .collect();
            let head = if p.slices.is_empty() {
                String::new()
            } else {
                let slices: Vec<String> = p
                    .slices
                    .iter()
                    .map(|s| format!("{} {}..{}", s.device, s.rows.start, s.rows.end))
                    .collect();
                format!("; output head rows {}", slices.join(", "))
            };
            writeln!(
                out,
                "  {:<22} {:>6} {:>9.2} {:>14.1} {:>15.1}  {}{head}",
                name,
                p.stages.len(),
                p.predicted_ms_per_token,
                p.single_stream_tokens_per_s(),
                p.pipelined_tokens_per_s(),
                layers.join(", ")
            )
        }
        Outcome::Error(e) => writeln!(out, "  {name:<22} does not fit: {e}"),
    }
}
