//! A stage's links: frames in from upstream (any number of links, each a task), frames out
//! to the next hop (one task that owns every outgoing link).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, trace, warn, Instrument};
use transport::quic::{Endpoint, LinkError};

use super::{hash_of, upstream_key, Dest, Job, Outgoing, StageEvent, Upstream, HOP};
use crate::metrics::Metrics;
use crate::pipeline::links::{LinkRtts, Links, Lost};
use crate::pipeline::protocol::{self, FailureCode, Message, Reply};
use crate::pipeline::route::{self, Route};

/// How long a stopping stage's downstream task lets its last frames leave before the
/// endpoint closes (closing drops what QUIC has not sent; emulated delays hold packets too).
const FLUSH_GRACE: Duration = Duration::from_millis(150);

/// Accepts upstream links and hands their frames to the compute task.
pub(super) async fn accept_loop(
    endpoint: Arc<Endpoint>,
    jobs: mpsc::Sender<Job>,
    cancel: CancellationToken,
) {
    let mut links = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => i,
            Some(_) = links.join_next(), if !links.is_empty() => continue,
        };
        let Some(result) = incoming else { break };
        let link = match result {
            Ok(link) => link,
            Err(e) => {
                warn!(error = %e, "upstream handshake failed");
                continue;
            }
        };
        let peer = link.remote_address();
        let upstream = match link.peer_id() {
            Some(id) => upstream_key(&id),
            None => hash_of(&peer),
        };
        links.spawn(
            upstream_link(link, upstream, jobs.clone(), cancel.clone())
                .instrument(info_span!("upstream", %peer)),
        );
    }
    links.shutdown().await;
}

/// Reads one upstream link until it ends.
async fn upstream_link(
    mut link: transport::quic::Link,
    upstream: Upstream,
    jobs: mpsc::Sender<Job>,
    cancel: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return,
            f = link.recv() => f,
        };
        let job = match frame {
            Ok(Some(f)) => {
                let h = &f.header;
                trace!(target: HOP, session = h.session, seq = h.seq, "received");
                Job::Frame(f.header, f.payload.to_vec(), upstream)
            }
            Ok(None) => return,
            Err(LinkError::Rejected { error, header }) => {
                // The stream is still usable; the session's head hears which one failed.
                warn!(%error, "rejected a frame from upstream");
                Job::Rejected {
                    session: header.map_or(0, |h| h.session),
                    from: upstream,
                    error: error.to_string(),
                }
            }
            Err(e) => {
                debug!(error = %e, "upstream link ended");
                return;
            }
        };
        if jobs.send(job).await.is_err() {
            return;
        }
    }
}

/// What the downstream task works with.
pub(super) struct Downstream {
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) route: watch::Receiver<Route>,
    pub(super) frames: mpsc::Receiver<Outgoing>,
    /// Back to the compute task: a next hop that is gone.
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) forwarded: Arc<AtomicU64>,
    pub(super) cancel: CancellationToken,
    /// Where hop timings go, with this stage's outgoing hop index.
    pub(super) metrics: Option<(Arc<Metrics>, u32)>,
    pub(super) events: Option<mpsc::Sender<StageEvent>>,
    /// Where the round-trip times of this stage's outgoing links are kept.
    pub(super) rtts: LinkRtts,
    /// Dropped when the task ends: a stopping stage's last frames have been sent.
    pub(super) drained: tokio::sync::oneshot::Sender<()>,
}

/// Sends frames to the next hop, connecting (and reconnecting) as needed. Keeps one link per
/// destination: a last stage answering several heads holds one link to each. A frame that
/// cannot go on becomes an error for its session's head, and a next hop whose link ends
/// fails every session through it at once (the compute task tells their heads).
pub(super) async fn downstream(d: Downstream) {
    let Downstream {
        endpoint,
        mut route,
        mut frames,
        jobs,
        forwarded,
        cancel,
        metrics,
        events,
        rtts,
        drained: _drained,
    } = d;
    let (lost_tx, mut lost) = mpsc::channel::<Lost>(16);
    let mut links = Links::new(endpoint, metrics, 3, Duration::from_millis(100))
        .watched(lost_tx)
        .sharing(rtts);
    let mut scratch = Vec::new();
    loop {
        let out = tokio::select! {
            _ = cancel.cancelled() => return,
            Some(Lost { to, error }) = lost.recv() => {
                links.forget(to);
                if *route.borrow() == Route::To(to) {
                    next_hop_lost(to, error, &jobs, events.as_ref()).await;
                }
                continue;
            }
            f = frames.recv() => match f {
                Some(f) => f,
                None => {
                    // The compute task stopped (the stage is stopping): give the last frames
                    // (failures for heads) time to leave before the endpoint closes.
                    tokio::time::sleep(FLUSH_GRACE).await;
                    return;
                }
            },
        };
        let current = tokio::select! {
            _ = cancel.cancelled() => return,
            r = route::resolved(&mut route) => r,
        };
        // Whether the frame goes to the session's head, which needs only a prompt chunk's
        // last row. A static pipeline's last stage knows its `--next` is the head when that
        // is the address the head gave in its `Open`.
        let (next, to_head) = match (out.dest, current, out.head) {
            (Dest::Head, _, Some(head)) => (head, true),
            (Dest::Next, Some(Route::To(next)), head) => (next, head == Some(next)),
            (Dest::Next, Some(Route::ReplyToHead), Some(head)) => (head, true),
            (_, _, None) => {
                warn!(
                    session = out.header.session,
                    "no head address for this session; frame dropped"
                );
                continue;
            }
            (Dest::Next, _, Some(head)) => {
                // The plan never became whole: the head hears it at once.
                let why = "this stage's next hop was never set (its plan is not active)";
                send_failure(&mut links, head, out.header.session, why, &mut scratch).await;
                continue;
            }
        };
        let payload = match (to_head, Message::decode(&out.payload)) {
            (true, Ok(Message::Rows(rows))) if rows.head.reply == Reply::LastRow => {
                match protocol::last_row(&rows, &mut scratch) {
                    Some(()) => std::mem::take(&mut scratch),
                    None => out.payload,
                }
            }
            _ => out.payload,
        };
        match links.send(next, &out.header, &payload).await {
            Ok(()) => {
                let h = &out.header;
                trace!(target: HOP, session = h.session, seq = h.seq, "sent");
                forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if !to_head => {
                warn!(%next, error = %e, session = out.header.session, "cannot send to the next hop");
                if let Some(head) = out.head {
                    let why = format!("the next stage ({next}) is unreachable: {e}");
                    send_failure(&mut links, head, out.header.session, &why, &mut scratch).await;
                }
                next_hop_lost(next, e, &jobs, events.as_ref()).await;
            }
            Err(e) => {
                // The head is gone: nobody is left to tell.
                debug!(%next, error = %e, session = out.header.session, "cannot reach the head");
            }
        }
    }
}

/// Tells the compute task (which fails the sessions) and the node (which tells the
/// coordinator) that the next hop is gone.
async fn next_hop_lost(
    next: SocketAddr,
    error: LinkError,
    jobs: &mpsc::Sender<Job>,
    events: Option<&mpsc::Sender<StageEvent>>,
) {
    let error = error.to_string();
    warn!(%next, %error, "lost the link to the next stage");
    if let Some(events) = events {
        let _ = events.try_send(StageEvent::NextHopLost {
            next,
            error: error.clone(),
        });
    }
    let _ = jobs.send(Job::NextHopLost { next, error }).await;
}

/// Sends an `Unroutable` error for `session` to its head.
async fn send_failure(
    links: &mut Links,
    head: SocketAddr,
    session: u64,
    why: &str,
    scratch: &mut Vec<u8>,
) {
    protocol::encode_error(FailureCode::Unroutable, why, scratch);
    if let Err(e) = links
        .send(head, &protocol::frame(session, 0), scratch)
        .await
    {
        debug!(%head, error = %e, session, "cannot tell the head");
    }
}
