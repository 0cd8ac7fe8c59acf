//! The head's way into the pipeline: one sender task per first-stage address (requests of
//! different plans may enter at different stages), so a first stage that is gone (a retired
//! or dead plan's, which still gets its sessions' Close frames) holds up only its own frames
//! while the connect times out, never those of requests running on a healthy plan. A request
//! hands its frame straight to that task's queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{trace, warn};
use transport::quic::Endpoint;

use super::{Event, Outgoing, PREFILL_IN_FLIGHT};
use crate::metrics::Metrics;
use crate::pipeline::links::Links;
use crate::pipeline::protocol::{Failure, FailureCode};
use crate::pipeline::stage::HOP;

/// Frames waiting for one first stage; a full queue fails the frame's request (with an
/// error, never a hang). A request has at most its `Open` and `PREFILL_IN_FLIGHT` chunks out
/// at once, so this holds the default `--max-requests` (64) all starting together, twice
/// over.
const FIRST_STAGE_QUEUE: usize = 2 * 64 * (PREFILL_IN_FLIGHT + 1);
/// A first stage's sender task ends after this long without frames (plans move on).
const FIRST_STAGE_IDLE: Duration = Duration::from_secs(60);

/// The head is shutting down: nothing is sent any more.
pub(super) struct Stopping;

/// The sender tasks, by first-stage address.
pub(super) struct FirstStages {
    queues: Mutex<HashMap<SocketAddr, mpsc::Sender<Outgoing>>>,
    endpoint: Arc<Endpoint>,
    metrics: Option<Arc<Metrics>>,
    cancel: CancellationToken,
    sent: Arc<AtomicU64>,
    /// The sender tasks, so shutdown can wait for them.
    tasks: TaskTracker,
}

impl FirstStages {
    pub(super) fn new(
        endpoint: Arc<Endpoint>,
        metrics: Option<Arc<Metrics>>,
        cancel: CancellationToken,
    ) -> FirstStages {
        FirstStages {
            queues: Mutex::new(HashMap::new()),
            endpoint,
            metrics,
            cancel,
            sent: Arc::new(AtomicU64::new(0)),
            tasks: TaskTracker::new(),
        }
    }

    /// Waits until every sender task has ended (after the head's token is cancelled).
    pub(super) async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Frames delivered to first stages so far.
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Queues a frame for its first stage, starting that stage's sender task if it has none.
    /// A full queue fails the frame's request (a Close is dropped).
    pub(super) fn send(&self, frame: Outgoing) -> Result<(), Stopping> {
        if self.cancel.is_cancelled() {
            return Err(Stopping);
        }
        let first = frame.0;
        let mut queues = self.queues.lock().expect("first-stage queues lock");
        let queue = match queues.get(&first) {
            Some(q) if !q.is_closed() => q,
            _ => {
                queues.retain(|_, q| !q.is_closed());
                let (tx, rx) = mpsc::channel(FIRST_STAGE_QUEUE);
                let links = Links::new(
                    self.endpoint.clone(),
                    self.metrics.clone().map(|m| (m, 0)),
                    2,
                    Duration::from_millis(50),
                );
                let (sent, cancel) = (self.sent.clone(), self.cancel.clone());
                self.tasks.spawn(send_to(first, links, rx, sent, cancel));
                queues.entry(first).insert_entry(tx).into_mut()
            }
        };
        if let Err(e) = queue.try_send(frame) {
            // A session's close that finds the queue full is dropped: its session's events
            // have no reader any more, and the stage frees the session when it times out.
            let (_, _, _, reply) = e.into_inner();
            let _ = reply.try_send(Event::Failed(Failure {
                code: FailureCode::Busy,
                message: format!("first stage {first}: too many frames waiting"),
            }));
        }
        Ok(())
    }
}

/// Sends the frames queued for one first stage, in order; a frame that cannot be delivered
/// fails its request.
async fn send_to(
    first: SocketAddr,
    mut links: Links,
    mut frames: mpsc::Receiver<Outgoing>,
    sent: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    loop {
        let (_, header, payload, reply) = tokio::select! {
            _ = cancel.cancelled() => return,
            f = tokio::time::timeout(FIRST_STAGE_IDLE, frames.recv()) => match f {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => return,
            },
        };
        match links.send(first, &header, &payload).await {
            Ok(()) => {
                let h = &header;
                trace!(target: HOP, session = h.session, seq = h.seq, "sent");
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // A session's close that cannot be delivered has nobody left to tell.
            Err(_) if reply.is_closed() => {}
            Err(last_error) => {
                warn!(%first, error = %last_error, "first stage unreachable");
                let _ = reply.try_send(Event::Unreachable(last_error));
            }
        }
    }
}
