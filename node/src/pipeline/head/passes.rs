//! What a pass through the ring costs this head: a straight line fitted to recent passes,
//! `t(rows) = one + per_row × (rows − 1)`, each term a median, so an odd slow pass does not
//! move it. One-row passes (plain decode steps) give `one`;
//! passes of several rows (speculative verifications) give `per_row`. Speculation reads it to
//! choose how many drafts a pass should carry.

use std::collections::VecDeque;

/// Recent passes the fit looks at, per kind.
const RECENT: usize = 64;

/// Recent pass times, milliseconds.
#[derive(Debug, Default)]
pub(super) struct Passes {
    /// One-row passes.
    single: VecDeque<f32>,
    /// Several-row passes: rows and time.
    multi: VecDeque<(usize, f32)>,
}

impl Passes {
    /// A pass of `rows` rows took `ms`.
    pub(super) fn record(&mut self, rows: usize, ms: f32) {
        if rows <= 1 {
            push(&mut self.single, ms);
        } else {
            if self.multi.len() == RECENT {
                self.multi.pop_front();
            }
            self.multi.push_back((rows, ms));
        }
    }

    /// Median one-row pass, milliseconds.
    pub(super) fn single_ms(&self) -> Option<f64> {
        median(self.single.iter().copied())
    }

    /// The fit: a one-row pass, and each further row, in milliseconds; each `None` until
    /// passes of its kind have been seen.
    pub(super) fn fit(&self) -> (Option<f64>, Option<f64>) {
        let one = self.single_ms();
        let per_row = one.and_then(|one| {
            median(
                self.multi
                    .iter()
                    .map(|&(r, ms)| ((f64::from(ms) - one) / (r - 1) as f64).max(0.0) as f32),
            )
        });
        (one, per_row)
    }
}

fn push(v: &mut VecDeque<f32>, x: f32) {
    if v.len() == RECENT {
        v.pop_front();
    }
    v.push_back(x);
}

fn median(values: impl Iterator<Item = f32>) -> Option<f64> {
    let mut v: Vec<f32> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    Some(f64::from(v[v.len() / 2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_follows_the_passes_it_saw() {
        let mut p = Passes::default();
        assert_eq!(p.fit(), (None, None));
        p.record(5, 14.0);
        // Rows cannot be priced before a one-row pass.
        assert_eq!(p.fit(), (None, None));
        for _ in 0..5 {
            p.record(1, 10.0);
        }
        assert_eq!(p.fit(), (Some(10.0), Some(1.0)));
        // One slow pass among many does not move the median.
        p.record(3, 40.0);
        p.record(5, 14.0);
        assert_eq!(p.fit(), (Some(10.0), Some(1.0)));
    }
}
