//! Model files between nodes, over the QUIC data plane.
//!
//! A node that holds a file whole publishes its [`Manifest`] (length, sha256, and the sha256
//! of every fixed-size chunk) and serves chunks from a [`BlobServer`]. A node that lacks the
//! file keeps a sparse [`PartialFile`] in its cache and asks a [`Fetcher`] for only the
//! chunks it needs: each arriving chunk is checked against the manifest before it is
//! written, a cache that survives a restart is re-verified when opened (so a fetch resumes
//! where it stopped), and the fetcher can be held to a byte rate so it does not starve live
//! activation traffic.
//!
//! Protocol, on an ordinary [`crate::quic::Link`]: the client sends [`FrameKind::Fetch`]
//! frames whose payload is the 32-byte sha256 of the file, `session` a request id and `seq`
//! the chunk index ([`MANIFEST`] for the manifest); the server answers each with a
//! [`FrameKind::Piece`] frame carrying the same `session` and `seq`, or an `Error` frame.
//!
//! [`FrameKind::Fetch`]: crate::quic::FrameKind::Fetch
//! [`FrameKind::Piece`]: crate::quic::FrameKind::Piece

mod cache;
mod client;
mod manifest;
mod rate;
mod server;

pub use cache::PartialFile;
pub use client::{FetchError, Fetcher};
pub use manifest::{Manifest, ManifestError, MAX_CHUNKS, MAX_FETCHED_LEN};
pub use rate::RateLimit;
pub use server::BlobServer;

/// The `seq` of a request for the manifest rather than a chunk.
pub const MANIFEST: u64 = u64::MAX;

/// Lowercase hex of a digest.
pub fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into a digest.
pub fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
