//! `shoal status`: what the cluster a node belongs to is doing, for people and for scripts.
//!
//! The exit code is the script interface: 0 ready, 1 reachable but not ready (degraded,
//! forming, unplaceable), 2 the node could not be reached.

use std::io::Write as _;
use std::time::Duration;

use super::http::fetch_cluster;
use super::status_table::{exit_code, render, EXIT_UNREACHABLE};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// HTTP API of any node of the cluster.
    #[arg(long, env = "SHOAL_NODE", default_value = "http://127.0.0.1:8080")]
    node: String,
    /// Redraw every --interval seconds until Ctrl-C, like `top`.
    #[arg(long)]
    watch: bool,
    /// Seconds between redraws with --watch.
    #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
    interval: f64,
    /// Print the cluster view as JSON (`GET /v1/cluster`) instead of a table.
    #[arg(long)]
    json: bool,
    /// File with the node's API token (default: the SHOAL_API_TOKEN variable, if set).
    #[arg(long, env = "SHOAL_API_TOKEN_FILE")]
    api_token_file: Option<std::path::PathBuf>,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.1 => Ok(v),
        _ => Err(format!("{s:?}: expected seconds >= 0.1")),
    }
}

/// Runs the command; returns the process exit code.
pub(crate) fn run(args: Args) -> i32 {
    let token = match super::http::api_token(args.api_token_file.as_deref()) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("shoal status: {e:#}");
            return EXIT_UNREACHABLE;
        }
    };
    if !args.watch {
        return once(&args, token.as_deref());
    }
    let mut stdout = std::io::stdout();
    loop {
        // Clear the screen and home the cursor, then draw the whole frame at once.
        let frame = match fetch_cluster(&args.node, token.as_deref()) {
            Ok(view) if args.json => serde_json::to_string_pretty(&view).unwrap_or_default(),
            Ok(view) => render(&view),
            Err(e) => format!("{e}\n"),
        };
        let _ = write!(stdout, "\x1b[H\x1b[2J{frame}");
        let _ = writeln!(stdout, "\n(every {}s, Ctrl-C to quit)", args.interval);
        let _ = stdout.flush();
        std::thread::sleep(Duration::from_secs_f64(args.interval));
    }
}

fn once(args: &Args, token: Option<&str>) -> i32 {
    let view = match fetch_cluster(&args.node, token) {
        Ok(view) => view,
        Err(e) => {
            eprintln!("shoal status: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    let code = exit_code(&view);
    if args.json {
        match serde_json::to_string_pretty(&view) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("shoal status: {e}");
                return EXIT_UNREACHABLE;
            }
        }
    } else {
        print!("{}", render(&view));
    }
    code
}
