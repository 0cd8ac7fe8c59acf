//! What a node knows about a model and itself before planning: the model's real sizes (from
//! the GGUF tensor index, not estimates), the file's sha256, and how much memory this node
//! may spend.
//!
//! The planner prices partitions from these numbers, so they must describe the bytes a
//! [`sharding::model::Shard`] actually maps: tensor lengths as stored, the KV cache as the
//! shard allocates it (f16 K and V), hidden states as the pipeline sends them (f32).

use std::io::{self, Read};
use std::path::Path;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use sharding::gguf::GgufFile;
use sharding::model::ModelConfig;

/// Bytes of one KV element: the shard's cache stores f16 (see `sharding::kv`).
const KV_ELEMENT_BYTES: u64 = 2;
/// Bytes of one hidden-state element on the wire between stages (f32).
const HIDDEN_ELEMENT_BYTES: u64 = 4;

/// The planner's view of the model in `file`, reserving KV for `context_tokens` positions on
/// every stage. Hashes the whole file (streaming); use [`model_profile_with_sha256`] when the
/// digest is already known.
pub fn model_profile(
    file: &GgufFile,
    context_tokens: u32,
) -> anyhow::Result<scheduler::ModelProfile> {
    let sha =
        model_sha256(file.path()).with_context(|| format!("hashing {}", file.path().display()))?;
    model_profile_with_sha256(file, context_tokens, sha)
}

/// [`model_profile`] with a digest the caller computed (or cached) already.
///
/// `bytes_per_layer` is the largest layer and `layer_bytes` every layer's own size: the
/// planner counts a stage's layers exactly, and the largest where it must bound.
pub fn model_profile_with_sha256(
    file: &GgufFile,
    context_tokens: u32,
    sha256: String,
) -> anyhow::Result<scheduler::ModelProfile> {
    let config = ModelConfig::from_metadata(file.metadata()).context("reading model config")?;
    let mut per_layer = vec![0u64; config.n_layers];
    let mut embedding = None;
    let mut output = None;
    let mut output_norm = 0u64;
    for t in &file.header().tensors {
        if t.ty.is_none() {
            // The index cannot size a tensor of an unknown type (its `len` is 0).
            bail!("tensor {} has unsupported ggml type {}", t.name, t.type_id);
        }
        let len = t.len as u64;
        if let Some(layer) = layer_of(&t.name) {
            let slot = per_layer.get_mut(layer).with_context(|| {
                format!(
                    "tensor {} is past the model's {} layers",
                    t.name, config.n_layers
                )
            })?;
            *slot += len;
        } else {
            match t.name.as_str() {
                "token_embd.weight" => embedding = Some(len),
                "output.weight" => output = Some(len),
                "output_norm.weight" => output_norm = len,
                _ => {}
            }
        }
    }
    let embedding_bytes = embedding.context("model has no token_embd.weight")?;
    let bytes_per_layer = per_layer.iter().copied().max().unwrap_or(0);
    if bytes_per_layer == 0 {
        bail!("model has no layer tensors (blk.N.*)");
    }
    let kv_elements = config.kv_dim() + config.n_head_kv * config.head_dim_v;
    let mut profile = scheduler::ModelProfile {
        sha256,
        n_layers: u32::try_from(config.n_layers).context("layer count")?,
        bytes_per_layer,
        layer_bytes: per_layer,
        embedding_bytes,
        // Tied embeddings: the head reads token_embd; the final norm is a rounding error.
        head_bytes: output.map(|o| o + output_norm),
        head_cost_layers: 0.0,
        kv_bytes_per_token_per_layer: kv_elements as u64 * KV_ELEMENT_BYTES,
        context_tokens,
        hidden_bytes_per_token: config.n_embd as u64 * HIDDEN_ELEMENT_BYTES,
        vocab_size: u32::try_from(config.vocab_size).context("vocabulary size")?,
    };
    profile.head_cost_layers = profile.head_cost_from_bytes();
    Ok(profile)
}

/// The layer index of a tensor named `blk.{i}.…`.
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let (index, _) = rest.split_once('.')?;
    index.parse().ok()
}

/// Lowercase hex sha256 of the file at `path`, read in chunks so a multi-GB model never has
/// to fit in memory.
pub fn model_sha256(path: &Path) -> io::Result<String> {
    model_sha256_with_progress(path, |_| {})
}

/// [`model_sha256`], calling `progress` with the bytes hashed after every chunk.
pub fn model_sha256_with_progress(
    path: &Path,
    mut progress: impl FnMut(u64),
) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress(n as u64);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The default memory budget of this node: the tighter of its cgroup limit (v2, else v1)
/// and the host's `MemAvailable`. A container limit above what is free on the host is not
/// usable, and outside a container the host figure is all there is. 0 when neither is
/// readable (not Linux); pass `--memory` then.
pub fn memory_budget() -> u64 {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .as_deref()
        .and_then(cgroup_limit)
        .or_else(|| {
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
                .as_deref()
                .and_then(cgroup_limit)
        });
    let available = read("/proc/meminfo").as_deref().and_then(mem_available);
    match (cgroup, available) {
        (Some(c), Some(a)) => c.min(a),
        (Some(c), None) => c,
        (None, Some(a)) => a,
        (None, None) => 0,
    }
}

/// A cgroup memory limit file's value; `None` for "max" (v2) or the v1 "unlimited" sentinel
/// (a page-rounded i64::MAX).
fn cgroup_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 62).then_some(v)
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Parses a human memory size: plain bytes ("1048576"), binary units ("512MiB", "512M",
/// "1.5G", "64k") or decimal units with a B ("800MB", "2GB"). Bare letters are binary, as
/// in `docker --memory`, because memory is sold in powers of two.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512MiB, 1.5G, 800MB, 1048576)"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let scale: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, MB, GB)"
            ))
        }
    };
    let bytes = (value * scale).round();
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Bytes in the largest binary unit that keeps the number >= 1, e.g. "1.5 GiB".
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("800MB"), Ok(800_000_000));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1e400").is_err());
    }

    #[test]
    fn sizes_format_in_binary_units() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(64 << 20), "64.0 MiB");
    }

    #[test]
    fn cgroup_and_meminfo_parsing() {
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("536870912\n"), Some(512 << 20));
        assert_eq!(cgroup_limit("9223372036854771712\n"), None);
        let meminfo = "MemTotal:  8000000 kB\nMemFree: 100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(mem_available(meminfo), Some(2 << 20));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn layer_index_from_tensor_name() {
        assert_eq!(layer_of("blk.12.attn_q.weight"), Some(12));
        assert_eq!(layer_of("blk.x.attn_q.weight"), None);
        assert_eq!(layer_of("token_embd.weight"), None);
    }

    #[test]
    fn memory_budget_is_known_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(memory_budget() > 0);
        }
    }

    #[test]
    fn smollm2_profile_matches_its_tensors() {
        let path = shoal_tests::model_path("smollm2");
        let file = GgufFile::open(&path).expect("open smollm2");
        let p = model_profile(&file, 2048).expect("profile");
        assert_eq!(p.sha256.len(), 64);
        assert_eq!(p.n_layers, 30);
        // Tied embeddings; 3 KV heads x 64 dims x (K + V) x f16.
        assert_eq!(p.head_bytes, None);
        assert_eq!(p.kv_bytes_per_token_per_layer, 3 * 64 * 2 * 2);
        assert_eq!(p.hidden_bytes_per_token, 576 * 4);
        assert_eq!(p.vocab_size, 49_152);
        assert!(
            (2_000_000..4_000_000).contains(&p.bytes_per_layer),
            "{}",
            p.bytes_per_layer
        );
        // Every layer and the embedding fit in the file.
        let counted = p.bytes_per_layer * 30 + p.embedding_bytes;
        assert!(
            counted <= file.len() as u64 + 30 * 1024,
            "{counted} > {}",
            file.len()
        );
        assert!(p.head_cost_layers > 1.0);
    }
}
