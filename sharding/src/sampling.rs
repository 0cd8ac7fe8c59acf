//! Choosing the next token from logits, in llama.cpp's sampler order.
//!
//! With `temperature <= 0` the sampler is greedy: repetition penalties, then argmax (ties go
//! to the lowest id, as llama.cpp's greedy sampler does). Otherwise the chain is penalties
//! -> top-k -> top-p -> min-p -> temperature -> a draw from the softmax, using a seeded
//! xoshiro256++ generator, so the same seed and inputs give the same tokens. The random
//! stream is not llama.cpp's (`std::mt19937`), so seeded runs are reproducible here but
//! do not replay llama.cpp's choices.
//!
//! Only as much is sorted as the filters need: top-k lists only logits that can be among
//! its k and selects from those, top-p sorts the most likely few hundred and the rest only
//! when they are not enough, and a draw that nothing filtered walks the vocabulary in id
//! order. (Sorting all of SmolLM2's 49152 logits was 1.4 ms of every sampled token;
//! `examples/sampling_cost.rs` measures each setting on the real model's logits.)
//!
//! Buffers are kept between calls: after the first token, sampling allocates nothing.

use crate::mathf::{expf, lnf};
use std::collections::VecDeque;

mod logprobs;
mod speculative;

pub use logprobs::{token_logprobs, TokenLogprobs, MAX_TOP_LOGPROBS};

/// Why a sampler could not be built or could not sample.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    /// A configuration value is outside its domain.
    #[error("invalid sampler setting {name} = {value}: {why}")]
    InvalidConfig {
        /// The field.
        name: &'static str,
        /// Its value.
        value: f32,
        /// The allowed domain.
        why: &'static str,
    },
    /// The logits slice is empty.
    #[error("no logits to sample from")]
    EmptyLogits,
    /// The vocabulary has more entries than 32-bit ids can name.
    #[error("{0} logits do not fit u32 token ids")]
    TooManyLogits(usize),
}

/// Sampler settings. The defaults are llama.cpp's command-line defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `<= 0` means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; 1 disables.
    pub repetition_penalty: f32,
    /// Subtract `count * frequency_penalty` from a seen token's logit; 0 disables.
    pub frequency_penalty: f32,
    /// Subtract `presence_penalty` from a seen token's logit; 0 disables.
    pub presence_penalty: f32,
    /// How many of the latest tokens the penalties look at; 0 disables penalties.
    pub penalty_last_n: usize,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (argmax, no penalties).
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        }
    }

    fn validate(&self) -> Result<(), SamplingError> {
        let check = |name, value: f32, ok: bool, why| {
            if ok {
                Ok(())
            } else {
                Err(SamplingError::InvalidConfig { name, value, why })
            }
        };
        let t = self.temperature;
        check(
            "temperature",
            t,
            t.is_finite() || t == f32::NEG_INFINITY,
            "must not be NaN or +inf",
        )?;
        check(
            "top_p",
            self.top_p,
            self.top_p > 0.0 && self.top_p <= 1.0,
            "must be in (0, 1]",
        )?;
        check(
            "min_p",
            self.min_p,
            (0.0..=1.0).contains(&self.min_p),
            "must be in [0, 1]",
        )?;
        let r = self.repetition_penalty;
        check(
            "repetition_penalty",
            r,
            r.is_finite() && r > 0.0,
            "must be positive and finite",
        )?;
        let f = self.frequency_penalty;
        check("frequency_penalty", f, f.is_finite(), "must be finite")?;
        let p = self.presence_penalty;
        check("presence_penalty", p, p.is_finite(), "must be finite")
    }

    fn penalties_active(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repetition_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// A stateful sampler: configuration, random generator and the recent-token window.
#[derive(Debug)]
pub struct Sampler {
    config: SamplerConfig,
    rng: Xoshiro256,
    history: VecDeque<u32>,
    /// Scratch: `(id, logit)` candidates.
    candidates: Vec<(u32, f32)>,
    /// Scratch: the history, sorted, for counting.
    window: Vec<u32>,
    /// Scratch: each candidate's unnormalized probability, for the draw.
    weights: Vec<f64>,
    /// Scratch: the largest logit of each run (see [`top_k_floor`]).
    maxima: Vec<f32>,
}

impl Sampler {
    /// A sampler with `config`, or an error naming the first invalid setting.
    pub fn new(config: SamplerConfig) -> Result<Self, SamplingError> {
        config.validate()?;
        Ok(Sampler {
            rng: Xoshiro256::seed(config.seed),
            history: VecDeque::with_capacity(config.penalty_last_n),
            candidates: Vec::new(),
            window: Vec::with_capacity(config.penalty_last_n),
            weights: Vec::new(),
            maxima: Vec::new(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Records `id` in the penalty window (use for prompt tokens; [`Sampler::sample`]
    /// records its own choices).
    pub fn accept(&mut self, id: u32) {
        let n = self.config.penalty_last_n;
        if n == 0 {
            return;
        }
        if self.history.len() == n {
            self.history.pop_front();
        }
        self.history.push_back(id);
    }

    /// Forgets the penalty window and reseeds the generator.
    pub fn reset(&mut self) {
        self.history.clear();
        self.rng = Xoshiro256::seed(self.config.seed);
    }

    /// Picks the next token from `logits` (one per vocabulary id) and records it.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        check_logits(logits)?;
        if self.config.temperature <= 0.0 && !self.penalizes() {
            // Plain greedy needs no candidate list, only passes over the logits: 3.8 us
            // instead of 34 for SmolLM2's 49152 (`benches/sampling.rs`), on every token.
            let id = argmax_logits(logits);
            self.accept(id);
            return Ok(id);
        }
        self.prepare(logits);
        let id = if self.config.temperature <= 0.0 {
            argmax(&self.candidates)
        } else {
            self.sample_filtered(logits.len())
        };
        self.accept(id);
        Ok(id)
    }

    /// Fills the candidates from `logits`: every logit, or only those that can be among
    /// top-k's when no penalty reorders them, penalties applied.
    fn prepare(&mut self, logits: &[f32]) {
        let k = self.config.top_k;
        // Without penalties top-k needs only the logits that can be among its k: listing
        // those alone makes its selection a few hundred candidates' instead of 49152's.
        let floor = if self.config.temperature > 0.0 && k > 0 && !self.penalizes() {
            top_k_floor(logits, k, &mut self.maxima)
        } else {
            f32::NEG_INFINITY
        };
        self.candidates.clear();
        // NaN would poison every comparison; it is as unlikely as a token can be. Adding
        // zero turns -0 into +0, which the candidates' ordering (`total_cmp`) would
        // otherwise rank below it, unlike greedy's `>`.
        let all = logits.iter().enumerate().map(|(i, &l)| {
            (
                i as u32,
                if l.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    l + 0.0
                },
            )
        });
        if floor == f32::NEG_INFINITY {
            // Every logit: the exact length lets the copy run without checks.
            self.candidates.extend(all);
        } else {
            self.candidates.extend(all.filter(|&(_, l)| l >= floor));
        }
        self.apply_penalties();
    }

    /// Whether the penalties change any logit of the next pick.
    fn penalizes(&self) -> bool {
        self.config.penalties_active() && !self.history.is_empty()
    }

    fn apply_penalties(&mut self) {
        if !self.penalizes() {
            return;
        }
        self.window.clear();
        self.window.extend(self.history.iter().copied());
        self.window.sort_unstable();
        let c = &self.config;
        let mut i = 0;
        while i < self.window.len() {
            let id = self.window[i];
            let mut j = i;
            while j < self.window.len() && self.window[j] == id {
                j += 1;
            }
            let count = (j - i) as f32;
            // Candidates are still indexed by id here.
            if let Some((_, logit)) = self.candidates.get_mut(id as usize) {
                if *logit <= 0.0 {
                    *logit *= c.repetition_penalty;
                } else {
                    *logit /= c.repetition_penalty;
                }
                *logit -= count * c.frequency_penalty + c.presence_penalty;
            }
            i = j;
        }
    }

    fn sample_filtered(&mut self, vocab: usize) -> u32 {
        let max = self.filter(vocab);
        let inv_t = 1.0 / self.config.temperature;
        let (cands, weights) = (&self.candidates, &mut self.weights);
        weights.clear();
        weights.extend(
            cands
                .iter()
                .map(|&(_, l)| f64::from(expf((l - max) * inv_t))),
        );
        let total: f64 = weights.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            return argmax(cands);
        }
        let target = self.rng.next_f64() * total;
        let mut cum = 0.0;
        for (&(id, _), &w) in cands.iter().zip(weights.iter()) {
            cum += w;
            if target < cum {
                return id;
            }
        }
        // Rounding left `target` at the very top: the last candidate.
        cands[cands.len() - 1].0
    }

    /// Keeps the candidates top-k, top-p and min-p leave, and returns the largest logit.
    /// They end most likely first (ties: lowest id first) when any filter cut them, and in
    /// id order when none did: the draw's order then does not matter, and sorting the
    /// whole vocabulary was most of a token's sampling time (1.4 ms for 49152 logits).
    ///
    /// `vocab` is the number of logits (the candidates may be fewer: see [`top_k_floor`]).
    fn filter(&mut self, vocab: usize) -> f32 {
        let c = &self.config;
        let cands = &mut self.candidates;
        let mut sorted = false;
        if c.top_k > 0 && c.top_k < vocab {
            if c.top_k < cands.len() {
                cands.select_nth_unstable_by(c.top_k - 1, by_logit);
                cands.truncate(c.top_k);
            }
            cands.sort_unstable_by(by_logit);
            sorted = true;
        }
        // `cands` is non-empty: sample() rejects empty logits and top_k keeps at least one.
        let max = cands
            .iter()
            .fold(f32::NEG_INFINITY, |m, &(_, l)| if l > m { l } else { m });
        if c.top_p < 1.0 {
            let total: f64 = cands.iter().map(|&(_, l)| f64::from(expf(l - max))).sum();
            // The nucleus is the shortest most-likely-first run reaching `top_p`. Sort only
            // the most likely NUCLEUS_GUESS first; the rest only if they are not enough.
            let guess = if sorted {
                cands.len()
            } else {
                NUCLEUS_GUESS.min(cands.len())
            };
            if guess < cands.len() {
                cands.select_nth_unstable_by(guess - 1, by_logit);
            }
            cands[..guess].sort_unstable_by(by_logit);
            let mut cum = 0.0;
            let mut walk = |from: usize, cands: &[(u32, f32)]| {
                for (i, &(_, l)) in cands.iter().enumerate().skip(from) {
                    cum += f64::from(expf(l - max)) / total;
                    if cum >= f64::from(c.top_p) {
                        return Some(i + 1);
                    }
                }
                None
            };
            let mut keep = walk(0, &cands[..guess]);
            if keep.is_none() && guess < cands.len() {
                // The first `guess` are the most likely; sorting the rest sorts them all.
                cands[guess..].sort_unstable_by(by_logit);
                keep = walk(guess, cands);
            }
            cands.truncate(keep.unwrap_or(cands.len()).max(1));
            sorted = true;
        }
        if c.min_p > 0.0 {
            let threshold = max + lnf(c.min_p);
            if sorted {
                let keep = cands.iter().take_while(|&&(_, l)| l >= threshold).count();
                cands.truncate(keep.max(1));
            } else {
                // `min_p <= 1`, so the largest logit stays.
                cands.retain(|&(_, l)| l >= threshold);
                cands.sort_unstable_by(by_logit);
            }
        }
        max
    }
}

/// `logits` can be sampled: not empty, ids fit `u32`.
fn check_logits(logits: &[f32]) -> Result<(), SamplingError> {
    if logits.is_empty() {
        return Err(SamplingError::EmptyLogits);
    }
    u32::try_from(logits.len()).map_err(|_| SamplingError::TooManyLogits(logits.len()))?;
    Ok(())
}

/// A value no larger than the `k`-th largest of `logits` (NaN counting as minus infinity),
/// from one vectorizable pass: split them into at least `8k` runs; the runs' largest are
/// different logits, so at least `k` logits reach the `k`-th largest of those. `maxima` is
/// scratch.
fn top_k_floor(logits: &[f32], k: usize, maxima: &mut Vec<f32>) -> f32 {
    if k == 0 || k >= logits.len() {
        return f32::NEG_INFINITY;
    }
    let larger = |m: f32, l: f32| if l > m { l } else { m };
    let run = (logits.len() / k.saturating_mul(8)).max(1);
    maxima.clear();
    maxima.extend(
        logits
            .chunks(run)
            .map(|run| run.iter().fold(f32::NEG_INFINITY, |m, &l| larger(m, l))),
    );
    *maxima
        .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a))
        .1
}

/// How many of the most likely candidates top-p sorts before it looks at the rest: a
/// nucleus is usually far smaller than the vocabulary.
const NUCLEUS_GUESS: usize = 256;

/// Most likely first, then lowest id.
fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The id of the largest logit, the lowest on ties, NaN counting as minus infinity: what
/// [`argmax`] picks from the candidates of `logits`. The maximum first, then its first
/// position, each pass over 16 independent lanes so that it compiles to vector max and
/// compare instructions.
fn argmax_logits(logits: &[f32]) -> u32 {
    const LANES: usize = 16;
    // `l > m` is false for a NaN `l`, so NaN never wins.
    let larger = |m: f32, l: f32| if l > m { l } else { m };
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &l| larger(m, l));
    let lanes = chunks.fold([f32::NEG_INFINITY; LANES], |mut m, c| {
        for (m, &l) in m.iter_mut().zip(c) {
            *m = larger(*m, l);
        }
        m
    });
    let max = lanes.into_iter().fold(tail, larger);
    // With every logit NaN or minus infinity, the first of them wins.
    let is_max = |l: f32| l == max || (max == f32::NEG_INFINITY && l.is_nan());
    let first_chunk = logits
        .chunks(LANES)
        .position(|c| c.iter().fold(false, |hit, &l| hit | is_max(l)))
        .unwrap_or(0);
    let start = first_chunk * LANES;
    let at = logits[start..].iter().position(|&l| is_max(l)).unwrap_or(0);
    (start + at) as u32
}

/// The id of the largest logit; the first (lowest id) on ties.
fn argmax(candidates: &[(u32, f32)]) -> u32 {
    let mut best = candidates[0];
    for &c in &candidates[1..] {
        if c.1 > best.1 {
            best = c;
        }
    }
    best.0
}

/// xoshiro256++ (Blackman & Vigna), seeded through SplitMix64.
#[derive(Clone, Debug)]
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn seed(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Xoshiro256 {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn xoshiro_matches_reference_vector() {
        // First outputs of xoshiro256++ for state [1, 2, 3, 4] (reference C code).
        let mut r = Xoshiro256 { s: [1, 2, 3, 4] };
        assert_eq!(r.next_u64(), 41_943_041);
        assert_eq!(r.next_u64(), 58_720_359);
        assert_eq!(r.next_u64(), 3_588_806_011_781_223);
    }

    /// The filters as written: sort every candidate, then cut. `total` runs over the
    /// candidates in the order `filter` sums them (top-k's if it cut, else id order), so
    /// that both round alike.
    fn reference(logits: &[f32], c: &SamplerConfig) -> Vec<u32> {
        let mut cands: Vec<(u32, f32)> = (0..).zip(logits.iter().copied()).collect();
        let top_k = c.top_k > 0 && c.top_k < cands.len();
        let total_order = cands.clone();
        cands.sort_unstable_by(by_logit);
        if top_k {
            cands.truncate(c.top_k);
        }
        let max = cands[0].1;
        if c.top_p < 1.0 {
            let summed = if top_k { &cands } else { &total_order };
            let total: f64 = summed.iter().map(|&(_, l)| f64::from(expf(l - max))).sum();
            let mut cum = 0.0;
            let mut keep = cands.len();
            for (i, &(_, l)) in cands.iter().enumerate() {
                cum += f64::from(expf(l - max)) / total;
                if cum >= f64::from(c.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
        }
        if c.min_p > 0.0 {
            let threshold = max + lnf(c.min_p);
            let keep = cands.iter().take_while(|&&(_, l)| l >= threshold).count();
            cands.truncate(keep.max(1));
        }
        let mut ids: Vec<u32> = cands.iter().map(|&(id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    proptest::proptest! {
        /// At least `k` logits reach the floor, so top-k's candidates are all listed.
        #[test]
        fn the_top_k_floor_is_at_most_the_kth_largest(
            logits in proptest::collection::vec(
                proptest::prop_oneof![(-3i8..3).prop_map(f32::from), proptest::num::f32::ANY],
                1..700,
            ),
            k in 1usize..100,
        ) {
            let floor = top_k_floor(&logits, k, &mut Vec::new());
            let mut v: Vec<f32> =
                logits.iter().map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l }).collect();
            v.sort_unstable_by(|a, b| b.total_cmp(a));
            if k < v.len() {
                prop_assert!(v[k - 1] >= floor, "floor {} above the {}th largest {}", floor, k, v[k - 1]);
            } else {
                prop_assert_eq!(floor, f32::NEG_INFINITY);
            }
        }

        /// Sorting only what the cut needs keeps exactly the candidates that sorting all
        /// of them keeps, most likely first whenever a filter cut.
        #[test]
        fn filters_keep_what_sorting_everything_keeps(
            logits in proptest::prop_oneof![
                proptest::collection::vec(
                    proptest::prop_oneof![(-3i8..3).prop_map(f32::from), -12.0f32..12.0],
                    1..700,
                ),
                // Flat and long: nuclei longer than NUCLEUS_GUESS.
                proptest::collection::vec(-1.0f32..1.0, 300..1200),
            ],
            top_k in proptest::prop_oneof![Just(0usize), 1usize..60],
            top_p in proptest::prop_oneof![Just(1.0f32), 0.05f32..1.0],
            min_p in proptest::prop_oneof![Just(0.0f32), 0.0f32..0.6],
        ) {
            let config = SamplerConfig { temperature: 1.0, top_k, top_p, min_p, ..SamplerConfig::default() };
            let mut s = Sampler::new(config.clone()).unwrap();
            s.candidates.extend((0..).zip(logits.iter().copied()));
            let max = s.filter(logits.len());
            prop_assert_eq!(max, logits.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            let mut kept: Vec<u32> = s.candidates.iter().map(|&(id, _)| id).collect();
            if (top_k > 0 && top_k < logits.len()) || top_p < 1.0 || min_p > 0.0 {
                prop_assert!(s.candidates.windows(2).all(|w| by_logit(&w[0], &w[1]).is_lt()));
            }
            kept.sort_unstable();
            prop_assert_eq!(kept, reference(&logits, &config));
        }
    }
}
