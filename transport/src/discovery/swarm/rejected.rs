//! Which refused connections are worth a warning: a peer failing the handshake (no cluster
//! key, the wrong one, or not a shoal node) may retry every second, so each source address is
//! warned about at most once per interval and the rest go to debug.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Source addresses remembered at once; past this, new ones are not warned about until old
/// ones age out (a scan from many addresses cannot grow the table).
const MAX_TRACKED: usize = 1024;

/// When each source address was last warned about.
#[derive(Debug)]
pub(crate) struct RejectLog {
    interval: Duration,
    last: HashMap<IpAddr, Instant>,
}

impl RejectLog {
    /// Warns about each address at most once per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    /// Whether a refused connection from `ip` at `now` gets a warning (and starts a new
    /// interval for that address).
    pub(crate) fn should_warn(&mut self, ip: IpAddr, now: Instant) -> bool {
        let interval = self.interval;
        let recent = |at: &Instant| now.saturating_duration_since(*at) < interval;
        if self.last.get(&ip).is_some_and(recent) {
            return false;
        }
        if self.last.len() >= MAX_TRACKED && !self.last.contains_key(&ip) {
            self.last.retain(|_, at| recent(at));
            if self.last.len() >= MAX_TRACKED {
                return false;
            }
        }
        self.last.insert(ip, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn once_per_address_per_interval() {
        let mut log = RejectLog::new(Duration::from_secs(60));
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        assert!(log.should_warn(a, t0));
        assert!(!log.should_warn(a, t0 + Duration::from_secs(1)));
        assert!(!log.should_warn(a, t0 + Duration::from_secs(59)));
        assert!(
            log.should_warn(b, t0 + Duration::from_secs(1)),
            "another address"
        );
        assert!(
            log.should_warn(a, t0 + Duration::from_secs(60)),
            "a new interval"
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut log = RejectLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            assert!(log.should_warn(IpAddr::from(Ipv4Addr::from(i)), t0));
        }
        let next = IpAddr::from(Ipv4Addr::from(MAX_TRACKED as u32));
        assert!(!log.should_warn(next, t0), "full of recent addresses");
        assert_eq!(log.last.len(), MAX_TRACKED);
        assert!(
            log.should_warn(next, t0 + Duration::from_secs(61)),
            "old ones aged out"
        );
        assert_eq!(log.last.len(), 1);
    }
}
