//! Shared helpers of the cross-crate tests: model files and reference fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// File name of each model `scripts/fetch-models` knows.
pub fn model_file(name: &str) -> &'static str {
    match name {
        "smollm2" => "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen2.5-coder" => "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "gemma3" => "gemma-3-270m-q4_k_m.gguf",
        _ => panic!("unknown model {name}"),
    }
}

/// Path of model `name` under `models/`, fetched (and verified) by `scripts/fetch-models`
/// when absent.
pub fn model_path(name: &str) -> PathBuf {
    static FETCH: Mutex<()> = Mutex::new(());
    let path = workspace().join("models").join(model_file(name));
    if path.exists() {
        return path;
    }
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let status = Command::new(workspace().join("scripts/fetch-models"))
            .arg(name)
            .status()
            .expect("run scripts/fetch-models (needs python3)");
        assert!(status.success(), "scripts/fetch-models {name} failed");
    }
    path
}

/// A fixture file under `tests/fixtures/`, parsed as JSON.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = workspace().join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// One reference prompt: its token ids and llama.cpp's 40 greedy continuation ids.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Prompt key in the fixture (e.g. `p1_chat`).
    pub key: String,
    /// Prompt text.
    pub prompt: String,
    /// Prompt token ids from llama.cpp's tokenizer.
    pub prompt_ids: Vec<u32>,
    /// Greedy continuation ids.
    pub greedy_ids: Vec<u32>,
    /// Greedy continuation text.
    pub greedy_text: String,
}

/// The references of model `name` from the fixtures.
pub fn references(name: &str) -> Vec<Reference> {
    let prompts = match name {
        "smollm2" => fixture("smollm2_greedy.json")["prompts"].clone(),
        "qwen2.5-coder" => fixture("qwen_gemma_greedy.json")["qwen2.5-coder-0.5b-instruct-q4_k_m"]
            ["prompts"]
            .clone(),
        "gemma3" => fixture("qwen_gemma_greedy.json")["gemma3-270m-q4_k_m"]["prompts"].clone(),
        _ => panic!("no references for {name}"),
    };
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("id list")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    let mut out: Vec<Reference> = prompts
        .as_object()
        .expect("prompts object")
        .iter()
        .map(|(key, p)| Reference {
            key: key.clone(),
            prompt: p["prompt"].as_str().unwrap_or_default().to_owned(),
            prompt_ids: ids(&p["prompt_token_ids"]),
            greedy_ids: ids(&p["greedy_token_ids"]),
            greedy_text: p["greedy_text"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}
