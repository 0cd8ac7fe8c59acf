//! A pipeline of stages on different nodes acting as one model.
//!
//! The ring: the head embeds tokens and sends hidden states to stage 1; every stage runs its
//! layers and forwards directly to the next; the last stage sends its hidden state back to the
//! head, which applies the final norm and output head and samples. Per generated token that
//! is exactly N + 1 one-way messages for N stages. Returning the hidden state (one row of
//! `n_embd` floats, 2.3 KB for SmolLM2) rather than logits (196 KB) or sampling at the last
//! stage keeps the sampler, its seed and the token history in one place, the head.
//!
//! Frame conventions on the `transport::quic` links (see [`protocol`]):
//! `Open` (n_pos = positions to reserve) travels the whole ring and returns as the
//! acknowledgement; `Prefill`/`Decode` carry `rows × n_embd` f32 hidden states for positions
//! `pos..pos + rows`; `Close` frees the session everywhere; an `Error` frame for a session
//! travels on to the head, which fails that request only.

pub mod failover;
pub mod head;
mod links;
pub mod protocol;
pub mod route;
pub mod stage;

use std::sync::Arc;
use std::time::Duration;

use transport::quic::{EndpointConfig, Identity, PeerVerifier};

pub use failover::{PlanRoute, Plans};
pub use head::{Head, HeadConfig, PipelineError};
pub use protocol::WireDtype;
pub use route::Route;
pub use stage::{default_sessions_per_peer, Stage, StageConfig};

/// Link settings for pipeline hops: a peer that stops answering is declared dead after two
/// seconds (keep-alives every half second), so a stage notices a dead or restarted
/// neighbour quickly and reconnects, instead of sending into a connection nobody reads.
pub fn endpoint_config(identity: Identity, verifier: Arc<dyn PeerVerifier>) -> EndpointConfig {
    EndpointConfig {
        idle_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_millis(500),
        ..EndpointConfig::new(identity, verifier)
    }
}
