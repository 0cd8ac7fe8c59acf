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
    /// Serve a layer range as one stage of a pipeline.
    Stage(cli::stage::Args),
    /// Measure prompt processing (pp128) and generation (tg64) speed, like llama-bench.
    Bench(cli::bench::Args),
    /// Show the plan the scheduler would choose for a fleet, next to naive splits, and why.
    Plan(cli::plan::Args),
    /// Show a running cluster: nodes, pipeline, plan, speed. Exit 0 ready, 1 not ready,
    /// 2 unreachable.
    Status(cli::status::Args),
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
        Command::Plan(args) => cli::plan::run(args),
        // The exit code is the command's answer; stdout is line-buffered and fully written.
        Command::Status(args) => std::process::exit(cli::status::run(args)),
    }
}
