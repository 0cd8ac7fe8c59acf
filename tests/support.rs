//! Shared helpers of the cross-crate tests: model files and reference fixtures.

pub mod netns;

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

/// Writes a tiny random Llama-architecture GGUF (Q8_0 matrices, F32 norms) to `path`:
/// 4 layers, hidden 64, 4 heads / 2 KV heads, feed-forward 128, vocabulary 96. The weights are
/// random but the file is a well-formed model every code path can load.
pub fn write_tiny_llama(path: &Path, seed: u64) {
    use sharding::gguf::write::GgufWriter;
    use sharding::gguf::{Array, Value};
    use sharding::quant::{kernels, GgmlType};

    let (n_embd, n_ff, n_head, n_kv, n_layer, vocab) = (64u64, 128u64, 4u64, 2u64, 4u32, 96u64);
    let head_dim = n_embd / n_head;
    let mut state = seed | 1;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
    };
    let q8 = kernels(GgmlType::Q8_0).expect("Q8_0 kernels");
    let mut matrix = |rows: u64, cols: u64, scale: f32| -> Vec<u8> {
        let x: Vec<f32> = (0..rows * cols).map(|_| rand() * scale).collect();
        let mut out = vec![0u8; GgmlType::Q8_0.row_bytes((rows * cols) as usize).unwrap()];
        (q8.quantize_activations)(&x, &mut out);
        out
    };
    let ones = |n: u64| -> Vec<u8> { (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect() };
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()))
        .meta("llama.block_count", Value::U32(n_layer))
        .meta("llama.context_length", Value::U32(256))
        .meta("llama.embedding_length", Value::U32(n_embd as u32))
        .meta("llama.feed_forward_length", Value::U32(n_ff as u32))
        .meta("llama.attention.head_count", Value::U32(n_head as u32))
        .meta("llama.attention.head_count_kv", Value::U32(n_kv as u32))
        .meta("llama.rope.freq_base", Value::F32(10000.0))
        .meta("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .meta("llama.vocab_size", Value::U32(vocab as u32))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String((0..vocab).map(|i| format!("t{i}")).collect())),
        );
    w.tensor(
        "token_embd.weight",
        &[n_embd, vocab],
        GgmlType::Q8_0,
        matrix(vocab, n_embd, 1.0),
    );
    w.tensor("output_norm.weight", &[n_embd], GgmlType::F32, ones(n_embd));
    for il in 0..n_layer {
        let n = |s: &str| format!("blk.{il}.{s}");
        let s = 0.3;
        w.tensor(
            &n("attn_norm.weight"),
            &[n_embd],
            GgmlType::F32,
            ones(n_embd),
        );
        w.tensor(
            &n("ffn_norm.weight"),
            &[n_embd],
            GgmlType::F32,
            ones(n_embd),
        );
        w.tensor(
            &n("attn_q.weight"),
            &[n_embd, n_embd],
            GgmlType::Q8_0,
            matrix(n_embd, n_embd, s),
        );
        w.tensor(
            &n("attn_k.weight"),
            &[n_embd, n_kv * head_dim],
            GgmlType::Q8_0,
            matrix(n_kv * head_dim, n_embd, s),
        );
        w.tensor(
            &n("attn_v.weight"),
            &[n_embd, n_kv * head_dim],
            GgmlType::Q8_0,
            matrix(n_kv * head_dim, n_embd, s),
        );
        w.tensor(
            &n("attn_output.weight"),
            &[n_embd, n_embd],
            GgmlType::Q8_0,
            matrix(n_embd, n_embd, s),
        );
        w.tensor(
            &n("ffn_gate.weight"),
            &[n_embd, n_ff],
            GgmlType::Q8_0,
            matrix(n_ff, n_embd, s),
        );
        w.tensor(
            &n("ffn_up.weight"),
            &[n_embd, n_ff],
            GgmlType::Q8_0,
            matrix(n_ff, n_embd, s),
        );
        w.tensor(
            &n("ffn_down.weight"),
            &[n_ff, n_embd],
            GgmlType::Q8_0,
            matrix(n_embd, n_ff, s),
        );
    }
    std::fs::write(path, w.to_bytes()).expect("write tiny model");
}

/// A fresh directory under the system temp dir for one test.
/// Index of the largest logit (the first one on ties): greedy decoding as llama.cpp does it.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
