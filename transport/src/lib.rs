//! Bytes between Shoal nodes.
//!
//! - [`blob`]: model files between nodes: chunk manifests, a sparse cache, and a QUIC
//!   server and fetcher for verified chunks.
//! - [`cluster_key`]: the shared secret of a private cluster and what is derived from it.
//! - [`discovery`]: the libp2p swarm (mDNS, static peers, identify, adverts, membership),
//!   behind a small trait with an in-memory implementation for tests.
//! - [`quic`]: the data plane: long-lived QUIC links carrying activation frames.
//!
//! This crate does no model math and knows nothing of the scheduler.

pub mod blob;
pub mod cluster_key;
pub mod discovery;
pub mod quic;
