//! Stages in separate processes act as one model: greedy ids through a 3-stage pipeline on
//! loopback equal llama.cpp's (and so the single node's), concurrent sessions each equal
//! their solo run, one hop per stage per token, and a dead stage fails only its request.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sharding::model::{ShardOptions, ShardSpec};
use shoal::metrics::Metrics;
use shoal::pipeline::protocol::FailureCode;
use shoal::pipeline::{Head, HeadConfig, PipelineError, Route, Stage, StageConfig};
use shoal_tests::{argmax, model_path, references};
use transport::cluster_key::ClusterKey;
use transport::discovery::Keypair;
use transport::quic::{EndpointConfig, Identity, Libp2pIdentity};

fn free_addr() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

const CLUSTER_SECRET: &str = "pipeline test cluster key";

/// A key file the stage processes read; the in-process head holds the same key.
fn key_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("shoal-pipeline-key-{}", std::process::id()));
    std::fs::write(&path, CLUSTER_SECRET).unwrap();
    path
}

fn endpoint() -> EndpointConfig {
    let identity = Identity::from_keypair(&Keypair::generate_ed25519()).unwrap();
    let mut config = shoal::pipeline::endpoint_config(identity, Arc::new(Libp2pIdentity));
    config.cluster_key = Some(ClusterKey::from_secret(CLUSTER_SECRET.as_bytes()));
    config
}

/// A stage process; killed on drop.
struct StageProcess(Child);

impl StageProcess {
    fn spawn(layers: &str, listen: SocketAddr, next: SocketAddr) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["stage", "--layers", layers, "--threads", "1"])
            .arg("--model")
            .arg(model_path("smollm2"))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--next")
            .arg(next.to_string())
            .arg("--cluster-key-file")
            .arg(key_file())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shoal stage");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "stage said {line:?}");
        StageProcess(child)
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A message whose size a test counts.
enum Msg {
    Open(usize, SocketAddr),
    Close,
}

fn message_bytes(msg: Msg) -> usize {
    use shoal::pipeline::protocol::{self, Open};
    let mut buf = Vec::new();
    match msg {
        Msg::Open(positions, reply) => {
            let open = Open {
                positions: positions as u32,
                reply: Some(reply),
                resume: None,
            };
            protocol::encode_open(&open, &mut buf)
        }
        Msg::Close => protocol::encode_close(&mut buf),
    }
    buf.len()
}

/// The bytes of a rows message of `rows` f32 rows at `pos`, less its values.
fn rows_head_bytes(pos: usize, rows: usize, decode: bool) -> usize {
    use shoal::pipeline::protocol::{self, Phase, Reply, RowsHead, WireDtype};
    let head = RowsHead {
        pos: pos as u32,
        rows: rows as u32,
        width: 576,
        dtype: WireDtype::F32,
        phase: if decode {
            Phase::Decode
        } else {
            Phase::Prefill
        },
        reply: Reply::LastRow,
    };
    let mut buf = Vec::new();
    protocol::encode_rows(head, &vec![0.0; rows * 576], &mut buf);
    buf.len() - rows * 576 * 4
}

async fn head(first: SocketAddr, listen: SocketAddr, timeout: Duration) -> Head {
    let cfg = HeadConfig {
        model: model_path("smollm2"),
        threads: 1,
        listen,
        first: Some(first),
        // As `shoal generate --pipeline` does: the last stage's `--next` is this address.
        reply_addr: Some(listen),
        reply_timeout: timeout,
        metrics: None,
        wire: shoal::pipeline::WireDtype::F32,
    };
    Head::start(cfg, endpoint()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stage_processes_match_llama_cpp_and_overlap() {
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let head_addr = addrs[3];
    let _stages = [
        StageProcess::spawn("0..10", addrs[0], addrs[1]),
        StageProcess::spawn("10..20", addrs[1], addrs[2]),
        StageProcess::spawn("20..30", addrs[2], head_addr),
    ];
    let head = head(addrs[0], head_addr, Duration::from_secs(30)).await;
    let refs = references("smollm2");
    for r in &refs {
        let got = head
            .generate(&r.prompt_ids, r.greedy_ids.len(), argmax, |_| true)
            .await
            .unwrap();
        assert_eq!(got, r.greedy_ids, "prompt {}", r.key);
    }
    // Four sessions at once interleave on the stages; each still gets its solo answer.
    let runs = refs.iter().take(4).map(|r| {
        let head = head.clone();
        let prompt = r.prompt_ids.clone();
        tokio::spawn(async move { head.generate(&prompt, 40, argmax, |_| true).await })
    });
    let results = futures::future::join_all(runs).await;
    for (r, got) in refs.iter().zip(results) {
        assert_eq!(got.unwrap().unwrap(), r.greedy_ids, "concurrent {}", r.key);
    }
    head.shutdown().await;
}

/// Stops the head, then the in-process stages.
async fn shut_down(head: Head, stages: Vec<Stage>) {
    head.shutdown().await;
    for s in stages {
        s.shutdown().await;
    }
}

/// Waits (at most 10 s) until the last stage has forwarded `frames` frames in all, so that
/// Close frames still in flight are counted; a slow CI machine only makes it wait longer.
async fn settle(head: &Head, stages: &[Stage], frames: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let last = stages.last().map_or(0, Stage::forwarded);
        if last >= frames && head.message_counts().1 >= frames {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SmolLM2's three stages in this process, at `addrs[0..3]`, the last answering `addrs[3]`.
async fn in_process_stages(addrs: &[SocketAddr]) -> Vec<Stage> {
    stages_with(addrs, ShardOptions::default(), None).await
}

/// The stages record what they send in `metrics`, if given.
async fn stages_with(
    addrs: &[SocketAddr],
    options: ShardOptions,
    metrics: Option<Arc<Metrics>>,
) -> Vec<Stage> {
    let mut stages = Vec::new();
    for (i, layers) in [0..10, 10..20, 20..30].into_iter().enumerate() {
        let cfg = StageConfig {
            model: model_path("smollm2"),
            spec: ShardSpec {
                layers,
                embed: false,
                head: false,
            },
            options: options.clone(),
            listen: addrs[i],
            route: Route::To(addrs[i + 1]),
            session_timeout: Duration::from_secs(60),
            metrics: metrics.clone(),
            wire: shoal::pipeline::WireDtype::F32,
            max_sessions_per_peer: shoal::pipeline::default_sessions_per_peer(64),
            previous_stage: None,
            index: i as u32,
            events: None,
        };
        stages.push(Stage::start(cfg, endpoint()).await.unwrap());
    }
    stages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_hop_per_token() {
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let stages = in_process_stages(&addrs).await;
    let head = head(addrs[0], addrs[3], Duration::from_secs(30)).await;
    let prompt = [504, 3575, 282, 4649, 314];
    let warm = head.generate(&prompt, 2, argmax, |_| true).await.unwrap();
    assert_eq!(warm.len(), 2);
    // Let the warm-up's frames (2 + 2 per hop) travel round the ring before counting.
    settle(&head, &stages, 4).await;
    let before: Vec<u64> = stages.iter().map(Stage::forwarded).collect();
    let (sent0, recv0) = head.message_counts();
    let n = 20;
    head.generate(&prompt, n, argmax, |_| true).await.unwrap();
    settle(&head, &stages, 4 + n as u64 + 2).await;
    let (sent1, recv1) = head.message_counts();
    // Open, one prefill, n - 1 decode steps, close: n + 2 frames each hop.
    let per_hop = n as u64 + 2;
    assert_eq!(sent1 - sent0, per_hop, "head -> stage 1");
    for (s, b) in stages.iter().zip(before) {
        assert_eq!(s.forwarded() - b, per_hop, "stage -> next");
    }
    assert_eq!(recv1 - recv0, per_hop, "last stage -> head");
    shut_down(head, stages).await;
}

/// A prompt of five prefill chunks, sent several at a time so that they overlap on the
/// stages, gives the single node's tokens, and each chunk crosses each hop once. The last
/// stage of this static pipeline sends the head only each chunk's last row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_runs_in_overlapping_chunks() {
    let refs = references("smollm2");
    let prompt: Vec<u32> = refs
        .iter()
        .flat_map(|r| r.prompt_ids.iter().copied())
        .cycle()
        .take(300)
        .collect();
    let n = 8;
    let want = {
        let file = sharding::gguf::GgufFile::open(model_path("smollm2")).unwrap();
        let mut shard =
            sharding::model::Shard::load(&file, ShardSpec::full(30), ShardOptions::default())
                .unwrap();
        shard.open_session(0, 0).unwrap();
        let mut logits = Vec::new();
        let input = sharding::model::Input::Tokens(&prompt);
        shard.forward(0, 0, input, &mut logits).unwrap();
        let mut ids = vec![argmax(&logits)];
        for pos in prompt.len()..prompt.len() + n - 1 {
            let input = sharding::model::Input::Tokens(&ids[ids.len() - 1..]);
            shard.forward(0, pos, input, &mut logits).unwrap();
            ids.push(argmax(&logits));
        }
        ids
    };
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let metrics = Arc::new(Metrics::new());
    let stages = stages_with(&addrs, ShardOptions::default(), Some(metrics.clone())).await;
    // Without prefix reuse the close is empty (a kept cache's close names its key).
    let head = head(addrs[0], addrs[3], Duration::from_secs(30))
        .await
        .with_prefix_cache(false);
    let got = head.generate(&prompt, n, argmax, |_| true).await.unwrap();
    assert_eq!(got, want, "pipeline against the single node");
    // Open, five prefill chunks, n - 1 decode steps, close.
    let per_hop = 1 + 300_usize.div_ceil(64) as u64 + (n as u64 - 1) + 1;
    settle(&head, &stages, per_hop).await;
    assert_eq!(head.message_counts(), (per_hop, per_hop));
    for s in &stages {
        assert_eq!(s.forwarded(), per_hop);
    }
    // To the head: the `Open` (it carries the head's address), one row per chunk and per
    // decode step, and an empty `Close`. Between stages the chunks go whole.
    let row = 576 * 4;
    let sent = |hop: u32| {
        let series = format!("shoal_hop_sent_bytes_total{{hop=\"{hop}\"}} ");
        let text = metrics.encode();
        let line = text.lines().find_map(|l| l.strip_prefix(series.as_str()));
        line.expect("a series per hop").parse::<usize>().unwrap()
    };
    // What the messages around the values cost: the open (with the head's address), the
    // close, and each rows message's head, whole chunks between stages, last rows to the head.
    let reserve = prompt.len() + n;
    let open = message_bytes(Msg::Open(reserve, addrs[3]));
    let close = message_bytes(Msg::Close);
    let chunks: Vec<(usize, usize)> = (0..300).step_by(64).map(|p| (p, 64.min(300 - p))).collect();
    let decode: usize = (300..300 + n - 1)
        .map(|p| rows_head_bytes(p, 1, true))
        .sum();
    let whole: usize = chunks
        .iter()
        .map(|&(p, r)| rows_head_bytes(p, r, false))
        .sum();
    let last: usize = chunks
        .iter()
        .map(|&(p, r)| rows_head_bytes(p + r - 1, 1, false))
        .sum();
    let rows = 5 + (n - 1);
    assert_eq!(sent(3), open + close + last + decode + rows * row);
    assert_eq!(sent(2), open + close + whole + decode + (300 + n - 1) * row);
    shut_down(head, stages).await;
}

/// The prompt follows the `Open` without waiting for it; a stage that refuses the `Open`
/// (the context is over its limit) still answers with that reason, not with the errors of
/// the chunks behind it, and the next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_open_is_the_error_the_request_gets() {
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let options = ShardOptions {
        max_context: 256,
        ..ShardOptions::default()
    };
    let stages = stages_with(&addrs, options, None).await;
    let head = head(addrs[0], addrs[3], Duration::from_secs(30)).await;
    let long: Vec<u32> = (0..300).map(|i| 500 + i % 7).collect();
    match head.generate(&long, 4, argmax, |_| true).await {
        Err(PipelineError::Stage(e)) => assert!(
            e.message
                .contains("context of 304 positions exceeds the limit of 256"),
            "{e}"
        ),
        other => panic!("expected the stage's refusal, got {other:?}"),
    }
    let r = &references("smollm2")[0];
    let got = head.generate(&r.prompt_ids, 8, argmax, |_| true).await;
    assert_eq!(got.unwrap(), r.greedy_ids[..8], "the next request");
    shut_down(head, stages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_stage_fails_the_request_and_the_head_recovers() {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let first = StageProcess::spawn("0..15", addrs[0], addrs[1]);
    let mut second = Some(StageProcess::spawn("15..30", addrs[1], addrs[2]));
    let head = head(addrs[0], addrs[2], Duration::from_secs(3)).await;
    let prompt = [504, 3575, 282, 4649, 314];
    let mut seen = 0;
    let started = std::time::Instant::now();
    let result = head
        .generate(&prompt, 60, argmax, |_| {
            seen += 1;
            if seen == 10 {
                // Kill the second stage mid-request.
                second.take();
            }
            true
        })
        .await;
    // The first stage finds its next hop gone and says so to the head, which does not wait
    // out its reply timeout.
    assert!(
        matches!(&result, Err(PipelineError::Stage(f)) if f.code == FailureCode::Unroutable),
        "expected the first stage's report, got {result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "no hang");
    // The stage comes back; the head serves the next request without a restart.
    let _second = StageProcess::spawn("15..30", addrs[1], addrs[2]);
    let ids = head.generate(&prompt, 5, argmax, |_| true).await.unwrap();
    assert_eq!(ids, [7042, 30, 198, 198, 504]);
    drop(first);
    head.shutdown().await;
}
