//! The model shard: everything one Shoal node needs to run a contiguous slice of a
//! transformer's layers.
//!
//! Owns GGUF reading ([`gguf`]), quantized kernels ([`quant`]), the layer-range executor
//! ([`model`]), the tokenizer, chat template and sampling. It is synchronous and does no
//! networking: the node crate moves the bytes, this crate does the math.

pub mod chat;
pub mod eval;
pub mod gguf;
pub mod kv;
pub mod mathf;
pub mod model;
pub mod quant;
pub mod sampling;
pub mod tokenizer;
