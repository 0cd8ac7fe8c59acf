//! Speculative sampling against a draft token proposed with probability one (a prompt-lookup
//! draft, or a draft model's argmax): accept the draft `d` with probability `p(d)`, else draw
//! from `p` with `d` removed. The token that comes out is distributed exactly as
//! [`Sampler::sample`]'s (Leviathan et al., Chen et al.); greedily it is the argmax, so a
//! draft is kept exactly when it is the token plain decoding would pick.

use super::{argmax, check_logits, Sampler, SamplingError};

impl Sampler {
    /// The next token from `logits` given that `draft` was proposed for this position, and
    /// records it. The draft was accepted when the result equals it.
    pub fn sample_given_draft(&mut self, logits: &[f32], draft: u32) -> Result<u32, SamplingError> {
        check_logits(logits)?;
        if self.config.temperature <= 0.0 {
            return self.sample(logits);
        }
        self.prepare(logits);
        let max = self.filter(logits.len());
        let inv_t = 1.0 / self.config.temperature;
        let (cands, weights) = (&self.candidates, &mut self.weights);
        weights.clear();
        weights.extend(
            cands
                .iter()
                .map(|&(_, l)| f64::from(crate::mathf::expf((l - max) * inv_t))),
        );
        let total: f64 = weights.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            let id = argmax(cands);
            self.accept(id);
            return Ok(id);
        }
        let drafted = cands.iter().position(|&(id, _)| id == draft);
        let p_draft = drafted.map_or(0.0, |i| weights[i] / total);
        if self.rng.next_f64() < p_draft {
            self.accept(draft);
            return Ok(draft);
        }
        // The residual: `p` without the draft, renormalized.
        let rest = total - drafted.map_or(0.0, |i| weights[i]);
        let target = self.rng.next_f64() * rest;
        let mut cum = 0.0;
        let mut pick = None;
        for (i, (&(id, _), &w)) in cands.iter().zip(weights.iter()).enumerate() {
            if Some(i) == drafted {
                continue;
            }
            cum += w;
            pick = Some(id);
            if target < cum {
                break;
            }
        }
        // Only the draft had any weight: it is all `p` allows.
        let id = pick.unwrap_or(draft);
        self.accept(id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::SamplerConfig;
    use super::*;

    fn logits() -> Vec<f32> {
        vec![2.0, 1.5, 1.0, 0.2, -1.0, 0.7]
    }

    #[test]
    fn greedy_keeps_a_draft_exactly_when_it_is_the_argmax() {
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample_given_draft(&logits(), 0).unwrap(), 0);
        assert_eq!(s.sample_given_draft(&logits(), 3).unwrap(), 0);
    }

    /// Drafts from any proposal leave the distribution of the tokens that come out as plain
    /// sampling's: frequencies over many seeded draws against the exact softmax.
    #[test]
    fn accepted_tokens_are_distributed_as_plain_sampling() {
        let config = SamplerConfig {
            temperature: 0.9,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..SamplerConfig::default()
        };
        let l = logits();
        let exact: Vec<f64> = {
            let w: Vec<f64> = l.iter().map(|&x| f64::from((x / 0.9).exp())).collect();
            let t: f64 = w.iter().sum();
            w.iter().map(|x| x / t).collect()
        };
        let n = 200_000;
        for draft in [0u32, 2, 4] {
            let mut s = Sampler::new(config.clone()).unwrap();
            let mut counts = vec![0usize; l.len()];
            let mut kept = 0;
            for _ in 0..n {
                let id = s.sample_given_draft(&l, draft).unwrap();
                counts[id as usize] += 1;
                kept += usize::from(id == draft);
            }
            for (i, &c) in counts.iter().enumerate() {
                let f = c as f64 / n as f64;
                assert!(
                    (f - exact[i]).abs() < 0.005,
                    "draft {draft}: token {i} {f} vs {}",
                    exact[i]
                );
            }
            // The draft is kept as often as p says.
            let kept = kept as f64 / n as f64;
            assert!((kept - exact[draft as usize]).abs() < 0.005, "{kept}");
        }
    }

    #[test]
    fn filters_apply_before_the_draft_is_judged() {
        // top-k 2 leaves tokens 0 and 1: a draft outside them is never kept.
        let config = SamplerConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            seed: 3,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(config).unwrap();
        for _ in 0..1000 {
            let id = s.sample_given_draft(&logits(), 4).unwrap();
            assert!(id == 0 || id == 1, "{id}");
        }
    }
}
