//! The `shoal` binary.

use clap::{Parser, Subcommand};

mod cli;

/// Shoal: a peer-to-peer sharded LLM inference cluster for fleets of edge devices.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// TOML file of options: keys are the SHOAL_* environment variables without the prefix
    /// (command line and environment take precedence).
    #[arg(long, global = true, env = "SHOAL_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Text for people.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, on this node or through a pipeline of stages.
    Generate(cli::generate::Args),
    /// Run a cluster node: discover peers, take layers, serve the HTTP API.
    Run(Box<cli::run::Args>),
    /// Serve a layer range as one stage of a pipeline.
    Stage(cli::stage::Args),
    /// Measure prompt processing (pp128) and generation (tg64) speed, like llama-bench.
    Bench(cli::bench::Args),
    /// Perplexity over a text and KL divergence against a base, like llama-perplexity, on
    /// this node or through a pipeline.
    Perplexity(Box<cli::perplexity::Args>),
    /// Show the plan the scheduler would choose for a fleet, next to naive splits, and why.
    Plan(cli::plan::Args),
    /// Make a new cluster key file for --cluster-key-file.
    Keygen(cli::cluster_key::KeygenArgs),
    /// Show a running cluster: nodes, pipeline, plan, speed. Exit 0 ready, 1 not ready,
    /// 2 unreachable.
    Status(cli::status::Args),
}

fn main() -> anyhow::Result<()> {
    // The config file feeds the environment, so it is read before the command line is parsed.
    if let Some(path) = cli::config_file::requested() {
        cli::config_file::apply(&path)?;
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Bench(args) => cli::bench::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::Stage(args) => cli::stage::run(args),
        Command::Run(args) => cli::run::run(*args),
        Command::Perplexity(args) => cli::perplexity::run(*args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Keygen(args) => cli::cluster_key::keygen(args),
        // The exit code is the command's answer; stdout is line-buffered and fully written.
        Command::Status(args) => std::process::exit(cli::status::run(args)),
    }
}
