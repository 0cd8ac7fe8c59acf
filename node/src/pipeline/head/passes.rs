//! What a pass through the ring costs this head, by the number of rows it carries: the
//! median of recent passes of each size, from sending the rows to having their logits.
//! Speculation reads it to choose how many drafts a pass should carry.
//!
//! A table, not a straight line: a pass's cost is not linear in its rows. The multi-row
//! kernels take positions four at a time (`sharding::model::matmul`), so two rows cost about
//! as much as three and five more than four; on a link whose congestion window has stayed
//! small (decode traffic never fills it), a frame of many rows waits for an acknowledgement
//! at a hop. Measured on three nodes at 10 ms a hop (ms by rows): 51, 59, 63, 65, 73, 81, 95,
//! 98, 112; on loopback 10, 18, 23, 26. A fit through them prices some sizes at half or
//! twice their cost.

use std::collections::VecDeque;

/// Recent passes kept per size.
const RECENT: usize = 32;
/// Largest pass priced; larger ones are not recorded.
pub(in crate::pipeline) const MAX_ROWS: usize = 16;

/// Recent pass times by rows, milliseconds.
#[derive(Debug)]
pub(super) struct Passes {
    /// `by_rows[r - 1]`: passes of `r` rows.
    by_rows: Vec<VecDeque<f32>>,
}

impl Default for Passes {
    fn default() -> Passes {
        Passes {
            by_rows: vec![VecDeque::new(); MAX_ROWS],
        }
    }
}

impl Passes {
    /// A pass of `rows` rows took `ms`.
    pub(super) fn record(&mut self, rows: usize, ms: f32) {
        let Some(recent) = rows.checked_sub(1).and_then(|i| self.by_rows.get_mut(i)) else {
            return;
        };
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(ms);
    }

    /// Median one-row pass, milliseconds.
    pub(super) fn single_ms(&self) -> Option<f64> {
        median(&self.by_rows[0])
    }

    /// The cost in milliseconds of a pass of `1..=out.len()` rows into `out[rows - 1]`:
    /// the median of its recent passes where there are some, else a straight line between
    /// the nearest measured sizes on either side, else (past the largest measured size)
    /// the line from one row to the largest size, continued. `None` for every size above
    /// one while no pass of several rows was seen, and for every size before a one-row pass.
    pub(super) fn costs(&self, out: &mut [Option<f64>]) {
        let measured: Vec<Option<f64>> = (0..out.len())
            .map(|i| self.by_rows.get(i).and_then(median))
            .collect();
        let one = measured.first().copied().flatten();
        let n = measured.len();
        let largest = (1..n).rev().find(|&i| measured[i].is_some());
        for (i, cost) in out.iter_mut().enumerate() {
            *cost = match (one, measured[i]) {
                (None, _) => None,
                (Some(_), Some(ms)) => Some(ms),
                (Some(one), None) => {
                    let below = (0..i).rev().find_map(|j| measured[j].map(|ms| (j, ms)));
                    let above = (i + 1..n).find_map(|j| measured[j].map(|ms| (j, ms)));
                    match (below, above, largest) {
                        (Some((j0, c0)), Some((j1, c1)), _) => {
                            Some(c0 + (c1 - c0) * (i - j0) as f64 / (j1 - j0) as f64)
                        }
                        (_, None, Some(l)) => measured[l]
                            .map(|cl| cl + (cl - one).max(0.0) / l as f64 * (i - l) as f64),
                        _ => None,
                    }
                }
            };
        }
    }
}

fn median(v: &VecDeque<f32>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v: Vec<f32> = v.iter().copied().collect();
    v.sort_by(f32::total_cmp);
    Some(f64::from(v[v.len() / 2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table for `1..=n` rows, rounded to thousandths of a millisecond.
    fn costs(p: &Passes, n: usize) -> Vec<Option<f64>> {
        let mut out = vec![None; n];
        p.costs(&mut out);
        out.into_iter()
            .map(|c| c.map(|ms| (ms * 1e3).round() / 1e3))
            .collect()
    }

    #[test]
    fn each_size_is_priced_by_its_own_passes_and_the_gaps_by_their_neighbours() {
        let mut p = Passes::default();
        assert_eq!(costs(&p, 3), [None, None, None]);
        p.record(4, 14.0);
        // Rows cannot be priced before a one-row pass.
        assert_eq!(costs(&p, 3), [None, None, None]);
        for _ in 0..5 {
            p.record(1, 10.0);
        }
        // Two and three rows lie on the line from one row to four; five and six continue it.
        assert_eq!(
            costs(&p, 6),
            [
                Some(10.0),
                Some(11.333),
                Some(12.667),
                Some(14.0),
                Some(15.333),
                Some(16.667)
            ]
        );
        // A size measured dearer than the line keeps its own price, the others theirs.
        for _ in 0..3 {
            p.record(2, 13.0);
        }
        assert_eq!(
            costs(&p, 4),
            [Some(10.0), Some(13.0), Some(13.5), Some(14.0)]
        );
        // One slow pass among many does not move the median.
        p.record(1, 40.0);
        assert_eq!(costs(&p, 1), [Some(10.0)]);
        // Sizes past the table are not recorded.
        p.record(MAX_ROWS + 1, 1.0);
        p.record(0, 1.0);
        assert_eq!(costs(&p, 1), [Some(10.0)]);
    }

    #[test]
    fn only_single_rows_seen_leaves_longer_passes_unpriced() {
        let mut p = Passes::default();
        p.record(1, 10.0);
        assert_eq!(costs(&p, 3), [Some(10.0), None, None]);
    }
}
