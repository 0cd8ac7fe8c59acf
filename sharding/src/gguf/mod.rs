//! GGUF files: header, metadata and tensor index over a memory map.
//!
//! [`Header::parse`] is a pure function over bytes (the fuzz target calls it): it validates
//! every count, offset and size against the length of the input before anything is read, so a
//! corrupt or truncated file is a [`GgufError`], never a panic or an oversized allocation.
//! [`GgufFile`] maps a file and hands out tensor bytes without copying; only the pages of the
//! tensors a shard actually uses are ever touched.

mod error;
mod file;
mod header;
mod value;
pub mod write;

pub use error::GgufError;
pub use file::{GgufFile, TensorView};
pub use header::{Header, TensorInfo, DEFAULT_ALIGNMENT};
pub use value::{Array, Metadata, Value, ValueType};
