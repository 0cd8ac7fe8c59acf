//! `shoal run` nodes as child processes on loopback: static peers (`--peer`), no mDNS, every
//! address on 127.0.0.1, watched and driven through their HTTP API.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal::cluster::{ClusterState, ClusterView};
use transport::discovery::Keypair;

/// One `shoal run` process; killed (SIGKILL) on drop.
pub(crate) struct RunNode {
    /// Name of its log file, `<name>.log`.
    pub(crate) name: String,
    /// Its libp2p peer id (from the key file it was given).
    pub(crate) peer_id: String,
    /// Where peers dial it: `/ip4/127.0.0.1/tcp/<port>`.
    pub(crate) p2p: String,
    /// `http://127.0.0.1:<port>`.
    pub(crate) api: String,
    child: Child,
}

impl RunNode {
    /// Starts `program` (the shoal binary, or an emulator and the binary) as `shoal run` with
    /// the identity `keypair`, on free loopback ports, dialing `peers` (their `p2p`), with
    /// `args` (model, memory, placement...) after the networking flags. stderr goes to
    /// `logs/<name>.log`.
    pub(crate) fn spawn(
        program: &[OsString],
        name: &str,
        keypair: &Keypair,
        peers: &[&str],
        args: &[OsString],
        logs: &Path,
    ) -> RunNode {
        let key_file = logs.join(format!("{name}.key"));
        std::fs::write(&key_file, keypair.to_protobuf_encoding().unwrap()).unwrap();
        let (p2p, api) = (free_port(), free_port());
        let p2p = format!("/ip4/127.0.0.1/tcp/{p2p}");
        let log = std::fs::File::create(logs.join(format!("{name}.log"))).unwrap();
        let (exe, pre) = program.split_first().expect("a program");
        let mut cmd = Command::new(exe);
        cmd.args(pre)
            .arg("run")
            .args(["--p2p-listen", &p2p, "--data-listen", "127.0.0.1:0"])
            .args(["--api", &format!("127.0.0.1:{api}"), "--no-mdns"])
            .arg("--key-file")
            .arg(&key_file);
        for peer in peers {
            cmd.args(["--peer", peer]);
        }
        let child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {exe:?} run: {e}"));
        RunNode {
            name: name.to_owned(),
            peer_id: keypair.public().to_peer_id().to_string(),
            p2p,
            api: format!("http://127.0.0.1:{api}"),
            child,
        }
    }

    /// SIGKILL: no goodbye to its peers, its sockets just go.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `GET /v1/cluster`, or `None` while it does not answer.
    pub(crate) async fn view(&self) -> Option<ClusterView> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        let resp = client
            .get(format!("{}/v1/cluster", self.api))
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    /// Streams `POST /v1/completions` with `body` (`stream` set here) and returns the text,
    /// calling `on_piece(n, text)` for the n-th chunk (from 1) as it arrives. A chunk
    /// carrying an error, or a stream without `[DONE]`, fails the test.
    pub(crate) async fn stream(
        &self,
        mut body: serde_json::Value,
        mut on_piece: impl FnMut(usize, &str),
    ) -> String {
        body["stream"] = serde_json::Value::Bool(true);
        let mut resp = reqwest::Client::new()
            .post(format!("{}/v1/completions", self.api))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: completion request: {e}", self.name));
        assert!(
            resp.status().is_success(),
            "{}: {}",
            self.name,
            resp.status()
        );
        let (mut raw, mut text, mut n) = (Vec::new(), String::new(), 0);
        loop {
            let chunk = resp.chunk().await.expect("stream chunk");
            let Some(chunk) = chunk else {
                panic!("{}: the stream ended without [DONE]: {text:?}", self.name);
            };
            raw.extend_from_slice(&chunk);
            // Server-sent events end with a blank line; handle every complete one.
            while let Some(end) = raw.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = raw.drain(..end + 2).collect();
                let event = String::from_utf8(event).expect("UTF-8 events");
                let data = event
                    .trim_end()
                    .strip_prefix("data: ")
                    .expect("a data event");
                if data == "[DONE]" {
                    return text;
                }
                let chunk: serde_json::Value = serde_json::from_str(data).unwrap();
                assert!(chunk.get("error").is_none(), "stream failed: {chunk}");
                let piece = chunk["choices"][0]["text"].as_str().unwrap_or_default();
                text.push_str(piece);
                n += 1;
                on_piece(n, piece);
            }
        }
    }
}

impl Drop for RunNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every node answers `ready` with `members` members on one and the same plan
/// epoch above `after`, and `want` holds for that view; returns the first node's view. Fails
/// with every node's state after `within`.
pub(crate) async fn agree(
    nodes: &[&RunNode],
    members: usize,
    after: u64,
    within: Duration,
    want: impl Fn(&ClusterView) -> bool,
) -> ClusterView {
    let started = Instant::now();
    loop {
        let mut views = Vec::new();
        for n in nodes {
            views.push(n.view().await);
        }
        let epoch = |v: &Option<ClusterView>| {
            v.as_ref()
                .filter(|v| v.state == ClusterState::Ready && v.members.len() == members)
                .and_then(|v| v.plan.as_ref().map(|p| p.epoch))
        };
        let first = epoch(&views[0]);
        if first.is_some_and(|e| e > after)
            && views.iter().all(|v| epoch(v) == first)
            && views[0].as_ref().is_some_and(&want)
        {
            return views.swap_remove(0).expect("checked above");
        }
        assert!(
            started.elapsed() < within,
            "no agreement within {within:?}: {:#?}",
            nodes
                .iter()
                .zip(&views)
                .map(|(n, v)| (
                    &n.name,
                    v.as_ref().map(|v| (
                        v.state,
                        v.problem.clone(),
                        v.members.len(),
                        v.plan.as_ref().map(|p| (p.epoch, p.stages.clone()))
                    ))
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A loopback TCP port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Writes `secret` to `logs/name` and returns the path.
pub(crate) fn key_file(logs: &Path, name: &str, secret: &str) -> PathBuf {
    let path = logs.join(name);
    std::fs::write(&path, secret).unwrap();
    path
}
