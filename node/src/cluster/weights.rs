//! Where a node's model bytes come from: its own copy of the file, or peers that hold it.
//!
//! A node started with `--model-sha256` instead of `--model` keeps a sparse copy of the file
//! in its cache and fetches, from members that advertise a `seed_addr` for that model, only
//! the chunks its head and its assigned layers read ([`ShardSpec::byte_ranges`]). Every
//! chunk is checked against the holder's manifest; what was fetched survives restarts; a
//! copy that becomes complete and hashes right makes the node a holder too.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sharding::gguf::Header;
use sharding::model::{ModelConfig, ShardSpec};
use tracing::{info, warn};
use transport::blob::{self, Fetcher, Manifest, PartialFile};
use transport::discovery::{Advert, Discovery};

use crate::metrics::Metrics;

/// Where the model comes from, as configured.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A complete GGUF file on this node.
    File(PathBuf),
    /// The model with this sha256, fetched from peers into `cache`.
    Peers {
        /// The model file's sha256.
        sha256: [u8; 32],
        /// Directory of the sparse copies.
        cache: PathBuf,
        /// Byte rate of fetching (`None`: unlimited).
        rate: Option<u64>,
        /// How long to wait for a peer holding the model at start.
        wait: Duration,
    },
}

/// Most of the file read to find the end of the GGUF header (metadata and tensor index).
const MAX_HEADER_CHUNKS: usize = 64;

/// The model bytes a node runs from.
pub(crate) struct Weights {
    path: PathBuf,
    remote: Option<Remote>,
}

struct Remote {
    source: Source,
    header: Header,
}

/// The cached copy and where to fill it from.
struct Source {
    sha256: [u8; 32],
    part: tokio::sync::Mutex<PartialFile>,
    fetcher: Fetcher,
    discovery: Members,
    metrics: Arc<Metrics>,
}

/// The current members of the cluster, from whatever discovery the node runs on.
pub(crate) type Members = Arc<dyn Fn() -> Arc<Vec<Advert>> + Send + Sync>;

/// [`Members`] of `discovery`.
pub(crate) fn members_of<D: Discovery>(discovery: D) -> Members {
    Arc::new(move || discovery.members())
}

impl Weights {
    /// A complete local file.
    pub(crate) fn local(path: PathBuf) -> Weights {
        Weights { path, remote: None }
    }

    /// A model fetched from peers: opens (or starts) the cached copy, waiting up to `wait`
    /// for a holder when the cache has no manifest yet, and fetches the GGUF header.
    pub(crate) async fn from_peers(
        sha256: [u8; 32],
        cache: &Path,
        fetcher: Fetcher,
        discovery: Members,
        wait: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Weights> {
        let hex = blob::hex(&sha256);
        let cached = {
            let cache = cache.to_owned();
            tokio::task::spawn_blocking(move || PartialFile::reopen(&cache, &sha256)).await??
        };
        let part = match cached {
            Some(part) => {
                info!(
                    model = %hex,
                    present_mb = part.present_bytes() >> 20,
                    total_mb = part.manifest().len >> 20,
                    "resuming the cached copy"
                );
                part
            }
            None => {
                let manifest = fetch_manifest(&fetcher, &discovery, &sha256, wait).await?;
                let cache = cache.to_owned();
                tokio::task::spawn_blocking(move || PartialFile::open(&cache, manifest)).await??
            }
        };
        let path = part.path().to_owned();
        let source = Source {
            sha256,
            part: tokio::sync::Mutex::new(part),
            fetcher,
            discovery,
            metrics,
        };
        let header = source.fetch_header().await?;
        let n_layers = ModelConfig::from_metadata(&header.metadata)?.n_layers;
        let weights = Weights {
            path,
            remote: Some(Remote { source, header }),
        };
        // What every node runs whatever the plan: the layer it measures (a node that serves
        // the API also fetches its head: [`Weights::ensure_head`]).
        weights
            .ensure(
                &super::measure::measured_spec(n_layers),
                "the measured layer",
            )
            .await?;
        Ok(weights)
    }

    /// Fetches the embedding and output head, which a node serving the API holds.
    pub(crate) async fn ensure_head(&self) -> anyhow::Result<()> {
        let head = ShardSpec {
            layers: 0..0,
            embed: true,
            head: true,
        };
        self.ensure(&head, "the embedding and output head").await
    }

    /// The file to open: complete, or holding at least what [`Weights::ensure`] fetched.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Makes sure every byte `spec` reads is present, fetching what is missing from peers
    /// holding the model (no-op for a local file). `what` names the shard in logs.
    pub(crate) async fn ensure(&self, spec: &ShardSpec, what: &str) -> anyhow::Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let ranges: Vec<Range<u64>> = spec
            .byte_ranges(&remote.header)
            .into_iter()
            .map(|r| r.start as u64..r.end as u64)
            .collect();
        remote.source.fetch(&ranges, what).await
    }

    /// Whether the cached copy is now the whole file, verified against its sha256 (the node
    /// can then serve it to others).
    pub(crate) async fn complete_manifest(&self) -> Option<Manifest> {
        let source = &self.remote.as_ref()?.source;
        let part = source.part.lock().await;
        if !part.is_complete() {
            return None;
        }
        let path = part.path().to_owned();
        drop(part);
        let built = tokio::task::spawn_blocking(move || Manifest::build(&path, |_| {}))
            .await
            .ok()?
            .ok()?;
        (built.sha256 == source.sha256).then_some(built)
    }
}

impl Source {
    /// Fetches chunks from the start of the file until the GGUF header parses.
    async fn fetch_header(&self) -> anyhow::Result<Header> {
        let (len, chunk) = {
            let part = self.part.lock().await;
            (part.manifest().len, part.manifest().chunk_size)
        };
        let mut prefix_chunks = 1;
        loop {
            let end = (prefix_chunks as u64 * chunk).min(len);
            let prefix = 0..end;
            self.fetch(std::slice::from_ref(&prefix), "the model header")
                .await?;
            let path = self.part.lock().await.path().to_owned();
            let parsed = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let bytes = read_prefix(&path, end)?;
                Ok(Header::parse_prefix(&bytes, len as usize))
            })
            .await??;
            match parsed {
                Ok(header) => return Ok(header),
                Err(e) if end == len || prefix_chunks >= MAX_HEADER_CHUNKS => {
                    return Err(e).context("the fetched model header does not parse");
                }
                Err(_) => prefix_chunks *= 2,
            }
        }
    }

    /// Fetches the chunks covering `ranges` that are missing, trying each holder in turn.
    async fn fetch(&self, ranges: &[Range<u64>], what: &str) -> anyhow::Result<()> {
        let mut part = self.part.lock().await;
        let missing = part.missing(ranges);
        if missing.is_empty() {
            return Ok(());
        }
        let bytes: u64 = missing
            .iter()
            .map(|&i| {
                let r = part.manifest().chunk_range(i);
                r.end - r.start
            })
            .sum();
        let bar = progress_bar(bytes, &format!("fetching {what}"));
        let started = Instant::now();
        let mut last_error = None;
        for seed in seeds(&self.discovery, &self.sha256) {
            match self
                .fetcher
                .fetch(seed, &mut part, &missing, |n| bar.inc(n))
                .await
            {
                Ok(_) => {
                    bar.finish_and_clear();
                    let secs = started.elapsed().as_secs_f64();
                    info!(
                        what,
                        from = %seed,
                        chunks = missing.len(),
                        mb = format!("{:.1}", bytes as f64 / 1e6),
                        secs = format!("{secs:.2}"),
                        mb_per_s = format!("{:.1}", bytes as f64 / 1e6 / secs.max(1e-6)),
                        "fetched weights from a peer"
                    );
                    self.metrics.events().record(format!(
                        "fetched {what} ({:.1} MB) from {seed} in {secs:.2} s",
                        bytes as f64 / 1e6
                    ));
                    return Ok(());
                }
                Err(e) => {
                    warn!(what, from = %seed, error = %e, "fetching weights failed; trying another holder");
                    last_error = Some(e);
                }
            }
        }
        bar.finish_and_clear();
        match last_error {
            Some(e) => Err(e).with_context(|| format!("fetching {what} from every holder")),
            None => bail!(
                "no member holds model {} to fetch {what} from",
                blob::hex(&self.sha256)
            ),
        }
    }
}

/// Members that serve the model `sha256`.
fn seeds(members: &Members, sha256: &[u8; 32]) -> Vec<SocketAddr> {
    let hex = blob::hex(sha256);
    members()
        .iter()
        .filter(|a| a.models.contains(&hex))
        .filter_map(|a| a.seed_addr)
        .collect()
}

/// Waits for a holder of `sha256` and asks it for the manifest.
async fn fetch_manifest(
    fetcher: &Fetcher,
    discovery: &Members,
    sha256: &[u8; 32],
    wait: Duration,
) -> anyhow::Result<Manifest> {
    let deadline = Instant::now() + wait;
    let mut told = Instant::now();
    info!(model = %blob::hex(sha256), "waiting for a peer that holds the model");
    loop {
        for seed in seeds(discovery, sha256) {
            match fetcher.manifest(seed, sha256).await {
                Ok(manifest) => {
                    info!(from = %seed, mb = manifest.len >> 20, "got the model's manifest");
                    return Ok(manifest);
                }
                Err(e) => warn!(from = %seed, error = %e, "asking for the manifest failed"),
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no peer holding model {} answered within {:?} (start a node with --model \
                 on the same cluster key, or check --peer / mDNS)",
                blob::hex(sha256),
                wait
            );
        }
        if told.elapsed() > Duration::from_secs(10) {
            info!(model = %blob::hex(sha256), "still waiting for a peer that holds the model");
            told = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn read_prefix(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// A byte progress bar labelled `what` on a terminal (hidden otherwise, e.g. under docker or
/// with JSON logs piped away): hashing or fetching a multi-GB model takes a while on an SBC.
pub(crate) fn progress_bar(bytes: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(bytes),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .expect("a valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}
