//! `shoal perplexity --node URL`: a running cluster measured as a model. Three `shoal run`
//! nodes on loopback (even placement: three stages) score a text through their active plan,
//! and the perplexity line equals the one-node run's exactly (f32 on the wire).

#[path = "common/process.rs"]
#[allow(dead_code)]
mod process;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use process::{agree, key_file, RunNode};
use shoal_tests::{model_path, temp_dir, workspace};
use transport::discovery::Keypair;

const CTX: &str = "128";
const CHUNKS: &str = "2";

/// Runs `shoal perplexity` over ARCHITECTURE.md with the cluster key `key` and `extra` flags.
fn run(extra: &[&str], key: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("perplexity")
        .arg("--model")
        .arg(model_path("smollm2"))
        .arg("--file")
        .arg(workspace().join("ARCHITECTURE.md"))
        .args(["--ctx", CTX, "--chunks", CHUNKS])
        .arg("--cluster-key-file")
        .arg(key)
        .args(extra)
        .output()
        .expect("run shoal perplexity")
}

/// [`run`]'s stdout, or the test fails with its stderr.
fn perplexity(extra: &[&str], key: &Path) -> String {
    let out = run(extra, key);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "shoal perplexity {extra:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The final estimate line (`Final estimate: PPL = … +/- …`).
fn final_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("Final estimate"))
        .unwrap_or_else(|| panic!("no final estimate in {stdout:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cluster_scores_a_text_as_one_node_does() {
    let logs = temp_dir("perplexity-cluster");
    let key = key_file(&logs, "cluster.key", "the perplexity cluster test's key");
    let flags = "--placement even --threads 1 --memory 100MiB --max-context 512 \
                 --liveness-timeout 3 --replan-delay 0.5";
    let mut args: Vec<OsString> = flags.split_whitespace().map(OsString::from).collect();
    args.extend(["--model".into(), model_path("smollm2").into()]);
    args.extend(["--cluster-key-file".into(), key.clone().into()]);
    let shoal = [OsString::from(env!("CARGO_BIN_EXE_shoal"))];
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let a = RunNode::spawn(&shoal, "a", &keys[0], &[], &args, &logs);
    let b = RunNode::spawn(&shoal, "b", &keys[1], &[&a.p2p], &args, &logs);
    let c = RunNode::spawn(&shoal, "c", &keys[2], &[&a.p2p, &b.p2p], &args, &logs);
    eprintln!("logs in {}", logs.display());
    agree(&[&a, &b, &c], 3, 0, Duration::from_secs(90), |v| {
        v.plan.as_ref().is_some_and(|p| p.stages.len() == 3)
    })
    .await;

    let listen = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().to_string()
    };
    // Each run also writes its log-probabilities as a llama.cpp KL-divergence base.
    let (base_cluster, base_one) = (logs.join("cluster.kld"), logs.join("one.kld"));
    let through = tokio::task::spawn_blocking({
        let (api, key, base) = (a.api.clone(), key.clone(), base_cluster.clone());
        move || {
            let base = base.to_str().unwrap().to_owned();
            let flags = [
                "--node",
                &api,
                "--listen",
                &listen,
                "--kl-divergence-base",
                &base,
            ];
            perplexity(&flags, &key)
        }
    })
    .await
    .unwrap();
    let one_node = perplexity(&["--kl-divergence-base", base_one.to_str().unwrap()], &key);
    assert_eq!(
        final_line(&through),
        final_line(&one_node),
        "three stages of a running cluster score the text as one node does"
    );
    assert_eq!(through.lines().next(), one_node.lines().next());
    let (cluster_bytes, one_bytes) = (
        std::fs::read(&base_cluster).unwrap(),
        std::fs::read(&base_one).unwrap(),
    );
    assert!(
        cluster_bytes.len() > 1000,
        "a base of {} bytes",
        cluster_bytes.len()
    );
    assert!(
        cluster_bytes == one_bytes,
        "every scored position's log-probabilities are the same"
    );
}

#[test]
fn a_node_that_does_not_answer_is_a_clear_error() {
    let logs = temp_dir("perplexity-cluster-none");
    let key = key_file(&logs, "cluster.key", "unused");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = format!("127.0.0.1:{port}");
    let out = run(&["--node", &node], &key);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}
