//! Sampler behaviour: greedy, determinism and each filter.

use proptest::prelude::*;
use sharding::sampling::{Sampler, SamplerConfig, SamplingError};

fn sampler(config: SamplerConfig) -> Sampler {
    Sampler::new(config).expect("valid config")
}

fn random_config(seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..SamplerConfig::default()
    }
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let mut s = sampler(SamplerConfig::greedy());
    assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9]).unwrap(), 1);
    assert_eq!(s.sample(&[3.0, 1.0, 3.0]).unwrap(), 0);
    assert_eq!(s.sample(&[f32::NAN, -5.0, -4.0]).unwrap(), 2);
    assert_eq!(s.sample(&[-1.0]).unwrap(), 0);
    // -0 ties with +0, through the candidate list (top-k 1) as well.
    assert_eq!(s.sample(&[-0.0, 0.0]).unwrap(), 0);
    let mut top1 = sampler(SamplerConfig {
        top_k: 1,
        ..random_config(1)
    });
    assert_eq!(top1.sample(&[-0.0, 0.0]).unwrap(), 0);
}

proptest::proptest! {
    /// Plain greedy skips the candidate list; it must pick what the list would: the largest
    /// logit, the lowest id on ties, NaN below everything.
    #[test]
    fn greedy_picks_what_the_candidate_list_picks(
        logits in proptest::collection::vec(
            proptest::prop_oneof![
                (-4i8..4).prop_map(f32::from),
                proptest::num::f32::ANY,
            ],
            1..300,
        )
    ) {
        let want = logits
            .iter()
            .map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l })
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, l)| if i == 0 || l > best.1 { (i, l) } else { best })
            .0 as u32;
        prop_assert_eq!(sampler(SamplerConfig::greedy()).sample(&logits).unwrap(), want);
        // top-k 1 goes through the list.
        let mut top1 = sampler(SamplerConfig { top_k: 1, ..random_config(1) });
        prop_assert_eq!(top1.sample(&logits).unwrap(), want);
    }
}

#[test]
fn same_seed_same_sequence_and_seeds_differ() {
    let logits: Vec<f32> = (0..50).map(|i| ((i * 7919) % 13) as f32 * 0.3).collect();
    let run = |seed| {
        let mut s = sampler(random_config(seed));
        (0..64)
            .map(|_| s.sample(&logits).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    // reset() replays the stream.
    let mut s = sampler(random_config(7));
    let first: Vec<u32> = (0..16).map(|_| s.sample(&logits).unwrap()).collect();
    s.reset();
    let again: Vec<u32> = (0..16).map(|_| s.sample(&logits).unwrap()).collect();
    assert_eq!(first, again);
}

#[test]
fn top_k_one_is_greedy() {
    let logits = [0.5, 1.5, 1.4, -2.0, 1.49];
    let mut s = sampler(SamplerConfig {
        top_k: 1,
        ..random_config(3)
    });
    for _ in 0..100 {
        assert_eq!(s.sample(&logits).unwrap(), 1);
    }
}

#[test]
fn top_p_keeps_only_the_nucleus() {
    // Softmax of these is about [0.84, 0.11, 0.04, 0.01].
    let logits = [4.0, 2.0, 1.0, -0.5];
    let mut narrow = sampler(SamplerConfig {
        top_p: 0.8,
        ..random_config(11)
    });
    assert!((0..300).all(|_| narrow.sample(&logits).unwrap() == 0));
    let mut wide = sampler(SamplerConfig {
        top_p: 0.9,
        ..random_config(11)
    });
    let picks: Vec<u32> = (0..300).map(|_| wide.sample(&logits).unwrap()).collect();
    assert!(
        picks.contains(&1),
        "0.84 < 0.9 so token 1 is in the nucleus"
    );
    assert!(picks.iter().all(|&p| p <= 1));
}

#[test]
fn min_p_drops_unlikely_tokens() {
    let logits = [2.0, 2.0 + 0.2f32.ln() - 0.01, 2.0 + 0.2f32.ln() + 0.01];
    let mut s = sampler(SamplerConfig {
        min_p: 0.2,
        ..random_config(5)
    });
    let picks: Vec<u32> = (0..300).map(|_| s.sample(&logits).unwrap()).collect();
    assert!(!picks.contains(&1));
    assert!(picks.contains(&0) && picks.contains(&2));
}

#[test]
fn draws_follow_the_softmax() {
    let logits = [0.0, 0.0, 2.0f32.ln()];
    let mut s = sampler(random_config(9));
    let mut counts = [0u32; 3];
    for _ in 0..4000 {
        counts[s.sample(&logits).unwrap() as usize] += 1;
    }
    // Expected 1000 / 1000 / 2000.
    assert!((850..1150).contains(&counts[0]), "{counts:?}");
    assert!((850..1150).contains(&counts[1]), "{counts:?}");
    assert!((1800..2200).contains(&counts[2]), "{counts:?}");
}

#[test]
fn low_temperature_sharpens() {
    let logits = [1.0, 0.0];
    let mut s = sampler(SamplerConfig {
        temperature: 0.05,
        ..random_config(1)
    });
    assert!((0..200).all(|_| s.sample(&logits).unwrap() == 0));
}

#[test]
fn repetition_penalty_changes_the_greedy_choice() {
    let config = SamplerConfig {
        repetition_penalty: 1.5,
        penalty_last_n: 4,
        ..SamplerConfig::greedy()
    };
    let mut s = sampler(config.clone());
    // 1.0 / 1.5 < 0.9: the seen token loses.
    s.accept(0);
    assert_eq!(s.sample(&[1.0, 0.9]).unwrap(), 1);
    // Negative logits are multiplied: -0.5 * 1.5 = -0.75 < -0.6.
    let mut s = sampler(config.clone());
    s.accept(0);
    assert_eq!(s.sample(&[-0.5, -0.6]).unwrap(), 1);
    // Tokens that left the window are no longer penalized.
    let mut s = sampler(config);
    for id in [0, 5, 6, 7, 8] {
        s.accept(id);
    }
    assert_eq!(s.sample(&[1.0, 0.9]).unwrap(), 0);
}

#[test]
fn frequency_and_presence_penalties_subtract() {
    let mut s = sampler(SamplerConfig {
        frequency_penalty: 0.1,
        presence_penalty: 0.05,
        ..SamplerConfig::greedy()
    });
    s.accept(0);
    s.accept(0);
    // 1.0 - 2 * 0.1 - 0.05 = 0.75 < 0.8.
    assert_eq!(s.sample(&[1.0, 0.8]).unwrap(), 1);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert_eq!(
        sampler(SamplerConfig::greedy()).sample(&[]),
        Err(SamplingError::EmptyLogits)
    );
    for bad in [
        SamplerConfig {
            top_p: 0.0,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            top_p: 1.5,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            min_p: -0.1,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            repetition_penalty: 0.0,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            temperature: f32::NAN,
            ..SamplerConfig::default()
        },
    ] {
        assert!(matches!(
            Sampler::new(bad),
            Err(SamplingError::InvalidConfig { .. })
        ));
    }
    // All-(-inf) logits still give a token.
    let mut s = sampler(random_config(0));
    assert!(s.sample(&[f32::NEG_INFINITY; 4]).unwrap() < 4);
}
