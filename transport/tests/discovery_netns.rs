//! mDNS discovery across three network namespaces joined by a bridge: the
//! cluster acceptance test ("nodes in 3 namespaces find each other by mDNS
//! within 5 s"). The test creates and removes its own namespaces and never
//! touches the host's interfaces. It is skipped, with a message, when not run
//! as root or when `ip` is missing.
//!
//! The parent test re-runs this test binary inside each namespace (`ip netns
//! exec`) as a child node, because a process's sockets live in the namespace
//! it runs in.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shoal_tests::netns::{skip_reason, Topology};
use tokio_util::sync::CancellationToken;
use transport::discovery::{swarm, Advert, AdvertState, Config, Discovery, Keypair};

const NODES: usize = 3;
const FIND_WITHIN: Duration = Duration::from_secs(5);
const CHILD_ENV: &str = "SHOAL_NETNS_CHILD";

/// Kills the children it holds when dropped, so a failing test leaves none behind.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn three_namespaces_find_each_other_by_mdns() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // Inside a child only `netns_child_node` does anything.
    }
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED three_namespaces_find_each_other_by_mdns: {reason}");
        return;
    }
    let topo = match Topology::create("shoal-disc", 77, NODES) {
        Ok(topo) => topo,
        Err(e) => {
            eprintln!(
                "SKIPPED three_namespaces_find_each_other_by_mdns: cannot build namespaces: {e}"
            );
            return;
        }
    };
    let exe = std::env::current_exe().expect("test binary path");
    let (tx, rx) = mpsc::channel();
    let mut children = Children(Vec::new());
    let started = Instant::now();
    for ns in topo.nodes() {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .args([
                "netns_child_node",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, ns)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, ns) = (tx.clone(), ns.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print its own "test ... " prefix on the same line.
                if let Some((_, ms)) = line.split_once("FOUND ") {
                    let _ = tx.send((ns.clone(), ms.trim().to_owned()));
                }
            }
        });
        children.0.push(child);
    }
    let mut found = Vec::new();
    while found.len() < NODES {
        let left = (FIND_WITHIN + Duration::from_secs(5)).saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(report) => found.push(report),
            Err(_) => break,
        }
    }
    drop(children);
    drop(topo);
    eprintln!(
        "mDNS discovery reports: {found:?} (total {:?})",
        started.elapsed()
    );
    assert_eq!(found.len(), NODES, "every node must see the other two");
    for (ns, ms) in &found {
        let ms: u64 = ms.parse().expect("milliseconds");
        assert!(
            Duration::from_millis(ms) <= FIND_WITHIN,
            "{ns} took {ms} ms"
        );
    }
}

/// One node of the namespace test; does nothing unless started by the parent.
#[test]
fn netns_child_node() {
    let Some(ns) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let ns = ns.to_string_lossy().into_owned();
    // Logs go to stderr, which the parent passes through (RUST_LOG=debug to see them).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = Config {
            mdns: true,
            ..Config::default()
        };
        let (handle, _inbox, service) = swarm::spawn(
            config,
            Keypair::generate_ed25519(),
            CancellationToken::new(),
        )
        .await
        .expect("node starts");
        let started = Instant::now();
        let id = handle.local_peer_id();
        let advert = Advert {
            peer_id: id,
            data_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7000)),
            threads: 1,
            memory_budget_bytes: 1 << 30,
            models: vec![],
            layer_cost: None,
            version: ns.clone(),
            seed_addr: None,
            platform: Default::default(),
            state: AdvertState::default(),
        };
        handle.publish(advert).await.expect("publish");
        while handle.members().len() < NODES - 1 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{ns}: never saw the others"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("FOUND {}", started.elapsed().as_millis());
        // Stay up so the others can finish; the parent kills us.
        tokio::time::sleep(Duration::from_secs(30)).await;
        service.shutdown().await;
    });
}
