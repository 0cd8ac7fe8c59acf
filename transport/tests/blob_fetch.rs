//! Model files between nodes: a holder serves verified chunks over keyed QUIC links, a
//! fetcher stores only chunks that match the manifest. Real endpoints on loopback.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use transport::blob::{BlobServer, FetchError, Fetcher, Manifest, PartialFile};
use transport::cluster_key::ClusterKey;
use transport::quic::{Endpoint, EndpointConfig, Identity, Libp2pIdentity};

fn endpoint(secret: &str) -> Endpoint {
    let mut config = EndpointConfig::new(
        Identity::from_keypair(&Keypair::generate_ed25519()).expect("identity"),
        Arc::new(Libp2pIdentity),
    );
    config.cluster_key = Some(ClusterKey::from_secret(secret.as_bytes()));
    config.handshake_timeout = Duration::from_secs(3);
    Endpoint::bind("127.0.0.1:0".parse().unwrap(), config).expect("bind")
}

/// A scratch directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("shoal-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A 5.5 MiB file of varied bytes (six chunks) and its manifest.
fn source(dir: &Dir) -> (PathBuf, Vec<u8>, Manifest) {
    let data: Vec<u8> = (0..(11u64 << 19))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = dir.0.join("model.gguf");
    std::fs::write(&path, &data).unwrap();
    let manifest = Manifest::build(&path, |_| {}).unwrap();
    (path, data, manifest)
}

#[tokio::test]
async fn a_fetcher_gets_exactly_the_chunks_it_asks_for_and_resumes() {
    let src = Dir::new("src");
    let (path, data, manifest) = source(&src);
    assert_eq!(manifest.chunks.len(), 6);
    let server = BlobServer::start(endpoint("k"), vec![(&path, manifest.clone())], None).unwrap();
    let fetcher = Fetcher::new(endpoint("k"), None);

    let got = fetcher
        .manifest(server.local_addr(), &manifest.sha256)
        .await
        .unwrap();
    assert_eq!(got, manifest);

    let cache = Dir::new("cache");
    let mut part = PartialFile::open(&cache.0, got.clone()).unwrap();
    let mut seen = 0;
    let stored = fetcher
        .fetch(server.local_addr(), &mut part, &[1, 4], |n| seen += n)
        .await
        .unwrap();
    assert_eq!((stored, seen), (2 << 20, 2 << 20));
    assert!(part.has(1) && part.has(4) && !part.has(0) && !part.is_complete());
    let on_disk = std::fs::read(part.path()).unwrap();
    assert_eq!(on_disk.len(), data.len());
    assert_eq!(on_disk[1 << 20..2 << 20], data[1 << 20..2 << 20]);
    assert!(
        on_disk[..1 << 20].iter().all(|&b| b == 0),
        "chunk 0 was not asked for"
    );
    drop(part);

    // After a restart only the rest travels.
    let mut part = PartialFile::reopen(&cache.0, &manifest.sha256)
        .unwrap()
        .unwrap();
    let all: Vec<usize> = (0..6).collect();
    let stored = fetcher
        .fetch(server.local_addr(), &mut part, &all, |_| {})
        .await
        .unwrap();
    assert_eq!(stored, data.len() as u64 - (2 << 20));
    assert!(part.is_complete());
    assert_eq!(std::fs::read(part.path()).unwrap(), data);
    server.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_holder_is_caught_and_nothing_bad_is_kept() {
    let src = Dir::new("corrupt");
    let (path, _, manifest) = source(&src);
    let server = BlobServer::start(endpoint("k"), vec![(&path, manifest.clone())], None).unwrap();
    // The holder's copy rots after it published its manifest.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"rot", (2 << 20) + 77).unwrap();

    let fetcher = Fetcher::new(endpoint("k"), None);
    let cache = Dir::new("corrupt-cache");
    let mut part = PartialFile::open(&cache.0, manifest.clone()).unwrap();
    let err = fetcher
        .fetch(server.local_addr(), &mut part, &[0, 1, 2, 3], |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::BadChunk(_)), "{err}");
    assert!(part.has(0) && part.has(1) && !part.has(2));
    // The holder keeps serving the good chunks.
    fetcher
        .fetch(server.local_addr(), &mut part, &[5], |_| {})
        .await
        .unwrap();
    assert!(part.has(5));
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_files_chunks_and_keys_are_refused() {
    let src = Dir::new("refuse");
    let (path, _, manifest) = source(&src);
    let server = BlobServer::start(endpoint("k"), vec![(&path, manifest.clone())], None).unwrap();
    let fetcher = Fetcher::new(endpoint("k"), None);

    let err = fetcher
        .manifest(server.local_addr(), &[9; 32])
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Refused(_)), "{err}");

    let cache = Dir::new("refuse-cache");
    let mut part = PartialFile::open(&cache.0, manifest.clone()).unwrap();
    let err = fetcher
        .fetch(server.local_addr(), &mut part, &[6], |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Refused(_)), "{err}");

    let stranger = Fetcher::new(endpoint("another key"), None);
    let err = stranger
        .manifest(server.local_addr(), &manifest.sha256)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Link(_)), "{err}");

    // Still serving.
    assert_eq!(
        fetcher
            .manifest(server.local_addr(), &manifest.sha256)
            .await
            .unwrap(),
        manifest
    );
    server.shutdown().await;
}
