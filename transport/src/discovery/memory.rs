//! An in-memory [`Discovery`] for deterministic tests of the layers above.
//!
//! A [`MemoryNetwork`] plays the part of the LAN: every node that joined it is
//! connected to every other, adverts and messages are delivered synchronously,
//! and the test decides when a node dies ([`MemoryNetwork::kill`]) or restarts
//! ([`MemoryNetwork::join`] again with the same peer id). The events seen by
//! the layer above follow the libp2p service's rules.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;
use tokio::sync::{broadcast, mpsc, watch};

use super::advert::Advert;
use super::error::{DiscoveryError, RejectReason, SendError};
use super::event::{InboundMessage, Inbox, MembershipEvent};
use super::Discovery;

/// Channel capacities of the in-memory nodes.
#[derive(Debug, Clone, Copy)]
pub struct MemoryConfig {
    /// Capacity of each node's membership event channel.
    pub event_capacity: usize,
    /// Capacity of each node's inbox.
    pub inbox_capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            event_capacity: 256,
            inbox_capacity: 64,
        }
    }
}

/// A simulated network of fully connected nodes.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<NetState>>,
}

#[derive(Debug, Default)]
struct NetState {
    config: MemoryConfig,
    nodes: BTreeMap<PeerId, Node>,
    next_incarnation: u64,
}

#[derive(Debug)]
struct Node {
    incarnation: u64,
    advert: Option<Advert>,
    /// Set when the advert was published by this incarnation (a restarted node
    /// keeps its old advert visible until it publishes again).
    fresh: bool,
    events: broadcast::Sender<MembershipEvent>,
    view: watch::Sender<Arc<Vec<Advert>>>,
    inbox: mpsc::Sender<InboundMessage>,
}

impl MemoryNetwork {
    /// An empty network with the given channel capacities.
    pub fn new(config: MemoryConfig) -> Self {
        let state = NetState {
            config,
            ..NetState::default()
        };
        Self {
            inner: Arc::new(Mutex::new(state)),
        }
    }

    /// Adds a node, or restarts it if `peer` is already present: the old
    /// handle stops working, its advert stays visible to others until the new
    /// incarnation publishes, which they see as one `Updated`.
    pub fn join(&self, peer: PeerId) -> (MemoryHandle, Inbox) {
        let mut state = self.lock();
        let MemoryConfig {
            event_capacity,
            inbox_capacity,
        } = state.config;
        let (events, _) = broadcast::channel(event_capacity.max(1));
        let (inbox_tx, inbox_rx) = mpsc::channel(inbox_capacity.max(1));
        state.next_incarnation += 1;
        let incarnation = state.next_incarnation;
        let advert = state.nodes.remove(&peer).and_then(|old| old.advert);
        let view = watch::channel(Arc::new(Vec::new())).0;
        state.nodes.insert(
            peer,
            Node {
                incarnation,
                advert,
                fresh: false,
                events,
                view,
                inbox: inbox_tx,
            },
        );
        // The newcomer sees every member at once, as after connecting.
        let members: Vec<Advert> = state
            .nodes
            .iter()
            .filter(|(id, _)| **id != peer)
            .filter_map(|(_, n)| n.advert.clone())
            .collect();
        if let Some(node) = state.nodes.get(&peer) {
            node.view.send_replace(Arc::new(members));
        }
        let handle = MemoryHandle {
            network: self.clone(),
            peer,
            incarnation,
        };
        (handle, inbox_rx)
    }

    /// Removes a node as if its process died: every other node sees `Left`
    /// (if it had published), and its handle stops working.
    pub fn kill(&self, peer: PeerId) {
        let mut state = self.lock();
        if let Some(node) = state.nodes.remove(&peer) {
            if node.advert.is_some() {
                state.broadcast_except(peer, MembershipEvent::Left(peer));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        // A panic while holding the lock leaves consistent data (every update
        // is a single map operation), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl NetState {
    /// Sends `event` to every node but `from` and refreshes their views.
    fn broadcast_except(&self, from: PeerId, event: MembershipEvent) {
        for (id, node) in &self.nodes {
            if *id == from {
                continue;
            }
            let _ = node.events.send(event.clone());
            let members: Vec<Advert> = self
                .nodes
                .iter()
                .filter(|(other, _)| *other != id)
                .filter_map(|(_, n)| n.advert.clone())
                .collect();
            node.view.send_replace(Arc::new(members));
        }
    }

    fn live_node(&self, peer: PeerId, incarnation: u64) -> Option<&Node> {
        self.nodes
            .get(&peer)
            .filter(|n| n.incarnation == incarnation)
    }
}

/// A node's handle on a [`MemoryNetwork`].
#[derive(Debug, Clone)]
pub struct MemoryHandle {
    network: MemoryNetwork,
    peer: PeerId,
    incarnation: u64,
}

impl Discovery for MemoryHandle {
    fn local_peer_id(&self) -> PeerId {
        self.peer
    }

    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        let state = self.network.lock();
        match state.live_node(self.peer, self.incarnation) {
            Some(node) => node.events.subscribe(),
            // A dead node's subscription is closed at once.
            None => broadcast::channel(1).1,
        }
    }

    fn members(&self) -> Arc<Vec<Advert>> {
        let state = self.network.lock();
        state
            .live_node(self.peer, self.incarnation)
            .map(|node| node.view.borrow().clone())
            .unwrap_or_default()
    }

    async fn publish(&self, advert: Advert) -> Result<(), DiscoveryError> {
        if advert.peer_id != self.peer {
            return Err(DiscoveryError::ForeignAdvert);
        }
        let mut state = self.network.lock();
        let node = state
            .nodes
            .get_mut(&self.peer)
            .filter(|n| n.incarnation == self.incarnation)
            .ok_or(DiscoveryError::Stopped)?;
        let event = match (&node.advert, node.fresh) {
            (None, _) => MembershipEvent::Joined(advert.clone()),
            (Some(old), true) if *old == advert => return Ok(()),
            // Changed content, or first publish after a restart.
            (Some(_), _) => MembershipEvent::Updated(advert.clone()),
        };
        node.advert = Some(advert);
        node.fresh = true;
        state.broadcast_except(self.peer, event);
        Ok(())
    }

    async fn send_to(&self, peer: PeerId, payload: Vec<u8>) -> Result<(), SendError> {
        let state = self.network.lock();
        state
            .live_node(self.peer, self.incarnation)
            .ok_or(SendError::Stopped)?;
        let target = state.nodes.get(&peer).ok_or(SendError::Unreachable)?;
        let message = InboundMessage {
            from: self.peer,
            payload,
        };
        match target.inbox.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(SendError::Rejected(RejectReason::InboxFull))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(SendError::Rejected(RejectReason::InboxClosed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;
    use crate::discovery::advert::AdvertState;

    fn advert(peer: PeerId, epoch: u64) -> Advert {
        Advert {
            peer_id: peer,
            data_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 5000)),
            threads: 2,
            memory_budget_bytes: 1 << 20,
            models: vec![],
            layer_cost: None,
            version: "t".into(),
            seed_addr: None,
            platform: Default::default(),
            state: AdvertState {
                epoch,
                ready: true,
                stage_addr: None,
                ..Default::default()
            },
        }
    }

    fn drain(rx: &mut broadcast::Receiver<MembershipEvent>) -> Vec<MembershipEvent> {
        let mut out = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(e) => out.push(e),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
                Err(TryRecvError::Lagged(n)) => panic!("lagged by {n}"),
            }
        }
    }

    #[tokio::test]
    async fn join_publish_update_kill() {
        let net = MemoryNetwork::new(MemoryConfig::default());
        let (a, b) = (PeerId::random(), PeerId::random());
        let (ha, _ia) = net.join(a);
        let mut ev_a = ha.subscribe();
        let (hb, _ib) = net.join(b);
        hb.publish(advert(b, 0)).await.unwrap();
        hb.publish(advert(b, 0)).await.unwrap();
        hb.publish(advert(b, 1)).await.unwrap();
        assert_eq!(
            drain(&mut ev_a),
            vec![
                MembershipEvent::Joined(advert(b, 0)),
                MembershipEvent::Updated(advert(b, 1))
            ]
        );
        assert_eq!(*ha.members(), vec![advert(b, 1)]);
        ha.publish(advert(a, 0)).await.unwrap();
        assert_eq!(*hb.members(), vec![advert(a, 0)]);
        net.kill(b);
        assert_eq!(drain(&mut ev_a), vec![MembershipEvent::Left(b)]);
        assert!(ha.members().is_empty());
        assert_eq!(hb.publish(advert(b, 2)).await, Err(DiscoveryError::Stopped));
    }

    #[tokio::test]
    async fn restart_is_one_update_and_one_entry() {
        let net = MemoryNetwork::new(MemoryConfig::default());
        let (a, b) = (PeerId::random(), PeerId::random());
        let (ha, _ia) = net.join(a);
        let (hb, _ib) = net.join(b);
        hb.publish(advert(b, 3)).await.unwrap();
        let mut ev_a = ha.subscribe();
        let (hb2, _ib2) = net.join(b);
        assert_eq!(hb.publish(advert(b, 3)).await, Err(DiscoveryError::Stopped));
        hb2.publish(advert(b, 3)).await.unwrap();
        assert_eq!(
            drain(&mut ev_a),
            vec![MembershipEvent::Updated(advert(b, 3))]
        );
        assert_eq!(ha.members().len(), 1);
    }

    #[tokio::test]
    async fn broadcast_reports_acks_and_full_inboxes() {
        let net = MemoryNetwork::new(MemoryConfig {
            event_capacity: 8,
            inbox_capacity: 1,
        });
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let mut nodes = Vec::new();
        for p in &peers {
            let (h, inbox) = net.join(*p);
            h.publish(advert(*p, 0)).await.unwrap();
            nodes.push((h, inbox));
        }
        let report = nodes[0].0.broadcast(b"plan v1".to_vec()).await;
        assert!(report.all_delivered());
        assert_eq!(report.delivered.len(), 2);
        // Node 1 reads its message; node 2 does not, so its inbox of one is full.
        let got = nodes[1].1.recv().await.unwrap();
        assert_eq!(
            got,
            InboundMessage {
                from: peers[0],
                payload: b"plan v1".to_vec()
            }
        );
        let report = nodes[0].0.broadcast(b"plan v2".to_vec()).await;
        assert_eq!(report.delivered, vec![peers[1]]);
        assert_eq!(
            report.failed,
            vec![(peers[2], SendError::Rejected(RejectReason::InboxFull))]
        );
        assert_eq!(
            nodes[0].0.send_to(PeerId::random(), vec![1]).await,
            Err(SendError::Unreachable)
        );
    }
}
