//! The invariant the cluster rests on: shard `0..k` followed by shard `k..n`, fed the hidden
//! state between them, is bit-identical to one shard `0..n`, for every split point `k`, in
//! prefill and in decode.

use std::path::Path;

use sharding::gguf::GgufFile;
use sharding::model::{Input, ModelConfig, Output, Shard, ShardOptions, ShardSpec};
use shoal_tests::{model_path, temp_dir, write_tiny_llama};

const SESSION: u64 = 7;

/// Logits after a prefill of `prompt` and after each of `decode` steps.
fn run_whole(file: &GgufFile, n: usize, prompt: &[u32], decode: &[u32]) -> Vec<Vec<f32>> {
    let mut shard = Shard::load(file, ShardSpec::full(n), ShardOptions::default()).unwrap();
    shard.open_session(SESSION, 0).unwrap();
    let mut out = Vec::new();
    let mut all = Vec::new();
    shard
        .forward(SESSION, 0, Input::Tokens(prompt), &mut out)
        .unwrap();
    all.push(out.clone());
    for (i, &t) in decode.iter().enumerate() {
        shard
            .forward(SESSION, prompt.len() + i, Input::Tokens(&[t]), &mut out)
            .unwrap();
        all.push(out.clone());
    }
    all
}

fn run_split(file: &GgufFile, n: usize, k: usize, prompt: &[u32], decode: &[u32]) -> Vec<Vec<f32>> {
    let opts = ShardOptions::default();
    let first = ShardSpec {
        layers: 0..k,
        embed: true,
        head: false,
    };
    let second = ShardSpec {
        layers: k..n,
        embed: false,
        head: true,
    };
    let mut a = Shard::load(file, first, opts.clone()).unwrap();
    let threads2 = ShardOptions {
        threads: 2,
        ..opts.clone()
    };
    let mut b = Shard::load(file, second, threads2).unwrap();
    a.open_session(SESSION, 0).unwrap();
    b.open_session(SESSION, 0).unwrap();
    let (mut hidden, mut logits) = (Vec::new(), Vec::new());
    let mut all = Vec::new();
    let mut step = |pos: usize, tokens: &[u32]| {
        assert_eq!(
            a.forward(SESSION, pos, Input::Tokens(tokens), &mut hidden)
                .unwrap(),
            Output::Hidden
        );
        assert_eq!(
            b.forward(SESSION, pos, Input::Hidden(&hidden), &mut logits)
                .unwrap(),
            Output::Logits
        );
        logits.clone()
    };
    all.push(step(0, prompt));
    for (i, &t) in decode.iter().enumerate() {
        all.push(step(prompt.len() + i, &[t]));
    }
    all
}

fn check_every_split(path: &Path, prompt: &[u32], decode: &[u32]) {
    let file = GgufFile::open(path).unwrap();
    let n = ModelConfig::from_metadata(file.metadata())
        .unwrap()
        .n_layers;
    let whole = run_whole(&file, n, prompt, decode);
    for k in 0..=n {
        let split = run_split(&file, n, k, prompt, decode);
        for (step, (w, s)) in whole.iter().zip(&split).enumerate() {
            let same =
                w.len() == s.len() && w.iter().zip(s).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "split at {k}: logits differ at step {step}");
        }
    }
}

#[test]
fn tiny_model_every_split_is_bit_identical() {
    let dir = temp_dir("composability");
    let path = dir.join("tiny.gguf");
    write_tiny_llama(&path, 42);
    check_every_split(&path, &[1, 5, 9, 14, 3, 77, 2], &[4, 8, 15]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn smollm2_every_split_is_bit_identical() {
    // Token ids of "The capital of France is" and a few continuation tokens.
    check_every_split(
        &model_path("smollm2"),
        &[504, 3575, 282, 4649, 314],
        &[7042, 30, 198],
    );
}

#[test]
fn kv_bytes_are_taken_by_positions_and_freed_on_close() {
    let dir = temp_dir("composability-kv");
    let path = dir.join("tiny.gguf");
    write_tiny_llama(&path, 7);
    let file = GgufFile::open(&path).unwrap();
    let n = ModelConfig::from_metadata(file.metadata())
        .unwrap()
        .n_layers;
    let mut shard = Shard::load(&file, ShardSpec::full(n), ShardOptions::default()).unwrap();
    shard.open_session(SESSION, 0).unwrap();
    assert_eq!(shard.kv_bytes(), 0, "nothing is reserved at open");
    let mut out = Vec::new();
    shard
        .forward(SESSION, 0, Input::Tokens(&[1, 5, 9]), &mut out)
        .unwrap();
    assert!(shard.kv_bytes() > 0, "the prompt's positions are cached");
    shard.close_session(SESSION);
    assert_eq!(shard.kv_bytes(), 0);
    std::fs::remove_dir_all(dir).ok();
}
