//! The `shoal` binary.

use clap::Parser;

/// Shoal: a peer-to-peer sharded LLM inference cluster for edge fleets.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
