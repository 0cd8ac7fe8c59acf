//! The `shoal` binary.

use clap::{Parser, Subcommand};

mod cli;

/// Shoal: a peer-to-peer sharded LLM inference cluster for fleets of edge devices.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, on this node or through a pipeline of stages.
    Generate(cli::generate::Args),
    /// Run a cluster node: discover peers, take layers, serve the HTTP API.
    Run(cli::run::Args),
    /// Serve a layer range as one stage of a pipeline.
    Stage(cli::stage::Args),
    /// Measure prompt processing (pp128) and generation (tg64) speed, like llama-bench.
    Bench(cli::bench::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Bench(args) => cli::bench::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::Stage(args) => cli::stage::run(args),
        Command::Run(args) => cli::run::run(args),
    }
}
