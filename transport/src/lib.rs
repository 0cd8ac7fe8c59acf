//! transport crate.

pub mod discovery;
