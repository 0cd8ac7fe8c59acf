//! `shoal plan` on the example heterogeneous fleet: all three plans are reported and the
//! capacity-aware one is predicted faster than the even split; a fleet too small for the
//! model is a clear error with a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shoal_tests::model_path;

fn example_fleet() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-hetero.json")
}

fn plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("plan")
        .arg("--model")
        .arg(model_path("smollm2"))
        .args(args)
        .env_remove("SHOAL_MODEL")
        .output()
        .expect("run shoal plan")
}

#[test]
fn hetero_fleet_plan_beats_the_naive_splits() {
    let fleet = example_fleet();
    let fleet = fleet.to_str().expect("utf-8 path");
    let out = plan(&["--fleet", fleet]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for label in [
        "planner (latency)",
        "even split",
        "memory-proportional",
        "chosen:",
        "why:",
    ] {
        assert!(stdout.contains(label), "missing {label:?}:\n{stdout}");
    }

    let out = plan(&["--fleet", fleet, "--json"]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    let planned = report["planned"]["predicted_ms_per_token"]
        .as_f64()
        .expect("planned");
    let even = report["even_split"]["plan"]["predicted_ms_per_token"]
        .as_f64()
        .expect("even split fits the example fleet");
    let proportional = &report["memory_proportional"];
    assert!(proportional.get("plan").is_some() || proportional.get("error").is_some());
    assert!(planned < even, "planner {planned} ms vs even {even} ms");
    let layers: u64 = report["planned"]["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            s["layers"]["end"].as_u64().unwrap_or(0) - s["layers"]["start"].as_u64().unwrap_or(0)
        })
        .sum();
    assert_eq!(layers, 30);
}

#[test]
fn throughput_objective_minimizes_the_bottleneck() {
    let fleet = example_fleet();
    let out = plan(&[
        "--fleet",
        fleet.to_str().expect("utf-8"),
        "--objective",
        "throughput",
        "--json",
    ]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mine = report["planned"]["bottleneck_ms"]
        .as_f64()
        .expect("bottleneck");
    let even = report["even_split"]["plan"]["bottleneck_ms"]
        .as_f64()
        .expect("even");
    assert!(mine <= even, "{mine} vs {even}");
}

#[test]
fn too_little_memory_is_a_clear_error() {
    let out = plan(&["--devices", "2", "--threads", "1", "--memory", "64MiB"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot place the model"), "{stderr}");
    assert!(stderr.contains("MiB"), "{stderr}");
}
