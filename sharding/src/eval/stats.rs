//! The statistics llama-perplexity reports: perplexity with its uncertainty, and, against
//! a base, KL divergence, the change in the target token's probability (Δp) and how often
//! both pick the same top token. Sums are kept as llama.cpp keeps them (single-precision
//! per row, double-precision totals) so the two tools' figures compare digit for digit.

use super::logits_file::decode_row;

/// Mean and its standard error of a quantity from its sum and sum of squares, as
/// llama.cpp computes them (no error below 11 samples).
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let f = sum / n;
    let df = sum2 / n - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// Running negative log-likelihood of scored tokens.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nll {
    /// Sum of negative log-likelihoods.
    pub sum: f64,
    /// Sum of their squares.
    pub sum2: f64,
    /// Tokens scored.
    pub count: usize,
}

impl Nll {
    /// Adds one token's negative log-likelihood.
    pub fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum2 += nll * nll;
        self.count += 1;
    }

    /// Perplexity so far.
    pub fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }

    /// Perplexity and its uncertainty, as llama-perplexity's "Final estimate".
    pub fn estimate(&self) -> (f64, f64) {
        let n = self.count.max(1) as f64;
        let nll = self.sum / n;
        let var = self.sum2 / n - nll * nll;
        let ppl = nll.exp();
        let unc = if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt() * ppl
        } else {
            0.0
        };
        (ppl, unc)
    }
}

/// Negative log-likelihood of `target` under `logits`, as llama-perplexity's plain
/// perplexity pass computes it.
pub fn row_nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(logits[0], f32::max);
    let sum_exp: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    -(f64::from(logits[target] - max) - sum_exp.ln())
}

/// Running sums of a comparison against a base, and every row's KLD and Δp.
#[derive(Clone, Debug, Default)]
pub struct KlDivergence {
    /// This model's negative log-likelihoods.
    pub nll: Nll,
    /// The base's negative log-likelihoods.
    pub nll_base: Nll,
    /// Sum of the products of the two.
    pub sum_nll_nll_base: f64,
    /// Sum of KLD and of its square.
    pub sum_kld: f64,
    /// Sum of squared KLD.
    pub sum_kld2: f64,
    /// Sums of Δp, Δp², Δp⁴.
    pub sum_p_diff: f64,
    /// Sum of Δp².
    pub sum_p_diff2: f64,
    /// Sum of Δp⁴.
    pub sum_p_diff4: f64,
    /// Rows whose top token agrees with the base's.
    pub same_top: usize,
    /// Each row's KLD, in order.
    pub kld: Vec<f32>,
    /// Each row's Δp (this model's probability of the target minus the base's).
    pub p_diff: Vec<f32>,
}

impl KlDivergence {
    /// Rows compared.
    pub fn count(&self) -> usize {
        self.nll.count
    }

    /// Compares one row of logits with the base's stored row for the same position.
    pub fn add_row(&mut self, logits: &[f32], base_row: &[u16], target: usize) {
        let (mut max, mut imax) = (logits[0], 0);
        for (i, &l) in logits.iter().enumerate().skip(1) {
            if l > max {
                (max, imax) = (l, i);
            }
        }
        let sum_exp: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        let log_sum_exp = sum_exp.ln() as f32;
        let (scale, min_log_prob, base) = decode_row(base_row);
        let nll = max + log_sum_exp - logits[target];
        let nll_base = -(scale * f32::from(base[target]) + min_log_prob);
        self.nll.add(f64::from(nll));
        self.nll_base.add(f64::from(nll_base));
        self.sum_nll_nll_base += f64::from(nll) * f64::from(nll_base);

        let log_norm = max + log_sum_exp;
        let mut kld = 0.0f64;
        let (mut base_max, mut base_imax) = (0.0f32, 0);
        for (i, (&q, &l)) in base.iter().zip(logits).enumerate() {
            let p_log_base = scale * f32::from(q) + min_log_prob;
            if i == 0 || p_log_base > base_max {
                (base_max, base_imax) = (p_log_base, i);
            }
            if p_log_base > -16.0 {
                let p_base = p_log_base.exp();
                kld += f64::from(p_base * (p_log_base - l + log_norm));
            }
        }
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        if imax == base_imax {
            self.same_top += 1;
        }
        let p_diff = (-nll).exp() - (-nll_base).exp();
        let d2 = f64::from(p_diff) * f64::from(p_diff);
        self.sum_p_diff += f64::from(p_diff);
        self.sum_p_diff2 += d2;
        self.sum_p_diff4 += d2 * d2;
        self.kld.push(kld as f32);
        self.p_diff.push(p_diff);
    }

    /// Perplexity of this model so far, with its uncertainty.
    pub fn ppl(&self) -> (f64, f64) {
        let (m, u) = mean_and_uncertainty(self.nll.sum, self.nll.sum2, self.count());
        (m.exp(), m.exp() * u)
    }

    /// Perplexity of the base so far, with its uncertainty.
    pub fn ppl_base(&self) -> (f64, f64) {
        let (m, u) = mean_and_uncertainty(self.nll_base.sum, self.nll_base.sum2, self.count());
        (m.exp(), m.exp() * u)
    }

    /// Covariance of the two log-perplexities' means.
    pub fn log_ppl_cov(&self) -> f64 {
        let n = self.count();
        if n < 10 {
            return 0.0;
        }
        let c = n as f64;
        (self.sum_nll_nll_base / c - (self.nll.sum / c) * (self.nll_base.sum / c)) / (c - 1.0)
    }

    /// ln(PPL(Q)/PPL(base)) and its uncertainty.
    pub fn log_ppl_ratio(&self) -> (f64, f64) {
        let q = mean_and_uncertainty(self.nll.sum, self.nll.sum2, self.count());
        let b = mean_and_uncertainty(self.nll_base.sum, self.nll_base.sum2, self.count());
        let var = q.1 * q.1 + b.1 * b.1 - 2.0 * self.log_ppl_cov();
        (q.0 - b.0, var.sqrt())
    }

    /// Mean KLD and its uncertainty.
    pub fn mean_kld(&self) -> (f64, f64) {
        mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count())
    }

    /// Root mean square of Δp and its uncertainty.
    pub fn rms_p_diff(&self) -> (f64, f64) {
        let (mse, unc) = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count());
        let rms = mse.sqrt();
        (rms, if rms > 0.0 { 0.5 / rms * unc } else { 0.0 })
    }

    /// Fraction of rows with the base's top token, and its uncertainty.
    pub fn same_top(&self) -> (f64, f64) {
        let n = self.count();
        if n < 2 {
            return (self.same_top as f64 / n.max(1) as f64, 0.0);
        }
        let p = self.same_top as f64 / n as f64;
        (p, (p * (1.0 - p) / (n - 1) as f64).sqrt())
    }
}

/// The `fraction` percentile of `sorted`, interpolated as llama.cpp does.
pub fn percentile(sorted: &[f32], fraction: f32) -> f32 {
    if sorted.is_empty() {
        return f32::NAN;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f32;
    let ip = p as usize;
    let p = p - ip as f32;
    (1.0 - p) * sorted[ip] + p * sorted[(ip + 1).min(sorted.len() - 1)]
}

/// The median of `sorted`, as llama.cpp takes it.
pub fn median(sorted: &[f32]) -> f32 {
    let n = sorted.len();
    match n {
        0 => f32::NAN,
        _ if n.is_multiple_of(2) => 0.5 * (sorted[n / 2] + sorted[n / 2 - 1]),
        _ => sorted[n / 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::logits_file::{encode_row, row_words};

    fn row(logits: &[f32]) -> Vec<u16> {
        let mut out = vec![0; row_words(logits.len())];
        encode_row(logits, 0, &mut out);
        out
    }

    #[test]
    fn a_model_against_its_own_base_has_almost_no_divergence() {
        let logits: Vec<f32> = (0..101).map(|i| ((i * 37 % 101) as f32) / 9.0).collect();
        let mut kl = KlDivergence::default();
        kl.add_row(&logits, &row(&logits), 5);
        assert!(kl.sum_kld.abs() < 1e-4, "{}", kl.sum_kld);
        assert_eq!(kl.same_top, 1);
        assert!((kl.nll.sum - kl.nll_base.sum).abs() < 1e-3);
    }

    #[test]
    fn kld_matches_the_exact_formula_for_a_shifted_distribution() {
        let base: Vec<f32> = vec![2.0, 1.0, 0.0, -1.0];
        let q: Vec<f32> = vec![1.0, 2.0, 0.0, -1.0];
        let softmax = |l: &[f32]| {
            let z: f64 = l.iter().map(|&x| f64::from(x).exp()).sum();
            l.iter()
                .map(|&x| f64::from(x).exp() / z)
                .collect::<Vec<_>>()
        };
        let (p, qq) = (softmax(&base), softmax(&q));
        let exact: f64 = p.iter().zip(&qq).map(|(p, q)| p * (p / q).ln()).sum();
        let mut kl = KlDivergence::default();
        kl.add_row(&q, &row(&base), 0);
        assert!(
            (kl.sum_kld - exact).abs() < 1e-3,
            "{} vs {exact}",
            kl.sum_kld
        );
        assert_eq!(kl.same_top, 0, "top tokens differ");
        assert!(kl.p_diff[0] < 0.0, "the target lost probability");
    }

    #[test]
    fn percentiles_interpolate_between_neighbours() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert_eq!(percentile(&v, 0.99), 3.96);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert_eq!(median(&[1.0, 3.0]), 2.0);
    }
}
