//! The CPU a process may use under a cgroup quota (CFS bandwidth control), and the CPU time
//! it and its threads have used.
//!
//! A node in a container with `--cpus 0.5`, or one an operator throttles, runs a step at full
//! speed until its quota for the period is spent and then not at all until the next period.
//! A step that fits in one period's quota looks as fast as ever on the wall clock, while the
//! node completes only a step or so per period. The step's CPU time divided by the cores the
//! quota allows is what such a step really costs.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cgroup filesystems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Cores this process may use under the CPU quotas of its cgroup and the cgroups above it
/// (the smallest), or `None` when none limits it.
pub fn cores_allowed() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    quota_in(&own, Path::new(CGROUP_ROOT), |p| {
        std::fs::read_to_string(p).ok()
    })
}

/// The quota in cores for a process whose `/proc/self/cgroup` reads `own`, reading cgroup
/// files through `read`: the v1 `cpu` controller's hierarchy when the process has one, else
/// the v2 unified hierarchy.
fn quota_in(own: &str, root: &Path, read: impl Fn(&Path) -> Option<String>) -> Option<f64> {
    let mut v1 = None;
    let mut v2 = None;
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1 = Some(path);
        }
    }
    let smallest = |quotas: Vec<Option<f64>>| quotas.into_iter().flatten().reduce(f64::min);
    if let Some(path) = v1 {
        let dirs = ancestors(&root.join("cpu"), path);
        return smallest(dirs.iter().map(|d| v1_quota(d, &read)).collect());
    }
    let path = v2?;
    let dirs = ancestors(root, path);
    smallest(dirs.iter().map(|d| v2_quota(d, &read)).collect())
}

/// `base` joined with `path` and with each of its parents up to `base` itself.
fn ancestors(base: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = vec![base.to_path_buf()];
    let mut dir = base.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        dirs.push(dir.clone());
    }
    dirs
}

/// cgroup v1: `cpu.cfs_quota_us` (-1 for none) over `cpu.cfs_period_us`.
fn v1_quota(dir: &Path, read: impl Fn(&Path) -> Option<String>) -> Option<f64> {
    let quota: i64 = read(&dir.join("cpu.cfs_quota_us"))?.trim().parse().ok()?;
    let period: i64 = read(&dir.join("cpu.cfs_period_us"))?.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// cgroup v2: `cpu.max`, "QUOTA PERIOD" or "max PERIOD".
fn v2_quota(dir: &Path, read: impl Fn(&Path) -> Option<String>) -> Option<f64> {
    let max = read(&dir.join("cpu.max"))?;
    let mut fields = max.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// CPU time this process has used so far, all its threads together.
pub fn process_time() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time the calling thread has used so far.
pub fn thread_time() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and both callers pass clock ids the
    // kernel knows. On failure `ts` stays zero and step times fall back to the wall clock.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A quota in cores as adverts carry it: thousandths of a core, at least one.
pub fn as_milli(cores: Option<f64>) -> Option<u32> {
    cores.map(|c| (c * 1000.0).round().clamp(1.0, f64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fs(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, c)| (PathBuf::from(p), c.to_string()))
            .collect();
        move |p| files.get(p).cloned()
    }

    #[test]
    fn adverts_carry_thousandths_of_a_core_and_never_zero() {
        assert_eq!(as_milli(None), None);
        assert_eq!(as_milli(Some(0.05)), Some(50));
        assert_eq!(as_milli(Some(1.5)), Some(1500));
        // A quota too small to show still shows as a quota.
        assert_eq!(as_milli(Some(1e-9)), Some(1));
        assert_eq!(as_milli(Some(1e12)), Some(u32::MAX));
    }

    #[test]
    fn v1_takes_the_smallest_quota_on_the_way_up() {
        let own = "4:memory:/x\n1:cpu,cpuacct:/fleet/throttled\n0::/\n";
        let read = fs(&[
            ("/cg/cpu/cpu.cfs_quota_us", "-1\n"),
            ("/cg/cpu/cpu.cfs_period_us", "100000\n"),
            ("/cg/cpu/fleet/cpu.cfs_quota_us", "150000\n"),
            ("/cg/cpu/fleet/cpu.cfs_period_us", "100000\n"),
            ("/cg/cpu/fleet/throttled/cpu.cfs_quota_us", "5000\n"),
            ("/cg/cpu/fleet/throttled/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(quota_in(own, Path::new("/cg"), read), Some(0.05));
    }

    #[test]
    fn v2_reads_cpu_max_and_max_means_no_limit() {
        let own = "0::/docker/abc\n";
        let limited = fs(&[
            ("/cg/cpu.max", "max 100000\n"),
            ("/cg/docker/abc/cpu.max", "50000 100000\n"),
        ]);
        assert_eq!(quota_in(own, Path::new("/cg"), limited), Some(0.5));
        let free = fs(&[
            ("/cg/cpu.max", "max 100000\n"),
            ("/cg/docker/abc/cpu.max", "max 100000\n"),
        ]);
        assert_eq!(quota_in(own, Path::new("/cg"), free), None);
    }

    #[test]
    fn no_cgroup_files_means_no_limit() {
        assert_eq!(quota_in("", Path::new("/cg"), fs(&[])), None);
        assert_eq!(quota_in("garbage", Path::new("/cg"), fs(&[])), None);
        assert_eq!(quota_in("1:cpu:/a\n", Path::new("/cg"), fs(&[])), None);
    }

    #[test]
    fn cpu_clocks_grow_with_work() {
        for clock in [process_time, thread_time] {
            let before = clock();
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while clock() < before + Duration::from_millis(10) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "10 ms of work never showed in the CPU time"
                );
            }
        }
    }
}
