//! Matrix products of quantized weights with f32 activations, split by rows over threads.

use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::gguf::{GgufFile, TensorView};
use crate::quant::{self, GgmlType, TypeKernels};

/// A weight matrix borrowed from the mapped file: `rows` rows of `cols` elements in `ty`.
#[derive(Clone)]
pub(crate) struct QMatrix {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    row_bytes: usize,
    kernels: &'static TypeKernels,
}

/// Rows handed to one task: small enough to balance threads, large enough that scheduling
/// stays negligible next to the dot products.
const ROWS_PER_TASK: usize = 32;

impl QMatrix {
    /// Wraps a 2-D tensor of `file`; `None` when its type has no kernels.
    pub(crate) fn new(file: &GgufFile, view: TensorView<'_>) -> Option<Self> {
        let kernels = quant::kernels(view.ty)?;
        let cols = view.info.row_len();
        let rows = view.info.rows();
        let row_bytes = view.ty.row_bytes(cols)?;
        Some(QMatrix {
            map: file.mapping().clone(),
            start: view.info.start,
            len: view.info.len,
            rows,
            cols,
            row_bytes,
            kernels,
        })
    }

    pub(crate) fn ty(&self) -> GgmlType {
        self.kernels.ty
    }

    pub(crate) fn bytes(&self) -> usize {
        self.len
    }

    pub(crate) fn row(&self, r: usize) -> &[u8] {
        let at = self.start + r * self.row_bytes;
        &self.map[at..at + self.row_bytes]
    }

    /// Dequantizes row `r` into `out` (embedding lookup).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        (self.kernels.dequantize)(self.row(r), out);
    }

    /// Bytes of one activation row after quantization for this matrix's kernels.
    pub(crate) fn act_row_bytes(&self) -> usize {
        self.ty()
            .vec_dot_type()
            .row_bytes(self.cols)
            .expect("cols validated as whole blocks when loading")
    }

    /// Quantizes `n` activation rows of `cols` floats into `buf` (resized as needed).
    pub(crate) fn quantize_input(&self, x: &[f32], buf: &mut AlignedBuf) {
        let rb = self.act_row_bytes();
        let n = x.len() / self.cols;
        let bytes = buf.get(n * rb);
        for (src, dst) in x.chunks_exact(self.cols).zip(bytes.chunks_exact_mut(rb)) {
            (self.kernels.quantize_activations)(src, dst);
        }
    }

    /// `out[t][r] = W[r] · x[t]` for `n` rows of quantized activations `xq`
    /// (from [`QMatrix::quantize_input`]); `out` has `n * rows` floats.
    pub(crate) fn mul_quantized(
        &self,
        xq: &[u8],
        n: usize,
        out: &mut [f32],
        pool: &rayon::ThreadPool,
    ) {
        let rb = self.act_row_bytes();
        let rows = self.rows;
        let cols = self.cols;
        let vec_dot = self.kernels.vec_dot;
        let tasks = rows.div_ceil(ROWS_PER_TASK);
        let out_ptr = SyncPtr(out.as_mut_ptr());
        debug_assert_eq!(out.len(), n * rows);
        let work = |task: usize| {
            let r0 = task * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(rows);
            for t in 0..n {
                let xr = &xq[t * rb..(t + 1) * rb];
                for r in r0..r1 {
                    let v = vec_dot(cols, self.row(r), xr);
                    // SAFETY: each task writes a disjoint set of (t, r) cells of `out`, whose
                    // length is n * rows (checked by the caller's debug assertion).
                    unsafe { *out_ptr.get().add(t * rows + r) = v };
                }
            }
        };
        if pool.current_num_threads() <= 1 || tasks == 1 {
            (0..tasks).for_each(work);
        } else {
            pool.install(|| (0..tasks).into_par_iter().for_each(work));
        }
    }

    /// Quantizes `x` (`n` rows) and multiplies: `out = x · Wᵀ`.
    pub(crate) fn mul(
        &self,
        x: &[f32],
        out: &mut [f32],
        buf: &mut AlignedBuf,
        pool: &rayon::ThreadPool,
    ) {
        let n = x.len() / self.cols;
        self.quantize_input(x, buf);
        let rb = self.act_row_bytes();
        self.mul_quantized(&buf.as_slice()[..n * rb], n, out, pool);
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only to hand disjoint output cells to worker threads.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A reusable byte buffer aligned to 64 bytes (quantized activation blocks hold f32 scales).
#[derive(Default)]
pub(crate) struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    /// Returns the first `len` bytes, growing the buffer if needed (contents unspecified).
    pub(crate) fn get(&mut self, len: usize) -> &mut [u8] {
        let words = len.div_ceil(8);
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
        self.len = len;
        // SAFETY: u64 storage reinterpreted as bytes; length within the allocation.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `get`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}
