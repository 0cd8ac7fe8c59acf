//! Outgoing links of one endpoint: one per destination, connected on first use and
//! reconnected after a failure. The head (to first stages) and stages (to the next hop, or to
//! each session's head) send through it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use transport::quic::{Endpoint, FrameHeader, LinkError, LinkSender, RttProbe};

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
    /// Round-trip times of the open links, shared with whoever reports them.
    rtts: LinkRtts,
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
            rtts: LinkRtts::default(),
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
        self.rtts.remove(to);
    }

    /// Keeps these links' round-trip times in `rtts` (read elsewhere).
    pub(crate) fn sharing(mut self, rtts: LinkRtts) -> Links {
        self.rtts = rtts;
        self
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
                        self.rtts.insert(to, l.rtt_probe());
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
                    self.rtts.remove(to);
                }
            }
        }
        Err(last_error)
    }
}

/// The round-trip times of a set of open links, by destination.
#[derive(Clone, Default)]
pub(crate) struct LinkRtts(Arc<std::sync::Mutex<HashMap<SocketAddr, RttProbe>>>);

impl LinkRtts {
    fn insert(&self, to: SocketAddr, probe: RttProbe) {
        self.lock().insert(to, probe);
    }

    fn remove(&self, to: SocketAddr) {
        self.lock().remove(&to);
    }

    /// Each live link's destination and current round-trip time.
    pub(crate) fn now(&self) -> Vec<(SocketAddr, Duration)> {
        self.lock()
            .iter()
            .filter(|(_, p)| !p.is_closed())
            .map(|(to, p)| (*to, p.rtt()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, RttProbe>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
