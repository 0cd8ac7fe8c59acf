//! Matrix-vector throughput of the K-quant dot products, in GB/s of weights streamed.
//!
//! Shapes are the feed-forward down projections of the target models (K-quants need rows
//! that are whole 256-element super-blocks, so the 896- and 640-wide up/gate projections
//! use other types): Qwen2.5-0.5B 896 x 4864 and Gemma-3-270M 640 x 2048. One thread, the
//! kernels this CPU picks, plus the scalar reference for Q4_K as a baseline.
//!
//! Where the type has a four-row (prefill, batched decode) kernel, `x4` runs it over four
//! activation rows: Q4_K and Q6_K, in the instruction set of their one-row kernels (AVX-512
//! VNNI or AVX2), so `Q4_K/avx512/x4` sits next to `Q4_K/avx512`. Its throughput counts the
//! weights once per activation row, so it compares directly with the one-row figure (four
//! one-row matvecs stream the same bytes four times).
//!
//! Run briefly: `cargo bench -p sharding --bench kquant_kernels -- --warm-up-time 1
//! --measurement-time 2`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use sharding::quant::{self, GgmlType, TypeKernels};

/// A deterministic pseudo-random byte stream (xorshift), so runs compare.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

/// A `rows x n` weight matrix of `ty` with random quants and small finite scales.
fn weights(ty: GgmlType, rows: usize, n: usize) -> Vec<u8> {
    let mut rng = Bytes(0x9E37_79B9_7F4A_7C15);
    let row_bytes = ty.row_bytes(n).expect("whole super-blocks");
    let mut w: Vec<u8> = (0..rows * row_bytes).map(|_| rng.next()).collect();
    let scale = f16::from_f32(0.01).to_le_bytes();
    for b in w.chunks_exact_mut(ty.block_bytes()) {
        let at = if ty == GgmlType::Q6_K { 208 } else { 0 };
        b[at..at + 2].copy_from_slice(&scale);
        if ty != GgmlType::Q6_K {
            b[2..4].copy_from_slice(&scale);
        }
    }
    w
}

fn matvec(k: &TypeKernels, n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
    let row_bytes = w.len() / out.len();
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *o = (k.vec_dot)(n, row, a);
    }
}

/// `out[t][r] = W[r] · a[t]` for four activation rows with the four-row kernel.
fn matvec4(k: &TypeKernels, n: usize, w: &[u8], a: [&[u8]; 4], out: &mut [f32]) {
    let dot4 = k.vec_dot_4.expect("four-row kernel");
    let row_bytes = w.len() / (out.len() / 4);
    for (o, row) in out.chunks_exact_mut(4).zip(w.chunks_exact(row_bytes)) {
        let o: &mut [f32; 4] = o.try_into().expect("chunk of 4");
        dot4(n, row, a, o);
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("kquant_matvec");
    for (rows, n) in [(896, 4864), (640, 2048)] {
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.618).sin()).collect();
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            let best = *quant::kernels(ty).expect("K-quant kernels");
            let reference = quant::reference_kernels(ty).expect("scalar kernels");
            let mut a = vec![0_u8; GgmlType::Q8_K.row_bytes(n).expect("whole blocks")];
            (best.quantize_activations)(&x, &mut a);
            let w = weights(ty, rows, n);
            let mut out = vec![0.0_f32; rows];
            group.throughput(Throughput::Bytes(w.len() as u64));
            let mut candidates = vec![best];
            if ty == GgmlType::Q4_K {
                candidates.push(reference);
            }
            for k in candidates {
                let id = BenchmarkId::new(format!("{ty}/{}", k.isa), format!("{rows}x{n}"));
                group.bench_with_input(id, &w, |b, w| {
                    b.iter(|| matvec(&k, n, black_box(w), black_box(&a), &mut out))
                });
            }
            if best.vec_dot_4.is_some() {
                // Four different activation rows: the same floats, shifted.
                let acts: Vec<Vec<u8>> = (0..4)
                    .map(|t| {
                        let mut xt = x.clone();
                        xt.rotate_left(7 * t);
                        let mut at = vec![0_u8; a.len()];
                        (best.quantize_activations)(&xt, &mut at);
                        at
                    })
                    .collect();
                let mut out4 = vec![0.0_f32; 4 * rows];
                group.throughput(Throughput::Bytes(4 * w.len() as u64));
                let id = BenchmarkId::new(format!("{ty}/{}/x4", best.isa), format!("{rows}x{n}"));
                group.bench_with_input(id, &w, |b, w| {
                    let a4 = [&acts[0][..], &acts[1][..], &acts[2][..], &acts[3][..]];
                    b.iter(|| matvec4(&best, n, black_box(w), black_box(a4), &mut out4))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
