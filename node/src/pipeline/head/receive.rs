//! The head's inbound side: accepts the links last stages open back to it and hands each
//! message to its session. A link that ends abnormally fails the sessions whose replies last
//! came on it, so they replay elsewhere at once instead of waiting out their timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};
use transport::quic::{Endpoint, FrameKind};

use super::super::protocol::{Failure, FailureCode, Message};
use super::super::stage::HOP;
use super::Event;

/// Where each open session's events go, and which inbound link its replies last came on.
#[derive(Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<u64, (mpsc::Sender<Event>, u64)>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (mpsc::Sender<Event>, u64)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn insert(&self, id: u64, tx: mpsc::Sender<Event>) {
        self.lock().insert(id, (tx, 0));
    }

    pub(super) fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The session's channel, noting that its replies come on `link`.
    fn route(&self, id: u64, link: u64) -> Option<mpsc::Sender<Event>> {
        let mut map = self.lock();
        let (tx, last) = map.get_mut(&id)?;
        *last = link;
        Some(tx.clone())
    }

    /// The channels of the sessions whose replies last came on `link`.
    fn on_link(&self, link: u64) -> Vec<mpsc::Sender<Event>> {
        self.lock()
            .values()
            .filter(|(_, l)| *l == link)
            .map(|(tx, _)| tx.clone())
            .collect()
    }
}

/// Accepts the last stages' links until cancelled; every link task ends before it returns.
pub(super) async fn receive_loop(
    endpoint: Arc<Endpoint>,
    sessions: Arc<Sessions>,
    received: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut links = tokio::task::JoinSet::new();
    let mut next_link = 0u64;
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => i,
            Some(_) = links.join_next(), if !links.is_empty() => continue,
        };
        let Some(result) = incoming else { break };
        let link = match result {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "a stage failed to connect back");
                continue;
            }
        };
        next_link += 1;
        let (sessions, received, cancel) = (sessions.clone(), received.clone(), cancel.clone());
        links.spawn(receive_link(link, next_link, sessions, received, cancel));
    }
    links.shutdown().await;
}

async fn receive_link(
    mut link: transport::quic::Link,
    id: u64,
    sessions: Arc<Sessions>,
    received: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let ended = loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return,
            f = link.recv() => f,
        };
        let (header, payload) = match frame {
            Ok(Some(f)) => (f.header, f.payload),
            Ok(None) => return,
            Err(e) if e.is_recoverable() => {
                warn!(error = %e, "rejected a frame from a last stage");
                continue;
            }
            Err(e) => break e,
        };
        received.fetch_add(1, Ordering::Relaxed);
        trace!(target: HOP, session = header.session, seq = header.seq, "received");
        let event = match (header.kind, Message::decode(payload)) {
            (FrameKind::Message, Ok(Message::Open(_))) => Event::Opened,
            (FrameKind::Message, Ok(Message::Rows(rows))) => {
                let mut values = Vec::new();
                match rows.values(&mut values) {
                    Ok(()) => Event::Rows(rows.head, values),
                    Err(e) => Event::BadReply(e),
                }
            }
            (FrameKind::Message, Ok(Message::Error(failure))) => Event::Failed(failure),
            (FrameKind::Message, Ok(Message::Close(_))) => continue,
            (FrameKind::Message, Err(e)) => Event::BadReply(e),
            (FrameKind::Error(code), _) => Event::Failed(Failure {
                code: FailureCode::Refused,
                message: format!("{code:?}: {}", String::from_utf8_lossy(payload)),
            }),
            _ => continue,
        };
        match sessions.route(header.session, id) {
            // A session has at most a few replies outstanding; a full channel means a peer
            // sent what was not asked for.
            Some(tx) => {
                if tx.try_send(event).is_err() {
                    debug!(session = header.session, "dropped an unexpected reply");
                }
            }
            None => debug!(session = header.session, "reply for a finished session"),
        }
    };
    debug!(error = %ended, "a link from a last stage failed");
    for tx in sessions.on_link(id) {
        let _ = tx.try_send(Event::LinkLost(ended.to_string()));
    }
}
