//! Prefix reuse through a real three-stage SmolLM2 pipeline: a chat's second turn resumes
//! the first turn's kept caches on every stage and prefills only its new tokens, with the
//! greedy tokens (and the first logits, bit for bit) of a head that computes everything; a
//! stage that lost the kept cache makes the request compute it all, with the same tokens.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use sharding::gguf::GgufFile;
use sharding::model::{ShardOptions, ShardSpec};
use sharding::tokenizer::Tokenizer;
use shoal::metrics::Metrics;
use shoal::pipeline::{Head, HeadConfig, Route, Stage, StageConfig, WireDtype};
use shoal_tests::model_path;
use transport::discovery::Keypair;

fn free_addr() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// A head and three stages (layers 0..10, 10..20, 20..30) recording into `metrics`; the
/// last stage holds at most `last_sessions` caches (open and kept together).
async fn pipeline(metrics: &Arc<Metrics>, last_sessions: usize) -> (Head, Vec<Stage>) {
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let mut stages = Vec::new();
    for (i, layers) in [0..10, 10..20, 20..30].into_iter().enumerate() {
        let max_sessions = if i == 2 { last_sessions } else { 16 };
        let cfg = StageConfig {
            model: model_path("smollm2"),
            spec: ShardSpec {
                layers,
                embed: false,
                head: false,
            },
            options: ShardOptions {
                max_sessions,
                max_context: common::CONTEXT,
                ..ShardOptions::default()
            },
            listen: addrs[i],
            route: Route::To(addrs[i + 1]),
            session_timeout: Duration::from_secs(60),
            metrics: Some(metrics.clone()),
            index: i as u32,
            wire: WireDtype::F32,
            max_sessions_per_peer: shoal::pipeline::default_sessions_per_peer(max_sessions),
            previous_stage: i.checked_sub(1).map(|p| keys[p].public().to_peer_id()),
            events: None,
        };
        let stage = Stage::start(cfg, common::endpoint_of(&keys[i])).await;
        stages.push(stage.expect("stage"));
    }
    let cfg = HeadConfig {
        model: model_path("smollm2"),
        threads: 1,
        listen: addrs[3],
        first: Some(addrs[0]),
        reply_addr: Some(addrs[3]),
        reply_timeout: Duration::from_secs(30),
        metrics: Some(metrics.clone()),
        wire: WireDtype::F32,
    };
    let head = Head::start(cfg, common::endpoint()).await.expect("head");
    (head, stages)
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `n` greedy tokens after `prompt`, and the bits of the first logits.
async fn greedy(head: &Head, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<u32>) {
    let mut generation = head.open(prompt, prompt.len() + n);
    let first: Vec<u32> = generation
        .logits()
        .await
        .expect("logits")
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let mut tokens = Vec::new();
    loop {
        let next = argmax(generation.logits().await.expect("logits"));
        tokens.push(next);
        if tokens.len() == n {
            return (tokens, first);
        }
        generation.push(next);
    }
}

fn tokenizer() -> Tokenizer {
    let file = GgufFile::open(model_path("smollm2")).unwrap();
    Tokenizer::from_gguf(file.metadata()).unwrap()
}

/// A chat's first turn, as the chat template lays it out.
fn first_turn(t: &Tokenizer) -> Vec<u32> {
    t.encode(
        "<|im_start|>system\nYou are a helpful assistant who answers in detail.<|im_end|>\n\
         <|im_start|>user\nWhat are the main parts of a sailing boat, and what does each \
         of them do?<|im_end|>\n<|im_start|>assistant\n",
        false,
        true,
    )
}

/// The second turn: the first turn, its answer, and a new question.
fn second_turn(t: &Tokenizer, first: &[u32], answer: &[u32], question: &str) -> Vec<u32> {
    let mut turn = first.to_vec();
    turn.extend_from_slice(answer);
    let next =
        format!("<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
    turn.extend(t.encode(&next, false, true));
    turn
}

fn counter(metrics: &Metrics, name: &str) -> f64 {
    common::metric(&metrics.encode(), name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_turn_resumes_the_first_and_gives_the_same_text() {
    let metrics = Arc::new(Metrics::new());
    let (head, stages) = pipeline(&metrics, 16).await;
    let plain = head.with_prefix_cache(false);
    let t = tokenizer();
    let first = first_turn(&t);
    let (answer, _) = greedy(&head, &first, 40).await;
    assert_eq!(counter(&metrics, "shoal_prefix_cache_hits_total"), 0.0);
    let turn = second_turn(&t, &first, &answer, "Which of them matters most?");

    let (reused, reused_logits) = greedy(&head, &turn, 30).await;
    let hits = counter(&metrics, "shoal_prefix_cache_hits_total");
    let positions = counter(&metrics, "shoal_prefix_reused_positions_total");
    assert_eq!(hits, 1.0, "the second turn resumed the first");
    // The first turn's prompt and every answer token but the last were run through the
    // ring (the last was picked, never fed back).
    assert_eq!(positions as usize, first.len() + answer.len() - 1);

    let (computed, computed_logits) = greedy(&plain, &turn, 30).await;
    assert_eq!(counter(&metrics, "shoal_prefix_cache_hits_total"), 1.0);
    assert_eq!(
        reused_logits, computed_logits,
        "the first logits after a resumed prefix are the bits of a full prefill"
    );
    assert_eq!(
        t.decode(&reused),
        t.decode(&computed),
        "reuse must not change the text"
    );
    assert_eq!(reused, computed);

    // A third turn resumes the second.
    let third = second_turn(&t, &turn, &reused, "Thank you. Anything else?");
    let (again, _) = greedy(&head, &third, 10).await;
    assert_eq!(counter(&metrics, "shoal_prefix_cache_hits_total"), 2.0);
    assert_eq!(again, greedy(&plain, &third, 10).await.0);
    assert_eq!(counter(&metrics, "shoal_prefix_cache_misses_total"), 0.0);
    head.shutdown().await;
    for s in stages {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_a_stage_evicted_is_computed_in_full_with_the_same_text() {
    let metrics = Arc::new(Metrics::new());
    // The last stage holds two caches: two open sessions push a kept one out.
    let (head, stages) = pipeline(&metrics, 2).await;
    let plain = head.with_prefix_cache(false);
    let t = tokenizer();
    let first = first_turn(&t);
    let (answer, _) = greedy(&head, &first, 24).await;
    let busy: Vec<Vec<u32>> = ["Name a colour.", "Count to three."]
        .iter()
        .map(|q| t.encode(&format!("<|im_start|>user\n{q}<|im_end|>\n"), false, true))
        .collect();
    {
        let mut open = Vec::new();
        for prompt in &busy {
            let mut g = plain.open(prompt, prompt.len() + 4);
            g.logits().await.expect("a session open on every stage");
            open.push(g);
        }
    }
    let turn = second_turn(&t, &first, &answer, "Which of them matters most?");
    let (resumed, _) = greedy(&head, &turn, 24).await;
    assert_eq!(counter(&metrics, "shoal_prefix_cache_misses_total"), 1.0);
    assert_eq!(counter(&metrics, "shoal_prefix_cache_hits_total"), 0.0);
    // The request that missed kept its own cache: the next turn resumes it.
    let third = second_turn(&t, &turn, &resumed, "Thank you.");
    let (again, _) = greedy(&head, &third, 8).await;
    assert_eq!(counter(&metrics, "shoal_prefix_cache_hits_total"), 1.0);
    // The references, computed in full (after: their sessions would push the kept ones out).
    let (computed, _) = greedy(&plain, &turn, 24).await;
    assert_eq!(t.decode(&resumed), t.decode(&computed));
    assert_eq!(again, greedy(&plain, &third, 8).await.0);
    // The sessions the missed open started on the first two stages were closed with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stages.iter().any(|s| s.open_sessions() > 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "a session was left open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    head.shutdown().await;
    for s in stages {
        s.shutdown().await;
    }
}
