//! Messages of the `/shoal/discovery/1` request-response protocol (CBOR encoded).

use libp2p::request_response::cbor;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::advert::Advert;
use super::error::RejectReason;

/// Protocol name negotiated on each request stream.
pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/discovery/1");

/// At most this many peer records are read from one `Hello`; the rest are ignored.
pub(crate) const MAX_PEER_RECORDS: usize = 256;
/// At most this many addresses are taken per peer record.
pub(crate) const MAX_ADDRS_PER_PEER: usize = 8;
/// Slack added to a request's maximum payload for the envelope around it.
const ENVELOPE_SLACK: u64 = 64 * 1024;

/// The codec every request stream is read and written with: CBOR, a request bounded by the
/// largest application message plus its envelope, a response by the envelope alone.
pub(crate) fn codec(max_message_bytes: usize) -> cbor::codec::Codec<Request, Response> {
    cbor::codec::Codec::default()
        .set_request_size_maximum(max_message_bytes as u64 + ENVELOPE_SLACK)
        .set_response_size_maximum(ENVELOPE_SLACK)
}

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    /// The sender's current advert (if it has published one) and the peers it
    /// is connected to, so the receiver can complete the mesh.
    Hello(Box<Hello>),
    /// An opaque application message, acknowledged when queued.
    Message(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Advert push plus peer exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// Version of the advert; ignored when `advert` is `None`.
    pub(crate) version: AdvertVersion,
    /// The sender's advert, absent until it publishes one.
    pub(crate) advert: Option<Advert>,
    /// Peers the sender is connected to, with their listen addresses.
    pub(crate) peers: Vec<PeerRecord>,
}

/// Orders adverts from one peer: a restart starts a new, larger incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct AdvertVersion {
    /// Chosen once per process start (wall-clock nanoseconds).
    pub(crate) incarnation: u64,
    /// Incremented on each publish within one incarnation.
    pub(crate) seq: u64,
}

/// A peer and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerRecord {
    /// The peer's identity.
    pub(crate) peer_id: PeerId,
    /// Its listen addresses as reported by identify.
    pub(crate) addrs: Vec<Multiaddr>,
}

/// The answer to any request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Response {
    /// Processed (advert applied or message queued).
    Accepted,
    /// Refused, with the reason.
    Rejected(RejectReason),
}
