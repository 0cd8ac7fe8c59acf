//! What a node does with the bytes of one discovery request or response from a peer, without
//! a swarm: the entry points of the `discovery_decode` fuzz target (`transport/fuzz`). Built
//! only with the `fuzzing` feature.

use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::io::Cursor;
use libp2p::identity::Keypair;
use libp2p::request_response::Codec;

use super::error::RejectReason;
use super::event::MembershipEvent;
use super::membership::Membership;
use super::wire::{codec, Request, MAX_ADDRS_PER_PEER, MAX_PEER_RECORDS, PROTOCOL};

/// Reads `bytes` as one request the way the swarm reads it off a stream (same codec, same
/// size bound for `max_message_bytes`), then does with a `Hello` what the event loop does that
/// needs no swarm: takes at most [`MAX_PEER_RECORDS`] records of at most
/// [`MAX_ADDRS_PER_PEER`] addresses, applies the advert to a membership table as coming from
/// its own peer (a join, then the same version again is no news) and from another peer
/// (refused as foreign). A request that decodes re-encodes to one that decodes the same.
/// Returns whether `bytes` decoded. Panics only where one of these expectations fails.
pub fn request(bytes: &[u8], max_message_bytes: usize) -> bool {
    let mut codec = codec(max_message_bytes);
    let Ok(request) = block_on(codec.read_request(&PROTOCOL, &mut Cursor::new(bytes))) else {
        return false;
    };
    let mut encoded = Cursor::new(Vec::new());
    block_on(codec.write_request(&PROTOCOL, &mut encoded, request.clone()))
        .expect("a decoded request encodes");
    let again = block_on(codec.read_request(&PROTOCOL, &mut Cursor::new(encoded.into_inner())))
        .expect("a re-encoded request decodes");
    assert_eq!(format!("{again:?}"), format!("{request:?}"));

    let Request::Hello(hello) = request else {
        return true;
    };
    let mut table = Membership::new(Duration::from_secs(3));
    let now = Instant::now();
    for record in hello.peers.into_iter().take(MAX_PEER_RECORDS) {
        table.connected(record.peer_id, now);
        table.set_listen_addrs(record.peer_id, record.addrs);
        let kept = table.record(&record.peer_id).map_or(0, |r| r.addrs.len());
        assert!(kept <= MAX_ADDRS_PER_PEER);
    }
    let Some(advert) = hello.advert else {
        return true;
    };
    let sender = advert.peer_id;
    let _ = table.disconnected(sender, 0);
    table.connected(sender, now);
    let joined = table.apply_advert(sender, hello.version, advert.clone());
    assert!(matches!(joined, Ok(Some(MembershipEvent::Joined(_)))));
    let repeated = table.apply_advert(sender, hello.version, advert.clone());
    assert!(matches!(repeated, Ok(None)));
    assert_eq!(table.members().len(), 1);

    let other = Keypair::ed25519_from_bytes([7; 32])
        .expect("32 bytes make an ed25519 key")
        .public()
        .to_peer_id();
    if other != sender {
        table.connected(other, now);
        let foreign = table.apply_advert(other, hello.version, advert);
        assert_eq!(foreign, Err(RejectReason::ForeignAdvert));
    }
    true
}

/// Reads `bytes` as one response the way the swarm does. Returns whether it decoded.
pub fn response(bytes: &[u8]) -> bool {
    let mut codec = codec(0);
    block_on(codec.read_response(&PROTOCOL, &mut Cursor::new(bytes))).is_ok()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::discovery::advert::{Advert, AdvertState, LayerCost};
    use crate::discovery::wire::{AdvertVersion, Hello, PeerRecord};

    /// A real `Hello` as a node sends it. With `SHOAL_FUZZ_SEED=FILE` the test also writes its
    /// bytes there, a seed that lets the fuzzer start from a valid advert.
    #[test]
    fn a_real_hello_passes_every_check() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let hello = Hello {
            version: AdvertVersion {
                incarnation: 1,
                seq: 2,
            },
            advert: Some(Advert {
                peer_id: peer,
                data_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 4000)),
                threads: 4,
                memory_budget_bytes: 1 << 30,
                models: vec!["ab".repeat(32)],
                layer_cost: Some(LayerCost {
                    decode_ms: 0.5,
                    prefill_ms_per_token: 0.1,
                }),
                version: "test".into(),
                platform: Default::default(),
                state: AdvertState {
                    epoch: 3,
                    ready: true,
                    stage_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 4001))),
                    ..Default::default()
                },
            }),
            peers: vec![PeerRecord {
                peer_id: Keypair::generate_ed25519().public().to_peer_id(),
                addrs: vec!["/ip4/127.0.0.1/tcp/7600".parse().unwrap(); 12],
            }],
        };
        let mut bytes = Cursor::new(Vec::new());
        block_on(codec(1024).write_request(&PROTOCOL, &mut bytes, Request::Hello(Box::new(hello))))
            .unwrap();
        let bytes = bytes.into_inner();
        assert!(request(&bytes, 1024));
        assert!(!request(&bytes[..bytes.len() - 1], 1024), "a cut request");
        if let Some(path) = std::env::var_os("SHOAL_FUZZ_SEED") {
            std::fs::write(path, &bytes).unwrap();
        }
    }
}
