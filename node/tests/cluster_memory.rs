//! Whole nodes (driver, machine, stages, heads; QUIC on loopback) whose discovery is the
//! in-memory network instead of libp2p: they form one plan, serve llama.cpp's tokens through
//! any node, and when one is cut off the others replan without it and serve on, the request
//! that was running on the broken plan finishing with the same tokens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal::backend::Backend;
use shoal::cluster::coordinator::Placement;
use shoal::cluster::{ModelSource, Node, NodeConfig};
use shoal_tests::{argmax, model_path, references};
use transport::cluster_key::ClusterKey;
use transport::discovery::memory::MemoryNetwork;
use transport::discovery::{Config, Keypair, PeerId};

#[path = "common/agree.rs"]
mod agree;
use agree::agree;

async fn start(net: &MemoryNetwork) -> (Node, PeerId) {
    start_with(net, true, 140 << 20, Placement::Even).await
}

async fn start_with(
    net: &MemoryNetwork,
    serves_api: bool,
    memory: u64,
    placement: Placement,
) -> (Node, PeerId) {
    let keypair = Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    let (handle, inbox) = net.join(peer);
    let cfg = NodeConfig {
        model: ModelSource::File(model_path("smollm2")),
        discovery: Config {
            cluster_key: Some(ClusterKey::from_secret(b"memory network test key")),
            ..Config::loopback(Vec::new(), Duration::from_secs(2))
        },
        data_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise_ip: None,
        threads: 1,
        memory_budget: memory,
        max_context: 512,
        max_sessions: 8,
        max_sessions_per_peer: 8,
        session_timeout: Duration::from_secs(60),
        replan_delay: Duration::from_millis(200),
        reply_timeout: Duration::from_secs(20),
        link_emulation: None,
        wire: Default::default(),
        placement,
        speculate: Default::default(),
        prefix_cache: true,
        draft_model: None,
        metrics: Arc::new(shoal::metrics::Metrics::new()),
        serves_api,
        // Nodes in one test process cannot measure their own overhead.
        overhead_bytes: Some(scheduler::DEFAULT_OVERHEAD_BYTES),
    };
    let node = Node::start_on(cfg, keypair, handle, inbox).await.unwrap();
    (node, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_the_in_memory_network_form_serve_and_replan() {
    let refs = references("smollm2");
    let net = MemoryNetwork::default();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start(&net).await);
    }
    let backends: Vec<Arc<dyn Backend>> = nodes.iter().map(|(n, _)| n.backend()).collect();
    let within = Duration::from_secs(60);
    let views = agree(&backends, within, |v| v.members.len() == 3).await;
    let plan = views[0].plan.clone().unwrap();
    assert_eq!(plan.stages.len(), 3);
    for (r, b) in refs.iter().zip(&backends) {
        let head = b.head().unwrap();
        let got = head.generate(&r.prompt_ids, 16, argmax, |_| true).await;
        assert_eq!(got.unwrap(), r.greedy_ids[..16], "{}", r.key);
    }
    // Cut off the node of the last stage while a request runs through a survivor; the
    // survivors replan without it and the request ends with the fault-free tokens.
    let victim: PeerId = plan.stages.last().unwrap().peer_id.parse().unwrap();
    let server = nodes.iter().position(|(_, p)| *p != victim).unwrap();
    let head = backends[server].head().unwrap();
    let r = &refs[1];
    let mut seen = 0;
    let got = head
        .generate(&r.prompt_ids, r.greedy_ids.len(), argmax, |_| {
            seen += 1;
            if seen == 10 {
                net.kill(victim);
            }
            true
        })
        .await
        .expect("the request survives");
    assert_eq!(got, r.greedy_ids, "tokens after the loss");
    let gone = nodes.iter().position(|(_, p)| *p == victim).unwrap();
    let (doomed, _) = nodes.remove(gone);
    let survivors: Vec<Arc<dyn Backend>> = nodes.iter().map(|(n, _)| n.backend()).collect();
    let views = agree(&survivors, within, |v| {
        v.members.len() == 2 && v.plan.as_ref().is_some_and(|p| p.epoch > plan.epoch)
    })
    .await;
    let after = views[0].plan.clone().unwrap();
    assert!(after.stages.iter().all(|s| s.peer_id != victim.to_string()));
    doomed.shutdown().await;
    for (n, _) in nodes {
        n.shutdown().await;
    }
}

/// Three nodes of 64 MiB: with a head on each (28.7 MiB of output product, plus 16 MiB of
/// overhead) they hold 7 layers apiece and cannot place SmolLM2's 30. Two run without the
/// API, hold no head, and take 16 layers each: the model is placed, and the node that
/// serves gives llama.cpp's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_api_hold_no_head_and_make_room_for_layers() {
    let net = MemoryNetwork::default();
    let mut nodes = vec![start_with(&net, true, 64 << 20, Placement::Planned).await];
    for _ in 0..2 {
        nodes.push(start_with(&net, false, 64 << 20, Placement::Planned).await);
    }
    let backends: Vec<Arc<dyn Backend>> = nodes.iter().map(|(n, _)| n.backend()).collect();
    let views = agree(&backends, Duration::from_secs(60), |v| v.members.len() == 3).await;
    let plan = views[0].plan.clone().expect("placed");
    let server = nodes[0].1.to_string();
    let on_server: u32 = plan
        .stages
        .iter()
        .filter(|s| s.peer_id == server)
        .map(|s| s.layers[1] - s.layers[0])
        .sum();
    assert!(
        on_server < 10,
        "the serving node keeps room for its head: {plan:?}"
    );
    let served: Vec<bool> = views[0].members.iter().map(|m| m.serves_api).collect();
    assert_eq!(
        served.iter().filter(|s| **s).count(),
        1,
        "{:?}",
        views[0].members
    );
    let why = backends[1].head().err().expect("no head without the API");
    assert!(why.contains("--no-api"), "{why}");
    let r = &references("smollm2")[0];
    let head = backends[0].head().unwrap();
    let got = head.generate(&r.prompt_ids, 16, argmax, |_| true).await;
    assert_eq!(got.unwrap(), r.greedy_ids[..16]);
    for (node, _) in nodes {
        node.shutdown().await;
    }
}
