//! Serving the files a node holds whole, chunk by chunk, to peers that fetch them.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::quic::{Endpoint, ErrorCode, FrameHeader, FrameKind, Link, LinkError};

use super::manifest::Manifest;
use super::rate::RateLimit;
use super::MANIFEST;

/// Peers fetching at once; more are turned away and retry elsewhere or later.
const MAX_CLIENTS: usize = 8;

struct Served {
    file: File,
    manifest: Manifest,
    encoded: Vec<u8>,
}

/// Serves chunks of whole files on its own QUIC endpoint.
#[derive(Debug)]
pub struct BlobServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl BlobServer {
    /// Starts serving `files` (each with the manifest built from it) on `endpoint`, whose
    /// configuration decides who may connect. Outgoing chunk bytes are held to `rate`.
    pub fn start(
        endpoint: Endpoint,
        files: Vec<(&Path, Manifest)>,
        rate: Option<RateLimit>,
    ) -> std::io::Result<BlobServer> {
        let mut served = HashMap::new();
        for (path, manifest) in files {
            let file = File::open(path)?;
            if file.metadata()?.len() != manifest.len {
                return Err(std::io::Error::other(format!(
                    "{} changed since its manifest was built",
                    path.display()
                )));
            }
            let encoded = manifest.encode();
            served.insert(
                manifest.sha256,
                Arc::new(Served {
                    file,
                    manifest,
                    encoded,
                }),
            );
        }
        let addr = endpoint.local_addr().map_err(std::io::Error::other)?;
        let cancel = CancellationToken::new();
        let served = Arc::new(served);
        let task = tokio::spawn(accept_loop(endpoint, served, rate, cancel.clone()));
        info!(%addr, "serving model chunks");
        Ok(BlobServer { addr, cancel, task })
    }

    /// Where peers fetch from.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and closes every link.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    served: Arc<HashMap<[u8; 32], Arc<Served>>>,
    rate: Option<RateLimit>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = endpoint.accept() => accepted,
        };
        let mut link = match accepted {
            None => break,
            Some(Ok(link)) => link,
            Some(Err(e)) => {
                debug!(error = %e, "a fetch link failed to open");
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let _ = link
                .send_error(ErrorCode::Internal, 0, "busy: too many peers fetching")
                .await;
            link.close("busy");
            continue;
        };
        let (served, rate, cancel) = (served.clone(), rate.clone(), cancel.clone());
        tokio::spawn(async move {
            let peer = link.remote_address();
            tokio::select! {
                _ = cancel.cancelled() => {}
                result = serve(&mut link, &served, rate.as_ref()) => match result {
                    Ok(()) => debug!(%peer, "fetch link done"),
                    Err(e) => debug!(%peer, error = %e, "fetch link ended"),
                },
            }
            drop(slot);
        });
    }
    endpoint.close();
}

/// Answers one peer's requests in order until it finishes the stream.
async fn serve(
    link: &mut Link,
    served: &HashMap<[u8; 32], Arc<Served>>,
    rate: Option<&RateLimit>,
) -> Result<(), LinkError> {
    loop {
        let (header, sha256) = match link.recv().await {
            Ok(None) => return Ok(()),
            Ok(Some(frame)) => (frame.header, <[u8; 32]>::try_from(frame.payload).ok()),
            Err(e) if e.is_recoverable() => {
                link.send_error(ErrorCode::Malformed, 0, &e.to_string())
                    .await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let refuse = |why: String| (ErrorCode::Protocol, why);
        let answer = match (header.kind, sha256.and_then(|s| served.get(&s))) {
            (FrameKind::Fetch, Some(s)) if header.seq == MANIFEST => Ok(s.encoded.clone()),
            (FrameKind::Fetch, Some(s)) => match usize::try_from(header.seq) {
                Ok(i) if i < s.manifest.chunks.len() => read_chunk(s.clone(), i).await,
                _ => Err(refuse(format!("no chunk {} in this file", header.seq))),
            },
            (FrameKind::Fetch, None) => Err(refuse("this node does not serve that file".into())),
            (kind, _) => Err(refuse(format!("{kind:?} is not a fetch request"))),
        };
        match answer {
            Ok(bytes) => {
                if let Some(rate) = rate {
                    rate.acquire(bytes.len() as u64).await;
                }
                let reply = FrameHeader::new(FrameKind::Piece, header.session, header.seq);
                link.send(&reply, &bytes).await?;
            }
            Err((code, why)) => link.send_error(code, header.session, &why).await?,
        }
    }
}

async fn read_chunk(s: Arc<Served>, i: usize) -> Result<Vec<u8>, (ErrorCode, String)> {
    let read = tokio::task::spawn_blocking(move || {
        let range = s.manifest.chunk_range(i);
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        s.file.read_exact_at(&mut buf, range.start).map(|()| buf)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    read.map_err(|e| {
        warn!(chunk = i, error = %e, "cannot read a served chunk");
        (ErrorCode::Internal, format!("cannot read chunk {i}: {e}"))
    })
}
