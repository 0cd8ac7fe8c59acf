//! Link admission: certificates bound to libp2p identities and the cluster-key proof. Real
//! QUIC endpoints on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use transport::cluster_key::ClusterKey;
use transport::quic::{
    Endpoint, EndpointConfig, FrameHeader, FrameKind, Identity, Libp2pIdentity, Link, LinkError,
};

fn key(secret: &str) -> ClusterKey {
    ClusterKey::from_secret(secret.as_bytes())
}

fn endpoint(keypair: &Keypair, cluster_key: Option<ClusterKey>) -> Endpoint {
    let mut config = EndpointConfig::new(
        Identity::from_keypair(keypair).expect("identity"),
        Arc::new(Libp2pIdentity),
    );
    config.cluster_key = cluster_key;
    config.handshake_timeout = Duration::from_secs(3);
    Endpoint::bind("127.0.0.1:0".parse().unwrap(), config).expect("bind")
}

/// Accepts links forever, echoing every frame back, and reports each accept error.
fn serve(acceptor: Endpoint) -> tokio::sync::mpsc::UnboundedReceiver<LinkError> {
    let (errors, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(result) = acceptor.accept().await {
            match result {
                Ok(link) => {
                    tokio::spawn(echo(link));
                }
                Err(e) => {
                    let _ = errors.send(e);
                }
            }
        }
    });
    rx
}

async fn echo(mut link: Link) {
    while let Ok(Some(frame)) = link.recv().await {
        let (header, payload) = (frame.header, frame.payload.to_vec());
        if link.send(&header, &payload).await.is_err() {
            return;
        }
    }
}

async fn round_trip(link: &mut Link) -> Result<(), LinkError> {
    let header = FrameHeader::new(FrameKind::Ping, 7, 1);
    link.send(&header, b"abc").await?;
    let frame = link
        .recv()
        .await?
        .ok_or(LinkError::Closed("ended".into()))?;
    assert_eq!(frame.payload, b"abc");
    Ok(())
}

#[tokio::test]
async fn same_key_links_carry_frames_and_name_the_peer() {
    let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let acceptor = endpoint(&a, Some(key("the cluster key 1")));
    let addr = acceptor.local_addr().unwrap();
    let mut errors = serve(acceptor);
    let connector = endpoint(&b, Some(key("the cluster key 1")));
    let mut link = connector.connect(addr).await.expect("same key admits");
    round_trip(&mut link).await.expect("frames flow");
    assert_eq!(link.peer_id(), Some(a.public().to_peer_id()));
    assert!(errors.try_recv().is_err(), "no accept error expected");
}

#[tokio::test]
async fn a_wrong_key_is_refused_quickly_on_both_sides_and_the_acceptor_keeps_serving() {
    let acceptor = endpoint(&Keypair::generate_ed25519(), Some(key("the cluster key 1")));
    let addr = acceptor.local_addr().unwrap();
    let mut errors = serve(acceptor);

    let intruder = endpoint(&Keypair::generate_ed25519(), Some(key("another cluster 2")));
    let started = Instant::now();
    let err = intruder.connect(addr).await.expect_err("wrong key refused");
    assert!(
        matches!(err, LinkError::Unauthenticated(ref m) if m.contains("refused the link")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let seen = tokio::time::timeout(Duration::from_secs(2), errors.recv())
        .await
        .expect("acceptor reports")
        .expect("error");
    assert!(
        matches!(seen, LinkError::Unauthenticated(ref m) if m.contains("cluster key proof")),
        "{seen:?}"
    );

    let member = endpoint(&Keypair::generate_ed25519(), Some(key("the cluster key 1")));
    let mut link = member.connect(addr).await.expect("member admitted after");
    round_trip(&mut link).await.expect("frames flow");
}

#[tokio::test]
async fn keyed_and_unkeyed_nodes_refuse_each_other_with_a_reason() {
    let keyed = endpoint(&Keypair::generate_ed25519(), Some(key("the cluster key 1")));
    let keyed_addr = keyed.local_addr().unwrap();
    let mut keyed_errors = serve(keyed);
    let open = endpoint(&Keypair::generate_ed25519(), None);
    let open_addr = open.local_addr().unwrap();
    let mut open_errors = serve(open);

    // An unkeyed connector cannot send a frame the keyed acceptor reads.
    let unkeyed = endpoint(&Keypair::generate_ed25519(), None);
    if let Ok(mut link) = unkeyed.connect(keyed_addr).await {
        assert!(round_trip(&mut link).await.is_err(), "frames must not flow");
    }
    let seen = tokio::time::timeout(Duration::from_secs(2), keyed_errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(seen, LinkError::Unauthenticated(ref m) if m.contains("no cluster key")),
        "{seen:?}"
    );

    // A keyed connector is refused by an unkeyed acceptor and told why.
    let keyed_client = endpoint(&Keypair::generate_ed25519(), Some(key("the cluster key 1")));
    let err = keyed_client.connect(open_addr).await.expect_err("refused");
    assert!(
        matches!(err, LinkError::Unauthenticated(ref m) if m.contains("without a cluster key")),
        "{err:?}"
    );
    let seen = open_errors.recv().await.unwrap();
    assert!(matches!(seen, LinkError::Unauthenticated(_)), "{seen:?}");
}

#[tokio::test]
async fn a_certificate_not_bound_to_a_libp2p_key_is_refused() {
    let acceptor = endpoint(&Keypair::generate_ed25519(), Some(key("the cluster key 1")));
    let addr = acceptor.local_addr().unwrap();
    let _errors = serve(acceptor);
    // A plain self-signed certificate, even with the right key.
    let mut config = EndpointConfig::new(
        Identity::generate().unwrap(),
        Arc::new(transport::quic::InsecureAcceptAny),
    );
    config.cluster_key = Some(key("the cluster key 1"));
    let plain = Endpoint::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let err = plain.connect(addr).await.expect_err("unbound cert refused");
    assert!(matches!(err, LinkError::Connect(_)), "{err:?}");
}
