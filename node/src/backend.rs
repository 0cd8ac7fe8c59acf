//! What the HTTP API needs from a node, so the API does not depend on how the node is wired.

use sharding::chat::ChatTemplate;
use sharding::tokenizer::Tokenizer;

use crate::cluster::ClusterView;
use crate::pipeline::Head;

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

/// The node behind the API.
pub trait Backend: Send + Sync + 'static {
    /// The model served.
    fn model(&self) -> &ModelInfo;
    /// The head of the newest ready plan, or why requests cannot run now (shown to the
    /// client as a 503 with this message).
    fn head(&self) -> Result<Head, String>;
    /// A snapshot of the cluster (`GET /v1/cluster`).
    fn view(&self) -> ClusterView;
}
