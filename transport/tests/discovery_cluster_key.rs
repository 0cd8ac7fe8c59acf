//! Admission by cluster key on the libp2p side (pnet): real discovery nodes on 127.0.0.1,
//! mDNS off, static bootstrap peers that dial one another regardless of keys.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use transport::cluster_key::ClusterKey;
use transport::discovery::swarm::{self, Handle, Service};
use transport::discovery::{Advert, Config, Discovery, Inbox, Keypair, Multiaddr, PeerId};

const LIVENESS: Duration = Duration::from_millis(1000);

struct TestNode {
    handle: Handle,
    _inbox: Inbox,
    _service: Service,
    addr: Multiaddr,
}

async fn start(key: Option<&str>, bootstrap: Vec<Multiaddr>) -> TestNode {
    let mut config = Config::loopback(bootstrap, LIVENESS);
    config.cluster_key = key.map(|k| ClusterKey::from_secret(k.as_bytes()));
    let keypair = Keypair::generate_ed25519();
    let (handle, inbox, service) = swarm::spawn(config, keypair, CancellationToken::new())
        .await
        .expect("node starts");
    let addr = handle.listen_addrs().await.expect("running")[0].clone();
    let id = handle.local_peer_id();
    handle.publish(advert(id)).await.expect("publish");
    TestNode {
        handle,
        _inbox: inbox,
        _service: service,
        addr,
    }
}

fn advert(peer: PeerId) -> Advert {
    Advert {
        peer_id: peer,
        data_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 7000)),
        threads: 1,
        memory_budget_bytes: 1 << 30,
        models: vec![],
        layer_cost: None,
        version: "0.1.0".into(),
        seed_addr: None,
        platform: Default::default(),
        state: Default::default(),
    }
}

fn member_ids(h: &Handle) -> Vec<PeerId> {
    let mut ids: Vec<PeerId> = h.members().iter().map(|a| a.peer_id).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn only_nodes_holding_the_key_become_members() {
    // RUST_LOG=transport=warn shows the seed's warnings about the refused outsiders.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // The outsiders listen first, so the keyed seed can be told to dial them too.
    let wrong = start(Some("another cluster's key"), vec![]).await;
    let keyless = start(None, vec![]).await;
    let seed = start(
        Some("this cluster's key!"),
        vec![wrong.addr.clone(), keyless.addr.clone()],
    )
    .await;
    let started = Instant::now();
    let member = start(Some("this cluster's key!"), vec![seed.addr.clone()]).await;
    // The outsiders keep dialing the seed as well.
    let wrong_dialer = start(Some("another cluster's key"), vec![seed.addr.clone()]).await;
    let keyless_dialer = start(None, vec![seed.addr.clone()]).await;

    let (seed_id, member_id) = (seed.handle.local_peer_id(), member.handle.local_peer_id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while member_ids(&seed.handle) != [member_id] || member_ids(&member.handle) != [seed_id] {
        assert!(Instant::now() < deadline, "keyed pair never formed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("keyed pair formed in {:?}", started.elapsed());

    // Several liveness periods of redials: nobody else ever gets in, either way round.
    let watch_until = Instant::now() + 4 * LIVENESS;
    while Instant::now() < watch_until {
        assert_eq!(member_ids(&seed.handle), [member_id]);
        assert_eq!(member_ids(&member.handle), [seed_id]);
        for outsider in [&wrong, &keyless, &wrong_dialer, &keyless_dialer] {
            let seen = member_ids(&outsider.handle);
            assert!(
                !seen.contains(&seed_id) && !seen.contains(&member_id),
                "an outsider sees a keyed node: {seen:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The two keyless nodes have no key to disagree on: they form an open pair of their own
    // only if they dial each other, which they don't here.
    assert!(member_ids(&keyless.handle).is_empty());
}
