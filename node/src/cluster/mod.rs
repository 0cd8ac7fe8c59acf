//! The self-forming cluster: discovery, adverts, the coordinator's plan, and the stages and
//! head each node runs for it.
//!
//! - [`machine`]: every decision about plans, as a pure state machine (no clock, no I/O);
//! - `driver`: the async shell that feeds the machine and carries out its actions;
//! - `stages`: the stages this node runs for the plans;
//! - [`control`]: plan messages between nodes;
//! - [`coordinator`]: who plans, and the plan (pure functions of the adverts);
//! - [`node`]: a running node ([`Node`]); `serving`: what its API sees of it;
//! - [`view`]: the cluster as reported by `GET /v1/cluster` and `shoal status`.

pub mod control;
pub mod coordinator;
mod driver;
pub(crate) mod machine;
pub mod measure;
pub mod node;
pub mod profile;
mod rate;
mod serving;
mod snapshot;
mod stages;
mod startup;
pub mod view;
pub mod weights;

pub use control::{Assignment, Control, StageAssignment};
pub use node::{Node, NodeConfig};
pub use view::{
    AdmissionView, ClusterState, ClusterView, LinkView, MemberState, MemberView, ModelSummary,
    PlanView, StageView,
};
pub use weights::ModelSource;
