//! Helpers shared by the integration tests: locating (and if need be fetching) the real
//! models, and reading the reference fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sharding::gguf::GgufFile;
use sharding::tokenizer::Tokenizer;

/// The workspace root (the parent of this crate).
pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate lives inside the workspace")
        .to_path_buf()
}

/// File name of a model known to `scripts/fetch-models`.
fn file_name(name: &str) -> &'static str {
    match name {
        "smollm2" => "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen2.5-coder" => "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "gemma3" => "gemma-3-270m-q4_k_m.gguf",
        other => panic!("unknown model {other:?}"),
    }
}

/// Path of model `name` (`smollm2`, `qwen2.5-coder`, `gemma3`) under `<workspace>/models`,
/// fetching it with `scripts/fetch-models` first if it is absent. Fetches are serialized
/// within a process by a mutex and across test binaries by a lock directory.
pub(crate) fn model_path(name: &str) -> PathBuf {
    static FETCH: Mutex<()> = Mutex::new(());
    let dir = workspace().join("models");
    let path = dir.join(file_name(name));
    if path.exists() {
        return path;
    }
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).expect("create models/");
    let lock = dir.join(format!(".fetch-{name}.lock"));
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if path.exists() {
            return path;
        }
        if std::fs::create_dir(&lock).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = Command::new(workspace().join("scripts/fetch-models"))
        .arg(name)
        .status();
    let _ = std::fs::remove_dir(&lock);
    match status {
        Ok(s) if s.success() && path.exists() => path,
        Ok(s) => panic!(
            "scripts/fetch-models {name} failed ({s}); cannot find {}",
            path.display()
        ),
        Err(e) => panic!("cannot run scripts/fetch-models {name}: {e}"),
    }
}

/// The tokenizer of model `name`, loaded once per test binary.
pub(crate) fn tokenizer(name: &str) -> &'static Tokenizer {
    static CACHE: OnceLock<Mutex<Vec<(String, &'static Tokenizer)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = cache.iter().find(|(n, _)| n == name) {
        return t;
    }
    let file = GgufFile::open(model_path(name)).expect("open model");
    let tok = Tokenizer::from_gguf(file.metadata()).expect("build tokenizer");
    let tok: &'static Tokenizer = Box::leak(Box::new(tok));
    cache.push((name.to_owned(), tok));
    tok
}

/// A fixture from `tests/fixtures/`, parsed.
pub(crate) fn fixture(file: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// One reference prompt with llama.cpp's results.
#[derive(Debug)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) prompt: String,
    pub(crate) prompt_ids: Vec<u32>,
    pub(crate) greedy_ids: Vec<u32>,
    pub(crate) greedy_text: String,
    pub(crate) greedy_pieces: Vec<String>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The prompts recorded for `model` (`smollm2`, `qwen2.5-coder`, `gemma3`).
pub(crate) fn cases(model: &str) -> Vec<Case> {
    let prompts = match model {
        "smollm2" => fixture("smollm2_greedy.json")["prompts"].clone(),
        "qwen2.5-coder" => fixture("qwen_gemma_greedy.json")["qwen2.5-coder-0.5b-instruct-q4_k_m"]
            ["prompts"]
            .clone(),
        "gemma3" => fixture("qwen_gemma_greedy.json")["gemma3-270m-q4_k_m"]["prompts"].clone(),
        other => panic!("no fixture for {other:?}"),
    };
    prompts
        .as_object()
        .expect("prompts object")
        .iter()
        .map(|(name, p)| Case {
            name: name.clone(),
            prompt: p["prompt"].as_str().expect("prompt").to_owned(),
            prompt_ids: ids(&p["prompt_token_ids"]),
            greedy_ids: ids(&p["greedy_token_ids"]),
            greedy_text: p["greedy_text"].as_str().expect("text").to_owned(),
            greedy_pieces: p["greedy_pieces"]
                .as_array()
                .expect("pieces")
                .iter()
                .map(|s| s.as_str().expect("piece").to_owned())
                .collect(),
        })
        .collect()
}
