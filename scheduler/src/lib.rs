//! Shoal's scheduler: decides which devices run which layers of a model, and when to change
//! that decision.
//!
//! What it owns:
//! - [`DeviceGraph`]: devices (memory, measured per-layer cost, which model they hold) and
//!   measured links between them, on petgraph;
//! - [`ModelProfile`] and the cost model: per-stage memory and compute, per-hop latency;
//! - the planner ([`planner::plan`]): an ordered subset of devices with contiguous layer
//!   ranges minimizing per-token latency or the pipeline bottleneck, under memory limits,
//!   plus baselines ([`planner::even_split`], [`planner::memory_proportional_split`]) and
//!   [`Plan::explain`];
//! - the straggler policy ([`straggler::Monitor`]): slow / dead / recovered decisions, and
//!   [`planner::rebalance`], which moves the fewest layers that restore the prediction;
//! - the link policy ([`links::LinkWatch`]): when a measured link changed enough to replan.
//!
//! What it must not touch: no I/O, no clock (time is a parameter, in milliseconds), no async
//! runtime, no networking, no model math. It does not depend on `sharding`, `transport` or
//! `node`; `node` measures, calls in and acts on the results.

mod error;
mod graph;
pub mod links;
mod plan;
pub mod planner;
mod profile;
pub mod straggler;

pub use error::{GraphError, PlanError, StragglerError};
pub use graph::{Device, DeviceGraph, Link, LinkState, DEFAULT_OVERHEAD_BYTES};
pub use plan::{DeviceMemory, Hop, Objective, Plan, Slice, Stage};
pub use planner::{PlanRequest, PlannerConfig};
pub use profile::{ModelProfile, HEAD_BYTE_COST};
