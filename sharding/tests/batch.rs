//! `Shard::forward_batch` and `Shard::logits_each` against one-session-at-a-time runs on the
//! real SmolLM2 (and Gemma 3 for the K-quant kernels): the same bits per row, llama.cpp's
//! greedy tokens for several sessions decoded together, and refusals that leave every session
//! as it was.

mod common;

use sharding::gguf::GgufFile;
use sharding::model::{
    BatchError, Input, ModelConfig, Output, Shard, ShardOptions, ShardSpec, StepError, MAX_BATCH,
};

/// A batch's steps, its input rows, and the refusal it must get.
type Refusal = (Vec<(u64, usize)>, Vec<f32>, BatchError);

fn load(file: &GgufFile, spec: ShardSpec) -> Shard {
    Shard::load(file, spec, ShardOptions::default()).expect("load shard")
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

/// Opens session `first_id + i` for each case on both shards and runs its prompt; returns
/// each session's first greedy token and next position.
fn prefill_both(
    alone: &mut Shard,
    batched: &mut Shard,
    cases: &[common::Case],
    first_id: u64,
) -> (Vec<u32>, Vec<usize>) {
    let (mut next, mut pos, mut logits) = (Vec::new(), Vec::new(), Vec::new());
    for (i, c) in cases.iter().enumerate() {
        let id = first_id + i as u64;
        for shard in [&mut *alone, &mut *batched] {
            shard.open_session(id, 0).unwrap();
            shard
                .forward(id, 0, Input::Tokens(&c.prompt_ids), &mut logits)
                .unwrap();
        }
        next.push(argmax(&logits));
        pos.push(c.prompt_ids.len());
    }
    (next, pos)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Five sessions with different prompts decode together, each for as many tokens as its
/// fixture holds (up to a cap), so the batch shrinks from five rows to one as they finish.
/// Each row's logits must equal, bit for bit, those of the same session decoded alone, and
/// the greedy tokens must be llama.cpp's.
#[test]
fn batched_decode_equals_each_session_alone_and_llama_cpp() {
    let file = GgufFile::open(common::model_path("smollm2")).expect("open");
    let n_layers = 30;
    let mut alone = load(&file, ShardSpec::full(n_layers));
    let mut batched = load(&file, ShardSpec::full(n_layers));
    let vocab = alone.config().vocab_size;
    let cases = common::cases("smollm2");
    assert!(cases.len() >= 5, "need five prompts");
    let lens = [12, 9, 6, 4, 2];
    let (mut next, mut pos) = prefill_both(&mut alone, &mut batched, &cases[..lens.len()], 100);
    let mut logits = Vec::new();
    let mut got: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
    let mut out = Vec::new();
    let mut rows_seen = Vec::new();
    for step in 1..lens[0] {
        let live: Vec<usize> = (0..lens.len()).filter(|&i| step < lens[i]).collect();
        rows_seen.push(live.len());
        let steps: Vec<(u64, usize)> = live.iter().map(|&i| (100 + i as u64, pos[i])).collect();
        let tokens: Vec<u32> = live.iter().map(|&i| next[i]).collect();
        let kind = batched
            .forward_batch(&steps, Input::Tokens(&tokens), &mut out)
            .unwrap();
        assert_eq!(kind, Output::Logits);
        assert_eq!(out.len(), live.len() * vocab);
        for (row, &i) in live.iter().enumerate() {
            let id = 100 + i as u64;
            alone
                .forward(id, pos[i], Input::Tokens(&[next[i]]), &mut logits)
                .unwrap();
            let mine = &out[row * vocab..(row + 1) * vocab];
            assert_eq!(bits(mine), bits(&logits), "session {i} at step {step}");
            next[i] = argmax(mine);
            got[i].push(next[i]);
            pos[i] += 1;
        }
    }
    assert_eq!(rows_seen, [5, 4, 4, 3, 3, 2, 2, 2, 1, 1, 1]);
    for (i, c) in cases.iter().take(lens.len()).enumerate() {
        assert_eq!(got[i], c.greedy_ids[..lens[i]], "prompt {}", c.name);
        assert_eq!(batched.session(100 + i as u64).unwrap().len(), pos[i]);
    }
}

/// The same on a K-quant model, Gemma 3 Q4_K_M (Q4_K and Q6_K matrices beside Q5_0 and
/// Q8_0): its three reference sessions decode together, three rows that the four-row kernels
/// take, and each row's logits equal, bit for bit, those of the session decoded alone.
#[test]
fn k_quant_batched_decode_equals_each_session_alone() {
    let file = GgufFile::open(common::model_path("gemma3")).expect("open");
    let n_layers = ModelConfig::from_metadata(file.metadata())
        .expect("config")
        .n_layers;
    let mut alone = load(&file, ShardSpec::full(n_layers));
    let mut batched = load(&file, ShardSpec::full(n_layers));
    let vocab = alone.config().vocab_size;
    let cases = common::cases("gemma3");
    assert_eq!(cases.len(), 3, "three prompts");
    let (mut next, mut pos) = prefill_both(&mut alone, &mut batched, &cases, 0);
    let mut logits = Vec::new();
    let mut out = Vec::new();
    for step in 0..6 {
        let steps: Vec<(u64, usize)> = (0..3).map(|i| (i as u64, pos[i])).collect();
        batched
            .forward_batch(&steps, Input::Tokens(&next), &mut out)
            .unwrap();
        for i in 0..3 {
            alone
                .forward(i as u64, pos[i], Input::Tokens(&[next[i]]), &mut logits)
                .unwrap();
            let mine = &out[i * vocab..(i + 1) * vocab];
            assert_eq!(bits(mine), bits(&logits), "session {i} at step {step}");
            next[i] = argmax(mine);
            pos[i] += 1;
        }
    }
}

/// A middle shard (hidden states in and out, as a pipeline stage runs) gives each batched
/// row the bits its session gets alone.
#[test]
fn batched_hidden_rows_equal_each_session_alone() {
    let file = GgufFile::open(common::model_path("smollm2")).expect("open");
    let spec = ShardSpec {
        layers: 10..20,
        embed: false,
        head: false,
    };
    let mut alone = load(&file, spec.clone());
    let mut batched = load(&file, spec);
    let e = alone.config().n_embd;
    // Deterministic, session-dependent inputs of a plausible scale.
    let row = |session: u64, pos: usize| -> Vec<f32> {
        (0..e)
            .map(|j| (((session as usize * 31 + pos * 7 + j) % 97) as f32 - 48.0) / 40.0)
            .collect()
    };
    let prompt_lens = [7usize, 1, 30, 3];
    let mut out = Vec::new();
    for (i, &n) in prompt_lens.iter().enumerate() {
        let id = i as u64;
        let prompt: Vec<f32> = (0..n).flat_map(|p| row(id, p)).collect();
        for shard in [&mut alone, &mut batched] {
            shard.open_session(id, 64).unwrap();
            shard
                .forward(id, 0, Input::Hidden(&prompt), &mut out)
                .unwrap();
        }
    }
    let mut single = Vec::new();
    for step in 0..6 {
        // Batches of 4, 3 and 2 rows, in varying session order.
        let live: Vec<u64> = match step % 3 {
            0 => vec![0, 1, 2, 3],
            1 => vec![3, 1, 0],
            _ => vec![2, 0],
        };
        let steps: Vec<(u64, usize)> = live
            .iter()
            .map(|&id| (id, alone.session(id).unwrap().len()))
            .collect();
        let input: Vec<f32> = steps.iter().flat_map(|&(id, p)| row(id, p)).collect();
        assert_eq!(
            batched
                .forward_batch(&steps, Input::Hidden(&input), &mut out)
                .unwrap(),
            Output::Hidden
        );
        for (r, &(id, p)) in steps.iter().enumerate() {
            alone
                .forward(id, p, Input::Hidden(&row(id, p)), &mut single)
                .unwrap();
            assert_eq!(
                bits(&out[r * e..(r + 1) * e]),
                bits(&single),
                "session {id} at {p}"
            );
        }
    }
}

#[test]
fn logits_of_several_rows_equal_each_row_alone() {
    let file = GgufFile::open(common::model_path("smollm2")).expect("open");
    let spec = ShardSpec {
        layers: 0..0,
        embed: true,
        head: true,
    };
    let mut head = load(&file, spec);
    let (e, vocab) = (head.config().n_embd, head.config().vocab_size);
    let mut hidden = Vec::new();
    head.embed(&[504, 3575, 282, 4649, 314], &mut hidden)
        .unwrap();
    let mut all = Vec::new();
    head.logits_each(&hidden, &mut all).unwrap();
    assert_eq!(all.len(), 5 * vocab);
    let mut one = Vec::new();
    for r in 0..5 {
        head.logits(&hidden[r * e..(r + 1) * e], &mut one).unwrap();
        assert_eq!(
            bits(&all[r * vocab..(r + 1) * vocab]),
            bits(&one),
            "row {r}"
        );
    }
    assert_eq!(
        head.logits_each(&hidden[..e + 1], &mut all),
        Err(StepError::BadHiddenLen {
            len: e + 1,
            n_embd: e
        })
    );
}

/// Every refusal names the step at fault (when there is one) and leaves every session where
/// it was; the batch without that step then runs.
#[test]
fn refused_batches_change_nothing() {
    let file = GgufFile::open(common::model_path("smollm2")).expect("open");
    let spec = ShardSpec {
        layers: 0..2,
        embed: false,
        head: false,
    };
    let mut shard = load(&file, spec);
    let e = shard.config().n_embd;
    shard.open_session(1, 4).unwrap();
    shard.open_session(2, 1).unwrap();
    shard.open_session(3, 4).unwrap();
    let mut out = Vec::new();
    let rows = |n: usize| vec![0.25f32; n * e];
    let x = rows(1);
    shard.forward(2, 0, Input::Hidden(&x), &mut out).unwrap();
    let lens = |s: &Shard| [1, 2, 3].map(|id| s.session(id).unwrap().len());
    assert_eq!(lens(&shard), [0, 1, 0]);

    let cases: Vec<Refusal> = vec![
        (vec![], rows(0), BatchError::Empty),
        (
            (0..MAX_BATCH as u64 + 1).map(|i| (i, 0)).collect(),
            rows(MAX_BATCH + 1),
            BatchError::TooLarge {
                steps: MAX_BATCH + 1,
                max: MAX_BATCH,
            },
        ),
        (
            vec![(1, 0), (3, 0)],
            rows(1),
            BatchError::Input(StepError::WrongInput {
                expected: "one hidden-state row per step",
            }),
        ),
        (
            vec![(1, 0), (9, 0)],
            rows(2),
            BatchError::Step {
                index: 1,
                error: StepError::UnknownSession(9),
            },
        ),
        (
            vec![(3, 0), (1, 5)],
            rows(2),
            BatchError::Step {
                index: 1,
                error: StepError::PositionMismatch {
                    session: 1,
                    expected: 0,
                    got: 5,
                },
            },
        ),
        (
            vec![(1, 0), (2, 1)],
            rows(2),
            BatchError::Step {
                index: 1,
                error: StepError::ContextFull {
                    session: 2,
                    len: 1,
                    adding: 1,
                    max: 1,
                },
            },
        ),
        (
            vec![(1, 0), (3, 0), (1, 0)],
            rows(3),
            BatchError::Duplicate {
                session: 1,
                first: 0,
                index: 2,
            },
        ),
    ];
    for (steps, input, want) in cases {
        let got = shard
            .forward_batch(&steps, Input::Hidden(&input), &mut out)
            .expect_err("refused");
        assert_eq!(got, want, "{steps:?}");
        assert_eq!(lens(&shard), [0, 1, 0], "{want} changed a session");
        let at_fault = match want {
            BatchError::Step { index, .. } | BatchError::Duplicate { index, .. } => Some(index),
            _ => None,
        };
        assert_eq!(got.step(), at_fault);
    }
    assert_eq!(
        shard.forward_batch(&[(1, 0)], Input::Tokens(&[5]), &mut out),
        Err(BatchError::Input(StepError::WrongInput {
            expected: "hidden states"
        }))
    );
    // And a good batch runs afterwards.
    shard
        .forward_batch(&[(3, 0), (1, 0)], Input::Hidden(&rows(2)), &mut out)
        .unwrap();
    assert_eq!(lens(&shard), [1, 1, 1]);
    assert_eq!(out.len(), 2 * e);
}
