//! The self-forming cluster: discovery, adverts, the coordinator's plan, and the stages and
//! head each node runs for it.
//!
//! - [`control`]: plan messages between nodes;
//! - [`coordinator`]: who plans, and the plan (pure functions of the adverts);
//! - [`node`]: a running node ([`Node`]), and the agent task that acts on plans;
//! - [`view`]: the cluster as reported by `GET /v1/cluster` and `shoal status`.

mod agent;
pub mod control;
pub mod coordinator;
pub mod measure;
pub mod node;
pub mod profile;
mod snapshot;
mod state;
pub mod view;
pub mod weights;

pub use control::{Assignment, Control, StageAssignment};
pub use node::{Node, NodeConfig};
pub use view::{
    ClusterState, ClusterView, MemberState, MemberView, ModelSummary, PlanView, StageView,
};
pub use weights::ModelSource;
