//! The self-forming cluster: discovery, adverts, the coordinator's plan, and the stages and
//! head each node runs for it.

pub mod measure;
pub mod profile;
pub mod view;

pub use view::{
    ClusterState, ClusterView, MemberState, MemberView, ModelSummary, PlanView, StageView,
};
