use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::{GgufError, Header, TensorInfo};
use crate::quant::GgmlType;

/// A GGUF file mapped into memory. Cheap to clone; tensor views borrow the mapping.
#[derive(Clone)]
pub struct GgufFile {
    map: Arc<Mmap>,
    header: Arc<Header>,
    path: PathBuf,
}

/// The bytes of one tensor with its index entry.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// Index entry.
    pub info: &'a TensorInfo,
    /// The tensor's type (always supported: unsupported types fail in [`GgufFile::tensor`]).
    pub ty: GgmlType,
    /// Raw data, `info.len` bytes.
    pub data: &'a [u8],
}

impl GgufFile {
    /// Maps `path` and parses its header. Tensor data is not read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only. As with every mmap-based model loader, a concurrent
        // truncation of the file by another process would fault; models are not edited in place.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = Header::parse(&map)?;
        Ok(GgufFile {
            map: Arc::new(map),
            header: Arc::new(header),
            path: path.to_owned(),
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Metadata shortcut.
    pub fn metadata(&self) -> &super::Metadata {
        &self.header.metadata
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Total file length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the file is empty (never true for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The tensor `name`, or a typed error when it is absent or of an unsupported type.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, GgufError> {
        let info = self
            .header
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_owned()))?;
        let ty = info.ty.ok_or_else(|| GgufError::UnsupportedType {
            name: name.to_owned(),
            type_id: info.type_id,
        })?;
        Ok(TensorView {
            info,
            ty,
            data: &self.map[info.start..info.start + info.len],
        })
    }

    /// The mapping itself, for views that must outlive a borrow (weight matrices).
    pub(crate) fn mapping(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.header.tensor(name).is_some()
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}
