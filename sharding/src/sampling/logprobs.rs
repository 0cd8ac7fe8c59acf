//! Log-probabilities of a picked token and of the most likely ones, for OpenAI's
//! `logprobs`: the model's own distribution (a softmax of the raw logits), before the
//! sampler's temperature, penalties or truncation, so the figures describe the model and
//! not the request's sampling settings.

/// Most alternatives reported per token (OpenAI's limit for `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token's log-probability and the `top` most likely tokens' at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The token picked.
    pub id: u32,
    /// Its natural log-probability.
    pub logprob: f32,
    /// The most likely tokens, most likely first (ties by lower id).
    pub top: Vec<(u32, f32)>,
}

/// Log-probabilities at a position with `logits`: the picked token `id`'s and the `top`
/// most likely (at most [`MAX_TOP_LOGPROBS`]). `None` if `id` is outside `logits`.
pub fn token_logprobs(logits: &[f32], id: u32, top: usize) -> Option<TokenLogprobs> {
    let picked = *logits.get(id as usize)?;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_norm = f64::from(max) + sum.ln();
    let lp = |l: f32| (f64::from(l) - log_norm) as f32;
    let top = top.min(MAX_TOP_LOGPROBS).min(logits.len());
    // One pass keeping the best `top` in a small sorted list: vocabularies are ~50-250k
    // entries and `top` at most 20, so this beats sorting the row.
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() == top && l <= best[top - 1].1 {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i as u32, l));
            best.truncate(top);
        }
    }
    Some(TokenLogprobs {
        id,
        logprob: lp(picked),
        top: best.into_iter().map(|(i, l)| (i, lp(l))).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_normalized_log_softmax_with_the_best_first() {
        let logits = [1.0, 3.0, 2.0, 3.0, -1.0];
        let t = token_logprobs(&logits, 2, 3).unwrap();
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((f64::from(t.logprob) - (2.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = t.top.iter().map(|&(i, _)| i).collect();
        assert_eq!(ids, [1, 3, 2], "ties keep the lower id first");
        let total: f64 = logits.iter().map(|&l| (f64::from(l) - z.ln()).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(t.top[0].1 > t.top[2].1);
    }

    #[test]
    fn asks_beyond_the_row_are_bounded() {
        assert!(token_logprobs(&[0.0, 1.0], 2, 1).is_none());
        let t = token_logprobs(&[0.0, 1.0], 0, 50).unwrap();
        assert_eq!(t.top.len(), 2);
        assert!(token_logprobs(&[0.0; 100], 0, 50).unwrap().top.len() == MAX_TOP_LOGPROBS);
        assert!(token_logprobs(&[0.0, 1.0], 1, 0).unwrap().top.is_empty());
    }
}
