//! Outgoing links of one endpoint: one per destination, connected on first use and
//! reconnected after a failure. The head (to first stages) and stages (to the next hop, or to
//! each session's head) send through it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use transport::quic::{Endpoint, FrameHeader, LinkError, LinkSender};

use crate::metrics::Metrics;

/// A link that ended: its destination and why.
#[derive(Debug)]
pub(crate) struct Lost {
    pub(crate) to: SocketAddr,
    pub(crate) error: LinkError,
}

pub(crate) struct Links {
    endpoint: Arc<Endpoint>,
    open: HashMap<SocketAddr, LinkSender>,
    /// Where hop timings go, and the hop's index in the ring.
    metrics: Option<(Arc<Metrics>, u32)>,
    attempts: u64,
    backoff: Duration,
    /// Told when an open link's connection ends (the peer timed out, closed or reset it),
    /// without waiting for the next send to find out.
    watch: Option<mpsc::Sender<Lost>>,
}

impl Links {
    /// Links that try each frame `attempts` times, waiting `backoff` × attempt after a
    /// failed connect.
    pub(crate) fn new(
        endpoint: Arc<Endpoint>,
        metrics: Option<(Arc<Metrics>, u32)>,
        attempts: u64,
        backoff: Duration,
    ) -> Links {
        Links {
            endpoint,
            open: HashMap::new(),
            metrics,
            attempts,
            backoff,
            watch: None,
        }
    }

    /// Reports each connection that ends to `lost` (one task per open link).
    pub(crate) fn watched(mut self, lost: mpsc::Sender<Lost>) -> Links {
        self.watch = Some(lost);
        self
    }

    /// Forgets the link to `to` (its connection ended); the next send connects anew.
    pub(crate) fn forget(&mut self, to: SocketAddr) {
        self.open.remove(&to);
    }

    /// Sends one frame to `to` and records the hop; the last error when every attempt failed.
    pub(crate) async fn send(
        &mut self,
        to: SocketAddr,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<(), LinkError> {
        let mut last_error = LinkError::Closed("no attempt made".into());
        for attempt in 0..self.attempts {
            let link = match self.open.entry(to) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => match self.endpoint.connect(to).await {
                    Ok(l) => {
                        if let Some(lost) = &self.watch {
                            let (connection, lost) = (l.connection().clone(), lost.clone());
                            tokio::spawn(async move {
                                let error = LinkError::from_connection(connection.closed().await);
                                let _ = lost.send(Lost { to, error }).await;
                            });
                        }
                        v.insert(l.split().0)
                    }
                    Err(e) => {
                        last_error = e;
                        tokio::time::sleep(self.backoff * (attempt as u32 + 1)).await;
                        continue;
                    }
                },
            };
            let started = Instant::now();
            match link.send(header, payload).await {
                Ok(()) => {
                    if let Some((m, hop)) = &self.metrics {
                        m.hop_sent(*hop, payload.len(), started.elapsed().as_secs_f64());
                    }
                    return Ok(());
                }
                Err(e) => {
                    last_error = e;
                    self.open.remove(&to);
                }
            }
        }
        Err(last_error)
    }
}
