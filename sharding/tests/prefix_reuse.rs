//! `Shard::keep_session` and `Shard::open_session_from` on the real SmolLM2: a session that
//! starts from a kept prefix and computes only the rest gives the same bits as one that
//! computes everything, however the positions were chunked; kept caches give way to open
//! sessions and are found only by their group.

mod common;

use sharding::gguf::GgufFile;
use sharding::kv::kept::KeptKey;
use sharding::model::{Input, Shard, ShardOptions, ShardSpec, StepError};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Layers 0..10 of SmolLM2, taking token ids and returning hidden states: a first stage.
fn first_stage(max_sessions: usize) -> Shard {
    first_stage_with(max_sessions, 4096)
}

fn first_stage_with(max_sessions: usize, max_context: usize) -> Shard {
    let file = GgufFile::open(common::model_path("smollm2")).expect("open SmolLM2");
    let spec = ShardSpec {
        layers: 0..10,
        embed: true,
        head: false,
    };
    let options = ShardOptions {
        max_sessions,
        max_context,
        ..ShardOptions::default()
    };
    Shard::load(&file, spec, options).expect("load")
}

/// Runs `tokens` from position `pos` in chunks of `chunk`; the hidden states of every
/// position run.
fn run(shard: &mut Shard, id: u64, pos: usize, tokens: &[u32], chunk: usize) -> Vec<f32> {
    let (mut all, mut out) = (Vec::new(), Vec::new());
    for (i, c) in tokens.chunks(chunk).enumerate() {
        let at = pos + i * chunk;
        shard.forward(id, at, Input::Tokens(c), &mut out).unwrap();
        all.extend_from_slice(&out);
    }
    all
}

fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7919 + salt * 104_729) % 49_000 + 100)
        .collect()
}

#[test]
fn a_session_from_a_kept_prefix_computes_the_same_bits() {
    let mut shard = first_stage(8);
    let e = shard.config().n_embd;
    // The whole context at once, from nothing: the reference.
    let history = tokens(150, 1);
    let mut context = history.clone();
    context.extend(tokens(40, 2));
    shard.open_session(1, 256).unwrap();
    let reference = run(&mut shard, 1, 0, &context, 64);
    assert!(shard.close_session(1));

    // The history in another chunking, kept; then a new session resumes 130 positions of it
    // and computes the rest of the context.
    shard.open_session(2, 256).unwrap();
    run(&mut shard, 2, 0, &history, 37);
    let key = KeptKey { group: 9, key: 2 };
    assert!(shard.keep_session(2, key, 4));
    assert!(shard.session(2).is_none(), "a kept session is closed");
    shard.open_session_from(3, key, 130, 256).unwrap();
    assert_eq!(shard.session(3).map(|c| c.len()), Some(130));
    let rest = run(&mut shard, 3, 130, &context[130..], 64);
    assert_eq!(bits(&rest), bits(&reference[130 * e..]));

    // The kept cache is still there for another session, of the same group only.
    let other = KeptKey { group: 8, key: 2 };
    assert!(matches!(
        shard.open_session_from(4, other, 100, 256),
        Err(StepError::PrefixMissing { .. })
    ));
    assert!(matches!(
        shard.open_session_from(4, key, 151, 256),
        Err(StepError::PrefixMissing { .. })
    ));
    shard.open_session_from(4, key, 150, 256).unwrap();
    let rest = run(&mut shard, 4, 150, &context[150..], 64);
    assert_eq!(bits(&rest), bits(&reference[150 * e..]));
}

#[test]
fn kept_caches_give_way_to_open_sessions() {
    let mut shard = first_stage(3);
    for id in 1..=3 {
        shard.open_session(id, 128).unwrap();
        run(&mut shard, id, 0, &tokens(40, id as u32), 64);
    }
    let key = |k| KeptKey { group: 1, key: k };
    assert!(shard.keep_session(1, key(1), 8));
    assert!(shard.keep_session(2, key(2), 8));
    assert_eq!((shard.session_count(), shard.kept_count()), (1, 2));
    // Two opens fit only by evicting both kept caches, the least recently used first.
    shard.open_session_from(4, key(1), 32, 128).unwrap();
    assert_eq!(shard.kept_count(), 1);
    assert!(matches!(
        shard.open_session_from(5, key(2), 32, 128),
        Err(StepError::PrefixMissing { .. })
    ));
    shard.open_session(5, 128).unwrap();
    assert_eq!((shard.session_count(), shard.kept_count()), (3, 0));
    assert!(matches!(
        shard.open_session(6, 128),
        Err(StepError::TooManySessions(3))
    ));
    // A group keeps at most its share: its oldest goes first.
    assert!(shard.keep_session(3, key(3), 1));
    assert!(shard.keep_session(4, key(4), 1));
    assert_eq!(shard.kept_count(), 1);
    assert!(matches!(
        shard.open_session_from(6, key(3), 32, 128),
        Err(StepError::PrefixMissing { .. })
    ));
    shard.open_session_from(6, key(4), 32, 128).unwrap();
    assert!(!shard.keep_session(99, key(5), 1), "no such session");
}

#[test]
fn kept_caches_hold_at_most_one_whole_context() {
    // A whole context is 512 positions; each kept cache holds 256 (its 40 positions, in
    // whole steps of growth): two fit, a third pushes the least recently used out.
    let mut shard = first_stage_with(8, 512);
    let key = |k| KeptKey { group: 1, key: k };
    for id in 1..=3u64 {
        shard.open_session(id, 512).unwrap();
        run(&mut shard, id, 0, &tokens(40, id as u32), 64);
        assert!(shard.keep_session(id, key(id), 8));
        assert!(shard.kv_bytes() <= shard.kept_budget());
    }
    assert_eq!(shard.kept_count(), 2);
    assert!(matches!(
        shard.open_session_from(4, key(1), 32, 512),
        Err(StepError::PrefixMissing { .. })
    ));
    shard.open_session_from(4, key(2), 32, 512).unwrap();
    shard.open_session_from(5, key(3), 32, 512).unwrap();
}
