//! `shoal status` against a stand-in node: a one-route HTTP server serving a fixed cluster
//! view. Checks the exit codes scripts rely on: 0 ready, 1 not ready, 2 unreachable.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::thread;

/// Serves `body` as JSON to every request on a fresh loopback port, forever (the thread dies
/// with the test process).
fn serve(body: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            // Drain the headers up to the blank line.
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let (status, body) = if request_line.starts_with("GET /v1/cluster ") {
                ("200 OK", body.as_str())
            } else {
                ("404 Not Found", "{}")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn view(state: &str, problem: Option<&str>) -> String {
    serde_json::json!({
        "node": "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaa1111",
        "model": {"name": "SmolLM2", "sha256": "ab".repeat(32), "n_layers": 30},
        "coordinator": "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaa1111",
        "state": state,
        "problem": problem,
        "members": [{
            "peer_id": "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaa1111",
            "data_addr": "127.0.0.1:7000",
            "api_addr": "127.0.0.1:8080",
            "serves_api": true,
            "threads": 2,
            "memory_budget_bytes": 536870912u64,
            "holds_model": true,
            "decode_ms_per_layer": 0.2,
            "epoch": 1,
            "ready": true,
            "layers": [0, 30],
            "state": "serving",
            "version": "0.1.0"
        }],
        "plan": {
            "epoch": 1,
            "head": "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaa1111",
            "stages": [{
                "peer_id": "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaa1111",
                "layers": [0, 30],
                "predicted_ms": 6.0
            }],
            "predicted_ms_per_token": 6.0,
            "measured_ms_per_token": null
        },
        "tokens_per_s": 0.0,
        "replans": 0
    })
    .to_string()
}

fn status(node: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("status")
        .args(["--node", node])
        .args(extra)
        .env_remove("SHOAL_NODE")
        .output()
        .expect("run shoal status")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ready_cluster_exits_0_with_a_table() {
    let addr = serve(view("ready", None));
    let out = status(&format!("http://{addr}"), &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("cluster ready"), "{stdout}");
    assert!(stdout.contains("[0..30)"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:7000"), "{stdout}");
}

#[test]
fn degraded_cluster_exits_1_and_says_why() {
    let addr = serve(view("degraded", Some("stage …bbbb2222 is gone")));
    // host:port without a scheme works too.
    let out = status(&addr.to_string(), &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("problem: stage …bbbb2222 is gone"),
        "{stdout}"
    );
}

#[test]
fn json_output_is_the_view_and_keeps_exit_codes() {
    let addr = serve(view("unplaceable", Some("too little memory")));
    let out = status(&format!("http://{addr}/"), &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(parsed["state"], "unplaceable");
    assert_eq!(parsed["model"]["n_layers"], 30);
}

#[test]
fn unreachable_node_exits_2_naming_the_url() {
    // A port that was just free: nothing listens on it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let url = format!("http://{addr}");
    let out = status(&url, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{url}/v1/cluster")), "{stderr}");
}

#[test]
fn a_server_that_is_not_shoal_exits_2() {
    let addr = serve("not json".to_owned());
    let out = status(&format!("http://{addr}"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("did not return a cluster view"));
}
