//! transport crate.

pub mod quic;
