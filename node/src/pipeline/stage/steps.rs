//! Recent decode step times of a stage: what the straggler policy compares with the plan.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Decode steps the median is taken over.
const RECENT_STEPS: usize = 32;

/// Recent decode step times of a stage's compute task.
#[derive(Default)]
pub(super) struct StepTimes {
    count: AtomicU64,
    /// Per position: the wall time and the CPU time of its step.
    recent: Mutex<VecDeque<(Duration, Duration)>>,
}

impl StepTimes {
    /// One step of the compute task, which decoded `count` sessions' positions in `wall`
    /// and `cpu` of CPU time. The median is over the time per position: the plan
    /// predicts one position's cost, and a batch of four taking twice one step's time is a
    /// stage working faster, not a straggler (counting the whole batch made busy stages look
    /// slow under concurrency).
    pub(super) fn record(&self, wall: Duration, cpu: Duration, count: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        let n = count.max(1) as u32;
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_STEPS {
            recent.pop_front();
        }
        recent.push_back((wall / n, cpu / n));
    }

    /// Steps so far, and the median time per position. Under a CPU quota of `cores`, a
    /// position costs at least its CPU time over those cores: a step that fits in one
    /// period's quota looks fast on the wall clock while the process then waits out the
    /// rest of the period.
    pub(super) fn summary(&self, cores: Option<f64>) -> (u64, Option<Duration>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Duration> = recent
            .iter()
            .map(|&(wall, cpu)| match cores {
                // A quota read as absurdly small saturates instead of overflowing.
                Some(c) if c > 0.0 => wall.max(
                    Duration::try_from_secs_f64(cpu.as_secs_f64() / c).unwrap_or(Duration::MAX),
                ),
                _ => wall,
            })
            .collect();
        drop(recent);
        v.sort();
        (
            self.count.load(Ordering::Relaxed),
            v.get(v.len() / 2).copied(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_times_under_a_quota_cost_their_cpu_over_the_allowed_cores() {
        let steps = StepTimes::default();
        let ms = Duration::from_millis;
        for _ in 0..3 {
            steps.record(ms(5), ms(5), 1);
        }
        // A batch of four positions in 8 ms is 2 ms a position.
        steps.record(ms(8), ms(8), 4);
        assert_eq!(steps.summary(None), (7, Some(ms(5))));
        // 5 % of a core: 5 ms of CPU is 100 ms of the node's time.
        assert_eq!(steps.summary(Some(0.05)), (7, Some(ms(100))));
        // A quota above what the step uses changes nothing: the wall clock counts.
        assert_eq!(steps.summary(Some(2.0)), (7, Some(ms(5))));
        // A nonsensical quota (a cgroup file with a tiny ratio) saturates, never panics.
        assert_eq!(steps.summary(Some(1e-300)), (7, Some(Duration::MAX)));
    }
}
