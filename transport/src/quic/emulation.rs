//! Link emulation for the data plane: a **test feature** that degrades a node's outgoing
//! QUIC datagrams with one-way delay, jitter, random loss and a bandwidth cap.
//!
//! Why here and not in the kernel: the testbed's kernel has no `netem`, and a container
//! fleet on one host otherwise sees sub-millisecond, lossless, multi-gigabit links that no
//! edge fleet has. Shaping at the QUIC socket exercises exactly the traffic we care about
//! (activation frames) and nothing else: the libp2p control plane and the HTTP API stay
//! unaffected.
//!
//! It is off unless [`super::EndpointConfig::link_emulation`] is set; with `None` the
//! endpoint binds quinn's own socket and pays nothing. Only outgoing datagrams are shaped,
//! so a spec applied on both ends of a link gives a round trip of twice the one-way delay.
//!
//! Spec strings look like `delay=10ms,jitter=2ms,loss=1%,rate=10mbit,seed=7`; every key is
//! optional, see [`LinkEmulation`]. `to=10.0.0.12` shapes only the datagrams to that address,
//! so one pair of a fleet can get a slow link while the others stay fast.

mod socket;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

pub(crate) use socket::bind;

/// Largest delay or jitter a spec accepts; anything longer is almost certainly a typo
/// (`delay=20s` for `20ms`) and would look like a dead peer to the idle timeout.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Slowest accepted rate: below this QUIC's 1200-byte handshake packets take over a second
/// each and the link never comes up within the handshake timeout.
const MIN_RATE_BYTES_PER_S: u64 = 1_000;

/// How one endpoint's outgoing datagrams are degraded. Parse from a spec string
/// ([`FromStr`]); [`fmt::Display`] prints a spec that parses back to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkEmulation {
    /// Fixed one-way delay added to every datagram (`delay=20ms`).
    pub delay: Duration,
    /// Each datagram's delay varies uniformly within `delay ± jitter` (clamped at zero), so
    /// datagrams may be reordered, as on real jittery paths (`jitter=2ms`).
    pub jitter: Duration,
    /// Probability in `0.0..=1.0` that a datagram is lost on the wire (`loss=1%`).
    pub loss: f64,
    /// Bandwidth cap in bytes per second, `None` for unlimited (`rate=10mbit`). Excess
    /// datagrams queue behind a token bucket and are tail-dropped when the queue is full.
    pub rate_bytes_per_s: Option<u64>,
    /// Seed of the loss and jitter RNG, so a run can be reproduced (`seed=7`, default 0).
    pub seed: u64,
    /// Only datagrams to this address are shaped (`to=10.0.0.12`); `None` shapes all.
    pub to: Option<IpAddr>,
}

impl LinkEmulation {
    /// Whether a datagram to `destination` goes through the emulated link.
    pub fn shapes(&self, destination: IpAddr) -> bool {
        self.to.is_none_or(|to| to == destination.to_canonical())
    }
}

/// Why a link emulation spec did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkEmulationError {
    /// A comma-separated item was not `key=value`.
    #[error("link emulation: expected key=value, got '{0}' (e.g. delay=10ms,jitter=2ms,loss=1%,rate=10mbit)")]
    Syntax(String),
    /// The key is not one of `delay`, `jitter`, `loss`, `rate`, `seed`, `to`.
    #[error("link emulation: unknown key '{0}' (known: delay, jitter, loss, rate, seed, to)")]
    UnknownKey(String),
    /// The same key appeared twice.
    #[error("link emulation: '{0}' given more than once")]
    Duplicate(String),
    /// The value of a known key is malformed or out of range.
    #[error("link emulation: bad {key} '{value}': {reason}")]
    Value {
        /// The key whose value was rejected.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What was expected.
        reason: String,
    },
}

impl FromStr for LinkEmulation {
    type Err = LinkEmulationError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut out = LinkEmulation::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| LinkEmulationError::Syntax(item.to_owned()))?;
            if seen.contains(&key) {
                return Err(LinkEmulationError::Duplicate(key.to_owned()));
            }
            match key {
                "delay" => out.delay = parse_duration("delay", value)?,
                "jitter" => out.jitter = parse_duration("jitter", value)?,
                "loss" => out.loss = parse_loss(value)?,
                "rate" => out.rate_bytes_per_s = Some(parse_rate(value)?),
                "seed" => {
                    out.seed = value
                        .parse()
                        .map_err(|_| bad("seed", value, "expected an unsigned integer"))?
                }
                "to" => {
                    let ip: IpAddr = value
                        .parse()
                        .map_err(|_| bad("to", value, "expected an IP address"))?;
                    out.to = Some(ip.to_canonical());
                }
                _ => return Err(LinkEmulationError::UnknownKey(key.to_owned())),
            }
            seen.push(key);
        }
        if seen.is_empty() {
            return Err(LinkEmulationError::Syntax(spec.to_owned()));
        }
        Ok(out)
    }
}

fn bad(key: &'static str, value: &str, reason: &str) -> LinkEmulationError {
    LinkEmulationError::Value {
        key,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Splits `12.5ms` into `(12.5, "ms")`.
fn split_number(value: &str) -> Option<(f64, &str)> {
    let end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let number: f64 = value[..end].parse().ok()?;
    number.is_finite().then_some((number, value[end..].trim()))
}

fn parse_duration(key: &'static str, value: &str) -> Result<Duration, LinkEmulationError> {
    const WANT: &str = "expected a duration like 10ms, 1.5ms, 500us or 1s";
    let (number, unit) = split_number(value).ok_or_else(|| bad(key, value, WANT))?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "us" | "µs" => number / 1e6,
        "" if number == 0.0 => 0.0,
        _ => return Err(bad(key, value, WANT)),
    };
    let duration = Duration::from_secs_f64(seconds);
    if duration > MAX_DELAY {
        return Err(bad(key, value, "must be at most 60s"));
    }
    Ok(duration)
}

fn parse_loss(value: &str) -> Result<f64, LinkEmulationError> {
    const WANT: &str = "expected a percentage from 0% to 100%, like 1% or 0.5%";
    let percent = value
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|p| (0.0..=100.0).contains(p))
        .ok_or_else(|| bad("loss", value, WANT))?;
    Ok(percent / 100.0)
}

fn parse_rate(value: &str) -> Result<u64, LinkEmulationError> {
    const WANT: &str = "expected a bit rate like 500kbit, 10mbit or 1gbit";
    let (number, unit) = split_number(value).ok_or_else(|| bad("rate", value, WANT))?;
    let bits_per_unit = match unit.to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(bad("rate", value, WANT)),
    };
    let bytes = (number * bits_per_unit / 8.0).round();
    if bytes < MIN_RATE_BYTES_PER_S as f64 {
        return Err(bad("rate", value, "must be at least 8kbit"));
    }
    if bytes > u64::MAX as f64 {
        return Err(bad("rate", value, "too large"));
    }
    Ok(bytes as u64)
}

/// Writes a duration with the largest unit that represents it exactly (down to µs).
fn fmt_duration(f: &mut fmt::Formatter<'_>, d: Duration) -> fmt::Result {
    let micros = d.as_micros();
    if micros.is_multiple_of(1_000) {
        write!(f, "{}ms", micros / 1_000)
    } else {
        write!(f, "{micros}us")
    }
}

impl fmt::Display for LinkEmulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("delay=")?;
        fmt_duration(f, self.delay)?;
        f.write_str(",jitter=")?;
        fmt_duration(f, self.jitter)?;
        // Four decimals of a percent is finer than any test needs and hides f64 noise
        // (0.05 * 100 = 5.000000000000001).
        let loss = format!("{:.4}", self.loss * 100.0);
        let loss = loss.trim_end_matches('0').trim_end_matches('.');
        write!(f, ",loss={loss}%")?;
        if let Some(bytes) = self.rate_bytes_per_s {
            let bits = bytes * 8;
            if bits.is_multiple_of(1_000_000) {
                write!(f, ",rate={}mbit", bits / 1_000_000)?;
            } else if bits.is_multiple_of(1_000) {
                write!(f, ",rate={}kbit", bits / 1_000)?;
            } else {
                write!(f, ",rate={bits}bit")?;
            }
        }
        write!(f, ",seed={}", self.seed)?;
        match self.to {
            Some(to) => write!(f, ",to={to}"),
            None => Ok(()),
        }
    }
}
