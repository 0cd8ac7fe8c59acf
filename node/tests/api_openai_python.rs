//! The official OpenAI Python client against the API over a real pipeline: if it parses our
//! responses, streams and errors, other OpenAI clients will too. The client is installed
//! with pip into a venv under the target dir the first time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use shoal::api::{ApiOptions, ApiToken};

/// A venv with `openai` installed, created once per target dir.
fn venv_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".openai-installed");
    if ready.exists() {
        return python;
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("run python3 -m venv (needs python3 with venv)");
    assert!(
        status.success(),
        "python3 -m venv {} failed",
        venv.display()
    );
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "openai"])
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip install openai failed (is PyPI reachable?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&ready, b"").expect("mark the venv ready");
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_works_against_the_api() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let token = "the-python-client-test-token";
    let server = Server::pipeline_with(ApiOptions {
        token: Some(ApiToken::new(token).unwrap()),
        ..ApiOptions::default()
    })
    .await;
    let script = shoal_tests::workspace().join("tests/python/openai_client.py");
    let base = format!("{}/v1", server.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .arg(&base)
            .arg(token)
            .output()
            .expect("run the Python client")
    })
    .await
    .unwrap();
    server.stop().await;
    assert!(
        out.status.success(),
        "openai_client.py failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
