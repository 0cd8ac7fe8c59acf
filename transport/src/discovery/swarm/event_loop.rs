//! The task that owns the swarm: applies commands, reacts to swarm events and
//! keeps the membership view.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::super::advert::Advert;
use super::super::config::Config;
use super::super::error::{DiscoveryError, RejectReason, SendError, StartError};
use super::super::event::{InboundMessage, MembershipEvent};
use super::super::membership::Membership;
use super::super::wire::{
    AdvertVersion, Hello, PeerRecord, Request, Response, MAX_ADDRS_PER_PEER, MAX_PEER_RECORDS,
};
use super::behaviour::{Behaviour, BehaviourEvent, IDENTIFY_PROTOCOL};
use super::rejected::RejectLog;

/// Most outstanding `send_to` requests; past it callers get `Overloaded`.
const MAX_PENDING_SENDS: usize = 1024;

/// What a [`Handle`](super::Handle) asks of the event loop; each carries its reply.
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        // Boxed: an advert is several times the size of the other commands.
        advert: Box<Advert>,
        reply: oneshot::Sender<Result<(), DiscoveryError>>,
    },
    Send {
        peer: PeerId,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<(), SendError>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
}

/// A configured bootstrap address and what we know of the peer behind it.
#[derive(Debug)]
struct Bootstrap {
    addr: Multiaddr,
    /// Learnt from the first successful dial.
    peer: Option<PeerId>,
    /// The dial in flight, if any, so ticks do not pile dials up.
    dialing: Option<ConnectionId>,
}

/// Channels the loop reports through.
pub(crate) struct Outputs {
    pub(crate) events: broadcast::Sender<MembershipEvent>,
    pub(crate) view: watch::Sender<Arc<Vec<Advert>>>,
    pub(crate) inbox: mpsc::Sender<InboundMessage>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    out: Outputs,
    cancel: CancellationToken,
    membership: Membership,
    local_advert: Option<Advert>,
    version: AdvertVersion,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<(), SendError>>>,
    bootstrap: Vec<Bootstrap>,
    listen_addrs: Vec<Multiaddr>,
    tick_period: Duration,
    refresh_interval: Duration,
    next_refresh: Instant,
    /// Peers mDNS reported and has not expired, with their addresses. mDNS reports a peer
    /// once per record lifetime, so a peer that drops out (a paused process, a cut link)
    /// and comes back would not be dialed again until its record expires; ticks redial
    /// these instead.
    mdns_peers: HashMap<PeerId, Vec<Multiaddr>>,
    /// Next time disconnected mDNS peers are redialed.
    next_redial: Instant,
    /// Sources of refused incoming connections recently warned about.
    rejected: RejectLog,
}

/// A source whose incoming connections keep failing their handshake is warned about once
/// per this interval; the repeats go to debug.
const REJECT_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// How often disconnected peers known from mDNS are redialed.
const REDIAL_INTERVAL: Duration = Duration::from_secs(2);

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        config: &Config,
        commands: mpsc::Receiver<Command>,
        out: Outputs,
        cancel: CancellationToken,
    ) -> Self {
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        Self {
            swarm,
            commands,
            out,
            cancel,
            membership: Membership::new(config.liveness_timeout),
            local_advert: None,
            version: AdvertVersion {
                incarnation,
                seq: 0,
            },
            pending: HashMap::new(),
            bootstrap: config
                .bootstrap
                .iter()
                .map(|addr| Bootstrap {
                    addr: addr.clone(),
                    peer: None,
                    dialing: None,
                })
                .collect(),
            listen_addrs: Vec::new(),
            // Eviction happens between 1 and 1.25 liveness timeouts.
            tick_period: (config.liveness_timeout / 4).min(config.refresh_interval),
            refresh_interval: config.refresh_interval,
            next_refresh: Instant::now() + config.refresh_interval,
            mdns_peers: HashMap::new(),
            next_redial: Instant::now() + REDIAL_INTERVAL,
            rejected: RejectLog::new(REJECT_WARN_INTERVAL),
        }
    }

    /// Starts listening and drives the swarm until each listener reported an address.
    pub(crate) async fn listen(
        &mut self,
        addrs: &[Multiaddr],
        timeout: Duration,
    ) -> Result<(), StartError> {
        for addr in addrs {
            self.swarm
                .listen_on(addr.clone())
                .map_err(|e| StartError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut listeners = std::collections::HashSet::new();
        while listeners.len() < addrs.len() {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| StartError::ListenTimeout)?;
            if let SwarmEvent::NewListenAddr { listener_id, .. } = &event {
                listeners.insert(*listener_id);
            }
            if let SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } = &event
            {
                let addr = addresses.first().cloned().unwrap_or_else(Multiaddr::empty);
                let reason = match reason {
                    Ok(()) => "listener closed".to_owned(),
                    Err(e) => e.to_string(),
                };
                return Err(StartError::Listen { addr, reason });
            }
            self.on_swarm_event(event);
        }
        Ok(())
    }

    /// Runs until cancelled or until every handle is dropped.
    pub(crate) async fn run(mut self) {
        self.dial_bootstrap();
        let mut tick = tokio::time::interval(self.tick_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => self.on_tick(Instant::now()),
            }
        }
        info!("discovery event loop stopped");
        // Dropping the swarm closes every connection; pending replies see `Stopped`.
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { advert, reply } => {
                let result = self.publish(*advert);
                let _ = reply.send(result);
            }
            Command::Send {
                peer,
                payload,
                reply,
            } => {
                if self.pending.len() >= MAX_PENDING_SENDS {
                    let _ = reply.send(Err(SendError::Overloaded));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_request(&peer, Request::Message(payload));
                self.pending.insert(id, reply);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
        }
    }

    fn publish(&mut self, advert: Advert) -> Result<(), DiscoveryError> {
        if advert.peer_id != *self.swarm.local_peer_id() {
            return Err(DiscoveryError::ForeignAdvert);
        }
        debug!(
            epoch = advert.state.epoch,
            ready = advert.state.ready,
            "publishing advert"
        );
        self.local_advert = Some(advert);
        self.version.seq += 1;
        self.hello_all();
        Ok(())
    }

    fn on_tick(&mut self, now: Instant) {
        let (evicted, events) = self.membership.expire(now);
        for peer in evicted {
            info!(%peer, "peer silent past the liveness timeout; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.emit_all(events);
        self.dial_bootstrap();
        if now >= self.next_redial {
            self.next_redial = now + REDIAL_INTERVAL;
            let records: Vec<PeerRecord> = self
                .mdns_peers
                .iter()
                .filter(|(peer, _)| !self.swarm.is_connected(peer))
                .map(|(peer, addrs)| PeerRecord {
                    peer_id: *peer,
                    addrs: addrs.clone(),
                })
                .collect();
            for record in records {
                self.dial_peer(record);
            }
        }
        if now >= self.next_refresh {
            self.next_refresh = now + self.refresh_interval;
            self.hello_all();
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = Instant::now();
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                for b in &mut self.bootstrap {
                    if b.dialing == Some(connection_id) {
                        b.dialing = None;
                        b.peer = Some(peer_id);
                    }
                }
                if self.membership.connected(peer_id, now) {
                    let peers = self.membership.records_except(&peer_id);
                    self.send_hello(peer_id, peers);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, remaining = num_established, ?cause, "connection closed");
                if let Some(event) = self.membership.disconnected(peer_id, num_established) {
                    self.emit(event);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                debug!(peer = ?peer_id, %error, "dial failed");
                for b in &mut self.bootstrap {
                    if b.dialing == Some(connection_id) {
                        b.dialing = None;
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                // Under pnet a peer without this cluster's key fails here (noise cannot be
                // negotiated through the wrong key's stream cipher); so does anything that is
                // not a shoal node.
                let ip = send_back_addr.iter().find_map(|p| match p {
                    Protocol::Ip4(ip) => Some(IpAddr::from(ip)),
                    Protocol::Ip6(ip) => Some(IpAddr::from(ip)),
                    _ => None,
                });
                if ip.is_some_and(|ip| self.rejected.should_warn(ip, now)) {
                    warn!(
                        addr = %send_back_addr,
                        %error,
                        "refused a connection that failed its handshake: a peer without this \
                         cluster's key, or not a shoal node (repeats from this address are \
                         logged at debug for a minute)"
                    );
                } else {
                    debug!(addr = %send_back_addr, %error, "refused a connection");
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event, now),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent, now: Instant) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != IDENTIFY_PROTOCOL {
                    // mDNS also finds unrelated libp2p nodes on the LAN.
                    debug!(peer = %peer_id, version = %info.protocol_version, "not a shoal node");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                self.learn_addrs(peer_id, info.listen_addrs);
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => match result {
                Ok(_) => self.membership.seen(peer, now),
                Err(error) => {
                    // Liveness is per peer, so a dead connection next to a live
                    // one (a restart with the same identity) is closed here.
                    debug!(%peer, %error, "ping failed; closing that connection");
                    self.swarm.close_connection(connection);
                }
            },
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer_id, addrs) in by_peer {
                    debug!(peer = %peer_id, "found by mDNS");
                    let known = self.mdns_peers.entry(peer_id).or_default();
                    for addr in &addrs {
                        if !known.contains(addr) && known.len() < MAX_ADDRS_PER_PEER {
                            known.push(addr.clone());
                        }
                    }
                    self.dial_peer(PeerRecord { peer_id, addrs });
                }
            }
            // Expiry of an mDNS record says nothing about liveness (ping decides); it only
            // ends redialing that address.
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, addr) in gone {
                    if let Some(addrs) = self.mdns_peers.get_mut(&peer) {
                        addrs.retain(|a| *a != addr);
                        if addrs.is_empty() {
                            self.mdns_peers.remove(&peer);
                        }
                    }
                }
            }
            BehaviourEvent::Rpc(event) => self.on_rpc_event(event, now),
        }
    }

    fn on_rpc_event(&mut self, event: request_response::Event<Request, Response>, now: Instant) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.membership.seen(peer, now);
                    self.on_request(peer, request, channel);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.membership.seen(peer, now);
                    let result = match response {
                        Response::Accepted => Ok(()),
                        Response::Rejected(reason) => Err(SendError::Rejected(reason)),
                    };
                    match self.pending.remove(&request_id) {
                        Some(reply) => {
                            let _ = reply.send(result);
                        }
                        None => {
                            if let Err(error) = result {
                                warn!(%peer, %error, "peer refused our hello");
                            }
                        }
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(%peer, %error, "request failed");
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(map_outbound_failure(error)));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        let response = match request {
            Request::Hello(hello) => self.on_hello(peer, *hello),
            Request::Message(payload) => {
                match self.out.inbox.try_send(InboundMessage {
                    from: peer,
                    payload,
                }) {
                    Ok(()) => Response::Accepted,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        Response::Rejected(RejectReason::InboxFull)
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        Response::Rejected(RejectReason::InboxClosed)
                    }
                }
            }
        };
        // Fails only if the connection closed meanwhile; the sender sees that.
        let _ = self
            .swarm
            .behaviour_mut()
            .rpc
            .send_response(channel, response);
    }

    fn on_hello(&mut self, peer: PeerId, hello: Hello) -> Response {
        for record in hello.peers.into_iter().take(MAX_PEER_RECORDS) {
            self.dial_peer(record);
        }
        let Some(advert) = hello.advert else {
            return Response::Accepted;
        };
        let known = self.membership.incarnation(&peer);
        match self.membership.apply_advert(peer, hello.version, advert) {
            Ok(Some(event)) => {
                self.emit(event);
                // A new incarnation (first contact or a restart behind a
                // connection we still hold) may have missed our hello.
                if known != Some(hello.version.incarnation) {
                    let peers = self.membership.records_except(&peer);
                    self.send_hello(peer, peers);
                }
                Response::Accepted
            }
            Ok(None) => Response::Accepted,
            Err(reason) => {
                warn!(%peer, %reason, "refused advert");
                Response::Rejected(reason)
            }
        }
    }

    /// Stores a peer's listen addresses and, when they are new, tells every
    /// other peer about it so the mesh closes without waiting for a refresh.
    fn learn_addrs(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let addrs: Vec<Multiaddr> = addrs.into_iter().take(MAX_ADDRS_PER_PEER).collect();
        for addr in &addrs {
            self.swarm.add_peer_address(peer, addr.clone());
        }
        if !self.membership.set_listen_addrs(peer, addrs) {
            return;
        }
        let Some(record) = self.membership.record(&peer) else {
            return;
        };
        for other in self.membership.connected_peers() {
            if other != peer {
                self.send_hello(other, vec![record.clone()]);
            }
        }
    }

    /// Dials a peer we heard of unless it is us or already connected.
    ///
    /// Every dial takes a fresh ephemeral port (`allocate_new_port`). libp2p's
    /// default reuses the listen port as the source port, so two nodes that
    /// dial each other at the same instant (mDNS makes every node discover
    /// every other at once) build the same TCP 4-tuple from both ends: the SYNs
    /// cross, TCP simultaneous open merges them into one connection on which
    /// both sides act as the noise initiator, the handshake fails and both
    /// dials fail. mDNS reports a peer only once per TTL, so nothing redials
    /// and the pair never connects.
    fn dial_peer(&mut self, mut record: PeerRecord) {
        let local = *self.swarm.local_peer_id();
        if record.peer_id == local || self.swarm.is_connected(&record.peer_id) {
            return;
        }
        record.addrs.truncate(MAX_ADDRS_PER_PEER);
        for addr in &record.addrs {
            self.swarm.add_peer_address(record.peer_id, addr.clone());
        }
        let opts = DialOpts::peer_id(record.peer_id)
            .addresses(record.addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        if let Err(error) = self.swarm.dial(opts) {
            debug!(peer = %record.peer_id, %error, "not dialing");
        }
    }

    /// Dials every bootstrap address whose peer is not connected and not being dialed.
    fn dial_bootstrap(&mut self) {
        for i in 0..self.bootstrap.len() {
            let b = &self.bootstrap[i];
            let connected = b.peer.is_some_and(|p| self.swarm.is_connected(&p));
            let own = self
                .listen_addrs
                .iter()
                .any(|a| same_transport_addr(a, &b.addr));
            if connected || own || b.dialing.is_some() {
                continue;
            }
            let opts = DialOpts::unknown_peer_id()
                .address(b.addr.clone())
                .allocate_new_port()
                .build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => self.bootstrap[i].dialing = Some(id),
                Err(error) => {
                    debug!(addr = %self.bootstrap[i].addr, %error, "bootstrap dial refused")
                }
            }
        }
    }

    fn send_hello(&mut self, peer: PeerId, peers: Vec<PeerRecord>) {
        let hello = Hello {
            version: self.version,
            advert: self.local_advert.clone(),
            peers,
        };
        // Hello acknowledgements are not awaited; a failure heals on the next refresh.
        let _ = self
            .swarm
            .behaviour_mut()
            .rpc
            .send_request(&peer, Request::Hello(Box::new(hello)));
    }

    fn hello_all(&mut self) {
        for peer in self.membership.connected_peers() {
            let peers = self.membership.records_except(&peer);
            self.send_hello(peer, peers);
        }
    }

    fn emit(&mut self, event: MembershipEvent) {
        info!(peer = %event.peer_id(), kind = event_kind(&event), "membership changed");
        // No subscriber is fine: the view below still changes.
        let _ = self.out.events.send(event);
        self.out
            .view
            .send_replace(Arc::new(self.membership.members()));
    }

    fn emit_all(&mut self, events: Vec<MembershipEvent>) {
        for event in events {
            self.emit(event);
        }
    }
}

fn event_kind(event: &MembershipEvent) -> &'static str {
    match event {
        MembershipEvent::Joined(_) => "joined",
        MembershipEvent::Updated(_) => "updated",
        MembershipEvent::Left(_) => "left",
    }
}

fn map_outbound_failure(error: OutboundFailure) -> SendError {
    match error {
        OutboundFailure::DialFailure => SendError::Unreachable,
        OutboundFailure::Timeout => SendError::Timeout,
        OutboundFailure::ConnectionClosed => SendError::ConnectionClosed,
        OutboundFailure::UnsupportedProtocols => SendError::UnsupportedProtocol,
        OutboundFailure::Io(e) => SendError::Io(e.to_string()),
    }
}

/// Compares two addresses ignoring a trailing `/p2p/<id>`.
fn same_transport_addr(a: &Multiaddr, b: &Multiaddr) -> bool {
    let strip = |m: &Multiaddr| -> Vec<Protocol<'static>> {
        m.iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .map(|p| p.acquire())
            .collect()
    };
    strip(a) == strip(b)
}
