//! Fetching a file's manifest and chunks from a peer that holds it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::quic::{Endpoint, FrameHeader, FrameKind, Link, LinkError};

use super::cache::PartialFile;
use super::manifest::{Manifest, ManifestError};
use super::rate::RateLimit;
use super::MANIFEST;

/// Requests in flight on one link: enough to keep a LAN link busy while a chunk is being
/// checked and written.
const WINDOW: usize = 4;

/// Why a fetch stopped.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The link to the holder failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The holder answered with an error (e.g. it does not have the file).
    #[error("the holder refused: {0}")]
    Refused(String),
    /// The holder's manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A chunk did not match the manifest (a corrupt or lying holder): nothing was kept.
    #[error("bad chunk from the holder: {0}")]
    BadChunk(String),
    /// The holder answered something that is not an answer to what was asked.
    #[error("protocol violation by the holder: {0}")]
    Protocol(String),
    /// The holder closed the link before answering.
    #[error("the holder closed the link before answering")]
    Ended,
}

/// Fetches from holders over QUIC links of one endpoint, under an optional byte rate.
#[derive(Debug, Clone)]
pub struct Fetcher {
    endpoint: Endpoint,
    rate: Option<RateLimit>,
}

/// Request ids, so a stray answer is never taken for another.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

impl Fetcher {
    /// A fetcher over `endpoint` (which carries the cluster key and identity), held to
    /// `rate` if given.
    pub fn new(endpoint: Endpoint, rate: Option<RateLimit>) -> Fetcher {
        Fetcher { endpoint, rate }
    }

    /// Asks the holder at `addr` for the manifest of file `sha256`.
    pub async fn manifest(
        &self,
        addr: SocketAddr,
        sha256: &[u8; 32],
    ) -> Result<Manifest, FetchError> {
        let mut link = self.endpoint.connect(addr).await?;
        let id = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
        request(&mut link, id, MANIFEST, sha256).await?;
        let manifest = {
            let frame = answer(&mut link, id, MANIFEST).await?;
            Manifest::decode(frame.as_slice(), sha256)?
        };
        let _ = link.finish();
        Ok(manifest)
    }

    /// Fetches `chunks` of `file` from the holder at `addr`, checking each against the
    /// manifest before it is written; `progress` gets each stored chunk's size. Returns the
    /// bytes stored. Chunks already present are skipped.
    pub async fn fetch(
        &self,
        addr: SocketAddr,
        file: &mut PartialFile,
        chunks: &[usize],
        mut progress: impl FnMut(u64),
    ) -> Result<u64, FetchError> {
        let sha256 = file.manifest().sha256;
        let wanted: Vec<usize> = chunks.iter().copied().filter(|&i| !file.has(i)).collect();
        let mut todo = wanted.into_iter();
        let mut in_flight: VecDeque<(u64, usize)> = VecDeque::with_capacity(WINDOW);
        let mut link = None;
        let mut stored = 0;
        loop {
            while in_flight.len() < WINDOW {
                let Some(i) = todo.next() else { break };
                if link.is_none() {
                    link = Some(self.endpoint.connect(addr).await?);
                }
                let link = link.as_mut().expect("connected above");
                let range = file.manifest().chunk_range(i);
                if let Some(rate) = &self.rate {
                    rate.acquire(range.end - range.start).await;
                }
                let id = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
                request(link, id, i as u64, &sha256).await?;
                in_flight.push_back((id, i));
            }
            let Some((id, i)) = in_flight.pop_front() else {
                break;
            };
            let link = link.as_mut().expect("requests were sent on it");
            let bytes = answer(link, id, i as u64).await?;
            file.write_chunk(i, &bytes)
                .map_err(|e| FetchError::BadChunk(e.0))?;
            stored += bytes.len() as u64;
            progress(bytes.len() as u64);
        }
        if let Some(mut link) = link {
            let _ = link.finish();
        }
        Ok(stored)
    }
}

async fn request(link: &mut Link, id: u64, seq: u64, sha256: &[u8; 32]) -> Result<(), FetchError> {
    let header = FrameHeader::new(FrameKind::Fetch, id, seq);
    Ok(link.send(&header, sha256).await?)
}

/// The payload of the answer to request `id` for `seq`.
async fn answer(link: &mut Link, id: u64, seq: u64) -> Result<Vec<u8>, FetchError> {
    let frame = link.recv().await?.ok_or(FetchError::Ended)?;
    match frame.header.kind {
        FrameKind::Piece if frame.header.session == id && frame.header.seq == seq => {
            Ok(frame.payload.to_vec())
        }
        FrameKind::Error(_) => Err(FetchError::Refused(
            String::from_utf8_lossy(frame.payload).into_owned(),
        )),
        other => Err(FetchError::Protocol(format!(
            "{other:?} for request {}/{} while waiting for {id}/{seq}",
            frame.header.session, frame.header.seq
        ))),
    }
}
