//! The Shoal node: wires the model shard (`sharding`), the planner (`scheduler`) and the
//! transport (`transport`) into stages, heads and the `shoal` command line.
//!
//! Async code lives here and in `transport`; the model math runs on dedicated threads so the
//! tokio workers only ever move bytes.

pub mod api;
pub mod backend;
mod blocking;
pub mod cluster;
pub mod cpu_quota;
pub mod eval;
pub mod events;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod speculate;
