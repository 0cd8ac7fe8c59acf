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
    /// Measure prompt processing (pp128) and generation (tg64) speed, like llama-bench.
    Bench(cli::bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => cli::bench::run(args),
    }
}
