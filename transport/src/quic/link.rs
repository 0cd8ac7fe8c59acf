//! A link: one QUIC connection to an adjacent pipeline stage carrying one long-lived
//! bidirectional stream of frames (activations forward, errors/acks back), never a stream
//! per token.

use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;

use super::frame::{ErrorCode, Frame, FrameHeader, Limits};
use super::stream::{FrameReader, FrameWriter, LinkError};

/// First bytes the connecting side writes on a link's stream. It makes the stream visible
/// to the acceptor (QUIC announces a stream with its first data) and rejects foreign peers.
pub(crate) const STREAM_MAGIC: &[u8; 8] = b"SHOALQ\x00\x01";

/// Sending half of a link.
pub type LinkSender = FrameWriter<quinn::SendStream>;
/// Receiving half of a link.
pub type LinkReceiver = FrameReader<quinn::RecvStream>;

/// A connection to a peer plus the one long-lived stream frames travel on.
///
/// Frames arrive in the order they were sent. Errors say what happened
/// ([`LinkError::Closed`], [`LinkError::TimedOut`], ...); reconnecting is the caller's job.
#[derive(Debug)]
pub struct Link {
    connection: quinn::Connection,
    sender: LinkSender,
    receiver: LinkReceiver,
}

impl Link {
    pub(crate) fn new(
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        limits: Limits,
    ) -> Self {
        Self {
            connection,
            sender: FrameWriter::new(send),
            receiver: FrameReader::new(recv, limits),
        }
    }

    /// Sends one frame.
    pub async fn send(&mut self, header: &FrameHeader, payload: &[u8]) -> Result<(), LinkError> {
        self.sender.send(header, payload).await
    }

    /// Sends an error frame (e.g. after a [`LinkError::Rejected`] from [`Link::recv`]).
    pub async fn send_error(
        &mut self,
        code: ErrorCode,
        session: u64,
        message: &str,
    ) -> Result<(), LinkError> {
        self.sender.send_error(code, session, message).await
    }

    /// Receives the next frame; `Ok(None)` when the peer finished the stream cleanly.
    pub async fn recv(&mut self) -> Result<Option<Frame<'_>>, LinkError> {
        self.receiver.recv().await
    }

    /// Tells the peer no more frames will be sent (its `recv` then returns `Ok(None)`).
    pub fn finish(&mut self) -> Result<(), LinkError> {
        self.sender
            .get_mut()
            .finish()
            .map_err(|e| LinkError::Closed(e.to_string()))
    }

    /// Closes the whole connection at once with an application `reason`.
    pub fn close(&self, reason: &str) {
        self.connection.close(0u32.into(), reason.as_bytes());
    }

    /// The underlying connection: for the TLS exporter (`export_keying_material`), stats, or
    /// waiting for `closed()`.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// A handle that reads this link's round-trip time for as long as the connection lives.
    pub fn rtt_probe(&self) -> RttProbe {
        RttProbe(self.connection.clone())
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The peer's leaf certificate, as checked by the endpoint's verifier.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        let identity = self.connection.peer_identity()?;
        let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        chain.into_iter().next()
    }

    /// The peer's libp2p identity, when its certificate is bound to one (always, under the
    /// [`super::Libp2pIdentity`] verifier).
    pub fn peer_id(&self) -> Option<libp2p::PeerId> {
        super::tls::peer_id_of(&self.peer_certificate()?).ok()
    }

    /// Splits into halves that separate tasks can own (e.g. forward on one, read errors on
    /// the other). The connection lives as long as either half.
    pub fn split(self) -> (LinkSender, LinkReceiver) {
        (self.sender, self.receiver)
    }
}

/// Reads a link's smoothed path round-trip time (QUIC's own estimate, from every
/// acknowledgement: no extra traffic).
#[derive(Clone, Debug)]
pub struct RttProbe(quinn::Connection);

impl RttProbe {
    /// The current estimate.
    pub fn rtt(&self) -> std::time::Duration {
        self.0.rtt()
    }

    /// Whether the connection has ended (its estimate no longer means anything).
    pub fn is_closed(&self) -> bool {
        self.0.close_reason().is_some()
    }
}
