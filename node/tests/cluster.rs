//! A self-forming cluster in one process on loopback (static peers, mDNS off): nodes agree
//! on one plan, serve greedy tokens equal to llama.cpp's through any node, and replan when
//! a node joins and when one leaves, without restarting anybody.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal::backend::Backend;
use shoal::cluster::coordinator::Placement;
use shoal::cluster::{ClusterState, ModelSource, Node, NodeConfig};
use shoal_tests::{argmax, model_path, references};
use transport::cluster_key::ClusterKey;
use transport::discovery::{Config, Keypair, Multiaddr};

/// Too little for the whole model (weights ~110 MB with KV): the plan needs several nodes.
/// The tests here measure the machine and plan from what they measure; run one at a time so
/// their nodes do not measure each other's load.
#[path = "common/agree.rs"]
mod agree;
use agree::agree;

/// How long nodes get to agree on a plan.
const AGREE_WITHIN: Duration = Duration::from_secs(60);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BUDGET: u64 = 100 << 20;

async fn start_with(bootstrap: Vec<Multiaddr>, budget: u64) -> Node {
    start_placed(bootstrap, budget, Placement::Planned).await
}

async fn start_placed(bootstrap: Vec<Multiaddr>, budget: u64, placement: Placement) -> Node {
    let cfg = NodeConfig {
        model: ModelSource::File(model_path("smollm2")),
        discovery: Config {
            cluster_key: Some(ClusterKey::from_secret(b"cluster test key")),
            ..Config::loopback(bootstrap, Duration::from_secs(2))
        },
        data_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise_ip: None,
        threads: 1,
        memory_budget: budget,
        max_context: 512,
        max_sessions: 8,
        max_sessions_per_peer: shoal::pipeline::default_sessions_per_peer(8),
        session_timeout: Duration::from_secs(60),
        replan_delay: Duration::from_millis(300),
        reply_timeout: Duration::from_secs(20),
        link_emulation: None,
        wire: Default::default(),
        placement,
        speculate: Default::default(),
        prefix_cache: true,
        draft_model: None,
        metrics: std::sync::Arc::new(shoal::metrics::Metrics::new()),
        serves_api: true,
        // Nodes in one test process cannot measure their own overhead.
        overhead_bytes: Some(scheduler::DEFAULT_OVERHEAD_BYTES),
    };
    Node::start(cfg, Keypair::generate_ed25519()).await.unwrap()
}

async fn greedy(backend: &dyn Backend, prompt: &[u32], n: usize) -> Vec<u32> {
    let head = backend.head().expect("a ready cluster serves");
    head.generate(prompt, n, argmax, |_| true).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_agree_serve_exact_tokens_and_replan_on_join_and_leave() {
    let _serial = SERIAL.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let refs = references("smollm2");
    // Even placement makes a join change the layout whatever the nodes measured on a busy
    // machine; the other tests run capacity-aware placement.
    let even = |seed| start_placed(seed, BUDGET, Placement::Even);
    let first = even(Vec::new()).await;
    let seed = first.listen_addrs().await;
    let mut nodes = vec![first, even(seed.clone()).await, even(seed.clone()).await];
    let backends: Vec<_> = nodes.iter().map(Node::backend).collect();
    let views = agree(&backends, AGREE_WITHIN, |v| v.members.len() == 3).await;
    let plan = views[0].plan.clone().unwrap();
    assert!(
        plan.stages.len() >= 2,
        "one node cannot hold the model: {plan:?}"
    );
    let covered: u32 = plan.stages.iter().map(|s| s.layers[1] - s.layers[0]).sum();
    assert_eq!(covered, 30);
    // Any node serves, with the same tokens as llama.cpp.
    for (r, b) in refs.iter().zip(backends.iter().cycle()) {
        assert_eq!(
            greedy(b.as_ref(), &r.prompt_ids, 20).await,
            r.greedy_ids[..20],
            "{}",
            r.key
        );
    }

    // A fourth node joins: a new plan (4 stages), agreed by all, without restarts.
    nodes.push(even(seed.clone()).await);
    let backends: Vec<_> = nodes.iter().map(Node::backend).collect();
    let joined = agree(&backends, AGREE_WITHIN, |v| {
        v.members.len() == 4 && v.plan.as_ref().is_some_and(|p| p.epoch > plan.epoch)
    })
    .await;
    let after_join = joined[0].plan.clone().unwrap();
    let r = &refs[0];
    assert_eq!(
        greedy(backends[3].as_ref(), &r.prompt_ids, 20).await,
        r.greedy_ids[..20]
    );

    // A node that runs a stage leaves: the others replan without it and keep serving.
    let leaving = after_join.stages[after_join.stages.len() - 1]
        .peer_id
        .clone();
    let index = nodes
        .iter()
        .position(|n| n.peer_id().to_string() == leaving)
        .unwrap();
    nodes.remove(index).shutdown().await;
    let backends: Vec<_> = nodes.iter().map(Node::backend).collect();
    let left = agree(&backends, AGREE_WITHIN, |v| {
        v.members.len() == 3 && v.plan.as_ref().is_some_and(|p| p.epoch > after_join.epoch)
    })
    .await;
    let after_leave = left[0].plan.clone().unwrap();
    assert!(after_leave.stages.iter().all(|s| s.peer_id != leaving));
    for b in &backends {
        assert_eq!(
            greedy(b.as_ref(), &r.prompt_ids, 20).await,
            r.greedy_ids[..20]
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_survives_the_loss_of_a_stage_with_the_same_tokens() {
    let _serial = SERIAL.lock().await;
    let r = &references("smollm2")[1];
    // Enough memory for two nodes to hold the model, not one.
    let budget = 140 << 20;
    let first = start_with(Vec::new(), budget).await;
    let seed = first.listen_addrs().await;
    let mut nodes = vec![
        first,
        start_with(seed.clone(), budget).await,
        start_with(seed.clone(), budget).await,
    ];
    let backends: Vec<_> = nodes.iter().map(Node::backend).collect();
    let views = agree(&backends, AGREE_WITHIN, |v| v.members.len() == 3).await;
    let plan = views[0].plan.clone().unwrap();
    // Serve from a node that keeps running; take away the one running the last stage.
    let victim = plan.stages.last().unwrap().peer_id.clone();
    let victim = nodes
        .iter()
        .position(|n| n.peer_id().to_string() == victim)
        .unwrap();
    let server = (0..3).find(|&i| i != victim).unwrap();
    let head = backends[server].head().unwrap();
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let mut kill_tx = Some(kill_tx);
    let killed_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let gap = std::sync::Arc::new(std::sync::Mutex::new(None::<Duration>));
    let doomed = nodes.remove(victim);
    let killer = {
        let killed_at = killed_at.clone();
        tokio::spawn(async move {
            if kill_rx.await.is_ok() {
                *killed_at.lock().unwrap() = Some(Instant::now());
                doomed.shutdown().await;
            }
        })
    };
    let mut count = 0;
    let (k, g) = (killed_at.clone(), gap.clone());
    let got = head
        .generate(&r.prompt_ids, r.greedy_ids.len(), argmax, move |_| {
            count += 1;
            if count == 15 {
                // Wait until the node is gone, so the next token must come from a new plan.
                let _ = kill_tx.take().unwrap().send(());
                while k.lock().unwrap().is_none() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            } else if count == 16 {
                *g.lock().unwrap() = k.lock().unwrap().map(|t| t.elapsed());
            }
            true
        })
        .await
        .expect("the request survives");
    killer.await.unwrap();
    assert_eq!(
        got, r.greedy_ids,
        "tokens after the loss equal the fault-free run"
    );
    assert_eq!(head.recoveries(), 1);
    eprintln!(
        "kill to next token: {:?}",
        gap.lock().unwrap().expect("a token after the kill")
    );
    for n in nodes {
        n.shutdown().await;
    }
}

/// `shoal status --json` against a cluster that lost a stage and cannot replan (the two
/// nodes left cannot hold the model) exits non-zero and says why; when a node joins again the
/// cluster serves and status says ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_degraded_cluster_and_exits_non_zero() {
    let _serial = SERIAL.lock().await;
    // Three nodes hold the model, two cannot: each has 76 MiB less its 16 MiB overhead and
    // its 28.7 MiB head for layers of 2.5 MiB with 512 positions of KV (12 of 30).
    let budget = 76 << 20;
    let first = start_with(Vec::new(), budget).await;
    let seed = first.listen_addrs().await;
    let mut nodes = vec![
        first,
        start_with(seed.clone(), budget).await,
        start_with(seed.clone(), budget).await,
    ];
    let backends: Vec<_> = nodes.iter().map(Node::backend).collect();
    let views = agree(&backends, AGREE_WITHIN, |v| v.members.len() == 3).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let metrics = std::sync::Arc::new(shoal::metrics::Metrics::new());
    let api = tokio::spawn(shoal::api::serve(
        listener,
        backends[0].clone(),
        metrics,
        stop.clone(),
    ));
    let status = |url: String| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
                .args(["status", "--json", "--node", &url])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert_eq!(
        status(url.clone()).await.status.code(),
        Some(0),
        "ready exits 0"
    );

    let plan = views[0].plan.clone().unwrap();
    let victim = plan
        .stages
        .iter()
        .map(|s| s.peer_id.clone())
        .find(|p| *p != nodes[0].peer_id().to_string())
        .unwrap();
    let index = nodes
        .iter()
        .position(|n| n.peer_id().to_string() == victim)
        .unwrap();
    nodes.remove(index).shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while backends[0].view().state != ClusterState::Degraded {
        assert!(
            Instant::now() < deadline,
            "never degraded: {:?}",
            backends[0].view()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = status(url.clone()).await;
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "degraded exits 1: {json}");
    assert!(
        json.contains("degraded") && json.contains("is gone"),
        "{json}"
    );
    // Once the coordinator finds the two nodes left cannot hold the model, new requests are
    // refused at once with the reason instead of waiting for a plan that will not come.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        match backends[0].head() {
            Err(why) => break why,
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "requests still accepted: {}",
                    serde_json::to_string(&backends[0].view()).unwrap()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(refusal.contains("cannot be placed"), "{refusal}");
    // Capacity returns: a new node joins, the cluster replans and serves again, and status
    // says ready.
    nodes.push(start_with(seed.clone(), budget).await);
    let backends: Vec<_> = nodes.iter().map(Node::backend).collect();
    agree(&backends, AGREE_WITHIN, |v| v.members.len() == 3).await;
    let r = &references("smollm2")[0];
    assert_eq!(
        greedy(backends[0].as_ref(), &r.prompt_ids, 8).await,
        r.greedy_ids[..8]
    );
    assert_eq!(status(url).await.status.code(), Some(0), "ready again");
    stop.cancel();
    let _ = api.await;
    for n in nodes {
        n.shutdown().await;
    }
}
