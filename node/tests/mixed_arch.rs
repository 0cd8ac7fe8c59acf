//! Issue 21's mixed-architecture cluster: two x86 `shoal run` nodes and one aarch64 node
//! (the static binary in `SHOAL_AARCH64_BIN`, run by `qemu-aarch64-static`) on loopback with
//! static peers. The aarch64 node runs the middle stage and the streamed greedy text equals
//! llama.cpp's, which one x86 node gives; then the x86 node of another stage is SIGKILLed
//! mid-stream, its layers move to the aarch64 node, and the text stays the same.
//!
//! `scripts/test-aarch64` builds the aarch64 binary and runs this test with the variable set
//! (so CI does); without it the test says why and passes.

#[path = "common/process.rs"]
mod process;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use process::{agree, key_file, RunNode};
use serde_json::json;
use shoal::cluster::ClusterView;
use shoal_tests::{model_path, references, temp_dir};
use transport::discovery::Keypair;

/// Start-up under emulation (loading, measuring a layer and the head) takes tens of seconds.
const AGREE_WITHIN: Duration = Duration::from_secs(240);

/// Layers `[start, end)` that `peer` runs in the plan of `view`.
fn layers_of(view: &ClusterView, peer: &str) -> Option<[u32; 2]> {
    let plan = view.plan.as_ref()?;
    plan.stages
        .iter()
        .find(|s| s.peer_id == peer)
        .map(|s| s.layers)
}

fn arch_of(view: &ClusterView, peer: &str) -> String {
    let member = view.members.iter().find(|m| m.peer_id == peer);
    member.map(|m| m.arch.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aarch64_middle_stage_keeps_x86_text_and_takes_a_killed_x86_stage() {
    let Some(arm_bin) = std::env::var_os("SHOAL_AARCH64_BIN") else {
        eprintln!(
            "SKIPPED: SHOAL_AARCH64_BIN is not set (scripts/test-aarch64 builds the static \
             aarch64 shoal and runs this test under qemu-aarch64-static)"
        );
        return;
    };
    let arm_bin = PathBuf::from(arm_bin);
    assert!(
        arm_bin.is_file(),
        "SHOAL_AARCH64_BIN={}: no such file",
        arm_bin.display()
    );
    let logs = temp_dir("mixed-arch");
    let r = references("smollm2")
        .into_iter()
        .find(|r| r.key == "p1")
        .expect("the p1 reference");
    let cluster_key = key_file(&logs, "cluster.key", "the mixed-architecture test's key");
    let model = model_path("smollm2");
    // Even placement puts the stages in the coordinator's member order (the other members by
    // peer id, then itself), which the keys below fix; the planner would order them by
    // measured link times, which tie on loopback.
    let args = |memory: &str| -> Vec<OsString> {
        let flags = format!(
            "--placement even --threads 1 --memory {memory} --max-context 512 \
             --liveness-timeout 3 --replan-delay 0.5"
        );
        let mut args: Vec<OsString> = flags.split_whitespace().map(OsString::from).collect();
        args.extend(["--model".into(), model.clone().into()]);
        args.extend(["--cluster-key-file".into(), cluster_key.clone().into()]);
        args
    };
    // The lowest peer id coordinates and serves the requests (x86 `a`); the coordinator
    // lists the others in peer-id order, then itself: stages `b`, `arm`, `a`.
    let mut keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    keys.sort_by_key(|k| k.public().to_peer_id().to_string());
    let x86 = [OsString::from(env!("CARGO_BIN_EXE_shoal"))];
    let qemu = [OsString::from("qemu-aarch64-static"), arm_bin.into()];
    // 100 MiB holds a head and 15 of the 30 layers at 512 positions; the emulator's own
    // memory counts in the aarch64 node's measured overhead (31 MiB against x86's 16), so
    // it gets more.
    let a = RunNode::spawn(&x86, "x86-a", &keys[0], &[], &args("100MiB"), &logs);
    let mut b = RunNode::spawn(&x86, "x86-b", &keys[1], &[&a.p2p], &args("100MiB"), &logs);
    let arm = RunNode::spawn(
        &qemu,
        "aarch64",
        &keys[2],
        &[&a.p2p, &b.p2p],
        &args("160MiB"),
        &logs,
    );
    eprintln!("logs in {}", logs.display());

    let started = Instant::now();
    let view = agree(&[&a, &b, &arm], 3, 0, AGREE_WITHIN, |v| {
        v.plan.as_ref().is_some_and(|p| p.stages.len() == 3)
    })
    .await;
    eprintln!("3 nodes agreed {:?} after start", started.elapsed());
    assert_eq!(
        arch_of(&view, &arm.peer_id),
        "aarch64",
        "{:?}",
        view.members
    );
    assert_eq!(arch_of(&view, &a.peer_id), std::env::consts::ARCH);
    let plan = view.plan.clone().unwrap();
    let order: Vec<&str> = plan.stages.iter().map(|s| s.peer_id.as_str()).collect();
    assert_eq!(
        order,
        [&b.peer_id, &arm.peer_id, &a.peer_id],
        "the aarch64 node holds the middle range: {plan:?}"
    );

    // Greedy text through the mixed pipeline: x86 layers, aarch64 layers, x86 layers and head.
    let n = r.greedy_ids.len();
    let request = json!({"prompt": r.prompt, "max_tokens": n, "temperature": 0});
    let t = Instant::now();
    let text = a.stream(request.clone(), |_, _| {}).await;
    assert_eq!(text, r.greedy_text, "mixed pipeline vs llama.cpp (= x86)");
    eprintln!("{n} tokens through the mixed pipeline in {:?}", t.elapsed());

    // SIGKILL the x86 node of the first stage at the 10th piece; the request goes on over a
    // new plan in which the aarch64 node runs (part of) the killed node's layers.
    let killed = layers_of(&view, &b.peer_id).unwrap();
    let mut killed_at = None;
    let mut gap = None;
    let t = Instant::now();
    let text = a
        .stream(request, |n, piece| {
            if n == 10 {
                b.kill();
                killed_at = Some(Instant::now());
            } else if gap.is_none() && !piece.is_empty() {
                gap = killed_at.map(|k| k.elapsed());
            }
        })
        .await;
    assert!(killed_at.is_some(), "the stream reached its 10th piece");
    assert_eq!(
        text, r.greedy_text,
        "the text after the kill equals the fault-free run"
    );
    eprintln!(
        "{n} tokens with a SIGKILL at the 10th in {:?}; kill to next piece {:?}",
        t.elapsed(),
        gap.expect("pieces after the kill")
    );
    let after = agree(&[&a, &arm], 2, plan.epoch, AGREE_WITHIN, |_| true).await;
    let moved = layers_of(&after, &arm.peer_id).expect("the aarch64 node runs a stage");
    assert!(
        moved[0] < killed[1] && killed[0] < moved[1],
        "the aarch64 node took layers of the killed node ({killed:?}): {:?}",
        after.plan
    );
    eprintln!(
        "plan {} -> {}: aarch64 {:?} -> {moved:?} (killed x86 ran {killed:?})",
        plan.epoch,
        after.plan.as_ref().unwrap().epoch,
        layers_of(&view, &arm.peer_id).unwrap()
    );
}
