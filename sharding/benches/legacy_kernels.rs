//! Matrix-vector throughput of the legacy-format kernels at SmolLM2-135M's shapes
//! (1536x576 and 576x1536), reported as GB/s of weight bytes streamed, plus activation
//! quantization and a rough memory-bandwidth figure for context.
//!
//! Run briefly: `cargo bench -p sharding --bench legacy_kernels -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::f16;
use sharding::quant::{kernels, GgmlType};

const TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
];

/// (rows, columns) of the weight matrix.
const SHAPES: [(usize, usize); 2] = [(1536, 576), (576, 1536)];

/// Deterministic pseudo-random source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
}

/// A `rows x cols` weight matrix of `ty`: random quants with small finite scales, or
/// random floats converted through the type's own activation format.
fn weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let bytes = ty.row_bytes(cols).expect("whole blocks") * rows;
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => {
            let x: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
            let mut out = vec![0u8; bytes];
            (kernels(ty).expect("kernels").quantize_activations)(&x, &mut out);
            out
        }
        _ => {
            let mut out: Vec<u8> = (0..bytes).map(|_| rng.next() as u8).collect();
            let halves = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                2
            } else {
                1
            };
            for b in out.chunks_exact_mut(ty.block_bytes()) {
                for h in 0..halves {
                    let v = f16::from_f32(rng.unit() * 0.01).to_bits().to_le_bytes();
                    b[2 * h..2 * h + 2].copy_from_slice(&v);
                }
            }
            out
        }
    }
}

fn matvec(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (rows, cols) in SHAPES {
        let mut group = c.benchmark_group(format!("matvec_{rows}x{cols}"));
        for ty in TYPES {
            let k = kernels(ty).expect("kernels");
            let w = weights(ty, rows, cols, &mut rng);
            let row_bytes = ty.row_bytes(cols).expect("whole blocks");
            let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
            let mut a = vec![0u8; ty.vec_dot_type().row_bytes(cols).expect("whole blocks")];
            (k.quantize_activations)(&x, &mut a);
            let mut y = vec![0.0f32; rows];
            group.throughput(Throughput::Bytes(w.len() as u64));
            group.bench_function(format!("{ty}/{}", k.isa), |b| {
                b.iter(|| {
                    for (out, wr) in y.iter_mut().zip(w.chunks_exact(row_bytes)) {
                        *out = (k.vec_dot)(cols, wr, black_box(&a));
                    }
                    black_box(&y);
                })
            });
            // Prefill shape: the same matrix against 4 activation rows at once.
            if let Some(dot4) = k.vec_dot_4 {
                let acts: Vec<Vec<u8>> = (0..4).map(|_| a.clone()).collect();
                let mut y4 = vec![[0.0f32; 4]; rows];
                group.throughput(Throughput::Bytes(4 * w.len() as u64));
                group.bench_function(format!("{ty}/{}/x4", k.isa), |b| {
                    b.iter(|| {
                        for (out, wr) in y4.iter_mut().zip(w.chunks_exact(row_bytes)) {
                            dot4(cols, wr, [&acts[0], &acts[1], &acts[2], &acts[3]], out);
                        }
                        black_box(&y4);
                    })
                });
                // Four weight rows at a time as well (rows is a multiple of 4 here).
                if let Some(dot4x4) = k.vec_dot_4x4 {
                    let mut y16 = vec![[[0.0f32; 4]; 4]; rows / 4];
                    group.bench_function(format!("{ty}/{}/4x4", k.isa), |b| {
                        b.iter(|| {
                            for (out, w4) in y16.iter_mut().zip(w.chunks_exact(4 * row_bytes)) {
                                let wr = |k: usize| &w4[k * row_bytes..(k + 1) * row_bytes];
                                let acts = [&acts[0][..], &acts[1], &acts[2], &acts[3]];
                                dot4x4(cols, [wr(0), wr(1), wr(2), wr(3)], acts, out);
                            }
                            black_box(&y16);
                        })
                    });
                }
            }
        }
        group.finish();
    }
}

fn quantize(c: &mut Criterion) {
    let mut rng = Rng(7);
    let mut group = c.benchmark_group("quantize_activations_1536");
    let x: Vec<f32> = (0..1536).map(|_| rng.unit()).collect();
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::F16] {
        let k = kernels(ty).expect("kernels");
        let vt = ty.vec_dot_type();
        let mut out = vec![0u8; vt.row_bytes(x.len()).expect("whole blocks")];
        group.throughput(Throughput::Bytes(4 * x.len() as u64));
        group.bench_function(format!("{vt}/{}", k.isa), |b| {
            b.iter(|| (k.quantize_activations)(black_box(&x), &mut out))
        });
    }
    group.finish();
}

/// Rough DRAM read bandwidth: sums a 1 GiB buffer (beyond any cache) a few times.
fn bandwidth(_c: &mut Criterion) {
    let words = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let sum = buf.chunks_exact(8).fold([0u64; 8], |mut acc, c| {
            for (a, v) in acc.iter_mut().zip(c) {
                *a = a.wrapping_add(*v);
            }
            acc
        });
        black_box(sum);
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "memory read bandwidth (1 GiB sum, one thread): {:.1} GB/s",
        (words * 8) as f64 / best / 1e9
    );
}

criterion_group!(benches, bandwidth, quantize, matvec);
criterion_main!(benches);
