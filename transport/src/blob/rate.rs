//! A byte-rate limit shared by the tasks that move model files.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Holds a stream of transfers to an average number of bytes per second: each transfer takes
/// its bytes from a bucket that refills at the rate (up to a quarter second's worth), and
/// waits off whatever it took beyond what was there. Clones share the bucket.
#[derive(Debug, Clone)]
pub struct RateLimit {
    bytes_per_sec: u64,
    bucket: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes available now; negative while transfers owe time.
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A limit of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec: bytes_per_sec.max(1),
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            })),
        }
    }

    /// The configured rate.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits until `n` more bytes fit under the rate.
    pub async fn acquire(&self, n: u64) {
        let wait = {
            let rate = self.bytes_per_sec as f64;
            let mut b = self.bucket.lock().expect("rate bucket lock");
            let now = Instant::now();
            let refill = now.duration_since(b.last).as_secs_f64() * rate;
            b.tokens = (b.tokens + refill).min(rate / 4.0);
            b.last = now;
            b.tokens -= n as f64;
            if b.tokens < 0.0 {
                Duration::from_secs_f64(-b.tokens / rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transfers_average_out_to_the_rate() {
        let limit = RateLimit::new(10 << 20);
        let started = Instant::now();
        for _ in 0..20 {
            limit.acquire(1 << 20).await;
        }
        // 20 MiB at 10 MiB/s: about two seconds (the bucket starts empty).
        let took = started.elapsed().as_secs_f64();
        assert!((1.9..2.2).contains(&took), "{took}");
    }
}
