//! Subcommands of the `shoal` binary.

pub(crate) mod bench;
pub(crate) mod cluster_key;
pub(crate) mod config_file;
pub(crate) mod fleet;
pub(crate) mod generate;
pub(crate) mod http;
pub(crate) mod perplexity;
pub(crate) mod plan;
pub(crate) mod plan_report;
pub(crate) mod run;
pub(crate) mod stage;
pub(crate) mod status;
pub(crate) mod status_table;

use std::ops::Range;

/// Parses a layer range written `a..b`.
pub(crate) fn parse_range(s: &str) -> Result<Range<usize>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected a..b, got {s:?}"))?;
    let a: usize = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: usize = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a >= b {
        return Err(format!("empty layer range {a}..{b}"));
    }
    Ok(a..b)
}

/// Resident set size and its peak, in bytes, from /proc (None elsewhere).
pub(crate) fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
