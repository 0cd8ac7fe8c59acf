//! A pipeline of stages on different nodes acting as one model.
//!
//! The ring: the head embeds tokens and sends hidden states to stage 1; every stage runs its
//! layers and forwards directly to the next; the last stage sends its hidden state back to the
//! head, which applies the final norm and output head. Per generated token that is exactly
//! N + 1 one-way messages for N stages. Returning the hidden state (one row of `n_embd`
//! floats, 2.3 KB for SmolLM2) rather than logits (196 KB) keeps the sampler, its seed and
//! the token history with the request, at the head's node.
//!
//! - [`protocol`]: the one message vocabulary (open, rows, close, error) and its encoding;
//! - [`head`]: the head and the pull-based [`Generation`] a request runs on;
//! - [`stage`]: a stage;
//! - [`failover`]: which plans a request may use; [`error`]: how a request fails;
//! - [`route`]: where a stage sends what it computed.
//!
//! An `Open` travels the whole ring and returns as the acknowledgement; `Rows` carry hidden
//! states for consecutive positions; `Close` frees the session everywhere; a stage that
//! cannot run or pass on a session's message sends an `Error` straight to its head.

pub mod error;
pub mod failover;
pub mod head;
mod links;
pub mod protocol;
pub mod route;
pub mod stage;

use std::sync::Arc;
use std::time::Duration;

use transport::quic::{EndpointConfig, Identity, PeerVerifier};

pub use error::PipelineError;
pub use failover::{PlanRoute, Plans};
pub use head::{Generation, Head, HeadConfig};
pub use protocol::WireDtype;
pub use route::Route;
pub use stage::{default_sessions_per_peer, Stage, StageConfig, StageEvent};

/// Link settings for pipeline hops: a peer that stops answering is declared dead after 1.5 s
/// (keep-alives every 300 ms, five missed in a row), so a stage notices a dead, frozen or
/// cut-off neighbour quickly and fails its sessions over, instead of sending into a
/// connection nobody reads. This timeout is most of the time a request stalls when a link is
/// cut between two live stages (`a_data_link_cut_between_live_stages_moves_the_stream_to_a_new_plan`
/// in `node/tests/cluster_netns.rs`: 2.8 s with 2 s here, most of the rest loading the new
/// plan's stages).
pub fn endpoint_config(identity: Identity, verifier: Arc<dyn PeerVerifier>) -> EndpointConfig {
    EndpointConfig {
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(300),
        // A next hop that never answers the handshake is lost as soon as a live one would
        // have answered several times over, even on a lossy cellular hop.
        handshake_timeout: Duration::from_secs(3),
        ..EndpointConfig::new(identity, verifier)
    }
}
