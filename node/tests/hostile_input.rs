//! Hostile input on the data plane: a peer holding the cluster key (an insider, or a stolen
//! device) sends malformed, truncated, oversized, out-of-order and replayed frames, frames
//! for sessions it does not own, and floods of session opens to the first stage of a real
//! two-stage pipeline (held to the flooder's share of the stage's sessions). After every case
//! the stage is still up and the good client's greedy text through the API is llama.cpp's. (Peers WITHOUT the key never get this far:
//! transport/tests/link_auth.rs.)

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};
use sharding::model::ShardOptions;
use shoal::pipeline::protocol::{self, Open, Phase, Reply, RowsHead, WireDtype};
use shoal_tests::references;
use transport::quic::{Endpoint, FrameHeader, FrameKind, Link};

const N_EMBD: u32 = 576;

async fn hostile_link(server: &Server) -> (Endpoint, Link) {
    let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), common::endpoint()).unwrap();
    let link = endpoint
        .connect(server.hops[0])
        .await
        .expect("the insider connects");
    (endpoint, link)
}

/// A frame: its transport header and its payload.
type Frame = (FrameHeader, Vec<u8>);

fn rows_head(pos: u32, rows: u32, width: u32, dtype: WireDtype) -> RowsHead {
    RowsHead {
        pos,
        rows,
        width,
        dtype,
        phase: Phase::Prefill,
        reply: Reply::LastRow,
    }
}

/// Rows of zeros, well formed (a zero-row message is written by hand: the encoder would not).
fn hidden(session: u64, pos: u32, rows: u32, cols: u32) -> Frame {
    let head = rows_head(pos, rows, cols, WireDtype::F32);
    let mut payload = Vec::new();
    let values = vec![0.0f32; (rows * cols) as usize];
    protocol::encode_rows(head, &values, &mut payload);
    (protocol::frame(session, 1), payload)
}

fn decode(session: u64, pos: u32) -> Frame {
    let head = RowsHead {
        phase: Phase::Decode,
        ..rows_head(pos, 1, N_EMBD, WireDtype::F32)
    };
    let mut payload = Vec::new();
    protocol::encode_rows(head, &vec![0.0; N_EMBD as usize], &mut payload);
    (protocol::frame(session, 1), payload)
}

fn open(session: u64, positions: u32) -> Frame {
    let mut payload = Vec::new();
    protocol::encode_open(
        &Open {
            positions,
            reply: None,
            resume: None,
        },
        &mut payload,
    );
    (protocol::frame(session, 0), payload)
}

fn close(session: u64) -> Frame {
    let mut payload = Vec::new();
    protocol::encode_close(&mut payload);
    (protocol::frame(session, 0), payload)
}

async fn send(link: &mut Link, (header, payload): Frame) {
    // The stage may already have dropped the link; that is an answer too.
    let _ = link.send(&header, &payload).await;
}

/// The good client: a greedy completion through the API equals the reference.
async fn good_client_served(base: &str, case: &str) {
    let r = references("smollm2")
        .into_iter()
        .find(|r| r.key == "p1")
        .unwrap();
    let req = json!({"prompt": r.prompt, "max_tokens": r.greedy_ids.len(), "temperature": 0});
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&req)
        .send()
        .await
        .expect("the API answers");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "after {case}: {body}");
    assert_eq!(body["choices"][0]["text"], r.greedy_text, "after {case}");
}

async fn wait_for_sessions(server: &Server, want: usize, case: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stage(0).open_sessions() != want {
        assert!(
            Instant::now() < deadline,
            "{case}: {} sessions open, want {want}",
            server.stage(0).open_sessions()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_never_disturb_the_good_client() {
    let server = Server::pipeline().await;
    let base = server.base.clone();
    good_client_served(&base, "start").await;
    let mut cases = 0;
    let mut case = |name: &'static str| {
        cases += 1;
        eprintln!("case {cases}: {name}");
        name
    };

    // Frames that cannot be computed: each fails only itself (error frame toward the head).
    let (_ep, mut link) = hostile_link(&server).await;
    let name = case("decode for a session never opened");
    send(&mut link, decode(77, 0)).await;
    good_client_served(&base, name).await;

    send(&mut link, open(78, 64)).await;
    let name = case("values that do not match their dtype (f32 bytes said to be f16)");
    let mut payload = Vec::new();
    let f16 = rows_head(0, 4, N_EMBD, WireDtype::F16);
    protocol::encode_rows(f16, &vec![0.0; 4 * 576], &mut payload);
    // f32 bytes under a head that says f16: twice the bytes the shape takes.
    payload.extend(std::iter::repeat_n(0u8, 4 * 576 * 2));
    let header = protocol::frame(78, 1);
    send(&mut link, (header, payload)).await;
    good_client_served(&base, name).await;

    send(&mut link, open(79, 64)).await;
    let name = case("wrong width (cols != n_embd)");
    send(&mut link, hidden(79, 0, 4, N_EMBD + 1)).await;
    good_client_served(&base, name).await;

    send(&mut link, open(80, 64)).await;
    let name = case("zero rows");
    send(&mut link, hidden(80, 0, 0, N_EMBD)).await;
    good_client_served(&base, name).await;

    send(&mut link, open(81, 8)).await;
    let name = case("positions past the session's context");
    send(&mut link, hidden(81, 0, 16, N_EMBD)).await;
    good_client_served(&base, name).await;

    send(&mut link, open(82, 64)).await;
    let name = case("out-of-order positions (a gap)");
    send(&mut link, hidden(82, 10, 2, N_EMBD)).await;
    good_client_served(&base, name).await;

    send(&mut link, open(83, 64)).await;
    send(&mut link, hidden(83, 0, 2, N_EMBD)).await;
    let name = case("a replayed frame (same positions again)");
    send(&mut link, hidden(83, 0, 2, N_EMBD)).await;
    good_client_served(&base, name).await;

    let name = case("frames of kinds no pipeline uses (model chunks, probes)");
    // The last answer's close may still be on its way: count from when the stage is quiet.
    let mut before = server.stage(0).forwarded();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = server.stage(0).forwarded();
        if now == before {
            break;
        }
        before = now;
    }
    for kind in [
        FrameKind::Fetch,
        FrameKind::Piece,
        FrameKind::Ping,
        FrameKind::Pong,
    ] {
        let junk = FrameHeader::new(kind, 83, 7);
        let _ = link.send(&junk, &[0u8; 32]).await;
    }
    good_client_served(&base, name).await;
    // The good client's frames went through (open, one per token, close); none of the junk
    // was passed down the ring. The close travels after the answer, so wait for it, then make
    // sure nothing more follows.
    let r = references("smollm2")
        .into_iter()
        .find(|r| r.key == "p1")
        .unwrap();
    let want = r.greedy_ids.len() as u64 + 2;
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stage(0).forwarded() - before < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let passed = server.stage(0).forwarded() - before;
    assert_eq!(passed, want, "{name}: {passed} forwarded");

    let name = case("close of an unknown session");
    send(&mut link, close(12345)).await;
    good_client_served(&base, name).await;
    wait_for_sessions(&server, 0, "after the malformed cases").await;

    // Someone else's session: a second insider cannot close or feed it.
    let name = case("frames for a session another peer owns");
    send(&mut link, open(90, 64)).await;
    wait_for_sessions(&server, 1, name).await;
    let (_ep2, mut other) = hostile_link(&server).await;
    send(&mut other, close(90)).await;
    send(&mut other, hidden(90, 0, 1, N_EMBD)).await;
    send(&mut other, open(90, 64)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.stage(0).open_sessions(),
        1,
        "{name}: the owner's session stays"
    );
    send(&mut link, close(90)).await;
    wait_for_sessions(&server, 0, "the owner closes its session").await;
    good_client_served(&base, name).await;

    // A flood of opens: refused beyond the stage's table, memory bounded.
    let name = case("a flood of 200 session opens");
    for id in 1000..1200 {
        send(&mut link, open(id, 2048)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = server.stage(0).open_sessions();
    assert!(held <= 64, "{name}: {held} sessions open past the limit");
    for id in 1000..1200 {
        send(&mut link, close(id)).await;
    }
    wait_for_sessions(&server, 0, name).await;
    good_client_served(&base, name).await;

    // A flood held open: the flooder gets its share of the stage's sessions, not the whole
    // table, so another peer and the good client (the head, a third peer) still open theirs.
    let name = case("a flood of opens held while others open sessions");
    let share = shoal::pipeline::default_sessions_per_peer(ShardOptions::default().max_sessions);
    for id in 2000..2200 {
        send(&mut link, open(id, 64)).await;
    }
    wait_for_sessions(&server, share, name).await;
    let (_ep5, mut other) = hostile_link(&server).await;
    for id in 3000..3003 {
        send(&mut other, open(id, 64)).await;
    }
    wait_for_sessions(&server, share + 3, name).await;
    good_client_served(&base, name).await;
    for id in 2000..2200 {
        send(&mut link, close(id)).await;
    }
    for id in 3000..3003 {
        send(&mut other, close(id)).await;
    }
    wait_for_sessions(&server, 0, name).await;

    // Payload over the frame limit: skipped, the link survives.
    let name = case("a payload over the 64 MiB frame limit");
    let (header, _) = hidden(91, 0, 1, N_EMBD);
    send(&mut link, (header, vec![0u8; 30_000 * 576 * 4])).await;
    send(&mut link, open(92, 64)).await;
    wait_for_sessions(&server, 1, "the link survives an oversized frame").await;
    send(&mut link, close(92)).await;
    good_client_served(&base, name).await;

    // Byte-level garbage: the stage drops that link and keeps serving.
    let name = case("garbage bytes instead of a frame header");
    let (mut sender, _receiver) = link.split();
    let _ = sender.get_mut().write_all(&[0xff; 64]).await;
    good_client_served(&base, name).await;

    let name = case("a frame truncated by the end of the stream");
    let (_ep3, link) = hostile_link(&server).await;
    let (mut sender, _receiver) = link.split();
    let (header, payload) = hidden(93, 0, 4, N_EMBD);
    let prefix = header.encode_prefix(payload.len()).unwrap();
    let _ = sender.get_mut().write_all(prefix.as_bytes()).await;
    let _ = sender.get_mut().write_all(&[0u8; 100]).await;
    let _ = sender.get_mut().finish();
    good_client_served(&base, name).await;

    // A fresh insider link still works after all that (the stage never stopped accepting).
    let (_ep4, mut link) = hostile_link(&server).await;
    send(&mut link, open(94, 64)).await;
    wait_for_sessions(&server, 1, "a new link after the garbage").await;

    eprintln!("{cases} hostile cases; the good client was served after each");
    assert_eq!(cases, 15);
    server.stop().await;
}
