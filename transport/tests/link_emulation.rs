//! Link emulation (a test feature of the QUIC data plane): spec parsing, and measured
//! behaviour of real loopback links with emulation on both ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::quic::{
    Endpoint, EndpointConfig, FrameHeader, FrameKind, Identity, InsecureAcceptAny, Link,
    LinkEmulation, LinkEmulationError,
};

// --- parsing ---------------------------------------------------------------------------

#[test]
fn parses_a_full_spec() {
    let spec: LinkEmulation = "delay=10ms,jitter=2ms,loss=1%,rate=10mbit".parse().unwrap();
    assert_eq!(spec.delay, Duration::from_millis(10));
    assert_eq!(spec.jitter, Duration::from_millis(2));
    assert!((spec.loss - 0.01).abs() < 1e-12);
    assert_eq!(spec.rate_bytes_per_s, Some(1_250_000));
    assert_eq!(spec.seed, 0);
}

#[test]
fn keys_are_optional_and_order_free() {
    let spec: LinkEmulation = " loss=0.5% , delay=1.5ms,seed=9 ".parse().unwrap();
    assert_eq!(spec.delay, Duration::from_micros(1500));
    assert_eq!(spec.jitter, Duration::ZERO);
    assert!((spec.loss - 0.005).abs() < 1e-12);
    assert_eq!(spec.rate_bytes_per_s, None);
    assert_eq!(spec.seed, 9);
    let spec: LinkEmulation = "rate=500kbit,delay=0".parse().unwrap();
    assert_eq!(spec.rate_bytes_per_s, Some(62_500));
    assert_eq!(spec.delay, Duration::ZERO);
    let spec: LinkEmulation = "delay=1s,jitter=250us,rate=1gbit".parse().unwrap();
    assert_eq!(spec.delay, Duration::from_secs(1));
    assert_eq!(spec.jitter, Duration::from_micros(250));
    assert_eq!(spec.rate_bytes_per_s, Some(125_000_000));
}

#[test]
fn to_shapes_one_destination_only() {
    let all: LinkEmulation = "delay=15ms".parse().unwrap();
    let one: LinkEmulation = "delay=15ms,to=10.0.0.12".parse().unwrap();
    let (near, far) = ("10.0.0.12".parse().unwrap(), "10.0.0.13".parse().unwrap());
    assert!(all.shapes(near) && all.shapes(far));
    assert!(one.shapes(near) && !one.shapes(far));
    // A dual-stack socket sees IPv4 peers as mapped IPv6 addresses.
    assert!(one.shapes("::ffff:10.0.0.12".parse().unwrap()));
}

#[test]
fn display_round_trips() {
    for text in [
        "delay=10ms,jitter=2ms,loss=1%,rate=10mbit",
        "delay=1500us,loss=5%,seed=3",
        "rate=500kbit",
        "loss=0.25%,rate=123456bit",
        "delay=15ms,to=10.0.0.12",
        "delay=15ms,to=::ffff:10.0.0.12",
        "delay=1ms,to=fe80::1",
    ] {
        let spec: LinkEmulation = text.parse().unwrap();
        let shown = spec.to_string();
        assert_eq!(
            shown.parse::<LinkEmulation>().unwrap(),
            spec,
            "{text} -> {shown}"
        );
    }
}

#[test]
fn rejects_bad_specs_with_clear_errors() {
    let err = |s: &str| s.parse::<LinkEmulation>().unwrap_err();
    assert!(matches!(err(""), LinkEmulationError::Syntax(_)));
    assert!(matches!(err("delay"), LinkEmulationError::Syntax(_)));
    assert!(matches!(err("latency=5ms"), LinkEmulationError::UnknownKey(k) if k == "latency"));
    assert!(matches!(err("delay=1ms,delay=2ms"), LinkEmulationError::Duplicate(k) if k == "delay"));
    for bad in [
        "delay=10",   // no unit
        "delay=-1ms", // negative
        "delay=10 parsecs",
        "delay=2min",
        "jitter=90s", // above the 60 s sanity bound
        "loss=1",     // percent sign required
        "loss=101%",
        "loss=abc%",
        "rate=10",     // no unit
        "rate=10mbps", // ambiguous: bits or bytes? only *bit units are accepted
        "rate=1kbit",  // too slow for QUIC's handshake
        "seed=-1",
        "to=10.0.0",
        "to=node2",
    ] {
        let e = err(bad);
        assert!(
            matches!(e, LinkEmulationError::Value { .. }),
            "{bad}: {e:?}"
        );
        // The message names the offending value and says what was expected.
        let message = e.to_string();
        let value = bad.split_once('=').unwrap().1;
        let explains = message.contains("expected") || message.contains("must");
        assert!(message.contains(value) && explains, "{message}");
    }
}

// --- measured behaviour on loopback -----------------------------------------------------

/// A connected link pair on 127.0.0.1, both endpoints shaped by `spec` (different seeds so
/// the two directions do not lose the same packets).
async fn pair(spec: Option<&str>) -> (Link, Link, Endpoint, Endpoint) {
    let config = |seed: u64| {
        let mut config =
            EndpointConfig::new(Identity::generate().unwrap(), Arc::new(InsecureAcceptAny));
        // Lossy handshakes recover on QUIC's probe timeout (about a second); leave room.
        config.handshake_timeout = Duration::from_secs(20);
        config.link_emulation = spec.map(|s| LinkEmulation {
            seed,
            ..s.parse().unwrap()
        });
        config
    };
    let server = Endpoint::bind("127.0.0.1:0".parse().unwrap(), config(1)).unwrap();
    let client = Endpoint::bind("127.0.0.1:0".parse().unwrap(), config(2)).unwrap();
    let addr = server.local_addr().unwrap();
    let accepting = {
        let server = server.clone();
        tokio::spawn(async move { server.accept().await.unwrap().unwrap() })
    };
    let near = client.connect(addr).await.unwrap();
    let far = accepting.await.unwrap();
    (near, far, client, server)
}

/// Echoes every Ping as a Pong until the peer finishes.
async fn echo(mut link: Link) {
    while let Ok(Some(frame)) = link.recv().await {
        let header = frame.header;
        if header.kind == FrameKind::Ping {
            let pong = FrameHeader::new(FrameKind::Pong, header.session, header.seq);
            link.send(&pong, &[]).await.unwrap();
        }
    }
}

/// Ping round-trip times over `link` (after a few warm-up pings), sorted ascending.
async fn ping_rtts(link: &mut Link, count: u64) -> Vec<Duration> {
    let mut rtts = Vec::new();
    for seq in 0..count + 3 {
        let start = Instant::now();
        link.send(&FrameHeader::new(FrameKind::Ping, 1, seq), &[])
            .await
            .unwrap();
        let frame = link.recv().await.unwrap().expect("echo side hung up");
        assert_eq!(
            (frame.header.kind, frame.header.seq),
            (FrameKind::Pong, seq)
        );
        if seq >= 3 {
            rtts.push(start.elapsed());
        }
    }
    rtts.sort();
    rtts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_shows_in_the_round_trip() {
    let (mut near, far, _c, _s) = pair(None).await;
    tokio::spawn(echo(far));
    let plain = ping_rtts(&mut near, 10).await;
    let (mut near, far, _c2, _s2) = pair(Some("delay=20ms")).await;
    tokio::spawn(echo(far));
    let delayed = ping_rtts(&mut near, 10).await;
    eprintln!(
        "rtt plain median {:?}, delay=20ms each way: min {:?} median {:?}",
        plain[5], delayed[0], delayed[5]
    );
    // The median tolerates a scheduling hiccup on a busy machine; the emulated floor is hard.
    assert!(plain[5] < Duration::from_millis(10), "plain rtts {plain:?}");
    assert!(
        delayed[0] >= Duration::from_millis(40),
        "delayed rtts {delayed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_for_one_address_leaves_other_links_alone() {
    let (mut near, far, _c, _s) = pair(Some("delay=20ms,to=127.0.0.1")).await;
    tokio::spawn(echo(far));
    let shaped = ping_rtts(&mut near, 10).await;
    let (mut near, far, _c2, _s2) = pair(Some("delay=20ms,to=127.0.0.2")).await;
    tokio::spawn(echo(far));
    let other = ping_rtts(&mut near, 10).await;
    assert!(
        shaped[0] >= Duration::from_millis(40),
        "shaped rtts {shaped:?}"
    );
    assert!(
        other[5] < Duration::from_millis(10),
        "unshaped rtts {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_still_delivers_every_frame_in_order() {
    let (mut near, mut far, _c, _s) = pair(Some("loss=5%,delay=1ms")).await;
    const FRAMES: u32 = 300;
    const LEN: usize = 4096;
    let receiving = tokio::spawn(async move {
        let mut got = 0u32;
        while let Some(frame) = far.recv().await.unwrap() {
            assert_eq!(frame.header.seq, u64::from(got));
            assert_eq!(frame.payload.len(), LEN);
            assert!(
                frame.payload.iter().all(|&b| b == got as u8),
                "payload of frame {got} corrupted"
            );
            got += 1;
        }
        (got, far)
    });
    for i in 0..FRAMES {
        let header = FrameHeader::new(FrameKind::Message, 1, u64::from(i));
        near.send(&header, &[i as u8; LEN]).await.unwrap();
    }
    near.finish().unwrap();
    let (got, far) = tokio::time::timeout(Duration::from_secs(60), receiving)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, FRAMES);
    let lost = near.connection().stats().path.lost_packets;
    eprintln!("delivered {got} frames; sender saw {lost} packets lost and retransmitted");
    assert!(lost > 0, "5% loss should have cost at least one packet");
    drop(far);
}
