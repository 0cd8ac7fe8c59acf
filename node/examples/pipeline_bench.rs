//! Pipeline throughput on loopback: one stream against several concurrent streams through the
//! same stages (each stage runs on one thread, as a one-core device would).
//!
//! `cargo run --release -p shoal --example pipeline_bench -- MODEL STAGES STREAMS TOKENS [SPLIT]`
//! e.g. `... models/SmolLM2-135M-Instruct.Q4_1.gguf 2 2 64`. `SPLIT` gives each stage's
//! layer count, e.g. `18,12`; the default splits the layers evenly.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sharding::gguf::GgufFile;
use sharding::model::{ModelConfig, ShardOptions, ShardSpec};
use shoal::pipeline::{endpoint_config, Head, HeadConfig, Route, Stage, StageConfig};
use shoal_tests::argmax;
use transport::quic::{Identity, InsecureAcceptAny};

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // JSON logs on stderr when asked for, e.g. RUST_LOG=shoal::hop=trace for the per-frame
    // events of every stage and the head in one file.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .json()
            .with_thread_ids(true)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let model = std::path::PathBuf::from(&args[1]);
    let n_stages: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let streams: usize = args.get(3).map_or(Ok(2), |s| s.parse())?;
    let tokens: usize = args.get(4).map_or(Ok(64), |s| s.parse())?;
    let n_layers = ModelConfig::from_metadata(GgufFile::open(&model)?.metadata())?.n_layers;
    let bounds: Vec<usize> = match args.get(5) {
        Some(split) => {
            let counts = split
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<usize>, _>>()?;
            anyhow::ensure!(
                counts.len() == n_stages
                    && counts.iter().all(|&c| c > 0)
                    && counts.iter().sum::<usize>() == n_layers,
                "SPLIT must give {n_stages} layer counts, each at least 1, adding up to {n_layers}"
            );
            std::iter::once(0)
                .chain(counts.iter().scan(0, |at, c| {
                    *at += c;
                    Some(*at)
                }))
                .collect()
        }
        None => (0..=n_stages).map(|i| i * n_layers / n_stages).collect(),
    };
    let addrs: Vec<SocketAddr> = (0..=n_stages).map(|_| free_addr()).collect();
    let mut stages = Vec::new();
    for i in 0..n_stages {
        let layers = bounds[i]..bounds[i + 1];
        let cfg = StageConfig {
            model: model.clone(),
            spec: ShardSpec {
                layers,
                embed: false,
                head: false,
            },
            options: ShardOptions::default(),
            listen: addrs[i],
            route: Route::To(addrs[i + 1]),
            session_timeout: Duration::from_secs(60),
            metrics: None,
            wire: shoal::pipeline::WireDtype::F32,
            // One head drives every stream here: no per-peer share to enforce.
            max_sessions_per_peer: ShardOptions::default().max_sessions,
            previous_stage: None,
            index: i as u32,
            events: None,
        };
        let ep = endpoint_config(Identity::generate()?, Arc::new(InsecureAcceptAny));
        stages.push(Stage::start(cfg, ep).await?);
    }
    let cfg = HeadConfig {
        model,
        threads: 1,
        listen: addrs[n_stages],
        first: Some(addrs[0]),
        reply_addr: None,
        reply_timeout: Duration::from_secs(30),
        metrics: None,
        wire: shoal::pipeline::WireDtype::F32,
    };
    let head = Head::start(
        cfg,
        endpoint_config(Identity::generate()?, Arc::new(InsecureAcceptAny)),
    )
    .await?;
    let prompt = [504u32, 3575, 282, 4649, 314];
    head.generate(&prompt, 4, argmax, |_| true).await?;

    for concurrent in [1, streams] {
        let start = Instant::now();
        let runs = (0..concurrent).map(|_| {
            let head = head.clone();
            tokio::spawn(async move { head.generate(&prompt, tokens, argmax, |_| true).await })
        });
        let mut total = 0;
        for r in futures::future::join_all(runs).await {
            total += r??.len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{n_stages} stages, {concurrent} stream(s): {total} tokens in {secs:.2} s = {:.1} tok/s aggregate",
            total as f64 / secs
        );
    }
    head.shutdown().await;
    for s in stages {
        s.shutdown().await;
    }
    Ok(())
}
