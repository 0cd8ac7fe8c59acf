//! scheduler crate.
