//! A node's QUIC endpoint: one UDP socket that both accepts links from the previous stage
//! and opens links to the next one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::cluster_key::ClusterKey;

use super::emulation::{self, LinkEmulation};
use super::frame::Limits;
use super::link::{Link, STREAM_MAGIC};
use super::proof::{self, Role, KEYED_MAGIC, TAG_LEN};
use super::stream::LinkError;
use super::tls::{self, Identity, PeerVerifier, TlsError};

/// How an endpoint authenticates and how long it waits. Build with [`EndpointConfig::new`]
/// and adjust fields; [`Endpoint::bind`] checks them.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// This node's certificate and key.
    pub identity: Identity,
    /// Which peers may connect, and which we accept when connecting.
    pub verifier: Arc<dyn PeerVerifier>,
    /// A connection with no traffic for this long is dead ([`LinkError::TimedOut`]).
    pub idle_timeout: Duration,
    /// Keep-alive ping interval; must be shorter than `idle_timeout` so a live but quiet peer
    /// never times out, while a vanished one does.
    pub keep_alive: Duration,
    /// Bound on connecting, and on a new peer opening its link stream after connecting.
    pub handshake_timeout: Duration,
    /// Frame limits applied to every link's receiving side.
    pub limits: Limits,
    /// Test feature: degrade this endpoint's outgoing datagrams (delay, jitter, loss, rate
    /// cap) to emulate an edge link. `None` (the default) binds a plain socket.
    pub link_emulation: Option<LinkEmulation>,
    /// The private cluster's key. With one, both ends of every link prove they hold it
    /// (an HMAC over the TLS session's exporter) before any frame is accepted. `None`
    /// accepts any peer the verifier admits.
    pub cluster_key: Option<ClusterKey>,
}

impl EndpointConfig {
    /// Defaults: 10 s idle timeout, 2 s keep-alive, 5 s handshake bound, default limits, no
    /// link emulation.
    pub fn new(identity: Identity, verifier: Arc<dyn PeerVerifier>) -> Self {
        Self {
            identity,
            verifier,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            link_emulation: None,
            cluster_key: None,
        }
    }

    fn transport(&self) -> Result<Arc<quinn::TransportConfig>, EndpointError> {
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return Err(EndpointError::Config(format!(
                "keep-alive {:?} must be non-zero and shorter than the idle timeout {:?}",
                self.keep_alive, self.idle_timeout
            )));
        }
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| EndpointError::Config(format!("idle timeout: {e}")))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            // One link stream per connection; no unidirectional streams.
            .max_concurrent_bidi_streams(1u32.into())
            .max_concurrent_uni_streams(0u32.into());
        // A link carries data one way (the reply comes back on another link), so every ACK
        // is a packet of its own that wakes the sender. Ask the receiver to acknowledge after
        // 16 packets instead of every second one, or after 2 ms. The delay also sets how
        // long a lost frame waits: a decode step is one packet with nothing behind it, so only
        // the probe timeout (round trip + this delay) finds it lost. On a 2 %-loss link the
        // p90 gap between tokens was ~22 ms at 10 ms and is ~15 at 2 (BENCHMARKS.md). At
        // 10 ms the ACK timer also tended to fire as the next frame came in, so the ACK left
        // ahead of that frame's step; at 2 ms it leaves after the step's frame.
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(16u32.into())
            .max_ack_delay(Some(Duration::from_millis(2)));
        transport.ack_frequency_config(Some(acks));
        // Path MTU discovery may climb to jumbo frames (quinn stops at 1452 by default): where
        // the path allows it (loopback, a jumbo-frame LAN) a hidden state of a small model is
        // one packet instead of two. Probes that a path drops only keep the MTU where it is.
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(9000);
        transport.mtu_discovery_config(Some(mtu));
        Ok(Arc::new(transport))
    }
}

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The TLS identity or configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A timeout or other setting is out of range.
    #[error("invalid endpoint configuration: {0}")]
    Config(String),
    /// Binding or querying the UDP socket failed.
    #[error("endpoint socket: {0}")]
    Io(#[from] std::io::Error),
}

/// A QUIC endpoint that is both server (accepting links) and client (opening links).
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    limits: Limits,
    handshake_timeout: Duration,
    cluster_key: Option<ClusterKey>,
}

impl Endpoint {
    /// Binds a UDP socket on `addr` (port 0 picks a free port). Needs a tokio runtime.
    pub fn bind(addr: SocketAddr, config: EndpointConfig) -> Result<Self, EndpointError> {
        let transport = config.transport()?;
        let server_crypto = tls::server_crypto(&config.identity, config.verifier.clone())?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let client_crypto = tls::client_crypto(&config.identity, config.verifier)?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        let mut inner = match config.link_emulation {
            None => quinn::Endpoint::server(server, addr)?,
            Some(spec) => emulation::bind(addr, server, spec)?,
        };
        inner.set_default_client_config(client);
        Ok(Self {
            inner,
            limits: config.limits,
            handshake_timeout: config.handshake_timeout,
            cluster_key: config.cluster_key,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, EndpointError> {
        Ok(self.inner.local_addr()?)
    }

    /// Connects to the peer at `addr` and opens the link stream.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Link, LinkError> {
        let span = tracing::debug_span!("quic_connect", peer = %addr);
        let connect = async {
            let connecting = self
                .inner
                .connect(addr, tls::SERVER_NAME)
                .map_err(|e| LinkError::Connect(e.to_string()))?;
            let connection = connecting.await.map_err(setup_error)?;
            let (mut send, mut recv) = connection.open_bi().await.map_err(setup_error)?;
            match &self.cluster_key {
                None => send.write_all(STREAM_MAGIC).await,
                Some(key) => {
                    let mut hello = KEYED_MAGIC.to_vec();
                    hello.extend_from_slice(&proof::tag(key, Role::Connector, &connection)?);
                    send.write_all(&hello).await
                }
            }
            .map_err(|e| LinkError::from_io(e.into()))?;
            if let Some(key) = &self.cluster_key {
                let mut tag = [0u8; TAG_LEN];
                recv.read_exact(&mut tag)
                    .await
                    .map_err(|e| refused(&connection, e))?;
                proof::check(key, Role::Acceptor, &connection, &tag).inspect_err(|_| {
                    connection.close(2u32.into(), b"cluster key proof failed");
                })?;
            }
            tracing::debug!("link open");
            Ok(Link::new(connection, send, recv, self.limits))
        };
        tokio::time::timeout(self.handshake_timeout, connect.instrument(span))
            .await
            .map_err(|_| LinkError::TimedOut)?
    }

    /// Waits for the next peer to connect and open its link stream.
    ///
    /// `None` once the endpoint is closed. A peer that fails the handshake, never opens a
    /// stream within the handshake timeout, or sends the wrong magic yields `Some(Err(..))`;
    /// keep calling `accept` for the next one. Handshakes are handled one at a time, which
    /// suits a stage's single predecessor.
    pub async fn accept(&self) -> Option<Result<Link, LinkError>> {
        let incoming = self.inner.accept().await?;
        let span = tracing::debug_span!("quic_accept", peer = %incoming.remote_address());
        let accept = async {
            let connection = incoming.await.map_err(setup_error)?;
            let (mut send, mut recv) = connection.accept_bi().await.map_err(setup_error)?;
            let mut magic = [0u8; STREAM_MAGIC.len()];
            recv.read_exact(&mut magic)
                .await
                .map_err(|e| LinkError::Handshake(e.to_string()))?;
            let refuse = |reason: &str, error: LinkError| {
                connection.close(2u32.into(), reason.as_bytes());
                Err(error)
            };
            match (&magic, &self.cluster_key) {
                (m, None) if m == STREAM_MAGIC => {}
                (m, Some(key)) if m == KEYED_MAGIC => {
                    let mut tag = [0u8; TAG_LEN];
                    recv.read_exact(&mut tag)
                        .await
                        .map_err(|e| LinkError::Handshake(e.to_string()))?;
                    if let Err(e) = proof::check(key, Role::Connector, &connection, &tag) {
                        return refuse("cluster key proof failed", e);
                    }
                    send.write_all(&proof::tag(key, Role::Acceptor, &connection)?)
                        .await
                        .map_err(|e| LinkError::from_io(e.into()))?;
                }
                (m, None) if m == KEYED_MAGIC => {
                    return refuse(
                        "this node runs without a cluster key",
                        LinkError::Unauthenticated(format!(
                            "peer {} proves a cluster key; this node has none (--insecure)",
                            connection.remote_address()
                        )),
                    );
                }
                (m, Some(_)) if m == STREAM_MAGIC => {
                    return refuse(
                        "this node requires the cluster key",
                        LinkError::Unauthenticated(format!(
                            "peer {} has no cluster key",
                            connection.remote_address()
                        )),
                    );
                }
                _ => {
                    return refuse(
                        "not a shoal link",
                        LinkError::Handshake(format!("bad stream magic {magic:02x?}")),
                    );
                }
            }
            tracing::debug!("link accepted");
            Ok(Link::new(connection, send, recv, self.limits))
        };
        let result = tokio::time::timeout(self.handshake_timeout, accept.instrument(span)).await;
        Some(result.unwrap_or(Err(LinkError::TimedOut)))
    }

    /// Closes every connection immediately and stops accepting.
    pub fn close(&self) {
        self.inner.close(0u32.into(), b"endpoint closed");
    }

    /// Waits until closed connections have told their peers (call after [`Endpoint::close`]).
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }
}

/// The acceptor closed the connection instead of answering our proof: say why.
fn refused(connection: &quinn::Connection, err: quinn::ReadExactError) -> LinkError {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            LinkError::Unauthenticated(format!(
                "peer {} refused the link: {}",
                connection.remote_address(),
                String::from_utf8_lossy(&close.reason)
            ))
        }
        // E.g. the acceptor's TLS refused our certificate after our side finished.
        Some(other) => setup_error(other),
        None => LinkError::Handshake(err.to_string()),
    }
}

fn setup_error(err: quinn::ConnectionError) -> LinkError {
    match err {
        quinn::ConnectionError::TimedOut => LinkError::TimedOut,
        other => LinkError::Connect(other.to_string()),
    }
}
