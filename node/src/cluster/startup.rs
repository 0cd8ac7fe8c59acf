//! What a node does before it joins: read, hash, profile and measure its model, and find
//! the address others reach it at.

use std::net::IpAddr;

use anyhow::Context;
use sharding::chat::ChatTemplate;
use sharding::gguf::GgufFile;
use sharding::model::ModelConfig;
use sharding::tokenizer::Tokenizer;
use transport::blob;
use transport::discovery::{Multiaddr, Protocol};

use super::view::ModelSummary;
use super::{measure, profile};
use crate::backend::ModelInfo;

pub(crate) struct Loaded {
    pub(crate) info: ModelInfo,
    pub(crate) summary: ModelSummary,
    pub(crate) profile: scheduler::ModelProfile,
    pub(crate) cost: transport::discovery::LayerCost,
    /// The chunk manifest, built while hashing a local file (`None` for a fetched one).
    pub(crate) manifest: Option<blob::Manifest>,
}

/// Reads, hashes, profiles and measures the model (blocking). `sha256` is given for a model
/// fetched from peers (its chunks were verified as they came); a local file is hashed.
pub(crate) fn load_model(
    path: &std::path::Path,
    threads: usize,
    context: usize,
    sha256: Option<String>,
) -> anyhow::Result<Loaded> {
    let file = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    let meta = file.metadata();
    let n_layers = ModelConfig::from_metadata(meta)?.n_layers as u32;
    let (sha256, manifest) = match sha256 {
        Some(sha) => (sha, None),
        None => {
            let manifest =
                hash_with_progress(path).with_context(|| format!("hashing {}", path.display()))?;
            (blob::hex(&manifest.sha256), Some(manifest))
        }
    };
    let model_profile = profile::model_profile_with_sha256(&file, context as u32, sha256.clone())?;
    let cost = measure::measure_layer_cost(&file, threads)?;
    let name = crate::backend::model_id(path, meta.str("general.name").ok());
    let info = ModelInfo {
        name: name.clone(),
        tokenizer: Tokenizer::from_gguf(meta)?,
        template: ChatTemplate::from_gguf(meta)?,
        context,
    };
    Ok(Loaded {
        info,
        summary: ModelSummary {
            name,
            sha256,
            n_layers,
        },
        profile: model_profile,
        cost,
        manifest,
    })
}

/// The first non-loopback IPv4 among the listen addresses.
pub(crate) fn outward_ip(addrs: &[Multiaddr]) -> Option<IpAddr> {
    addrs.iter().flat_map(|a| a.iter()).find_map(|p| match p {
        Protocol::Ip4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(IpAddr::V4(ip)),
        _ => None,
    })
}

/// Hashes the model (whole and per chunk) with a progress bar.
fn hash_with_progress(path: &std::path::Path) -> std::io::Result<blob::Manifest> {
    let len = std::fs::metadata(path)?.len();
    let bar = super::weights::progress_bar(len, "hashing the model");
    let manifest = blob::Manifest::build(path, |n| bar.inc(n))?;
    bar.finish_and_clear();
    Ok(manifest)
}
