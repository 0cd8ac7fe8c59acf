//! `shoal plan`: what the planner would do with a fleet, next to the naive splits, and why.
//!
//! Useful before buying or wiring hardware (a fleet file), to sanity-check a running
//! cluster's choice (`--node`), or to see what splitting a model over copies of this machine
//! would gain (the default).

use std::path::PathBuf;

use anyhow::Context;
use scheduler::planner::{even_split, memory_proportional_split, plan};
use scheduler::{ModelProfile, Objective, PlanError};
use sharding::gguf::GgufFile;
use shoal::cluster::coordinator::{plan_request, ASSUMED_LINK};
use shoal::cluster::measure::measure_layer_cost;
use shoal::cluster::profile::{format_size, memory_budget, model_profile, parse_size};

use super::fleet::{self, Fleet};
use super::plan_report::{Outcome, Report};

/// Which quantity the planner minimizes (`--objective`).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum ObjectiveArg {
    /// Milliseconds per token of one stream.
    Latency,
    /// Aggregate tokens per second of many concurrent streams (the slowest stage).
    Throughput,
}

#[derive(clap::Args)]
#[command(after_help = "\
Devices come from one of:
  --fleet FILE.json   a described fleet; see examples/fleet-hetero.json (a fast 2-thread
                      node with little memory and two slow ones) for the format
  --node URL          the members of a running cluster (GET URL/v1/cluster)
  (neither)           --devices copies of this machine, measured now with --threads

Example:
  shoal plan --model models/SmolLM2-135M-Instruct.Q4_1.gguf --fleet examples/fleet-hetero.json")]
pub(crate) struct Args {
    /// GGUF model file to place (sizes come from its tensor index).
    #[arg(long, env = "SHOAL_MODEL")]
    model: PathBuf,
    /// Plan over the members of the cluster this node belongs to.
    #[arg(long, conflicts_with = "fleet")]
    node: Option<String>,
    /// With --node: file with the node's API token (default: SHOAL_API_TOKEN, if set).
    #[arg(long, env = "SHOAL_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Plan over the devices described in this JSON file.
    #[arg(long)]
    fleet: Option<PathBuf>,
    /// Without --node/--fleet: how many copies of this machine to plan over.
    #[arg(long, default_value_t = 3)]
    devices: usize,
    /// Without --node/--fleet: worker threads per copy (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Without --node/--fleet: memory per copy, e.g. 512MiB (default: this node's budget).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// What to minimize.
    #[arg(long, value_enum, default_value = "latency")]
    objective: ObjectiveArg,
    /// Context length whose KV cache every stage reserves.
    #[arg(long, default_value_t = 2048)]
    context: u32,
    /// Round trip of links with no measurement, milliseconds (default: the fleet file's
    /// default link, else the coordinator's assumed LAN, 0.5).
    #[arg(long)]
    rtt_ms: Option<f64>,
    /// Bandwidth of links with no measurement, megabits per second (default: the fleet
    /// file's, else the coordinator's, 100).
    #[arg(long)]
    bandwidth_mbps: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let file =
        GgufFile::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let profile = model_profile(&file, args.context)?;
    let fleet = load_fleet(&args, &file, &profile)?;
    // The coordinator's request, so a fleet file gets the plan a live cluster would make.
    let mut request = plan_request(&profile, fleet.head.clone());
    request.objective = match args.objective {
        ObjectiveArg::Latency => Objective::Latency,
        ObjectiveArg::Throughput => Objective::Throughput,
    };
    let mut default_link = fleet.default_link.unwrap_or(ASSUMED_LINK);
    if let Some(rtt) = args.rtt_ms {
        default_link.rtt_ms = rtt;
    }
    if let Some(mbps) = args.bandwidth_mbps {
        default_link.bandwidth_bytes_per_s = mbps * 1e6 / 8.0;
    }
    request.config.default_link = Some(default_link);
    let planned = plan(&fleet.graph, &request)
        .map_err(|e| anyhow::anyhow!("cannot place the model on this fleet: {}", why(&e)))?;
    let outcome = |r: Result<scheduler::Plan, PlanError>| match r {
        Ok(p) => Outcome::Plan(p),
        Err(e) => Outcome::Error(why(&e)),
    };
    let report = Report {
        model_name: model_name(&file, &args.model),
        model: profile,
        source: fleet.source.clone(),
        head: fleet.head.clone(),
        devices: fleet.graph.devices().cloned().collect(),
        even_split: outcome(even_split(&fleet.graph, &request)),
        memory_proportional: outcome(memory_proportional_split(&fleet.graph, &request)),
        planned,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

fn load_fleet(args: &Args, file: &GgufFile, profile: &ModelProfile) -> anyhow::Result<Fleet> {
    if let Some(path) = &args.fleet {
        return fleet::from_file(path, &profile.sha256);
    }
    if let Some(node) = &args.node {
        let token = super::http::api_token(args.api_token_file.as_deref())?;
        let view =
            super::http::fetch_cluster(node, token.as_deref()).map_err(anyhow::Error::msg)?;
        if view.model.sha256 != profile.sha256 {
            eprintln!(
                "warning: the cluster serves {} ({}), not {}; its members' holds_model refers to that model",
                view.model.name,
                view.model.sha256,
                args.model.display()
            );
        }
        return fleet::from_view(&view, &profile.sha256, &super::http::base_url(node));
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    let memory = args.memory.unwrap_or_else(memory_budget);
    let cost = measure_layer_cost(file, threads).context("measuring one layer")?;
    fleet::local_copies(
        args.devices,
        u32::try_from(threads).unwrap_or(u32::MAX),
        memory,
        cost,
        &profile.sha256,
    )
}

/// A planner error in words a user can act on (sizes in MiB rather than raw bytes).
fn why(e: &PlanError) -> String {
    match e {
        PlanError::InsufficientMemory {
            needed,
            available,
            layers,
            kv,
            head,
            budget,
        } => format!(
            "the model needs {} ({} of layers, {} of KV cache for the context, {} of output \
             head) but the devices holding it offer {} after their process overheads ({} of \
             budget in all)",
            format_size(*needed),
            format_size(*layers),
            format_size(*kv),
            format_size(*head),
            format_size(*available),
            format_size(*budget),
        ),
        PlanError::PieceTooLarge {
            piece,
            bytes,
            largest_free,
            device,
        } => format!(
            "no device can hold {piece} ({}): the most free memory is {} on {device}",
            format_size(*bytes),
            format_size(*largest_free)
        ),
        PlanError::StageOverBudget {
            device,
            needed,
            budget,
        } => format!(
            "{device} would need {} but its budget is {}",
            format_size(*needed),
            format_size(*budget)
        ),
        other => other.to_string(),
    }
}

/// `general.name` of the GGUF, else the file stem.
fn model_name(file: &GgufFile, path: &std::path::Path) -> String {
    file.metadata()
        .opt_str("general.name")
        .ok()
        .flatten()
        .map(str::to_owned)
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_owned())
}
