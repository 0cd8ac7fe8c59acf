//! GGUF files: header, metadata and tensor index over a memory map.
