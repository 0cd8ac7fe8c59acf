//! What a node tells the cluster about itself.

use std::net::SocketAddr;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// A node's self-description, published to every member and refreshed when it changes.
///
/// The node crate fills it; this crate only carries it. The receiver checks that
/// `peer_id` matches the authenticated sender, so a node cannot speak for another one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advert {
    /// Identity of the advertising node (its libp2p peer id).
    pub peer_id: PeerId,
    /// Where the node accepts data-plane (activation) QUIC connections.
    pub data_addr: SocketAddr,
    /// Worker threads the node gives to layer execution.
    pub threads: u32,
    /// Bytes of memory the node is willing to spend on weights and KV cache.
    pub memory_budget_bytes: u64,
    /// Models held locally, as lowercase sha256 hex digests of the model files.
    pub models: Vec<String>,
    /// Measured cost of one transformer layer on this node; `None` until measured.
    pub layer_cost: Option<LayerCost>,
    /// Software version string, so mismatched builds can be kept apart.
    pub version: String,
    /// Where the node serves chunks of the model files it holds whole (see
    /// [`crate::blob`]); `None` when it serves none.
    #[serde(default)]
    pub seed_addr: Option<SocketAddr>,
    /// The CPU architecture and kernel sets the node computes with.
    #[serde(default)]
    pub platform: Platform,
    /// Coordination state owned by the layer above (plan epoch, readiness).
    pub state: AdvertState,
}

/// Where a node's layers run: informational, since every kernel set computes the same bits
/// (the model crate's canonical arithmetic), so a plan may mix architectures freely.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// The kernel sets its matrix products use, e.g. `avx512+avx2` or `neon+neon-dotprod`.
    pub kernels: String,
}

/// Measured per-layer cost. Opaque to transport: the scheduler interprets it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerCost {
    /// Milliseconds to run one layer for one decode step.
    pub decode_ms: f64,
    /// Milliseconds per prompt token to run one layer during prefill.
    pub prefill_ms_per_token: f64,
}

/// Small free-form coordination state carried in every advert.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdvertState {
    /// Epoch of the plan this node currently runs (0 = none).
    pub epoch: u64,
    /// Whether the node has loaded its shard and can serve its stage.
    pub ready: bool,
    /// Where this node's stage for `epoch` accepts activations (each epoch binds its own
    /// port); `None` when it runs no stage in that plan.
    #[serde(default)]
    pub stage_addr: Option<SocketAddr>,
    /// Decode steps its stage has computed in that plan.
    #[serde(default)]
    pub steps: u64,
    /// Median of its recent decode step times, microseconds (for the straggler policy).
    #[serde(default)]
    pub step_us: Option<u64>,
    /// CPU its cgroup quota allows, in thousandths of a core (`None`: no quota). Read at
    /// run time, since an operator may change it, and shown by `shoal status`.
    #[serde(default)]
    pub cpu_quota_milli: Option<u32>,
    /// Peers this node's data plane lost its link to recently (a stage could not reach
    /// the next one), so the coordinator keeps them apart in plans.
    #[serde(default)]
    pub unreachable: Vec<PeerId>,
    /// Whether the node serves the API and so holds a head (embedding, final norm, output
    /// product); a node that does not holds its layers only.
    #[serde(default)]
    pub serves_api: bool,
    /// Bytes the node's process took before any weights were loaded, measured at start
    /// (`None`: not measured; the planner assumes its default).
    #[serde(default)]
    pub overhead_bytes: Option<u64>,
    /// Milliseconds of the whole output product for one token on this node, measured at
    /// start (`None`: not measured).
    #[serde(default)]
    pub head_ms: Option<f64>,
    /// This node's measured links to other members, newest measurement per peer.
    #[serde(default)]
    pub links: Vec<LinkMeasure>,
    /// Set by the coordinator while the members cannot hold the model: the planner's
    /// reason. A level every member reads from the coordinator's advert, so a node that
    /// joins or missed a message still learns it.
    #[serde(default)]
    pub unplaceable: Option<String>,
}

/// One direction of a link as the sending node measured it. Opaque to transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkMeasure {
    /// The member at the other end.
    pub peer: PeerId,
    /// Round-trip time, microseconds (QUIC's smoothed path RTT).
    pub rtt_us: u64,
    /// Measured throughput towards it, bytes per second (`None`: not probed yet).
    pub bytes_per_sec: Option<u64>,
    /// When it was last measured, in milliseconds on the measuring node's clock.
    pub measured_at_ms: u64,
}
