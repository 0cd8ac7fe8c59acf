//! Thirty replans in a row (a node joining and leaving, requests served through every plan)
//! and `/metrics` still has the same series: every label is a stage or hop index or another
//! small fixed set, never an address, peer id or layer range that changes with each plan.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal::backend::Backend;
use shoal::cluster::coordinator::Placement;
use shoal::cluster::{ModelSource, Node, NodeConfig};
use shoal::metrics::Metrics;
use shoal_tests::{argmax, model_path, references};
use transport::cluster_key::ClusterKey;
use transport::discovery::{Config, Keypair, Multiaddr};

#[path = "common/agree.rs"]
mod agree;
use agree::agree;

async fn start(bootstrap: Vec<Multiaddr>, metrics: Arc<Metrics>) -> Node {
    let cfg = NodeConfig {
        model: ModelSource::File(model_path("smollm2")),
        discovery: Config {
            cluster_key: Some(ClusterKey::from_secret(b"churn test key")),
            ..Config::loopback(bootstrap, Duration::from_secs(2))
        },
        data_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise_ip: None,
        threads: 1,
        memory_budget: 1 << 30,
        max_context: 256,
        max_sessions: 8,
        max_sessions_per_peer: 8,
        session_timeout: Duration::from_secs(60),
        replan_delay: Duration::from_millis(100),
        reply_timeout: Duration::from_secs(20),
        link_emulation: None,
        wire: Default::default(),
        // Every join and leave changes the layout.
        placement: Placement::Even,
        speculate: Default::default(),
        prefix_cache: true,
        draft_model: None,
        metrics,
        serves_api: true,
        // Nodes in one test process cannot measure their own overhead.
        overhead_bytes: Some(scheduler::DEFAULT_OVERHEAD_BYTES),
    };
    Node::start(cfg, Keypair::generate_ed25519()).await.unwrap()
}

/// The series (name and labels) `/metrics` shows now.
fn series(metrics: &Metrics) -> BTreeSet<String> {
    metrics
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_replans_leave_the_metric_series_as_they_were() {
    let r = &references("smollm2")[0];
    let metrics = Arc::new(Metrics::new());
    let first = start(Vec::new(), metrics.clone()).await;
    let seed = first.listen_addrs().await;
    let second = start(seed.clone(), metrics.clone()).await;
    let steady = [first.backend(), second.backend()];
    let serve = |b: &Arc<dyn Backend>| {
        let head = b.head().expect("a ready cluster serves");
        async move { head.generate(&r.prompt_ids, 3, argmax, |_| true).await }
    };
    let within = Duration::from_secs(60);
    agree(&steady, within, |v| v.members.len() == 2).await;
    let mut seen = BTreeSet::new();
    let mut replans = 0;
    let mut after_warmup = None;
    for cycle in 0..15 {
        // Joins: a third stage, one more hop.
        let churn = start(seed.clone(), metrics.clone()).await;
        let all = [steady[0].clone(), steady[1].clone(), churn.backend()];
        let views = agree(&all, within, |v| v.members.len() == 3).await;
        assert_eq!(views[0].plan.as_ref().unwrap().stages.len(), 3);
        for b in &all {
            assert_eq!(serve(b).await.unwrap(), r.greedy_ids[..3]);
        }
        // Leaves: back to two.
        churn.shutdown().await;
        let views = agree(&steady, within, |v| v.members.len() == 2).await;
        replans = views[0].replans;
        for b in &steady {
            assert_eq!(serve(b).await.unwrap(), r.greedy_ids[..3]);
        }
        seen.extend(series(&metrics));
        if cycle == 1 {
            after_warmup = Some(series(&metrics));
        }
    }
    assert!(replans >= 30, "{replans} replans");
    let now = series(&metrics);
    assert_eq!(
        Some(&now),
        after_warmup.as_ref(),
        "series appeared after the second cycle: {:?}",
        now.difference(after_warmup.as_ref().unwrap())
    );
    assert_eq!(seen, now, "no series came and went");
    eprintln!("{} series after {replans} replans", now.len());
    first.shutdown().await;
    second.shutdown().await;
}
