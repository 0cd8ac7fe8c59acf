//! Tokens per second through this node's head, over the last few seconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pipeline::Head;

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(5);

/// A task that samples the head's token count once a second.
pub(crate) struct TokenRate {
    rate: watch::Receiver<f64>,
    task: TaskTracker,
}

impl TokenRate {
    /// Starts sampling `head` until `cancel` (a node without a head generates nothing).
    pub(crate) fn start(head: Option<Head>, cancel: CancellationToken) -> TokenRate {
        let (tx, rate) = watch::channel(0.0);
        let task = TaskTracker::new();
        let Some(head) = head else {
            task.close();
            return TokenRate { rate, task };
        };
        task.spawn(async move {
            let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = Instant::now();
                samples.push_back((now, head.generated()));
                while samples
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
                {
                    samples.pop_front();
                }
                tx.send_replace(per_second(&samples));
            }
        });
        task.close();
        TokenRate { rate, task }
    }

    /// Tokens per second over the window.
    pub(crate) fn per_second(&self) -> f64 {
        *self.rate.borrow()
    }

    /// Waits until the sampling task has ended.
    pub(crate) async fn stopped(&self) {
        self.task.wait().await;
    }
}

fn per_second(samples: &VecDeque<(Instant, u64)>) -> f64 {
    match (samples.front(), samples.back()) {
        (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
            n1.saturating_sub(n0) as f64 / t1.duration_since(t0).as_secs_f64()
        }
        _ => 0.0,
    }
}
