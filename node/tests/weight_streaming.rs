//! Nodes without the model: one node holds the file, the others start with only its sha256
//! and fetch from it exactly the chunks their head and layers read. The cluster serves
//! llama.cpp's tokens, and when a stage is lost mid-generation the layers it ran are
//! streamed to a survivor that lacked them while the request goes on with the same tokens.
//! In one process on loopback (static peers, mDNS off).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::backend::Backend;
use shoal::cluster::coordinator::Placement;
use shoal::cluster::{ModelSource, Node, NodeConfig};
use shoal_tests::{argmax, model_path, references};
use transport::blob::{self, Manifest, PartialFile};
use transport::cluster_key::ClusterKey;
use transport::discovery::{Config, Keypair, Multiaddr};

/// Too little for the whole model with its head (~110 MB with KV), enough for two nodes.
#[path = "common/agree.rs"]
mod agree;
use agree::agree;

/// How long nodes get to agree on a plan.
const AGREE_WITHIN: Duration = Duration::from_secs(90);

const BUDGET: u64 = 140 << 20;

fn config(model: ModelSource, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    NodeConfig {
        model,
        discovery: Config {
            cluster_key: Some(ClusterKey::from_secret(b"weight streaming key")),
            ..Config::loopback(bootstrap, Duration::from_secs(2))
        },
        data_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise_ip: None,
        threads: 1,
        memory_budget: BUDGET,
        max_context: 512,
        max_sessions: 8,
        max_sessions_per_peer: shoal::pipeline::default_sessions_per_peer(8),
        session_timeout: Duration::from_secs(60),
        replan_delay: Duration::from_millis(300),
        reply_timeout: Duration::from_secs(20),
        link_emulation: None,
        wire: Default::default(),
        placement: Placement::Even,
        speculate: Default::default(),
        prefix_cache: true,
        draft_model: None,
        metrics: Arc::new(shoal::metrics::Metrics::new()),
        serves_api: true,
        // Nodes in one test process cannot measure their own overhead.
        overhead_bytes: Some(scheduler::DEFAULT_OVERHEAD_BYTES),
    }
}

/// A scratch cache directory, removed on drop.
struct Cache(PathBuf);

impl Cache {
    fn new(name: &str) -> Cache {
        let dir = std::env::temp_dir().join(format!("shoal-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Cache(dir)
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn from_peers(sha256: [u8; 32], cache: &Cache) -> ModelSource {
    ModelSource::Peers {
        sha256,
        cache: cache.0.clone(),
        rate: None,
        wait: Duration::from_secs(30),
    }
}

/// Bytes of the model a fetching node holds, and the file's length.
fn held(cache: &Cache, sha256: &[u8; 32]) -> (u64, u64) {
    let part = PartialFile::reopen(&cache.0, sha256).unwrap().unwrap();
    (part.present_bytes(), part.manifest().len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_model_fetch_their_layers_and_take_over_a_lost_stage() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let path = model_path("smollm2");
    let sha256 = Manifest::build(&path, |_| {}).unwrap().sha256;
    let r = &references("smollm2")[1];

    let seeder = Node::start(
        config(ModelSource::File(path.clone()), Vec::new()),
        Keypair::generate_ed25519(),
    )
    .await
    .unwrap();
    let seed = seeder.listen_addrs().await;
    let caches = [Cache::new("b"), Cache::new("c")];
    let mut nodes = vec![seeder];
    for cache in &caches {
        let cfg = config(from_peers(sha256, cache), seed.clone());
        nodes.push(Node::start(cfg, Keypair::generate_ed25519()).await.unwrap());
    }
    let backends: Vec<_> = nodes.iter().map(Node::backend).collect();
    let views = agree(&backends, AGREE_WITHIN, |v| v.members.len() == 3).await;
    let plan = views[0].plan.clone().unwrap();
    assert_eq!(
        plan.stages.len(),
        3,
        "even placement uses every node: {plan:?}"
    );
    for view in &views {
        assert_eq!(view.model.sha256, blob::hex(&sha256));
    }
    // Each fetching node holds a part of the file: the header, its head, the layer it
    // measured and the layers of the plans it was given (an early plan formed before all
    // three joined may have given it others); never the whole.
    for cache in &caches {
        let (have, len) = held(cache, &sha256);
        assert!(have < len, "{have} of {len} bytes fetched");
        eprintln!("a fetching node holds {have} of {len} bytes");
    }
    // Served through a fetching node, tokens equal llama.cpp's.
    let head = backends[1].head().unwrap();
    let got = head
        .generate(&r.prompt_ids, 12, argmax, |_| true)
        .await
        .unwrap();
    assert_eq!(got, r.greedy_ids[..12]);

    // Lose a fetching node's stage mid-generation: its layers move to nodes that may not
    // have them, which fetch them from the seeder while the request waits.
    let victim = (1..3)
        .find(|&i| {
            let id = nodes[i].peer_id().to_string();
            plan.stages.iter().any(|s| s.peer_id == id)
        })
        .unwrap();
    let survivor = 3 - victim;
    let before = held(&caches[survivor - 1], &sha256).0;
    let head = backends[0].head().unwrap();
    let doomed = nodes.remove(victim);
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let killed_at = Arc::new(Mutex::new(None::<Instant>));
    let gap = Arc::new(Mutex::new(None::<Duration>));
    let killer = {
        let killed_at = killed_at.clone();
        tokio::spawn(async move {
            if kill_rx.await.is_ok() {
                *killed_at.lock().unwrap() = Some(Instant::now());
                doomed.shutdown().await;
            }
        })
    };
    let (mut kill_tx, mut count) = (Some(kill_tx), 0);
    let (k, g) = (killed_at.clone(), gap.clone());
    let got = head
        .generate(&r.prompt_ids, r.greedy_ids.len(), argmax, move |_| {
            count += 1;
            if count == 10 {
                let _ = kill_tx.take().unwrap().send(());
                while k.lock().unwrap().is_none() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            } else if count == 11 {
                *g.lock().unwrap() = k.lock().unwrap().map(|t| t.elapsed());
            }
            true
        })
        .await
        .expect("the request survives");
    killer.await.unwrap();
    assert_eq!(got, r.greedy_ids, "same tokens as the fault-free run");
    assert_eq!(head.recoveries(), 1);
    let after = held(&caches[survivor - 1], &sha256).0;
    let views = agree(&backends_of(&nodes), AGREE_WITHIN, |v| v.members.len() == 2).await;
    let new_plan = views[0].plan.clone().unwrap();
    let survivor_id = nodes[1].peer_id().to_string();
    assert!(
        new_plan.stages.iter().any(|s| s.peer_id == survivor_id),
        "{new_plan:?}"
    );
    eprintln!(
        "kill to next token with weights streamed: {:?}; the survivor fetched {:.1} MB more",
        gap.lock().unwrap().expect("a token after the kill"),
        (after - before) as f64 / 1e6
    );
    assert!(after > before, "the survivor fetched the lost layers");
    // Status tells the story: who left with which layers, the new plan and what moved, the
    // fetch, and the request's recovery time.
    let said = |i: usize| -> String {
        let events = backends_of(&nodes)[i].view().events;
        events.iter().map(|e| e.what.clone() + "\n").collect()
    };
    let head_events = said(0);
    for needle in [
        "left; it ran layers",
        "active",
        "moved",
        "a request recovered",
    ] {
        assert!(
            head_events.contains(needle),
            "{needle:?} not in:\n{head_events}"
        );
    }
    let survivor_events = said(1);
    assert!(
        survivor_events.contains("fetched layers"),
        "{survivor_events}"
    );
    eprintln!("events seen by the head's node:\n{head_events}");
    for n in nodes {
        n.shutdown().await;
    }
}

fn backends_of(nodes: &[Node]) -> Vec<Arc<dyn Backend>> {
    nodes.iter().map(Node::backend).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_holder_a_node_says_so_instead_of_hanging() {
    let cache = Cache::new("lonely");
    let mut cfg = config(from_peers([7; 32], &cache), Vec::new());
    if let ModelSource::Peers { wait, .. } = &mut cfg.model {
        *wait = Duration::from_millis(500);
    }
    let started = Instant::now();
    let err = Node::start(cfg, Keypair::generate_ed25519())
        .await
        .err()
        .expect("no holder, no node");
    let text = format!("{err:#}");
    assert!(text.contains("no peer holding model"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
