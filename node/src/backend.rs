//! What the HTTP API needs from a node, so the API does not depend on how the node is wired.

use anyhow::Context;
use sharding::chat::ChatTemplate;
use sharding::gguf::GgufFile;
use sharding::tokenizer::Tokenizer;

use crate::cluster::ClusterView;
use crate::pipeline::Head;
use crate::speculate::Drafter;

/// The model a node serves, as the API presents it.
pub struct ModelInfo {
    /// Id in `/v1/models` and in responses.
    pub name: String,
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// The model's chat template, if it has one (`/v1/chat/completions` needs it).
    pub template: Option<ChatTemplate>,
    /// Positions one request may use (prompt plus generated tokens).
    pub context: usize,
}

impl ModelInfo {
    /// Reads the tokenizer, chat template and name of `file`. The name is [`model_id`]; `context` is what one request may use, which the
    /// caller bounds by the model's trained context and the cluster's KV memory.
    pub fn from_gguf(file: &GgufFile, context: usize) -> anyhow::Result<ModelInfo> {
        let meta = file.metadata();
        let tokenizer = Tokenizer::from_gguf(meta).context("reading the tokenizer")?;
        let template = ChatTemplate::from_gguf(meta).context("compiling the chat template")?;
        let name = model_id(file.path(), meta.opt_str("general.name")?);
        Ok(ModelInfo {
            name,
            tokenizer,
            template,
            context,
        })
    }
}

/// The id a model file is served under: the file's stem (`SmolLM2-135M-Instruct.Q4_1`),
/// which names the exact file, unlike `general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2");
/// `general.name`, then "model", for a path without a stem.
pub fn model_id(path: &std::path::Path, general_name: Option<&str>) -> String {
    match path.file_stem() {
        Some(stem) if !stem.is_empty() => stem.to_string_lossy().into_owned(),
        _ => general_name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or("model")
            .to_owned(),
    }
}

/// The node behind the API.
pub trait Backend: Send + Sync + 'static {
    /// The model served.
    fn model(&self) -> &ModelInfo;
    /// The head of the newest ready plan, or why requests cannot run now (shown to the
    /// client as a 503 with this message).
    fn head(&self) -> Result<Head, String>;
    /// A snapshot of the cluster (`GET /v1/cluster`).
    fn view(&self) -> ClusterView;

    /// How a request on `prompt` drafts tokens for speculative decoding (`None`: it does
    /// not speculate).
    fn drafter(&self, prompt: &[u32]) -> Option<Drafter> {
        let _ = prompt;
        None
    }
}
