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

/// One device of the agreement fleets: memory MiB, decode ms/layer, serves the API, CPU
/// quota (cores, period ms).
struct Spec {
    mib: u64,
    decode_ms: f64,
    serves: bool,
    quota: Option<(f64, f64)>,
}

/// Writes a fleet file for `specs` under peer ids, with measured links between some pairs,
/// and the same fleet as adverts, facts and link reports for the coordinator.
fn twin_fleets(
    name: &str,
    specs: &[Spec],
) -> (
    PathBuf,
    Vec<transport::discovery::Advert>,
    Vec<shoal::cluster::coordinator::LinkReport>,
) {
    use shoal::cluster::coordinator::LinkReport;
    use transport::discovery::{Advert, AdvertState, Keypair, LayerCost};
    let ids: Vec<_> = specs
        .iter()
        .map(|_| Keypair::generate_ed25519().public().to_peer_id())
        .collect();
    let head = ids
        .iter()
        .zip(specs)
        .filter(|(_, s)| s.serves)
        .map(|(id, _)| id.to_string())
        .min()
        .expect("a serving device");
    let mut devices = Vec::new();
    let mut adverts = Vec::new();
    for (id, s) in ids.iter().zip(specs) {
        let mut d = serde_json::json!({
            "id": id.to_string(), "memory": s.mib << 20, "threads": 1,
            "decode_ms_per_layer": s.decode_ms, "prefill_ms_per_layer": s.decode_ms / 4.0,
            "serves_api": s.serves,
        });
        if let Some((cores, period)) = s.quota {
            d["cpu_quota"] = cores.into();
            d["cpu_period_ms"] = period.into();
        }
        devices.push(d);
        adverts.push(Advert {
            peer_id: *id,
            data_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7601)),
            threads: 1,
            memory_budget_bytes: s.mib << 20,
            models: Vec::new(),
            layer_cost: Some(LayerCost {
                decode_ms: s.decode_ms,
                prefill_ms_per_token: s.decode_ms / 4.0,
            }),
            version: "v".into(),
            seed_addr: None,
            platform: Default::default(),
            state: AdvertState {
                cpu_quota_milli: s.quota.map(|q| (q.0 * 1000.0) as u32),
                ..AdvertState::default()
            },
        });
    }
    // The first device reaches the others over measured links; one pair is down.
    let mut links = Vec::new();
    let mut reports = Vec::new();
    for (i, other) in ids.iter().enumerate().skip(1) {
        let (a, b) = (ids[0].to_string(), other.to_string());
        let down = i == 2;
        let rtt = 0.2 * i as f64;
        if down {
            links.push(serde_json::json!({"a": a, "b": b, "down": true}));
        } else {
            links.push(serde_json::json!({"a": a, "b": b, "rtt_ms": rtt, "bandwidth_mbps": 400.0}));
        }
        for (from, to) in [(&a, &b), (&b, &a)] {
            reports.push(LinkReport {
                from: from.clone(),
                to: to.clone(),
                link: (!down).then_some(scheduler::Link {
                    rtt_ms: rtt,
                    bandwidth_bytes_per_s: 400.0 * 1e6 / 8.0,
                }),
            });
        }
    }
    let fleet = serde_json::json!({"head": head, "devices": devices, "links": links});
    let dir = std::env::temp_dir().join(format!("shoal-plan-twin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, fleet.to_string()).expect("write fleet");
    (path, adverts, reports)
}

/// `shoal plan --fleet F` and the coordinator (device_graph + assign over adverts of the same
/// devices and links) make the same plan, and agree when there is none.
#[test]
fn shoal_plan_and_the_coordinator_make_the_same_plan() {
    use shoal::cluster::coordinator::{self, NodeFacts, Placement};
    let fleets = [
        // The demo: one serving node, two without the API.
        vec![
            Spec {
                mib: 100,
                decode_ms: 0.2,
                serves: true,
                quota: None,
            },
            Spec {
                mib: 100,
                decode_ms: 0.2,
                serves: false,
                quota: None,
            },
            Spec {
                mib: 100,
                decode_ms: 0.25,
                serves: false,
                quota: None,
            },
        ],
        // Small, mixed, one with a CPU quota: the head must be split or layers spread.
        vec![
            Spec {
                mib: 48,
                decode_ms: 0.3,
                serves: true,
                quota: None,
            },
            Spec {
                mib: 64,
                decode_ms: 0.2,
                serves: false,
                quota: Some((0.5, 4.0)),
            },
            Spec {
                mib: 56,
                decode_ms: 0.4,
                serves: true,
                quota: None,
            },
            Spec {
                mib: 72,
                decode_ms: 0.5,
                serves: false,
                quota: None,
            },
        ],
        // Too small for the model.
        vec![
            Spec {
                mib: 40,
                decode_ms: 0.2,
                serves: true,
                quota: None,
            },
            Spec {
                mib: 40,
                decode_ms: 0.2,
                serves: false,
                quota: None,
            },
        ],
    ];
    let mut outcomes = Vec::new();
    for (n, specs) in fleets.iter().enumerate() {
        let (path, mut adverts, reports) = twin_fleets(&format!("fleet{n}"), specs);
        let out = plan(&["--fleet", path.to_str().expect("utf-8"), "--json"]);
        let peers: Vec<_> = adverts.iter().map(|a| a.peer_id).collect();
        let facts = |a: &transport::discovery::Advert| {
            let i = peers.iter().position(|p| *p == a.peer_id).expect("known");
            NodeFacts {
                serves_api: specs[i].serves,
                cpu_period_ms: specs[i].quota.map(|q| q.1),
                ..NodeFacts::default()
            }
        };
        if !out.status.success() {
            // The CLI refused: the coordinator must too. Its sha256 is the model's.
            let file = sharding::gguf::GgufFile::open(model_path("smollm2")).expect("open");
            let p = shoal::cluster::profile::model_profile(&file, 2048).expect("profile");
            for a in &mut adverts {
                a.models = vec![p.sha256.clone()];
            }
            let g = coordinator::device_graph(&adverts, &p.sha256, "v", facts, &reports);
            let c = coordinator::coordinator(&adverts, &p.sha256, "v").expect("coordinator");
            let planned = coordinator::assign(&g, &p, &c, 1, Placement::Planned, |_| {}, None);
            assert!(
                planned.is_err(),
                "shoal plan refused but the coordinator planned {planned:?}"
            );
            outcomes.push(false);
            continue;
        }
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let profile: scheduler::ModelProfile =
            serde_json::from_value(report["model"].clone()).expect("model profile");
        for a in &mut adverts {
            a.models = vec![profile.sha256.clone()];
        }
        let g = coordinator::device_graph(&adverts, &profile.sha256, "v", facts, &reports);
        let c = coordinator::coordinator(&adverts, &profile.sha256, "v").expect("coordinator");
        let (_, live) = coordinator::assign(&g, &profile, &c, 1, Placement::Planned, |_| {}, None)
            .expect("the coordinator plans what shoal plan planned");
        let cli: scheduler::Plan = serde_json::from_value(report["planned"].clone()).expect("plan");
        // JSON text costs the last bit of a float: compare layouts exactly, costs closely.
        let layout = |p: &scheduler::Plan| {
            let stages: Vec<_> = p
                .stages
                .iter()
                .map(|s| (s.device.clone(), s.layers.clone()))
                .collect();
            let slices: Vec<_> = p
                .slices
                .iter()
                .map(|s| (s.device.clone(), s.rows.clone()))
                .collect();
            let hops: Vec<_> = p
                .hops
                .iter()
                .map(|h| (h.from.clone(), h.to.clone()))
                .collect();
            (p.head_node.clone(), stages, slices, p.heads.clone(), hops)
        };
        assert_eq!(layout(&cli), layout(&live), "fleet {n}:\n{cli}\n{live}");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            close(cli.predicted_ms_per_token, live.predicted_ms_per_token),
            "fleet {n}"
        );
        assert!(close(cli.bottleneck_ms, live.bottleneck_ms), "fleet {n}");
        outcomes.push(true);
    }
    assert_eq!(
        outcomes,
        [true, true, false],
        "the fleets cover both outcomes"
    );
}

/// Gemma-3-270M's tied 170 MiB output head fits none of four 128 MiB devices: the plan splits
/// it by vocabulary rows and `shoal plan` says where each slice goes.
#[test]
fn a_split_output_head_is_printed_with_its_slices() {
    let dir = std::env::temp_dir().join(format!("shoal-plan-slices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("fleet.json");
    let devices: Vec<serde_json::Value> = (0..4)
        .map(|i| serde_json::json!({"id": format!("n{i}"), "memory": "128MiB", "decode_ms_per_layer": 0.45}))
        .collect();
    std::fs::write(&path, serde_json::json!({"devices": devices}).to_string()).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["plan", "--model"])
        .arg(model_path("gemma3"))
        .arg("--fleet")
        .arg(&path)
        .env_remove("SHOAL_MODEL")
        .output()
        .expect("run shoal plan");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("vocabulary slices"), "{stdout}");
    assert!(stdout.contains("output head rows n"), "{stdout}");
    assert!(stdout.contains("..262144"), "{stdout}");
}
