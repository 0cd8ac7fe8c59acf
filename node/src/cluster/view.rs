//! The cluster as one node sees it: the JSON of `GET /v1/cluster`, read by `shoal status`.
//!
//! Plain data with serde; the runtime fills it, the API serves it, the status command renders
//! it. Field names are the wire format: add fields, do not rename them.

use serde::{Deserialize, Serialize};

/// Whether the cluster can serve, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// A plan is active and every stage of it is up.
    Ready,
    /// No plan yet, or a new plan is loading and none is active.
    Forming,
    /// A plan is active but a stage of it is gone or failing; requests may fail until a replan.
    Degraded,
    /// The members cannot hold the model (too little memory, nobody holds it...).
    Unplaceable,
}

impl ClusterState {
    /// True only for [`ClusterState::Ready`]: what `shoal status` exits 0 on.
    pub fn is_healthy(self) -> bool {
        self == ClusterState::Ready
    }
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Peer id of the node that answered.
    pub node: String,
    /// The model this cluster serves.
    pub model: ModelSummary,
    /// Peer id of the node that computes plans (lowest peer id holding the model).
    pub coordinator: Option<String>,
    /// Overall state.
    pub state: ClusterState,
    /// Why the state is not `ready`, in words.
    pub problem: Option<String>,
    /// Every known node, this one included, ordered by peer id.
    pub members: Vec<MemberView>,
    /// The plan requests currently run on (the newest ready one).
    pub plan: Option<PlanView>,
    /// Tokens generated per second over the last few seconds, through this node's API.
    pub tokens_per_s: f64,
    /// Replans since this node started.
    pub replans: u64,
    /// What happened lately (joins, leaves, plans, moved layers, recoveries), oldest first.
    #[serde(default)]
    pub events: Vec<crate::events::Event>,
    /// Links the members measured (QUIC's round-trip time of the links their stages send
    /// on), one per direction.
    #[serde(default)]
    pub links: Vec<LinkView>,
    /// Generation requests at the API that answered: running and waiting for a slot
    /// (`None` from a node that serves no API).
    #[serde(default)]
    pub admission: Option<AdmissionView>,
}

/// The API's admission: requests running and waiting, and the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionView {
    /// Requests running or streaming.
    pub running: usize,
    /// At most this many run at once (`--max-requests`).
    pub max_requests: usize,
    /// Requests waiting for a slot, first in first out.
    pub waiting: usize,
    /// At most this many wait (`--max-queue`); more are answered 429.
    pub max_queue: usize,
}

/// One direction of a measured link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    /// Sending peer id.
    pub a: String,
    /// Receiving peer id.
    pub b: String,
    /// Round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// Measured bandwidth, megabits per second (`None`: not probed).
    pub bandwidth_mbps: Option<f64>,
    /// When it was measured, milliseconds on the sender's clock.
    pub measured_at: u64,
}

/// The model being served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Name for `/v1/models` (the GGUF's `general.name`, or the file stem).
    pub name: String,
    /// Lowercase hex sha256 of the GGUF file.
    pub sha256: String,
    /// Transformer layers.
    pub n_layers: u32,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// libp2p peer id.
    pub peer_id: String,
    /// Data-plane (QUIC) address.
    pub data_addr: String,
    /// HTTP API address, when the node serves one.
    pub api_addr: Option<String>,
    /// Address its current stage accepts the previous hop on, when it runs one.
    #[serde(default)]
    pub stage_addr: Option<String>,
    /// Worker threads.
    pub threads: u32,
    /// Cores its CPU quota allows (`None`: no quota), e.g. 0.5 for a container run with
    /// `--cpus 0.5`.
    #[serde(default)]
    pub cpu_quota: Option<f64>,
    /// Memory the node offers for weights and KV cache, bytes.
    pub memory_budget_bytes: u64,
    /// Whether it serves the API and so holds a head (`--no-api` nodes hold layers only).
    #[serde(default)]
    pub serves_api: bool,
    /// What its process took before weights, measured at start, bytes.
    #[serde(default)]
    pub overhead_bytes: Option<u64>,
    /// Whether it holds this cluster's model (same sha256).
    pub holds_model: bool,
    /// Measured milliseconds per layer per decoded token.
    pub decode_ms_per_layer: Option<f64>,
    /// Epoch of the plan the node runs (0: none).
    pub epoch: u64,
    /// Whether its shard for that epoch is loaded.
    pub ready: bool,
    /// Layers it runs in the active plan, `[start, end)`.
    pub layers: Option<[u32; 2]>,
    /// What the node is doing.
    pub state: MemberState,
    /// Software version.
    pub version: String,
    /// CPU architecture (`x86_64`, `aarch64`); empty when unknown.
    #[serde(default)]
    pub arch: String,
    /// Kernel sets its matrix products run on, e.g. `avx512+avx2`; empty when unknown.
    #[serde(default)]
    pub kernels: String,
}

/// What one node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Runs a stage (or the head) of the active plan.
    Serving,
    /// Loading its shard for a newer plan.
    Loading,
    /// Member without a part in the active plan.
    Idle,
    /// In the active plan but no longer a member (left, crashed, unreachable).
    Gone,
}

/// A plan as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    /// Plan epoch: increases with every replan.
    pub epoch: u64,
    /// Node that embeds tokens and samples (runs the HTTP API for this plan).
    pub head: String,
    /// Stages in pipeline order.
    pub stages: Vec<StageView>,
    /// The planner's predicted milliseconds per token for one stream.
    pub predicted_ms_per_token: f64,
    /// Measured milliseconds per decoded token (median of recent tokens), when any ran.
    pub measured_ms_per_token: Option<f64>,
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageView {
    /// Node running it.
    pub peer_id: String,
    /// Layers `[start, end)`.
    pub layers: [u32; 2],
    /// Predicted compute milliseconds per token.
    pub predicted_ms: f64,
}
