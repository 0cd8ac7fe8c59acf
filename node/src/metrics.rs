//! The node's Prometheus metrics (`GET /metrics`).
//!
//! One [`Metrics`] per process, shared by the API, the head and the stages through an `Arc`.
//! Label values come from small fixed sets (endpoints, statuses, a stage's index in its plan,
//! a hop's index in the ring), never from addresses, peer ids or layer ranges, which change
//! with every plan: the number of series stays bounded however often the cluster replans and
//! whatever clients send.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
mod prefix;

/// Which kind of pipeline step a stage ran.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StepKind {
    /// Several prompt positions at once.
    Prefill,
    /// One generated token.
    Decode,
}

impl EncodeLabelValue for StepKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        let name = match self {
            StepKind::Prefill => "prefill",
            StepKind::Decode => "decode",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    stage: u32,
    kind: StepKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: u32,
}

/// Hop `i` of a ring goes into stage `i`: hop 0 from the head to the first stage, hop `n`
/// from the last of `n` stages back to the head.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HopLabels {
    hop: u32,
}

/// Which pages of the process: `anon` (heap, KV) or `file` (the mapped model).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoryLabels {
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the node, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Counter,
    generated_tokens: Counter,
    time_to_first_token: Histogram,
    time_per_output_token: Histogram,
    sessions_in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    replans: Counter,
    reassignments: Counter,
    stage_step: HistogramFamily<StepLabels>,
    stage_batched: Family<StageLabels, Counter>,
    hop_bytes: Family<HopLabels, Counter<u64, AtomicU64>>,
    hop_send: HistogramFamily<HopLabels>,
    recovery: Histogram,
    spec_passes: Counter,
    spec_drafted: Counter,
    spec_accepted: Counter,
    spec_drafts: Histogram,
    queue_waiting: Gauge<i64, std::sync::atomic::AtomicI64>,
    queue_wait: Histogram,
    memory_budget: Gauge<i64, std::sync::atomic::AtomicI64>,
    memory_overhead: Gauge<i64, std::sync::atomic::AtomicI64>,
    memory_kv: Gauge<i64, std::sync::atomic::AtomicI64>,
    memory_resident: Family<MemoryLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    prefix: prefix::PrefixMetrics,
    events: crate::events::EventLog,
}

/// Buckets from 100 µs to about 52 s: a decode step on a fast node up to a slow prefill.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 2.0, 20))
}

impl Metrics {
    /// Registers every metric under the `shoal_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shoal");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by endpoint and status",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens of completion requests",
            prompt_tokens.clone(),
        );
        let generated_tokens = Counter::default();
        registry.register(
            "generated_tokens",
            "Tokens generated for completion requests",
            generated_tokens.clone(),
        );
        let time_to_first_token = latency_histogram();
        registry.register(
            "time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token",
            time_to_first_token.clone(),
        );
        let time_per_output_token = latency_histogram();
        registry.register(
            "time_per_output_token_seconds",
            "Time between consecutive generated tokens of one request",
            time_per_output_token.clone(),
        );
        let sessions_in_flight = Gauge::default();
        registry.register(
            "sessions_in_flight",
            "Generation sessions running now",
            sessions_in_flight.clone(),
        );
        let replans = Counter::default();
        registry.register("replans", "New plans adopted since start", replans.clone());
        let reassignments = Counter::default();
        registry.register(
            "reassignments",
            "Layer ranges moved to another node since start",
            reassignments.clone(),
        );
        let stage_step: HistogramFamily<StepLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "stage_step_seconds",
            "Compute time of one stage step, by the stage's index in its plan and kind",
            stage_step.clone(),
        );
        let stage_batched = Family::<StageLabels, Counter>::default();
        registry.register(
            "stage_batched_decode_steps",
            "Decode steps a stage computed in one batch with other sessions' steps, by stage index",
            stage_batched.clone(),
        );
        let hop_bytes = Family::<HopLabels, Counter>::default();
        registry.register(
            "hop_sent_bytes",
            "Bytes sent on each hop of the ring (0: head to first stage)",
            hop_bytes.clone(),
        );
        let hop_send: HistogramFamily<HopLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "hop_send_seconds",
            "Time to hand one frame to its hop, by hop index (0: head to first stage)",
            hop_send.clone(),
        );
        let recovery = latency_histogram();
        registry.register(
            "recovery_seconds",
            "Time from a broken plan to the next token of a request replayed on a new one",
            recovery.clone(),
        );
        let spec_passes = Counter::default();
        registry.register(
            "decode_passes",
            "Passes through the pipeline that decoded tokens (tokens per pass: generated_tokens / decode_passes)",
            spec_passes.clone(),
        );
        let spec_drafted = Counter::default();
        registry.register(
            "speculative_drafted_tokens",
            "Draft tokens sent through the pipeline for verification",
            spec_drafted.clone(),
        );
        let spec_accepted = Counter::default();
        registry.register(
            "speculative_accepted_tokens",
            "Draft tokens the target model agreed with",
            spec_accepted.clone(),
        );
        let spec_drafts = Histogram::new([0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0]);
        registry.register(
            "speculative_drafts_per_pass",
            "Drafts a pass carried, as each session's controller chose them",
            spec_drafts.clone(),
        );
        let queue_waiting = Gauge::default();
        registry.register(
            "queue_waiting_requests",
            "Generation requests waiting in this node's admission queue",
            queue_waiting.clone(),
        );
        let queue_wait = latency_histogram();
        registry.register(
            "queue_wait_seconds",
            "Time a generation request waited for a slot (admitted, or gone while waiting)",
            queue_wait.clone(),
        );
        let memory_budget = Gauge::default();
        registry.register(
            "memory_budget_bytes",
            "Memory this node may spend (--memory): its overhead, weights and KV",
            memory_budget.clone(),
        );
        let memory_overhead = Gauge::default();
        registry.register(
            "memory_overhead_bytes",
            "Anonymous memory measured at start before any weights, advertised as overhead",
            memory_overhead.clone(),
        );
        let memory_kv = Gauge::default();
        registry.register(
            "memory_kv_bytes",
            "KV cache the sessions on this node's stages hold now (part of resident anon)",
            memory_kv.clone(),
        );
        let memory_resident =
            Family::<MemoryLabels, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        registry.register(
            "memory_resident_bytes",
            "Resident memory of the process at scrape time: anon (heap, weights, KV) and file (binary, mapped pages)",
            memory_resident.clone(),
        );
        Metrics {
            spec_passes,
            spec_drafted,
            spec_accepted,
            spec_drafts,
            recovery,
            queue_waiting,
            queue_wait,
            memory_budget,
            memory_overhead,
            memory_kv,
            memory_resident,
            events: Default::default(),
            prefix: prefix::PrefixMetrics::register(&mut registry),
            registry,
            requests,
            prompt_tokens,
            generated_tokens,
            time_to_first_token,
            time_per_output_token,
            sessions_in_flight,
            replans,
            reassignments,
            stage_step,
            stage_batched,
            hop_bytes,
            hop_send,
        }
    }

    /// One HTTP request answered. `endpoint` is a route template, never a raw client path.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }

    /// A completion request's prompt length.
    pub fn prompt_tokens(&self, n: usize) {
        self.prompt_tokens.inc_by(n as u64);
    }

    /// One token generated for a request.
    pub fn token_generated(&self) {
        self.generated_tokens.inc();
    }

    /// Time from a request's arrival to its first token.
    pub fn first_token(&self, seconds: f64) {
        self.time_to_first_token.observe(seconds);
    }

    /// Time between two consecutive tokens of one request.
    pub fn next_token(&self, seconds: f64) {
        self.time_per_output_token.observe(seconds);
    }

    /// A generation session started; the guard ends it when dropped, so an aborted request
    /// cannot leave the gauge high.
    pub fn session(&self) -> SessionGuard<'_> {
        self.sessions_in_flight.inc();
        SessionGuard(self)
    }

    /// A new plan was adopted.
    pub fn replanned(&self) {
        self.replans.inc();
    }

    /// A request whose plan broke produced its next token on a new plan `seconds` later.
    pub fn recovered(&self, seconds: f64) {
        self.recovery.observe(seconds);
        self.events.record(format!(
            "a request recovered: next token {:.0} ms after its plan broke",
            seconds * 1e3
        ));
    }

    /// The cluster events this node saw (shown by `GET /v1/cluster`).
    pub fn events(&self) -> &crate::events::EventLog {
        &self.events
    }

    /// A layer range moved to another node.
    pub fn reassigned(&self) {
        self.reassignments.inc();
    }

    /// Stage `stage` (its index in its plan) computed one step in `seconds`.
    pub fn stage_step(&self, stage: u32, kind: StepKind, seconds: f64) {
        let labels = StepLabels { stage, kind };
        self.stage_step.get_or_create(&labels).observe(seconds);
    }

    /// Stage `stage` computed `steps` sessions' decode steps as one batch.
    pub fn stage_batched(&self, stage: u32, steps: usize) {
        let labels = StageLabels { stage };
        self.stage_batched
            .get_or_create(&labels)
            .inc_by(steps as u64);
    }

    /// `bytes` went out on hop `hop` of a ring, taking `seconds` to send.
    pub fn hop_sent(&self, hop: u32, bytes: usize, seconds: f64) {
        let labels = HopLabels { hop };
        self.hop_bytes.get_or_create(&labels).inc_by(bytes as u64);
        self.hop_send.get_or_create(&labels).observe(seconds);
    }

    /// A request's decoding went from `before` to `now` (passes, drafts sent and kept).
    pub fn speculated(&self, before: &crate::speculate::Stats, now: &crate::speculate::Stats) {
        let passes = now.passes.saturating_sub(before.passes);
        self.spec_passes.inc_by(passes);
        self.spec_drafted
            .inc_by(now.drafted.saturating_sub(before.drafted));
        self.spec_accepted
            .inc_by(now.accepted.saturating_sub(before.accepted));
        if passes > 0 {
            self.spec_drafts.observe(now.k as f64);
        }
    }

    /// Requests waiting in the admission queue now.
    pub fn queue_length(&self, waiting: i64) {
        self.queue_waiting.set(waiting);
    }

    /// A request left the admission queue after `seconds`.
    pub fn queue_wait(&self, seconds: f64) {
        self.queue_wait.observe(seconds);
    }

    /// Bytes of KV cache this node's stages hold (sampled once a second).
    pub fn kv(&self, bytes: usize) {
        self.memory_kv.set(bytes as i64);
    }

    /// The node's memory budget and its overhead measured at start.
    pub fn memory(&self, budget: u64, overhead: Option<u64>) {
        self.memory_budget.set(budget as i64);
        self.memory_overhead.set(overhead.unwrap_or(0) as i64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Some(r) = crate::memory::resident() {
            for (kind, bytes) in [("anon", r.anon), ("file", r.file)] {
                self.memory_resident
                    .get_or_create(&MemoryLabels { kind })
                    .set(bytes as i64);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts one session in flight while alive (see [`Metrics::session`]).
pub struct SessionGuard<'a>(&'a Metrics);

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.0.sessions_in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_appear_with_their_labels() {
        let m = Metrics::new();
        m.request("/v1/completions", 200);
        m.stage_step(1, StepKind::Decode, 0.002);
        m.stage_batched(1, 3);
        m.hop_sent(2, 2304, 0.0001);
        {
            let _s = m.session();
        }
        m.kv(4096);
        let text = m.encode();
        assert!(text
            .contains(r#"shoal_http_requests_total{endpoint="/v1/completions",status="200"} 1"#));
        assert!(text.contains(r#"shoal_stage_step_seconds_count{stage="1",kind="decode"} 1"#));
        assert!(text.contains(r#"shoal_stage_batched_decode_steps_total{stage="1"} 3"#));
        assert!(text.contains(r#"shoal_hop_sent_bytes_total{hop="2"} 2304"#));
        assert!(text.contains("shoal_sessions_in_flight 0"));
        assert!(text.contains(r#"shoal_memory_resident_bytes{kind="anon"}"#));
        assert!(text.contains("shoal_memory_kv_bytes 4096"));
    }
}
