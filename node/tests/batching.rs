//! Decode steps of three or more sessions that wait together at a stage run as one batch
//! (two run one after the other): the batch counters move, each session's result is the bits
//! it gets alone and leaves as its own frame (one message per hop per token per session), and a
//! bad frame in a batch fails only its own session.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use sharding::gguf::GgufFile;
use sharding::model::{Input, Shard, ShardOptions, ShardSpec};
use shoal::pipeline::protocol::{self, Message, Open, Phase, Reply, RowsHead};
use shoal::pipeline::{Head, HeadConfig, Route, Stage, StageConfig, WireDtype};
use shoal_tests::{argmax, model_path, references};
use transport::quic::{Endpoint, EndpointConfig, FrameHeader, Identity};
use transport::quic::{InsecureAcceptAny, Link};

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn endpoint() -> EndpointConfig {
    shoal::pipeline::endpoint_config(Identity::generate().unwrap(), Arc::new(InsecureAcceptAny))
}

fn stage_config(
    layers: std::ops::Range<usize>,
    listen: SocketAddr,
    next: SocketAddr,
) -> StageConfig {
    StageConfig {
        model: model_path("smollm2"),
        spec: ShardSpec {
            layers,
            embed: false,
            head: false,
        },
        options: ShardOptions::default(),
        listen,
        route: Route::To(next),
        session_timeout: Duration::from_secs(60),
        metrics: None,
        wire: WireDtype::F32,
        max_sessions_per_peer: 64,
        previous_stage: None,
        index: 0,
        events: None,
    }
}

/// Hidden-state rows that differ by session and position.
fn rows(session: u64, pos: usize, n: usize) -> Vec<f32> {
    (pos..pos + n)
        .flat_map(|p| {
            (0..576).map(move |j| (((session as usize * 31 + p * 7 + j) % 97) as f32 - 48.0) / 40.0)
        })
        .collect()
}

/// What a test sends a stage: prompt rows or a decode row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Prefill,
    Decode,
}

async fn send(link: &mut Link, kind: Kind, session: u64, pos: usize, values: &[f32]) {
    let n = values.len() / 576;
    let head = RowsHead {
        pos: pos as u32,
        rows: n as u32,
        width: 576,
        dtype: WireDtype::F32,
        phase: match kind {
            Kind::Prefill => Phase::Prefill,
            Kind::Decode => Phase::Decode,
        },
        reply: Reply::LastRow,
    };
    let mut bytes = Vec::new();
    protocol::encode_rows(head, values, &mut bytes);
    let header = protocol::frame(session, pos as u64);
    link.send(&header, &bytes).await.unwrap();
}

/// A message as a stage sent it on.
#[derive(Debug)]
enum Got {
    Open,
    Rows(RowsHead, Vec<f32>),
    Error(String),
    Other,
}

impl Got {
    /// The kind of rows, `None` for other messages.
    fn kind(&self) -> Option<Kind> {
        match self {
            Got::Rows(h, _) if h.phase == Phase::Decode => Some(Kind::Decode),
            Got::Rows(..) => Some(Kind::Prefill),
            _ => None,
        }
    }
}

async fn recv(link: &mut Link) -> (FrameHeader, Got) {
    let frame = tokio::time::timeout(Duration::from_secs(20), link.recv())
        .await
        .expect("a frame in time")
        .unwrap()
        .expect("link open");
    let got = match Message::decode(frame.payload).expect("a message") {
        Message::Open(_) => Got::Open,
        Message::Rows(rows) => {
            let mut values = Vec::new();
            rows.values(&mut values).unwrap();
            Got::Rows(rows.head, values)
        }
        Message::Error(f) => Got::Error(f.message),
        Message::Close(_) => Got::Other,
    };
    (frame.header, got)
}

/// A stage running layers 0..15 with `sessions` sessions (ids 1..=sessions) open, the links
/// into and out of it, and a lone shard with the same sessions open to compare against.
struct LoneStage {
    stage: Stage,
    up: Link,
    down: Link,
    alone: Shard,
    _endpoints: (Endpoint, Endpoint),
}

async fn lone_stage(sessions: u64) -> LoneStage {
    let (listen, next) = (free_addr(), free_addr());
    let downstream = Endpoint::bind(next, endpoint()).unwrap();
    let stage = Stage::start(stage_config(0..15, listen, next), endpoint())
        .await
        .unwrap();
    let upstream = Endpoint::bind(free_addr(), endpoint()).unwrap();
    let mut up = upstream.connect(listen).await.unwrap();
    let accept = tokio::spawn(async move {
        let link = downstream.accept().await.unwrap().unwrap();
        (downstream, link)
    });
    let file = GgufFile::open(model_path("smollm2")).unwrap();
    let spec = ShardSpec {
        layers: 0..15,
        embed: false,
        head: false,
    };
    let mut alone = Shard::load(&file, spec, ShardOptions::default()).unwrap();
    for session in 1..=sessions {
        let mut open = Vec::new();
        let positions = 128;
        protocol::encode_open(
            &Open {
                positions,
                reply: None,
                resume: None,
            },
            &mut open,
        );
        up.send(&protocol::frame(session, 0), &open).await.unwrap();
        alone.open_session(session, 128).unwrap();
    }
    let (downstream, mut down) = accept.await.unwrap();
    for _ in 1..=sessions {
        assert!(matches!(recv(&mut down).await.1, Got::Open));
    }
    LoneStage {
        stage,
        up,
        down,
        alone,
        _endpoints: (upstream, downstream),
    }
}

/// Prefills three positions of each of `sessions`, through the stage and alone.
async fn prefill_three(
    up: &mut Link,
    down: &mut Link,
    alone: &mut Shard,
    sessions: std::ops::RangeInclusive<u64>,
) {
    let mut out = Vec::new();
    for session in sessions {
        send(up, Kind::Prefill, session, 0, &rows(session, 0, 3)).await;
        assert_eq!(recv(down).await.1.kind(), Some(Kind::Prefill));
        alone
            .forward(session, 0, Input::Hidden(&rows(session, 0, 3)), &mut out)
            .unwrap();
    }
}

/// The bits of `values`, to compare floats exactly.
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// While the stage computes a long prefill, decode frames of three sessions queue behind it;
/// they run as one batch. The one at a wrong position is refused with an error frame for
/// its session only; the other two get exactly the hidden states a lone shard computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_frames_waiting_together_run_as_one_batch() {
    let LoneStage {
        stage,
        mut up,
        mut down,
        mut alone,
        ..
    } = lone_stage(4).await;
    let mut want = Vec::new();
    prefill_three(&mut up, &mut down, &mut alone, 2..=4).await;
    assert_eq!(stage.batched_decode(), (0, 0));

    send(&mut up, Kind::Prefill, 1, 0, &rows(1, 0, 64)).await;
    send(&mut up, Kind::Decode, 2, 3, &rows(2, 3, 1)).await;
    send(&mut up, Kind::Decode, 3, 7, &rows(3, 7, 1)).await;
    send(&mut up, Kind::Decode, 4, 3, &rows(4, 3, 1)).await;
    let mut replies = std::collections::HashMap::new();
    for _ in 0..4 {
        let (header, payload) = recv(&mut down).await;
        replies.insert(header.session, (header, payload));
    }
    assert_eq!(replies[&1].1.kind(), Some(Kind::Prefill));
    let Got::Error(message) = &replies[&3].1 else {
        panic!("session 3 sent a wrong position: {:?}", replies[&3].1)
    };
    assert!(message.contains("expected 3"), "{message}");
    for session in [2u64, 4] {
        let Got::Rows(head, got) = &replies[&session].1 else {
            panic!("{:?}", replies[&session].1)
        };
        assert_eq!(
            (replies[&session].1.kind(), head.pos, head.rows),
            (Some(Kind::Decode), 3, 1)
        );
        alone
            .forward(session, 3, Input::Hidden(&rows(session, 3, 1)), &mut want)
            .unwrap();
        assert_eq!(bits(got), bits(&want), "session {session}");
    }
    // Sessions 2 and 4 ran as one batch; the refused step was left out of it.
    assert_eq!(stage.batched_decode(), (1, 2));
    // The refused session is closed; the others go on.
    send(&mut up, Kind::Decode, 2, 4, &rows(2, 4, 1)).await;
    assert_eq!(recv(&mut down).await.1.kind(), Some(Kind::Decode));
    send(&mut up, Kind::Decode, 3, 3, &rows(3, 3, 1)).await;
    assert!(matches!(recv(&mut down).await.1, Got::Error(_)));
    stage.shutdown().await;
}

/// Two decode frames waiting together are not batched: a batch of two costs what two steps
/// cost, and would keep the two sessions in lockstep through the ring. Each runs alone and
/// gets the bits it gets alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_waiting_decode_frames_run_one_after_the_other() {
    let LoneStage {
        stage,
        mut up,
        mut down,
        mut alone,
        ..
    } = lone_stage(3).await;
    let mut want = Vec::new();
    prefill_three(&mut up, &mut down, &mut alone, 2..=3).await;
    // Both decode frames queue behind a long prefill.
    send(&mut up, Kind::Prefill, 1, 0, &rows(1, 0, 64)).await;
    send(&mut up, Kind::Decode, 2, 3, &rows(2, 3, 1)).await;
    send(&mut up, Kind::Decode, 3, 3, &rows(3, 3, 1)).await;
    assert_eq!(recv(&mut down).await.1.kind(), Some(Kind::Prefill));
    for session in [2u64, 3] {
        let (header, got) = recv(&mut down).await;
        assert_eq!((header.session, got.kind()), (session, Some(Kind::Decode)));
        let Got::Rows(_, got) = got else {
            unreachable!()
        };
        alone
            .forward(session, 3, Input::Hidden(&rows(session, 3, 1)), &mut want)
            .unwrap();
        assert_eq!(bits(&got), bits(&want), "session {session}");
    }
    assert_eq!(stage.batched_decode(), (0, 0));
    stage.shutdown().await;
}

/// Four sessions through two stages at once: steps batch at the stages, every session's
/// greedy ids are its solo run's (llama.cpp's), and every hop still carries one frame per
/// session per token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_batch_and_each_gets_its_solo_answer() {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let stages = [
        Stage::start(stage_config(0..15, addrs[0], addrs[1]), endpoint())
            .await
            .unwrap(),
        Stage::start(stage_config(15..30, addrs[1], addrs[2]), endpoint())
            .await
            .unwrap(),
    ];
    let cfg = HeadConfig {
        model: model_path("smollm2"),
        threads: 1,
        listen: addrs[2],
        first: Some(addrs[0]),
        reply_addr: None,
        reply_timeout: Duration::from_secs(30),
        metrics: None,
        wire: WireDtype::F32,
    };
    let head = Head::start(cfg, endpoint()).await.unwrap();
    let refs = references("smollm2");
    let solo = head
        .generate(&refs[0].prompt_ids, 3, argmax, |_| true)
        .await
        .unwrap();
    assert_eq!(solo, refs[0].greedy_ids[..3]);
    assert_eq!(
        stages[0].batched_decode(),
        (0, 0),
        "one stream never batches"
    );
    // Let the warm-up's Close frame pass before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<u64> = stages.iter().map(Stage::forwarded).collect();

    let n = 24;
    let runs = refs.iter().take(4).map(|r| {
        let head = head.clone();
        let prompt = r.prompt_ids.clone();
        tokio::spawn(async move { head.generate(&prompt, n, argmax, |_| true).await })
    });
    let results = futures::future::join_all(runs).await;
    for (r, got) in refs.iter().zip(results) {
        assert_eq!(
            got.unwrap().unwrap(),
            r.greedy_ids[..n],
            "concurrent {}",
            r.key
        );
    }
    let batched: Vec<(u64, u64)> = stages.iter().map(Stage::batched_decode).collect();
    println!(
        "stage batches (batches, steps): {batched:?}; head logits batches: {:?}",
        head.batched_logits()
    );
    assert!(
        batched
            .iter()
            .any(|&(batches, steps)| batches > 0 && steps >= 2 * batches),
        "no decode step was batched: {batched:?}"
    );
    // Open, one prefill, n - 1 decode steps and close per session: nothing merged on the wire.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let want = 4 * (n as u64 + 2);
    while stages.last().unwrap().forwarded() - before[1] < want
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (s, b) in stages.iter().zip(before) {
        assert_eq!(s.forwarded() - b, want, "frames forwarded by a stage");
    }
    head.shutdown().await;
    for s in stages {
        s.shutdown().await;
    }
}

/// A stage whose address is taken fails to start with an error, in any runtime: its own
/// runtime, already built by then, is put away without blocking the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_on_a_taken_address_fails_with_an_error() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let started = Stage::start(stage_config(0..15, listen, free_addr()), endpoint()).await;
    let error = format!("{:#}", started.err().expect("the address is taken"));
    assert!(error.contains("binding the stage endpoint"), "{error}");
}
