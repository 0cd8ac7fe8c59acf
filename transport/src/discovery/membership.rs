//! The membership table: connected peers, their adverts and liveness.
//!
//! Pure logic with time as a parameter; the event loop feeds it swarm events
//! and turns its answers into channel sends and disconnects.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use super::advert::Advert;
use super::error::RejectReason;
use super::event::MembershipEvent;
use super::wire::{AdvertVersion, PeerRecord, MAX_ADDRS_PER_PEER};

/// Connected peers keyed by id (so one entry per identity, whatever the
/// number of connections), with the advert of those that published one.
#[derive(Debug)]
pub(crate) struct Membership {
    liveness_timeout: Duration,
    peers: BTreeMap<PeerId, PeerEntry>,
    /// When [`Membership::expire`] last ran: a gap longer than the timeout means this node
    /// itself was not running (frozen, suspended), not that every peer fell silent.
    last_expire: Option<Instant>,
}

#[derive(Debug)]
struct PeerEntry {
    last_seen: Instant,
    listen_addrs: Vec<Multiaddr>,
    advert: Option<(AdvertVersion, Advert)>,
}

impl Membership {
    /// An empty table that evicts peers silent for longer than `liveness_timeout`.
    pub(crate) fn new(liveness_timeout: Duration) -> Self {
        Self {
            liveness_timeout,
            peers: BTreeMap::new(),
            last_expire: None,
        }
    }

    /// A connection to `peer` was established; returns whether the peer is new
    /// (first connection, or first since it was evicted).
    pub(crate) fn connected(&mut self, peer: PeerId, now: Instant) -> bool {
        let mut new = false;
        let entry = self.peers.entry(peer).or_insert_with(|| {
            new = true;
            PeerEntry {
                last_seen: now,
                listen_addrs: Vec::new(),
                advert: None,
            }
        });
        entry.last_seen = now;
        new
    }

    /// A connection to `peer` closed and `remaining` are still open.
    pub(crate) fn disconnected(&mut self, peer: PeerId, remaining: u32) -> Option<MembershipEvent> {
        if remaining > 0 {
            return None;
        }
        let entry = self.peers.remove(&peer)?;
        entry.advert.map(|_| MembershipEvent::Left(peer))
    }

    /// `peer` proved it is alive (ping answered, request received).
    pub(crate) fn seen(&mut self, peer: PeerId, now: Instant) {
        if let Some(entry) = self.peers.get_mut(&peer) {
            entry.last_seen = now;
        }
    }

    /// Records `peer`'s listen addresses; returns whether they changed.
    pub(crate) fn set_listen_addrs(&mut self, peer: PeerId, mut addrs: Vec<Multiaddr>) -> bool {
        addrs.truncate(MAX_ADDRS_PER_PEER);
        match self.peers.get_mut(&peer) {
            Some(entry) if entry.listen_addrs != addrs => {
                entry.listen_addrs = addrs;
                true
            }
            _ => false,
        }
    }

    /// Applies an advert received from the authenticated `sender`.
    ///
    /// Stale or repeated versions are ignored; a new incarnation always counts
    /// as a change, since a restarted node has lost its state even if its
    /// advert looks the same.
    pub(crate) fn apply_advert(
        &mut self,
        sender: PeerId,
        version: AdvertVersion,
        advert: Advert,
    ) -> Result<Option<MembershipEvent>, RejectReason> {
        if advert.peer_id != sender {
            return Err(RejectReason::ForeignAdvert);
        }
        // Adverts only arrive over a connection, so the entry exists unless the
        // peer was just evicted; then the advert waits for a fresh connection.
        let Some(entry) = self.peers.get_mut(&sender) else {
            return Ok(None);
        };
        let event = match &entry.advert {
            None => MembershipEvent::Joined(advert.clone()),
            Some((old_version, _)) if version <= *old_version => return Ok(None),
            Some((old_version, old))
                if old_version.incarnation == version.incarnation && *old == advert =>
            {
                entry.advert = Some((version, advert));
                return Ok(None);
            }
            Some(_) => MembershipEvent::Updated(advert.clone()),
        };
        entry.advert = Some((version, advert));
        Ok(Some(event))
    }

    /// The incarnation of `peer`'s last accepted advert, if any.
    pub(crate) fn incarnation(&self, peer: &PeerId) -> Option<u64> {
        self.peers
            .get(peer)?
            .advert
            .as_ref()
            .map(|(v, _)| v.incarnation)
    }

    /// Removes every peer silent for longer than the liveness timeout.
    /// Returns the evicted peers (to disconnect) and the `Left` events.
    ///
    /// Called every fraction of the timeout. If the previous call was more than a timeout
    /// ago, this node was stopped (SIGSTOP, a frozen cgroup, a suspended VM): its peers
    /// could not be heard, which says nothing about them, so each gets a full timeout from
    /// now to answer a ping instead of all being evicted at once. (Evicting them made a
    /// thawed coordinator plan the whole model onto itself.)
    pub(crate) fn expire(&mut self, now: Instant) -> (Vec<PeerId>, Vec<MembershipEvent>) {
        let stalled = self
            .last_expire
            .is_some_and(|last| now.saturating_duration_since(last) > self.liveness_timeout);
        self.last_expire = Some(now);
        if stalled {
            for entry in self.peers.values_mut() {
                entry.last_seen = entry.last_seen.max(now);
            }
            return (Vec::new(), Vec::new());
        }
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_seen) > self.liveness_timeout)
            .map(|(peer, _)| *peer)
            .collect();
        let mut events = Vec::new();
        for peer in &stale {
            if let Some(event) = self.disconnected(*peer, 0) {
                events.push(event);
            }
        }
        (stale, events)
    }

    /// Whether `peer` has a live entry.
    #[cfg(test)]
    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Connected peer ids, ascending.
    pub(crate) fn connected_peers(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    /// The adverts of all members, ordered by peer id.
    pub(crate) fn members(&self) -> Vec<Advert> {
        self.peers
            .values()
            .filter_map(|e| e.advert.as_ref().map(|(_, a)| a.clone()))
            .collect()
    }

    /// The record of `peer` if its listen addresses are known.
    pub(crate) fn record(&self, peer: &PeerId) -> Option<PeerRecord> {
        let entry = self.peers.get(peer)?;
        (!entry.listen_addrs.is_empty()).then(|| PeerRecord {
            peer_id: *peer,
            addrs: entry.listen_addrs.clone(),
        })
    }

    /// Records of every connected peer with known addresses, except `exclude`.
    pub(crate) fn records_except(&self, exclude: &PeerId) -> Vec<PeerRecord> {
        self.peers
            .keys()
            .filter(|p| *p != exclude)
            .filter_map(|p| self.record(p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::discovery::advert::AdvertState;

    fn advert(peer: PeerId, epoch: u64) -> Advert {
        Advert {
            peer_id: peer,
            data_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 4000)),
            threads: 4,
            memory_budget_bytes: 1 << 30,
            models: vec!["ab".repeat(32)],
            layer_cost: None,
            version: "test".into(),
            seed_addr: None,
            platform: Default::default(),
            state: AdvertState {
                epoch,
                ready: false,
                stage_addr: None,
                ..Default::default()
            },
        }
    }

    fn v(incarnation: u64, seq: u64) -> AdvertVersion {
        AdvertVersion { incarnation, seq }
    }

    #[test]
    fn advert_lifecycle_joined_updated_left() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(3));
        let p = PeerId::random();
        assert!(m.connected(p, t0));
        assert!(
            m.members().is_empty(),
            "connected but not advertised is not a member"
        );
        assert_eq!(
            m.apply_advert(p, v(1, 1), advert(p, 0)),
            Ok(Some(MembershipEvent::Joined(advert(p, 0))))
        );
        // Same content, newer seq: refresh only.
        assert_eq!(m.apply_advert(p, v(1, 2), advert(p, 0)), Ok(None));
        // Stale version is ignored even with new content.
        assert_eq!(m.apply_advert(p, v(1, 1), advert(p, 9)), Ok(None));
        assert_eq!(
            m.apply_advert(p, v(1, 3), advert(p, 1)),
            Ok(Some(MembershipEvent::Updated(advert(p, 1))))
        );
        assert_eq!(m.members(), vec![advert(p, 1)]);
        // A second connection closing leaves the member in place.
        assert!(!m.connected(p, t0));
        assert_eq!(m.disconnected(p, 1), None);
        assert_eq!(m.disconnected(p, 0), Some(MembershipEvent::Left(p)));
        assert!(m.members().is_empty());
    }

    #[test]
    fn restart_with_same_identity_is_one_update() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(3));
        let p = PeerId::random();
        m.connected(p, t0);
        m.apply_advert(p, v(10, 5), advert(p, 0)).unwrap();
        // The new process connects before the old connection is noticed dead.
        m.connected(p, t0);
        assert_eq!(
            m.apply_advert(p, v(11, 1), advert(p, 0)),
            Ok(Some(MembershipEvent::Updated(advert(p, 0))))
        );
        assert_eq!(m.apply_advert(p, v(11, 1), advert(p, 0)), Ok(None));
        assert_eq!(m.incarnation(&p), Some(11));
        assert_eq!(m.disconnected(p, 1), None);
        assert_eq!(m.members().len(), 1);
    }

    #[test]
    fn foreign_advert_is_rejected() {
        let mut m = Membership::new(Duration::from_secs(3));
        let (p, q) = (PeerId::random(), PeerId::random());
        m.connected(p, Instant::now());
        assert_eq!(
            m.apply_advert(p, v(1, 1), advert(q, 0)),
            Err(RejectReason::ForeignAdvert)
        );
        assert!(m.members().is_empty());
    }

    #[test]
    fn silent_peers_expire_and_live_ones_stay() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(3));
        let (alive, dead, anon) = (PeerId::random(), PeerId::random(), PeerId::random());
        for p in [alive, dead, anon] {
            m.connected(p, t0);
        }
        m.apply_advert(alive, v(1, 1), advert(alive, 0)).unwrap();
        m.apply_advert(dead, v(1, 1), advert(dead, 0)).unwrap();
        m.seen(alive, t0 + Duration::from_secs(2));
        let (evicted, events) = m.expire(t0 + Duration::from_secs(3));
        assert!(
            evicted.is_empty() && events.is_empty(),
            "not past the timeout yet"
        );
        let (mut evicted, events) = m.expire(t0 + Duration::from_millis(3500));
        evicted.sort();
        let mut want = vec![dead, anon];
        want.sort();
        assert_eq!(evicted, want);
        assert_eq!(events, vec![MembershipEvent::Left(dead)]);
        assert_eq!(m.members(), vec![advert(alive, 0)]);
        // An advert arriving after eviction does not resurrect the peer.
        assert_eq!(m.apply_advert(dead, v(1, 2), advert(dead, 1)), Ok(None));
        assert!(!m.is_connected(&dead));
    }

    #[test]
    fn a_stall_of_this_node_evicts_nobody_until_a_timeout_after_it() {
        let t0 = Instant::now();
        let secs = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut m = Membership::new(Duration::from_secs(3));
        let (back, dead) = (PeerId::random(), PeerId::random());
        for p in [back, dead] {
            m.connected(p, t0);
            m.apply_advert(p, v(1, 1), advert(p, 0)).unwrap();
        }
        assert_eq!(m.expire(secs(0.75)), (vec![], vec![]));
        // The loop did not run for 10 s (this process was frozen): nobody is evicted.
        assert_eq!(m.expire(secs(10.75)), (vec![], vec![]));
        m.seen(back, secs(11.0));
        assert_eq!(m.expire(secs(11.5)), (vec![], vec![]));
        assert_eq!(m.expire(secs(12.25)), (vec![], vec![]));
        assert_eq!(m.expire(secs(13.0)), (vec![], vec![]));
        // A full timeout after the stall, the peer that never answered goes.
        assert_eq!(m.expire(secs(13.75)), (vec![], vec![]));
        assert_eq!(
            m.expire(secs(14.0)),
            (vec![dead], vec![MembershipEvent::Left(dead)])
        );
        assert_eq!(m.members(), vec![advert(back, 0)]);
    }

    #[test]
    fn records_need_listen_addrs() {
        let mut m = Membership::new(Duration::from_secs(3));
        let (p, q) = (PeerId::random(), PeerId::random());
        m.connected(p, Instant::now());
        m.connected(q, Instant::now());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert!(m.set_listen_addrs(p, vec![addr.clone()]));
        assert!(!m.set_listen_addrs(p, vec![addr.clone()]));
        assert_eq!(
            m.records_except(&q),
            vec![PeerRecord {
                peer_id: p,
                addrs: vec![addr]
            }]
        );
        assert!(m.records_except(&p).is_empty());
    }
}
