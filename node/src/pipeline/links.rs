//! Outgoing links of one endpoint: one per destination, connected on first use and
//! reconnected after a failure. The head (to first stages) and stages (to the next hop, or to
//! each session's head) send through it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::quic::{Endpoint, FrameHeader, LinkSender};

use crate::metrics::Metrics;

pub(crate) struct Links {
    endpoint: Arc<Endpoint>,
    open: HashMap<SocketAddr, LinkSender>,
    metrics: Option<Arc<Metrics>>,
    attempts: u64,
    backoff: Duration,
}

impl Links {
    /// Links that try each frame `attempts` times, waiting `backoff` × attempt after a
    /// failed connect.
    pub(crate) fn new(
        endpoint: Arc<Endpoint>,
        metrics: Option<Arc<Metrics>>,
        attempts: u64,
        backoff: Duration,
    ) -> Links {
        Links {
            endpoint,
            open: HashMap::new(),
            metrics,
            attempts,
            backoff,
        }
    }

    /// Sends one frame to `to` and records the hop; the last error when every attempt failed.
    pub(crate) async fn send(
        &mut self,
        to: SocketAddr,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<(), String> {
        let mut last_error = String::new();
        for attempt in 0..self.attempts {
            let link = match self.open.entry(to) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => match self.endpoint.connect(to).await {
                    Ok(l) => v.insert(l.split().0),
                    Err(e) => {
                        last_error = e.to_string();
                        tokio::time::sleep(self.backoff * (attempt as u32 + 1)).await;
                        continue;
                    }
                },
            };
            let started = Instant::now();
            match link.send(header, payload).await {
                Ok(()) => {
                    if let Some(m) = &self.metrics {
                        let seconds = started.elapsed().as_secs_f64();
                        m.hop_sent(&to.to_string(), payload.len(), seconds);
                    }
                    return Ok(());
                }
                Err(e) => {
                    last_error = e.to_string();
                    self.open.remove(&to);
                }
            }
        }
        Err(last_error)
    }
}
