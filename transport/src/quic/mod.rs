//! QUIC data plane: moves frames between adjacent pipeline stages.
//!
//! - [`frame`]: the wire format, a pure codec over byte slices (fuzzable, no I/O).
//! - [`stream`]: frame reader and writer over any tokio byte stream, and [`LinkError`].
//! - [`tls`]: node identity (bound to the libp2p key) and the [`PeerVerifier`] seam; `proof`:
//!   the cluster-key proof each link exchanges before its first frame.
//! - [`Endpoint`] and [`Link`]: a quinn endpoint per node, one long-lived stream per hop.
//! - [`LinkEmulation`]: opt-in delay/jitter/loss/rate shaping of a node's outgoing
//!   datagrams, a test feature for the container testbed.
//!
//! Bytes only: nothing here knows about layers, models or schedules.

mod emulation;
mod endpoint;
pub mod frame;
mod link;
mod proof;
pub mod stream;
pub mod tls;

pub use emulation::{LinkEmulation, LinkEmulationError};
pub use endpoint::{Endpoint, EndpointConfig, EndpointError};
pub use frame::{ErrorCode, Frame, FrameError, FrameHeader, FrameKind, Limits};
pub use link::{Link, LinkReceiver, LinkSender, RttProbe};
pub use stream::{FrameReader, FrameWriter, LinkError};
pub use tls::{
    peer_id_of, CertFingerprint, Identity, InsecureAcceptAny, Libp2pIdentity, PeerVerifier,
    PinnedCert, VerifyError,
};
