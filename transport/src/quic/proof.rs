//! The cluster-key proof every link exchanges before its first frame.
//!
//! TLS alone says who a peer is (its certificate, bound to its libp2p identity); it does not
//! say the peer belongs to this cluster. Both ends therefore derive the same secret from the
//! TLS session (the RFC 5705 exporter, unique to this connection) and send an HMAC of it under
//! the cluster key. A tag is worthless on any other connection, so it cannot be replayed, and
//! the two directions use different labels, so a peer cannot reflect our own tag back.
//!
//! Wire: the connector writes [`KEYED_MAGIC`] then its tag; the acceptor checks it and answers
//! with its own tag; only then do frames flow. Unkeyed links send the plain stream magic and
//! no tags, so a keyed and an unkeyed node fail at once with a message naming the mismatch.

use crate::cluster_key::ClusterKey;

use super::stream::LinkError;

/// Stream magic of a link whose ends prove the cluster key (the unkeyed one ends in 1).
pub(crate) const KEYED_MAGIC: &[u8; 8] = b"SHOALQ\x00\x02";

/// Bytes of one tag (HMAC-SHA256).
pub(crate) const TAG_LEN: usize = 32;

/// TLS exporter label; RFC 5705 asks for the "EXPORTER" prefix.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-shoal-cluster-key-proof";

/// Which end of the link computes the tag.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    Connector,
    Acceptor,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Connector => "quic link proof: connector",
            Role::Acceptor => "quic link proof: acceptor",
        }
    }
}

/// The secret both ends of this TLS session share, and nobody else.
fn session_secret(connection: &quinn::Connection) -> Result<[u8; 32], LinkError> {
    let mut secret = [0u8; 32];
    connection
        .export_keying_material(&mut secret, EXPORTER_LABEL, b"")
        .map_err(|e| LinkError::Handshake(format!("TLS exporter unavailable: {e:?}")))?;
    Ok(secret)
}

/// The tag `role` sends on `connection`.
pub(crate) fn tag(
    key: &ClusterKey,
    role: Role,
    connection: &quinn::Connection,
) -> Result<[u8; TAG_LEN], LinkError> {
    Ok(key.mac(role.label(), &session_secret(connection)?))
}

/// Checks the tag the peer (playing `role`) sent on `connection`.
pub(crate) fn check(
    key: &ClusterKey,
    role: Role,
    connection: &quinn::Connection,
    tag: &[u8],
) -> Result<(), LinkError> {
    if key.verify(role.label(), &session_secret(connection)?, tag) {
        Ok(())
    } else {
        Err(LinkError::Unauthenticated(format!(
            "peer {} failed the cluster key proof (another cluster's key?)",
            connection.remote_address()
        )))
    }
}
