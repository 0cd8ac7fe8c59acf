//! Looking up a shard's tensors by name with their expected shapes.

use super::matmul::QMatrix;
use super::LoadError;
use crate::gguf::GgufFile;

/// Typed access to one file's tensors for loading a shard.
pub(crate) struct Weights<'a> {
    pub(crate) file: &'a GgufFile,
}

impl Weights<'_> {
    /// A matrix of `rows` × `cols`.
    pub(crate) fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix, LoadError> {
        let view = self.file.tensor(name)?;
        let (r, c) = (view.info.rows(), view.info.row_len());
        if view.info.dims.len() > 2 || (r, c) != (rows, cols) {
            return Err(LoadError::Shape {
                name: name.to_owned(),
                expected: vec![cols as u64, rows as u64],
                found: view.info.dims.clone(),
            });
        }
        QMatrix::new(self.file, view).ok_or_else(|| LoadError::NoKernels {
            name: name.to_owned(),
            ty: view.ty.name(),
        })
    }

    /// A vector of `len` floats, converted from whatever type the file stores.
    pub(crate) fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, LoadError> {
        let view = self.file.tensor(name)?;
        if view.info.elements() != len as u64 {
            return Err(LoadError::Shape {
                name: name.to_owned(),
                expected: vec![len as u64],
                found: view.info.dims.clone(),
            });
        }
        let m = QMatrix::new(self.file, view).ok_or_else(|| LoadError::NoKernels {
            name: name.to_owned(),
            ty: view.ty.name(),
        })?;
        let mut out = vec![0.0; len];
        let per_row = m.cols;
        for (r, chunk) in out.chunks_exact_mut(per_row).enumerate() {
            m.dequantize_row(r, chunk);
        }
        Ok(out)
    }

    /// [`Weights::vector`] when the tensor exists, `None` otherwise.
    pub(crate) fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>, LoadError> {
        if self.file.has_tensor(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}
