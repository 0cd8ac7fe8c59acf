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

/// Bytes [`QMatrix::relocate`] copies before it drops their file pages.
const RELOCATE_CHUNK: usize = 4 << 20;

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

    /// Copies `mats` out of the file mapping into one anonymous arena backed by huge pages
    /// where the kernel allows, and points them at it.
    ///
    /// File pages are 4 KiB; streaming ~100 MB of weights per token through them costs a TLB
    /// miss every 4 KiB. From anonymous huge pages the same kernels decode SmolLM2 ~1.4× faster
    /// (BENCHMARKS.md). It also makes the shard's resident memory exactly its own weights.
    pub(crate) fn relocate(mats: &mut [&mut QMatrix]) -> std::io::Result<()> {
        const ALIGN: usize = 64;
        let total: usize = mats.iter().map(|m| m.len.next_multiple_of(ALIGN)).sum();
        if total == 0 {
            return Ok(());
        }
        let mut arena = memmap2::MmapMut::map_anon(total)?;
        #[cfg(target_os = "linux")]
        // Only a hint: without transparent huge pages the arena still works.
        let _ = arena.advise(memmap2::Advice::HugePage);
        let mut at = 0;
        let mut placed = Vec::with_capacity(mats.len());
        for m in mats.iter() {
            // Chunk by chunk, dropping each chunk's file pages from this process once copied
            // (they stay in the page cache): the copy is what we read from now on, RSS counts
            // the weights once, and the load never holds a large matrix twice (a 145 MB output
            // product copied whole peaked at its size above the budget).
            for from in (0..m.len).step_by(RELOCATE_CHUNK) {
                let n = RELOCATE_CHUNK.min(m.len - from);
                let src = m.start + from;
                arena[at + from..at + from + n].copy_from_slice(&m.map[src..src + n]);
                // SAFETY: the mapping is read-only and file-backed, so a dropped page that is
                // read again (an embedding row, a neighbouring tensor sharing a page) is
                // faulted back with the same bytes.
                #[cfg(unix)]
                let _ = unsafe {
                    m.map
                        .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, src, n)
                };
            }
            placed.push(at);
            at += m.len.next_multiple_of(ALIGN);
        }
        let arena = Arc::new(arena.make_read_only()?);
        for (m, start) in mats.iter_mut().zip(placed) {
            m.map = arena.clone();
            m.start = start;
        }
        Ok(())
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

    /// Asks the CPU to fetch the bytes [`PREFETCH_BYTES`] past the start of row `r`, one
    /// row's worth.
    #[inline(always)]
    fn prefetch_ahead(&self, r: usize) {
        let from = self.start + r * self.row_bytes + PREFETCH_BYTES;
        let to = (from + self.row_bytes).min(self.start + self.len);
        #[cfg(target_arch = "x86_64")]
        for line in self.map[from.min(to)..to].chunks(64) {
            // SAFETY: prefetching is only a hint; the address is inside the mapping.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast())
            };
        }
        // Elsewhere the hardware prefetcher is left to it.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (from, to);
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
        let vec_dot_4 = self.kernels.vec_dot_4;
        let vec_dot_4x4 = self.kernels.vec_dot_4x4;
        let act = |t: usize| &xq[t * rb..(t + 1) * rb];
        // SAFETY (both writers): each task writes a disjoint set of (t, r) cells of `out`,
        // whose length is n * rows (checked by the caller's debug assertion).
        let put = |t: usize, r: usize, v: f32| unsafe { *out_ptr.get().add(t * rows + r) = v };
        let work = |task: usize| {
            let r0 = task * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(rows);
            let mut t = 0;
            // Prefill and batched decode: one weight row against up to four positions at a
            // time reuses the unpacked weights; the kernels are picked so that per-row
            // results are bit-identical to `vec_dot` (quant::x86 leaves `vec_dot_4` out
            // where it would not be). Three rows fill the four slots by repeating the last
            // one (its extra result is dropped): cheaper than three `vec_dot`s. For two rows
            // it is not (the kernel costs about 2.5 `vec_dot`s; examples/batch_cost.rs).
            // Where the CPU has the registers, four weight rows go at once as well, sharing
            // the activation side of each block (`vec_dot_4x4`, bit-identical again).
            if let Some(dot4) = vec_dot_4 {
                while n - t >= 3 {
                    let k = (n - t).min(4);
                    let a = |i: usize| act(t + i.min(k - 1));
                    let acts = [a(0), a(1), a(2), a(3)];
                    let mut r = r0;
                    if let Some(dot4x4) = vec_dot_4x4 {
                        while r1 - r >= 4 {
                            // Only the first pass over the task's rows streams them from memory.
                            if t == 0 {
                                (r..r + 4).for_each(|r| self.prefetch_ahead(r));
                            }
                            let mut v = [[0.0f32; 4]; 4];
                            let w = [
                                self.row(r),
                                self.row(r + 1),
                                self.row(r + 2),
                                self.row(r + 3),
                            ];
                            dot4x4(cols, w, acts, &mut v);
                            for (j, row) in v.iter().enumerate() {
                                for (i, &x) in row.iter().enumerate().take(k) {
                                    put(t + i, r + j, x);
                                }
                            }
                            r += 4;
                        }
                    }
                    for r in r..r1 {
                        if t == 0 {
                            self.prefetch_ahead(r);
                        }
                        let mut v = [0.0f32; 4];
                        dot4(cols, self.row(r), acts, &mut v);
                        for (i, &x) in v.iter().enumerate().take(k) {
                            put(t + i, r, x);
                        }
                    }
                    t += k;
                }
            }
            for t in t..n {
                for r in r0..r1 {
                    self.prefetch_ahead(r);
                    put(t, r, vec_dot(cols, self.row(r), act(t)));
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

/// How far ahead of the row being multiplied its bytes are requested: weights stream from L3
/// or memory, and the hardware prefetcher alone leaves the kernels waiting (tg64 on SmolLM2
/// went from 47 to 67 tok/s with it; see BENCHMARKS.md).
const PREFETCH_BYTES: usize = PREFETCH_DISTANCE;
const PREFETCH_DISTANCE: usize = 4096;

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
