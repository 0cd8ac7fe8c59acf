//! The emulating socket: wraps quinn's tokio UDP socket and, instead of sending each
//! outgoing datagram at once, decides its fate (token bucket, loss, delay, jitter) and
//! hands it to a delivery thread that sends it when it is due. A thread, not a tokio task:
//! tokio's timers tick in whole milliseconds, which added up to a millisecond to every
//! delay; a thread waiting on its queue with a timeout wakes within tens of microseconds.
//!
//! `try_send` never blocks and never returns `WouldBlock`: shaping happens in our queue, not
//! in the kernel's, so quinn's pacing and congestion control see a path that simply has
//! more latency, less bandwidth and some loss, as a real edge link would.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::LinkEmulation;

/// Binds a UDP socket on `addr` and builds a quinn endpoint on it whose outgoing datagrams
/// are shaped by `spec`. Same quinn endpoint configuration as `quinn::Endpoint::server`.
pub(crate) fn bind(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    spec: LinkEmulation,
) -> io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| io::Error::other("link emulation needs a tokio runtime"))?;
    let plain = runtime.wrap_udp_socket(std::net::UdpSocket::bind(addr)?)?;
    let socket = Arc::new(EmulatedSocket::new(plain, spec)?);
    tracing::warn!(
        addr = %socket.local_addr()?,
        %spec,
        "QUIC link emulation is ON: outgoing datagrams are delayed/dropped (test feature)"
    );
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
}

/// The shortest queue a rate-capped link may have, so a slow link can still hold a few
/// full-size datagrams instead of dropping all but one.
const MIN_QUEUE_BYTES: f64 = 8.0 * 1500.0;
/// Queue depth in time at the capped rate; beyond it datagrams are tail-dropped, like
/// `tc tbf ... latency 50ms`.
const QUEUE_TIME: f64 = 0.050;
/// Burst the token bucket allows above the rate: a few datagrams, so a cap is a cap.
const MIN_BURST_BYTES: f64 = 4.0 * 1500.0;

/// A quinn UDP socket whose outgoing datagrams go through a [`Shaper`] and a delay queue.
pub(crate) struct EmulatedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shaper: Mutex<Shaper>,
    queue: mpsc::Sender<Delayed>,
}

impl fmt::Debug for EmulatedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatedSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl EmulatedSocket {
    /// Wraps `inner` and starts its delivery thread.
    fn new(inner: Arc<dyn AsyncUdpSocket>, spec: LinkEmulation) -> io::Result<Self> {
        let (queue, rx) = mpsc::channel();
        let socket = inner.clone();
        std::thread::Builder::new()
            .name("shoal-link-emulation".into())
            .spawn(move || deliver(&*socket, &rx))?;
        Ok(Self {
            inner,
            shaper: Mutex::new(Shaper::new(spec, Instant::now())),
            queue,
        })
    }
}

impl AsyncUdpSocket for EmulatedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // Never consulted in practice (try_send does not return WouldBlock), but the
        // inner socket's poller is the honest answer.
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let now = Instant::now();
        let mut shaper = self.shaper.lock().unwrap_or_else(|e| e.into_inner());
        if !shaper.spec.shapes(transmit.destination.ip()) {
            drop(shaper);
            return self.inner.try_send(transmit);
        }
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(segment) {
            let Some(at) = shaper.schedule(now, datagram.len()) else {
                continue;
            };
            let delayed = Delayed {
                at,
                seq: shaper.next_seq(),
                destination: transmit.destination,
                ecn: transmit.ecn,
                src_ip: transmit.src_ip,
                contents: datagram.to_vec(),
            };
            // The thread only stops once this socket is dropped: it cannot be gone here.
            let _ = self.queue.send(delayed);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        // One datagram per transmit, so loss and the rate cap apply per packet (no GSO).
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Decides, per datagram, whether it is dropped and when it is due at the peer.
#[derive(Debug)]
struct Shaper {
    spec: LinkEmulation,
    rng: SplitMix64,
    /// Token bucket in bytes; negative means datagrams are queued behind the cap.
    tokens: f64,
    last_refill: Instant,
    seq: u64,
}

impl Shaper {
    fn new(spec: LinkEmulation, now: Instant) -> Self {
        Self {
            spec,
            rng: SplitMix64(spec.seed),
            tokens: spec.rate_bytes_per_s.map_or(0.0, burst_bytes),
            last_refill: now,
            seq: 0,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// When a datagram of `len` bytes offered at `now` reaches the peer, or `None` if it
    /// is lost (randomly, or tail-dropped by a full rate-cap queue).
    fn schedule(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let mut departs = now;
        if let Some(rate) = self.spec.rate_bytes_per_s {
            let rate = rate as f64;
            let elapsed = now
                .saturating_duration_since(self.last_refill)
                .as_secs_f64();
            self.last_refill = now;
            self.tokens = (self.tokens + elapsed * rate).min(burst_bytes(rate as u64));
            let backlog = -(self.tokens - len as f64);
            if backlog > queue_bytes(rate) {
                return None;
            }
            self.tokens -= len as f64;
            if backlog > 0.0 {
                departs += Duration::from_secs_f64(backlog / rate);
            }
        }
        // Lost on the wire: it still used its share of the capped rate above.
        if self.spec.loss > 0.0 && self.rng.unit() < self.spec.loss {
            return None;
        }
        let mut delay = self.spec.delay.as_secs_f64();
        if !self.spec.jitter.is_zero() {
            delay += self.spec.jitter.as_secs_f64() * (2.0 * self.rng.unit() - 1.0);
        }
        Some(departs + Duration::from_secs_f64(delay.max(0.0)))
    }
}

fn burst_bytes(rate: u64) -> f64 {
    (rate as f64 * 0.005).max(MIN_BURST_BYTES)
}

fn queue_bytes(rate: f64) -> f64 {
    (rate * QUEUE_TIME).max(MIN_QUEUE_BYTES)
}

/// A tiny, seedable PRNG: reproducible runs without pulling in `rand`. Statistical quality
/// is ample for coin flips on packet loss.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A datagram waiting in the delay queue.
#[derive(Debug)]
struct Delayed {
    at: Instant,
    /// Tie-break so datagrams due at the same instant leave in the order they were sent.
    seq: u64,
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    src_ip: Option<IpAddr>,
    contents: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Sends each queued datagram on `socket` when it is due, earliest first; one already due
/// goes out as soon as it arrives. Ends when the emulated socket (the only sender) is dropped.
fn deliver(socket: &dyn AsyncUdpSocket, rx: &mpsc::Receiver<Delayed>) {
    let mut due: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while due.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Some(Reverse(d)) = due.pop() else { break };
            send(socket, &d);
        }
        let next = match due.peek() {
            Some(Reverse(d)) => rx.recv_timeout(d.at.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(d) => due.push(Reverse(d)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// How long a datagram waits for a full kernel send buffer before it is lost, as it would
/// be on a congested network.
const SEND_PATIENCE: Duration = Duration::from_millis(20);

/// Sends one datagram, retrying while the kernel buffer is full (up to [`SEND_PATIENCE`]).
/// Other errors lose the datagram, as the network would.
fn send(socket: &dyn AsyncUdpSocket, d: &Delayed) {
    let transmit = Transmit {
        destination: d.destination,
        ecn: d.ecn,
        contents: &d.contents,
        segment_size: None,
        src_ip: d.src_ip,
    };
    let started = Instant::now();
    loop {
        match socket.try_send(&transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if started.elapsed() > SEND_PATIENCE {
                    tracing::debug!("emulated link: socket not writable; datagram lost");
                    return;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => {
                tracing::debug!(error = %e, "emulated link: send failed; datagram lost");
                return;
            }
            Ok(()) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> LinkEmulation {
        s.parse().unwrap()
    }

    #[test]
    fn delay_without_jitter_is_exact_and_keeps_order() {
        let now = Instant::now();
        let mut shaper = Shaper::new(spec("delay=20ms"), now);
        for _ in 0..10 {
            assert_eq!(
                shaper.schedule(now, 1200),
                Some(now + Duration::from_millis(20))
            );
        }
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let now = Instant::now();
        let mut shaper = Shaper::new(spec("delay=10ms,jitter=3ms,seed=1"), now);
        for _ in 0..1000 {
            let at = shaper.schedule(now, 1200).unwrap() - now;
            assert!(
                at >= Duration::from_millis(7) && at <= Duration::from_millis(13),
                "{at:?}"
            );
        }
    }

    #[test]
    fn loss_rate_is_close_to_spec_and_reproducible() {
        let now = Instant::now();
        let run = || {
            let mut shaper = Shaper::new(spec("loss=10%,seed=42"), now);
            (0..10_000)
                .map(|_| shaper.schedule(now, 100).is_none())
                .collect::<Vec<_>>()
        };
        let first = run();
        let lost = first.iter().filter(|&&l| l).count();
        assert!((900..1100).contains(&lost), "lost {lost} of 10000");
        assert_eq!(first, run(), "same seed, same losses");
    }

    #[test]
    fn rate_cap_spaces_datagrams_and_tail_drops() {
        let now = Instant::now();
        // 1 MB/s: burst 6000 B, queue 50 KB.
        let mut shaper = Shaper::new(spec("rate=8mbit"), now);
        let times: Vec<_> = (0..100).map(|_| shaper.schedule(now, 1000)).collect();
        assert_eq!(times[0], Some(now), "the burst leaves at once");
        let last_sent = times.iter().rposition(Option::is_some).unwrap();
        // 6 KB burst + 50 KB queue at 1 KB each.
        assert!(
            (54..=57).contains(&last_sent),
            "last queued datagram {last_sent}"
        );
        let waited = times[last_sent].unwrap() - now;
        assert!(waited >= Duration::from_millis(49) && waited <= Duration::from_millis(51));
        // After a second the bucket is full again.
        let later = now + Duration::from_secs(1);
        assert_eq!(shaper.schedule(later, 1000), Some(later));
    }
}
