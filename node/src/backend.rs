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
    /// Reads the tokenizer, chat template and name of `file`. The name is `general.name`, or
    /// the file stem when the GGUF has none; `context` is what one request may use, which the
    /// caller bounds by the model's trained context and the cluster's KV memory.
    pub fn from_gguf(file: &GgufFile, context: usize) -> anyhow::Result<ModelInfo> {
        let meta = file.metadata();
        let tokenizer = Tokenizer::from_gguf(meta).context("reading the tokenizer")?;
        let template = ChatTemplate::from_gguf(meta).context("compiling the chat template")?;
        let name = match meta.opt_str("general.name")? {
            Some(name) if !name.trim().is_empty() => name.to_owned(),
            _ => file
                .path()
                .file_stem()
                .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned()),
        };
        Ok(ModelInfo {
            name,
            tokenizer,
            template,
            context,
        })
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
