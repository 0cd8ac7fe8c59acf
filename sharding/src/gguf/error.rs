use super::ValueType;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that failed.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file (magic {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    /// A GGUF version this reader does not speak (it reads 2 and 3).
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// The file ends before a structure it announces.
    #[error("truncated GGUF: {what} needs {needed} bytes at offset {offset}, file has {len}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// How many bytes it needs.
        needed: usize,
        /// The length of the input.
        len: usize,
    },
    /// A metadata value has a type id outside the GGUF specification.
    #[error("metadata key {key:?} has unknown value type {type_id}")]
    BadValueType {
        /// The key being read.
        key: String,
        /// The type id found.
        type_id: u32,
    },
    /// A string is not valid UTF-8.
    #[error("invalid UTF-8 in {what} at offset {offset}")]
    BadUtf8 {
        /// What was being read.
        what: &'static str,
        /// Where the string starts.
        offset: usize,
    },
    /// A count or size in the header is impossible for a file of this length.
    #[error("implausible {what}: {value}")]
    Implausible {
        /// Which field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("invalid alignment {0} (must be a power of two)")]
    BadAlignment(u64),
    /// Two tensors share a name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// A tensor has an invalid shape.
    #[error("tensor {name:?}: invalid shape {dims:?}: {why}")]
    BadShape {
        /// The tensor.
        name: String,
        /// Its dimensions as stored.
        dims: Vec<u64>,
        /// What is wrong.
        why: &'static str,
    },
    /// A tensor's data lies (partly) outside the file.
    #[error("tensor {name:?}: data [{start}, {end}) lies outside the file ({len} bytes)")]
    OutOfBounds {
        /// The tensor.
        name: String,
        /// Absolute start offset.
        start: u64,
        /// Absolute end offset.
        end: u64,
        /// File length.
        len: usize,
    },
    /// A tensor's data offset is not aligned as the file declares.
    #[error("tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// The tensor.
        name: String,
        /// Its relative offset.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor uses a type this build has no kernels for.
    #[error("tensor {name:?} has unsupported type id {type_id}")]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// Its ggml type id.
        type_id: u32,
    },
    /// A tensor the model needs is absent.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// A metadata key the model needs is absent.
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    /// A metadata key holds a value of the wrong type.
    #[error("metadata key {key:?} is {found:?}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What the reader wanted.
        expected: &'static str,
        /// What the file holds.
        found: ValueType,
    },
}
