//! Why a request through the pipeline failed. The head keeps serving other requests.

use std::time::Duration;

use sharding::model::StepError;
use transport::quic::LinkError;

use super::protocol::{DecodeError, Failure, FailureCode};

/// Why a request through the pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A stage failed the session and said why; [`FailureCode::is_recoverable`] tells whether
    /// another plan may succeed.
    #[error("a stage failed the request: {}", .0.message)]
    Stage(Failure),
    /// No reply within the timeout: a stage is down or unreachable.
    #[error("no reply from the pipeline within {0:?} (is every stage up?)")]
    Timeout(Duration),
    /// The first stage cannot be reached.
    #[error("cannot send to the first stage: {0}")]
    Unreachable(#[source] LinkError),
    /// The link the session's replies came on ended.
    #[error("the link from the last stage ended: {0}")]
    ReplyLinkLost(String),
    /// The last stage answered with something that is not a hidden state of this model.
    #[error("malformed reply from the last stage: {0}")]
    BadReply(#[source] DecodeError),
    /// The last stage answered out of turn (e.g. rows before the open's acknowledgement).
    #[error("unexpected reply from the last stage: {0}")]
    OutOfTurn(&'static str),
    /// The head's own model step failed.
    #[error("head: {0}")]
    Head(#[source] StepError),
    /// A node of the request's plan left the cluster.
    #[error("plan {0} lost a stage")]
    PlanBroken(u64),
    /// No healthy plan became active in time.
    #[error("no healthy plan within {0:?}")]
    NoPlan(Duration),
    /// The nodes left cannot hold the model: no plan is coming.
    #[error("the nodes left cannot hold the model (see /v1/cluster)")]
    Unplaceable,
    /// This head has no pipeline to send to (a static head started without a first stage).
    #[error("no pipeline to send to")]
    NoRoute,
    /// The head is shutting down.
    #[error("the head is shutting down")]
    Stopping,
}

impl PipelineError {
    /// Whether replaying the request on another plan may succeed: the pipeline failed, not
    /// the request.
    pub fn is_recoverable(&self) -> bool {
        match self {
            PipelineError::Stage(f) => f.code.is_recoverable(),
            PipelineError::Timeout(_)
            | PipelineError::Unreachable(_)
            | PipelineError::ReplyLinkLost(_)
            | PipelineError::PlanBroken(_) => true,
            _ => false,
        }
    }

    /// Whether the request failed for lack of room on a stage (sessions or cache).
    pub fn is_busy(&self) -> bool {
        matches!(self, PipelineError::Stage(f) if f.code == FailureCode::Busy)
    }
}
