//! Real libp2p discovery nodes on 127.0.0.1 with mDNS off and static
//! bootstrap peers. Timeouts are safety nets: each wait ends as soon as the
//! condition holds.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use transport::discovery::swarm::{self, Handle, Service};
use transport::discovery::{
    Advert, AdvertState, Config, Discovery, DiscoveryError, InboundMessage, Inbox, Keypair,
    LayerCost, MembershipEvent, Multiaddr, PeerId, SendError,
};

const LIVENESS: Duration = Duration::from_millis(1000);
const SAFETY: Duration = Duration::from_secs(10);

struct TestNode {
    handle: Handle,
    inbox: Inbox,
    service: Service,
    addr: Multiaddr,
}

async fn start(keypair: Keypair, bootstrap: Vec<Multiaddr>) -> TestNode {
    let config = Config::loopback(bootstrap, LIVENESS);
    let (handle, inbox, service) = swarm::spawn(config, keypair, CancellationToken::new())
        .await
        .expect("node starts");
    let addr = handle.listen_addrs().await.expect("running")[0].clone();
    TestNode {
        handle,
        inbox,
        service,
        addr,
    }
}

fn advert(peer: PeerId, epoch: u64) -> Advert {
    Advert {
        peer_id: peer,
        data_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 7000)),
        threads: 8,
        memory_budget_bytes: 8 << 30,
        models: vec!["0f".repeat(32)],
        layer_cost: Some(LayerCost {
            decode_ms: 0.75,
            prefill_ms_per_token: 0.05,
        }),
        version: "0.1.0".into(),
        seed_addr: None,
        platform: Default::default(),
        state: AdvertState {
            epoch,
            ready: epoch > 0,
            stage_addr: None,
            ..Default::default()
        },
    }
}

/// Polls `cond` until it holds; panics with `what` after the safety timeout.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SAFETY;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Next event about `peer`, skipping events about others.
async fn next_event_about(
    rx: &mut broadcast::Receiver<MembershipEvent>,
    peer: PeerId,
) -> MembershipEvent {
    within(async {
        loop {
            let event = rx.recv().await.expect("event channel open");
            if event.peer_id() == peer {
                return event;
            }
        }
    })
    .await
}

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(SAFETY, fut)
        .await
        .expect("safety timeout")
}

fn member_ids(h: &Handle) -> Vec<PeerId> {
    h.members().iter().map(|a| a.peer_id).collect()
}

/// Starts `n` nodes that all bootstrap to the first one, publishes an advert
/// on each, and waits until every node sees every other.
async fn mesh(n: usize) -> Vec<TestNode> {
    let first = start(Keypair::generate_ed25519(), vec![]).await;
    let seed = first.addr.clone();
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(start(Keypair::generate_ed25519(), vec![seed.clone()]).await);
    }
    for node in &nodes {
        let id = node.handle.local_peer_id();
        node.handle.publish(advert(id, 0)).await.expect("publish");
    }
    for node in &nodes {
        let mut want: Vec<PeerId> = nodes
            .iter()
            .map(|n| n.handle.local_peer_id())
            .filter(|p| *p != node.handle.local_peer_id())
            .collect();
        want.sort();
        wait_until("full mesh membership", || member_ids(&node.handle) == want).await;
    }
    nodes
}

#[tokio::test]
async fn three_nodes_find_each_other_through_one_bootstrap_peer() {
    let started = Instant::now();
    let nodes = mesh(3).await;
    // B and C only knew A; they learnt of each other by peer exchange.
    for node in &nodes {
        for member in node.handle.members().iter() {
            assert_eq!(
                *member,
                advert(member.peer_id, 0),
                "advert content arrives intact"
            );
        }
    }
    eprintln!("3-node mesh formed in {:?}", started.elapsed());
}

#[tokio::test]
async fn advert_update_reaches_every_peer() {
    let nodes = mesh(3).await;
    let b = nodes[1].handle.local_peer_id();
    let mut rx_a = nodes[0].handle.subscribe();
    let mut rx_c = nodes[2].handle.subscribe();
    let started = Instant::now();
    nodes[1].handle.publish(advert(b, 7)).await.unwrap();
    assert_eq!(
        next_event_about(&mut rx_a, b).await,
        MembershipEvent::Updated(advert(b, 7))
    );
    assert_eq!(
        next_event_about(&mut rx_c, b).await,
        MembershipEvent::Updated(advert(b, 7))
    );
    eprintln!(
        "advert update reached both peers in {:?}",
        started.elapsed()
    );
    // Re-publishing the same advert changes nothing anyone can see.
    nodes[1].handle.publish(advert(b, 7)).await.unwrap();
    let a_view = nodes[0].handle.members();
    assert_eq!(a_view.iter().find(|m| m.peer_id == b), Some(&advert(b, 7)));
}

#[tokio::test]
async fn broadcast_is_acknowledged_by_every_member() {
    let mut nodes = mesh(3).await;
    let a = nodes[0].handle.local_peer_id();
    let report = nodes[0].handle.broadcast(b"plan epoch 1".to_vec()).await;
    assert!(report.all_delivered(), "failures: {:?}", report.failed);
    let mut delivered = report.delivered.clone();
    delivered.sort();
    assert_eq!(delivered, member_ids(&nodes[0].handle));
    for node in &mut nodes[1..] {
        let got = within(node.inbox.recv()).await.expect("inbox open");
        assert_eq!(
            got,
            InboundMessage {
                from: a,
                payload: b"plan epoch 1".to_vec()
            }
        );
    }
    // Point-to-point reply with an ack.
    let c = nodes[2].handle.local_peer_id();
    nodes[2]
        .handle
        .send_to(a, b"ack epoch 1".to_vec())
        .await
        .unwrap();
    let got = within(nodes[0].inbox.recv()).await.unwrap();
    assert_eq!(
        got,
        InboundMessage {
            from: c,
            payload: b"ack epoch 1".to_vec()
        }
    );
}

#[tokio::test]
async fn send_failures_are_reported() {
    let mut nodes = mesh(2).await;
    let b = nodes[1].handle.local_peer_id();
    let too_big = vec![0u8; Config::default().max_message_bytes + 1];
    assert!(matches!(
        nodes[0].handle.send_to(b, too_big).await,
        Err(SendError::TooLarge { .. })
    ));
    assert_eq!(
        nodes[0].handle.send_to(PeerId::random(), vec![1]).await,
        Err(SendError::Unreachable)
    );
    // A closed inbox is a refusal, not a silent loss.
    let (_tx, closed) = tokio::sync::mpsc::channel(1);
    drop(std::mem::replace(&mut nodes[1].inbox, closed));
    let result = nodes[0].handle.send_to(b, vec![1]).await;
    assert!(matches!(result, Err(SendError::Rejected(_))), "{result:?}");
    let foreign = advert(PeerId::random(), 0);
    assert_eq!(
        nodes[0].handle.publish(foreign).await,
        Err(DiscoveryError::ForeignAdvert)
    );
}

#[tokio::test]
async fn stopped_node_leaves_every_view() {
    let mut nodes = mesh(3).await;
    let gone = nodes.pop().unwrap();
    let gone_id = gone.handle.local_peer_id();
    let mut rx: Vec<_> = nodes.iter().map(|n| n.handle.subscribe()).collect();
    let started = Instant::now();
    gone.service.shutdown().await;
    for rx in &mut rx {
        assert_eq!(
            next_event_about(rx, gone_id).await,
            MembershipEvent::Left(gone_id)
        );
    }
    let elapsed = started.elapsed();
    eprintln!("stopped node left both views in {elapsed:?}");
    assert!(elapsed < LIVENESS * 2, "took {elapsed:?}");
    for node in &nodes {
        assert_eq!(node.handle.members().len(), 1);
    }
}

#[tokio::test]
async fn silent_peer_is_evicted_within_the_liveness_timeout() {
    // B reaches A only through a relay that can stop forwarding while keeping
    // both TCP connections open: the peer is gone without a clean close.
    let a = start(Keypair::generate_ed25519(), vec![]).await;
    let relay = Relay::start(tcp_addr(&a.addr)).await;
    let b = start(Keypair::generate_ed25519(), vec![relay.multiaddr()]).await;
    let (a_id, b_id) = (a.handle.local_peer_id(), b.handle.local_peer_id());
    a.handle.publish(advert(a_id, 0)).await.unwrap();
    b.handle.publish(advert(b_id, 0)).await.unwrap();
    wait_until("A sees B", || member_ids(&a.handle) == vec![b_id]).await;
    wait_until("B sees A", || member_ids(&b.handle) == vec![a_id]).await;
    let mut rx_a = a.handle.subscribe();
    let mut rx_b = b.handle.subscribe();
    // Alive peers stay: two timeouts of healthy pings evict nobody.
    tokio::time::sleep(LIVENESS * 2).await;
    assert_eq!(member_ids(&a.handle), vec![b_id]);
    let started = Instant::now();
    relay.blackhole();
    assert_eq!(
        next_event_about(&mut rx_a, b_id).await,
        MembershipEvent::Left(b_id)
    );
    assert_eq!(
        next_event_about(&mut rx_b, a_id).await,
        MembershipEvent::Left(a_id)
    );
    let elapsed = started.elapsed();
    eprintln!("silent peer evicted in {elapsed:?} (timeout {LIVENESS:?})");
    assert!(elapsed >= LIVENESS / 2, "evicted too early: {elapsed:?}");
    assert!(elapsed < LIVENESS * 2, "evicted too late: {elapsed:?}");
    assert!(a.handle.members().is_empty() && b.handle.members().is_empty());
    relay.stop();
}

#[tokio::test]
async fn restart_with_same_identity_gives_one_entry() {
    let a = start(Keypair::generate_ed25519(), vec![]).await;
    let b_key = Keypair::generate_ed25519();
    let b = start(b_key.clone(), vec![a.addr.clone()]).await;
    let (a_id, b_id) = (a.handle.local_peer_id(), b.handle.local_peer_id());
    a.handle.publish(advert(a_id, 0)).await.unwrap();
    b.handle.publish(advert(b_id, 3)).await.unwrap();
    wait_until("A sees B", || member_ids(&a.handle) == vec![b_id]).await;
    let mut rx = a.handle.subscribe();
    b.service.shutdown().await;
    assert_eq!(
        next_event_about(&mut rx, b_id).await,
        MembershipEvent::Left(b_id)
    );
    let b2 = start(b_key, vec![a.addr.clone()]).await;
    assert_eq!(b2.handle.local_peer_id(), b_id);
    b2.handle.publish(advert(b_id, 3)).await.unwrap();
    assert_eq!(
        next_event_about(&mut rx, b_id).await,
        MembershipEvent::Joined(advert(b_id, 3))
    );
    // A few refresh rounds later there is still exactly one entry and no more events.
    tokio::time::sleep(LIVENESS).await;
    assert_eq!(member_ids(&a.handle), vec![b_id]);
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
}

fn tcp_addr(addr: &Multiaddr) -> SocketAddr {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(v) => ip = Some(v),
            Protocol::Tcp(v) => port = Some(v),
            _ => {}
        }
    }
    SocketAddr::from((ip.expect("ip4"), port.expect("tcp")))
}

/// A TCP relay on 127.0.0.1 that can stop forwarding without closing anything.
struct Relay {
    local: SocketAddr,
    forwarding: Arc<AtomicBool>,
    cancel: CancellationToken,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let local = listener.local_addr().unwrap();
        let forwarding = Arc::new(AtomicBool::new(true));
        let cancel = CancellationToken::new();
        let (flag, stop) = (forwarding.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((s, _)) => s,
                        Err(_) => return,
                    },
                };
                let (flag, stop) = (flag.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(
                        pipe(ri, wo, flag.clone(), stop.clone()),
                        pipe(ro, wi, flag, stop)
                    );
                });
            }
        });
        Self {
            local,
            forwarding,
            cancel,
        }
    }

    fn multiaddr(&self) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{}", self.local.port())
            .parse()
            .unwrap()
    }

    fn blackhole(&self) {
        self.forwarding.store(false, Ordering::SeqCst);
    }

    fn stop(&self) {
        self.cancel.cancel();
    }
}

/// Copies bytes while `forwarding`; afterwards holds both ends open, silent,
/// until `stop`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    forwarding: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if !forwarding.load(Ordering::SeqCst) {
            stop.cancelled().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
