//! The self-forming cluster: discovery, adverts, the coordinator's plan, and the stages and
//! head each node runs for it.

pub mod control;
pub mod coordinator;
pub mod view;

pub use control::{Assignment, Control, StageAssignment};
pub use view::{
    ClusterState, ClusterView, MemberState, MemberView, ModelSummary, PlanView, StageView,
};
