//! What the planner needs to know about a model file and this machine: sizes from the GGUF
//! tensor index, the file's hash, and the memory this node can offer.

use std::io::Read;
use std::path::Path;

use scheduler::ModelProfile;
use sharding::gguf::GgufFile;
use sharding::model::ModelConfig;

/// The planner's profile of `file`, reserving KV for `context_tokens` positions per stage.
/// `sha256` is left empty; fill it with [`model_sha256`].
pub fn model_profile(file: &GgufFile, context_tokens: u32) -> anyhow::Result<ModelProfile> {
    let config = ModelConfig::from_metadata(file.metadata())?;
    let tensors = &file.header().tensors;
    let bytes_of = |prefix: &str| -> u64 {
        tensors
            .iter()
            .filter(|t| t.name.starts_with(prefix))
            .map(|t| t.len as u64)
            .sum()
    };
    let bytes_per_layer = (0..config.n_layers)
        .map(|i| bytes_of(&format!("blk.{i}.")))
        .max()
        .unwrap_or(0);
    let embedding_bytes = bytes_of("token_embd.");
    let head_bytes = file
        .has_tensor("output.weight")
        .then(|| bytes_of("output.") + bytes_of("output_norm."));
    // K and V in f16 for every KV head.
    let kv = (config.n_head_kv * (config.head_dim + config.head_dim_v) * 2) as u64;
    let mut profile = ModelProfile {
        sha256: String::new(),
        n_layers: config.n_layers as u32,
        bytes_per_layer,
        embedding_bytes,
        head_bytes,
        head_cost_layers: 0.0,
        kv_bytes_per_token_per_layer: kv,
        context_tokens,
        hidden_bytes_per_token: (config.n_embd * 4) as u64,
        vocab_size: config.vocab_size as u32,
    };
    profile.head_cost_layers = profile.head_cost_from_bytes();
    Ok(profile)
}

/// Lowercase hex sha256 of the file at `path`, streamed.
pub fn model_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Memory this node can offer by default: the cgroup's limit when one is set, else the
/// kernel's estimate of available memory.
pub fn memory_budget() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&b| b < 1 << 60);
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    });
    match (cgroup, available) {
        (Some(c), Some(a)) => c.min(a),
        (Some(c), None) => c,
        (None, Some(a)) => a,
        (None, None) => 1 << 30,
    }
}

/// Parses a size: bytes, or a number with K/M/G/T (powers of 1024), optionally `iB`/`B`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
