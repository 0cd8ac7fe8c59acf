//! Speculative decoding through a two-stage pipeline: drafts verified in one pass give the
//! greedy tokens of plain decoding on every reference prompt of every model (each
//! verification row is the single-row decode at its position, bit for bit), a draft model
//! drafting for itself is accepted nearly always, and a pass carries several tokens when the
//! text repeats itself.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use sharding::gguf::GgufFile;
use sharding::model::{ShardOptions, ShardSpec};
use sharding::sampling::{Sampler, SamplerConfig};
use sharding::tokenizer::Tokenizer;
use shoal::pipeline::{Head, HeadConfig, Route, Stage, StageConfig, WireDtype};
use shoal::speculate::{AdaptiveK, DraftModel, Drafter, Ngram, Speculation, MAX_DRAFTS};
use shoal_tests::{model_path, references};
use transport::quic::{EndpointConfig, Identity, InsecureAcceptAny};

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn endpoint() -> EndpointConfig {
    shoal::pipeline::endpoint_config(Identity::generate().unwrap(), Arc::new(InsecureAcceptAny))
}

/// A head and two stages splitting `model`'s layers in half.
async fn pipeline(model: &str) -> (Head, Vec<Stage>) {
    let path = model_path(model);
    let n_layers = {
        let file = GgufFile::open(&path).unwrap();
        sharding::model::ModelConfig::from_metadata(file.metadata())
            .unwrap()
            .n_layers
    };
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut stages = Vec::new();
    for (i, layers) in [0..n_layers / 2, n_layers / 2..n_layers]
        .into_iter()
        .enumerate()
    {
        let cfg = StageConfig {
            model: path.clone(),
            spec: ShardSpec {
                layers,
                embed: false,
                head: false,
            },
            options: ShardOptions {
                max_context: 512,
                ..ShardOptions::default()
            },
            listen: addrs[i],
            route: Route::To(addrs[i + 1]),
            session_timeout: Duration::from_secs(60),
            metrics: None,
            index: i as u32,
            wire: WireDtype::F32,
            max_sessions_per_peer: 64,
            previous_stage: None,
            events: None,
        };
        stages.push(Stage::start(cfg, endpoint()).await.unwrap());
    }
    let cfg = HeadConfig {
        model: path,
        threads: 1,
        listen: addrs[2],
        first: Some(addrs[0]),
        reply_addr: Some(addrs[2]),
        reply_timeout: Duration::from_secs(30),
        metrics: None,
        wire: WireDtype::F32,
    };
    (Head::start(cfg, endpoint()).await.unwrap(), stages)
}

/// Greedy decoding of `prompt` for `n` tokens with `drafter` and `k` drafts a pass (`None`:
/// as many as pay); the tokens and the passes.
async fn decode(
    head: &Head,
    prompt: &[u32],
    n: usize,
    drafter: Option<Drafter>,
    k: Option<usize>,
) -> (Vec<u32>, u64) {
    let generation = head.open(prompt, prompt.len() + n);
    let k = k.map_or(AdaptiveK::new(MAX_DRAFTS), AdaptiveK::fixed);
    let mut run = Speculation::with(generation, head.clone(), drafter, k);
    let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
    let (mut tokens, mut batch) = (Vec::new(), Vec::new());
    while tokens.len() < n {
        run.next(&mut sampler, n - tokens.len(), &mut batch)
            .await
            .unwrap();
        tokens.extend_from_slice(&batch);
    }
    let mut costs = [None; MAX_DRAFTS + 1];
    head.pass_costs(&mut costs);
    eprintln!("{:?}, passes cost {costs:?}", run.stats());
    (tokens, run.stats().passes)
}

async fn stop(head: Head, stages: Vec<Stage>) {
    head.shutdown().await;
    for s in stages {
        s.shutdown().await;
    }
}

/// Every reference prompt of `model`, with prompt-lookup drafts: llama.cpp's greedy tokens.
async fn references_hold_with_drafts(model: &str) {
    let (head, stages) = pipeline(model).await;
    for r in references(model) {
        let n = r.greedy_ids.len();
        let drafter = Drafter::Ngram(Ngram::new(&r.prompt_ids));
        // Four drafts every pass, whatever they cost: every verification path runs.
        let (got, passes) = decode(&head, &r.prompt_ids, n, Some(drafter), Some(4)).await;
        assert_eq!(got, r.greedy_ids, "{model} {}", r.key);
        eprintln!("{model} {}: {n} tokens in {passes} passes", r.key);
    }
    stop(head, stages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_greedy_tokens_are_plain_decodings_with_drafts() {
    references_hold_with_drafts("smollm2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_greedy_tokens_are_plain_decodings_with_drafts() {
    references_hold_with_drafts("qwen2.5-coder").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemma_greedy_tokens_are_plain_decodings_with_drafts() {
    references_hold_with_drafts("gemma3").await;
}

/// A text that repeats itself: prompt lookup drafts it, most drafts are kept, passes carry
/// several tokens each, and the tokens are plain decoding's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_text_is_decoded_in_fewer_passes_with_the_same_tokens() {
    let file = GgufFile::open(model_path("smollm2")).unwrap();
    let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap();
    let text = "Copy the list exactly.\napple, banana, cherry, damson, elderberry, fig, grape, \
                honeydew, kiwi, lemon, mango, nectarine, orange, papaya\nCopy:\napple, banana,";
    let prompt = tokenizer.encode(text, false, false);
    let (head, stages) = pipeline("smollm2").await;
    let n = 32;
    let (plain, plain_passes) = decode(&head, &prompt, n, None, None).await;
    let drafter = Drafter::Ngram(Ngram::new(&prompt));
    let (drafted, passes) = decode(&head, &prompt, n, Some(drafter), Some(MAX_DRAFTS)).await;
    assert_eq!(drafted, plain, "{}", tokenizer.decode(&plain));
    eprintln!("{n} tokens: {plain_passes} passes plain, {passes} with prompt lookup");
    assert!(
        passes * 2 <= plain_passes,
        "{passes} passes against {plain_passes}"
    );
    stop(head, stages).await;
}

/// SmolLM2 drafting for itself: every draft is what the target picks, so a pass keeps them
/// all (a smoke test of the draft-model path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_drafting_for_itself_is_always_right() {
    let file = GgufFile::open(model_path("smollm2")).unwrap();
    let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap();
    let draft = DraftModel::load(&model_path("smollm2"), &tokenizer, 1, 512).unwrap();
    let (head, stages) = pipeline("smollm2").await;
    let r = &references("smollm2")[0];
    let n = r.greedy_ids.len();
    let generation = head.open(&r.prompt_ids, r.prompt_ids.len() + n);
    let drafter = Drafter::Model(draft.session(&r.prompt_ids));
    let mut run = Speculation::with(generation, head.clone(), Some(drafter), AdaptiveK::fixed(4));
    let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
    let (mut tokens, mut batch) = (Vec::new(), Vec::new());
    while tokens.len() < n {
        run.next(&mut sampler, n - tokens.len(), &mut batch)
            .await
            .unwrap();
        tokens.extend_from_slice(&batch);
    }
    assert_eq!(tokens, r.greedy_ids);
    let stats = run.stats();
    let mut costs = [None; MAX_DRAFTS + 1];
    head.pass_costs(&mut costs);
    eprintln!("draft model: {stats:?}, passes cost {costs:?}");
    assert!(stats.drafted > 0);
    assert!(
        stats.accepted * 100 >= stats.drafted * 95,
        "{} of {} drafts kept",
        stats.accepted,
        stats.drafted
    );
    drop(run);
    stop(head, stages).await;
}

/// A draft model with another vocabulary is refused at start, with the reason.
#[test]
fn a_draft_model_of_another_vocabulary_is_refused() {
    let served = GgufFile::open(model_path("smollm2")).unwrap();
    let tokenizer = Tokenizer::from_gguf(served.metadata()).unwrap();
    let error = DraftModel::load(&model_path("gemma3"), &tokenizer, 1, 256)
        .err()
        .expect("refused");
    assert!(
        error.to_string().contains("another vocabulary"),
        "{error:#}"
    );
}
