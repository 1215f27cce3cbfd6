//! Criterion benchmarks: the per-timestep critical path (one forward and one backward step of
//! each cell), the whole training step, the SIMD math against scalar `std`, and the
//! small-batch recurrent product against matrixmultiply at B = 1, the bf16 products against the
//! f32 ones at the training step's shapes, and the machine's own limits
//! that bound them (one core's rate of fused multiply-adds, and of reading a buffer of a given
//! size over and over, as the single step reads its weights).
//!
//! Shapes (B, T, I, H) are those of the project's benchmark table: tiny-batch (1, 100, 128,
//! 256), small (32, 64, 64, 128), medium (64, 100, 256, 256), large (64, 50, 512, 512).
//! Run with `cargo bench -p recur-benches`; filter with e.g. `cargo bench -p recur-benches -- step/lstm`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use recur::internals::bf16::{
    AStorage, Bf16Kernel, PackedBf16A, PackedBf16B, gemm_bf16_acc, gemm_bf16_acc_stored,
};
use recur::internals::{
    AlignedBuf, AlignedMatrix, GemmShape, PackedB, Rows, SimdFloat, Sweep, fma_chains,
    fma_chains_flops, gemm_nt_acc, gemm_packed_acc, gemm_set_blocked_b, gemv_cols_acc,
    gemv_rows_acc, gru, lstm, rnn,
};
use recur::nn::{Activation, CellKind, ForwardOptions, Recurrent, RecurrentConfig};
use recur::{Float, ParamStore, Rng, Tape, Tensor};

const SHAPES: [(&str, usize, usize, usize, usize); 4] = [
    ("tiny-batch", 1, 100, 128, 256),
    ("small", 32, 64, 64, 128),
    ("medium", 64, 100, 256, 256),
    ("large", 64, 50, 512, 512),
];

const CELLS: [CellKind; 3] = [
    CellKind::Lstm,
    CellKind::Gru,
    CellKind::Rnn(Activation::Tanh),
];

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| rng.uniform_range(-1.0, 1.0) as f32)
        .collect()
}

/// `W_hh` `[G*H, H]` as the fused layers read it at a batch of `b` rows: packed (`W_hh^T` for
/// forward, `W_hh` for backward), or for a single row one aligned copy as stored.
struct StepWeights {
    b: usize,
    fwd: PackedB<f32>,
    bwd: PackedB<f32>,
    stored: AlignedMatrix<f32>,
}

impl StepWeights {
    fn new(w_hh: &[f32], gh: usize, h: usize, b: usize) -> Self {
        let (mut fwd, mut bwd) = (PackedB::new(), PackedB::new());
        let mut stored = AlignedMatrix::from_buffer(Vec::new());
        if b == 1 {
            stored.copy_from(w_hh, gh, h);
        } else {
            fwd.pack_transposed(w_hh, gh, h);
            bwd.pack(w_hh, gh, h);
        }
        StepWeights {
            b,
            fwd,
            bwd,
            stored,
        }
    }

    /// `c += a W_hh^T`.
    fn forward(&self, a: &[f32], c: &mut [f32]) {
        if self.b == 1 {
            gemv_rows_acc(&self.stored, a, c, 0..self.stored.rows(), Sweep::Ascending);
        } else {
            gemm_packed_acc(self.b, a, &self.fwd, c);
        }
    }

    /// `c += a W_hh`.
    fn backward(&self, a: &[f32], c: &mut [f32]) {
        if self.b == 1 {
            gemv_cols_acc(a, &self.stored, c, 0..self.stored.cols());
        } else {
            gemm_packed_acc(self.b, a, &self.bwd, c);
        }
    }
}

/// One forward step (recurrent product `h W_hh^T` + gate kernel) and one backward step (gate
/// kernel + `dG W_hh`) at each shape's B and H, over `W_hh` as the fused layers read it.
fn steps(c: &mut Criterion) {
    let mut g = c.benchmark_group("step");
    for (name, b, _, _, h) in SHAPES {
        for kind in CELLS {
            let gh = kind.gates() * h;
            let w_hh = values(gh * h, 1);
            let weights = StepWeights::new(&w_hh, gh, h, b);
            let h_prev = values(b * h, 2);
            let xp = values(b * gh, 3);
            let c_prev = values(b * h, 4);
            let mut gates = vec![0.0f32; b * gh];
            let mut saved = vec![0.0f32; b * 4 * h];
            let mut hp = vec![0.0f32; b * gh];
            let (mut c_new, mut h_new) = (vec![0.0f32; b * h], vec![0.0f32; b * h]);
            g.bench_function(format!("forward/{}/{name}", kind.name()), |bn| {
                bn.iter(|| {
                    match kind {
                        CellKind::Lstm => {
                            gates.copy_from_slice(&xp);
                            weights.forward(&h_prev, &mut gates);
                            lstm::lstm_forward(&mut gates, &c_prev, &mut c_new, &mut h_new, h);
                        }
                        CellKind::Gru => {
                            hp.fill(0.0);
                            weights.forward(&h_prev, &mut hp);
                            gru::gru_forward(&xp, None, &hp, &h_prev, &mut h_new, &mut saved, h);
                        }
                        CellKind::Rnn(act) => {
                            gates.copy_from_slice(&xp);
                            weights.forward(&h_prev, &mut gates);
                            rnn::rnn_forward(&mut gates, act);
                        }
                    }
                    black_box(&h_new);
                })
            });
            let dh = values(b * h, 5);
            let mut dc = values(b * h, 6);
            let mut dg = vec![0.0f32; b * gh];
            let mut dhp = vec![0.0f32; b * gh];
            let mut dh_prev = vec![0.0f32; b * h];
            let act_gates: Vec<f32> = xp.iter().map(|&v| f32::sigmoid_s(v)).collect();
            let saved_r = values(b * 4 * h, 7);
            g.bench_function(format!("backward/{}/{name}", kind.name()), |bn| {
                bn.iter(|| {
                    match kind {
                        CellKind::Lstm => {
                            lstm::lstm_backward(
                                &act_gates, &c_prev, &c_prev, &dh, &mut dc, &mut dg, h,
                            );
                            dh_prev.fill(0.0);
                            weights.backward(&dg, &mut dh_prev);
                        }
                        CellKind::Gru => {
                            gru::gru_backward(
                                &saved_r,
                                &h_prev,
                                &dh,
                                &mut dg,
                                &mut dhp,
                                &mut dh_prev,
                                h,
                            );
                            weights.backward(&dhp, &mut dh_prev);
                        }
                        CellKind::Rnn(act) => {
                            rnn::rnn_backward(&h_prev, &dh, &mut dg, act);
                            dh_prev.fill(0.0);
                            weights.backward(&dg, &mut dh_prev);
                        }
                    }
                    black_box(&dh_prev);
                })
            });
        }
    }
    g.finish();
}

/// Forward over the whole sequence + BPTT of sum(outputs), every weight gradient (f32).
fn training_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (name, b, t, i, h) in SHAPES {
        for kind in CELLS {
            let mut ps = ParamStore::<f32>::new();
            let layer = Recurrent::new(
                &mut ps,
                "",
                kind,
                RecurrentConfig::new(i, h),
                &mut Rng::new(1),
            )
            .expect("valid config");
            let x = Tensor::from_vec(values(t * b * i, 2), &[t, b, i]).expect("shape");
            let mut tape = Tape::new();
            g.bench_function(format!("{}/{name}", kind.name()), |bn| {
                bn.iter(|| {
                    tape.clear();
                    let xv = tape.input(x.clone());
                    let out = layer
                        .forward(&mut tape, &ps, xv, ForwardOptions::default())
                        .expect("forward");
                    let loss = tape.sum(out.y).expect("sum");
                    let grads = tape.backward(loss).expect("backward");
                    black_box(grads.wrt(xv).is_some());
                })
            });
        }
    }
    g.finish();
}

/// The vectorised activations against `std`'s scalar ones, over 4096 values.
fn math(c: &mut Criterion) {
    let mut g = c.benchmark_group("math");
    let xs: Vec<f32> = values(4096, 9).iter().map(|v| v * 8.0).collect();
    let mut out = xs.clone();
    g.bench_function("tanh/simd", |b| {
        b.iter(|| {
            out.copy_from_slice(&xs);
            rnn::rnn_forward(&mut out, Activation::Tanh);
            black_box(&out);
        })
    });
    g.bench_function("tanh/std", |b| {
        b.iter(|| {
            for (o, &x) in out.iter_mut().zip(&xs) {
                *o = x.tanh();
            }
            black_box(&out);
        })
    });
    g.bench_function("sigmoid/simd", |b| {
        b.iter(|| {
            for (o, x) in out.chunks_mut(f32::LANES).zip(xs.chunks(f32::LANES)) {
                f32::store_n(f32::sigmoid_v(f32::load_n(x)), o);
            }
            black_box(&out);
        })
    });
    g.bench_function("sigmoid/std", |b| {
        b.iter(|| {
            for (o, &x) in out.iter_mut().zip(&xs) {
                *o = Float::sigmoid(x);
            }
            black_box(&out);
        })
    });
    g.finish();
}

/// The recurrent products at B = 1: forward `h W_hh^T` by the packed kernel, by the kernels over
/// `W_hh` as stored (the aligned copy the fused layers read, and `gemm_nt` over the weight
/// where it lies) and by matrixmultiply (which packs both operands on every call); backward
/// `dG W_hh` by the packed kernel and by the column kernel over the aligned copy.
fn gemv(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv_b1");
    for h in [128usize, 256, 512] {
        let gh = 4 * h;
        let w = values(gh * h, 1);
        let x = values(h, 2);
        let mut y = vec![0.0f32; gh];
        let mut packed = PackedB::new();
        packed.pack_transposed(&w, gh, h);
        g.bench_function(format!("packed/H{h}"), |b| {
            b.iter(|| {
                gemm_packed_acc(1, &x, &packed, &mut y);
                black_box(&y);
            })
        });
        let mut stored = AlignedMatrix::from_buffer(Vec::new());
        stored.copy_from(&w, gh, h);
        g.bench_function(format!("stored_rows/H{h}"), |b| {
            b.iter(|| {
                gemv_rows_acc(&stored, &x, &mut y, 0..gh, Sweep::Ascending);
                black_box(&y);
            })
        });
        let dg = values(gh, 3);
        let mut dh = vec![0.0f32; h];
        let mut packed_bwd = PackedB::new();
        packed_bwd.pack(&w, gh, h);
        g.bench_function(format!("backward_packed/H{h}"), |b| {
            b.iter(|| {
                gemm_packed_acc(1, &dg, &packed_bwd, &mut dh);
                black_box(&dh);
            })
        });
        g.bench_function(format!("backward_stored_cols/H{h}"), |b| {
            b.iter(|| {
                gemv_cols_acc(&dg, &stored, &mut dh, 0..h);
                black_box(&dh);
            })
        });
        g.bench_function(format!("dot/H{h}"), |b| {
            b.iter(|| {
                gemm_nt_acc(1, gh, h, &x, &w, &mut y);
                black_box(&y);
            })
        });
        let s = GemmShape {
            m: 1,
            k: h,
            n: gh,
            trans_a: false,
            trans_b: true,
        };
        g.bench_function(format!("matrixmultiply/H{h}"), |b| {
            b.iter(|| {
                f32::gemm(s, 1.0, &x, &w, 1.0, &mut y);
                black_box(&y);
            })
        });
    }
    g.finish();
}

/// One of the products [`gemm_bf16`] times: `A` (`m x k`, row-major) by a weight packed in
/// each precision.
struct Product<'a> {
    name: &'static str,
    m: usize,
    k: usize,
    a: &'a [f32],
    f32_b: &'a PackedB<f32>,
    bf16_b: &'a PackedBf16B,
}

impl<'a> Product<'a> {
    fn new(
        name: &'static str,
        (m, k): (usize, usize),
        a: &'a [f32],
        f32_b: &'a PackedB<f32>,
        bf16_b: &'a PackedBf16B,
    ) -> Self {
        Product {
            name,
            m,
            k,
            a,
            f32_b,
            bf16_b,
        }
    }
}

/// The LSTM training step's products at the medium and large shapes (`M = B T` rows, `G H =
/// 4 H` gates), in f32 ([`gemm_packed_acc`]) and in bf16 with f32 accumulation: `proj`
/// `X W_ih^T` (NT, `M x I x 4H`), `dx` `dG W_ih` (NN, `M x 4H x I`), `dw` `dG^T X` (TN,
/// `4H x M x I`) and `step`, one time step's `H W_hh^T` (NT, `B x H x 4H`). Weights are packed
/// once, outside the timing, in both precisions, as the layers pack them once per sequence;
/// the per-call operand `A` is converted inside it, block by block (`bf16`), and for the bf16
/// kernel alone packed whole outside it (`bf16_kernel`). `dw` packs its `X` at every call in
/// both precisions (outside the timing for `bf16_kernel`).
/// Throughput is in floating-point operations (`2 m n k`).
fn gemm_bf16(c: &mut Criterion) {
    let kernel = match Bf16Kernel::detect() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("SKIPPED gemm_bf16: {why}");
            return;
        }
    };
    let mut g = c.benchmark_group("gemm_bf16");
    for (name, b, t, i, h) in &SHAPES[2..] {
        let (m, gh) = (b * t, 4 * h);
        let x = values(m * i, 1);
        let w_ih = values(gh * i, 2);
        let dg = values(m * gh, 3);
        let hs = values(b * h, 4);
        let w_hh = values(gh * h, 5);
        let (mut f32_t, mut f32_n, mut f32_h) = (PackedB::new(), PackedB::new(), PackedB::new());
        f32_t.pack_transposed(&w_ih, gh, *i);
        f32_n.pack(&w_ih, gh, *i);
        f32_h.pack_transposed(&w_hh, gh, *h);
        let (mut bf_t, mut bf_n, mut bf_h) =
            (PackedBf16B::new(), PackedBf16B::new(), PackedBf16B::new());
        bf_t.pack_transposed(kernel, &w_ih, gh, *i);
        bf_n.pack(kernel, &w_ih, gh, *i);
        bf_h.pack_transposed(kernel, &w_hh, gh, *h);
        let products = [
            Product::new("proj", (m, *i), &x, &f32_t, &bf_t),
            Product::new("dx", (m, gh), &dg, &f32_n, &bf_n),
            Product::new("step", (*b, *h), &hs, &f32_h, &bf_h),
        ];
        let mut pa = PackedBf16A::new();
        for p in products {
            let (prod, pm, pk, a, fb, bb) = (p.name, p.m, p.k, p.a, p.f32_b, p.bf16_b);
            let storage = AStorage::RowMajor;
            let n = fb.n();
            let mut cv = vec![0.0f32; pm * n];
            g.throughput(Throughput::Elements((2 * pm * pk * n) as u64));
            g.bench_function(format!("{name}/{prod}/f32"), |bn| {
                bn.iter(|| {
                    gemm_packed_acc(pm, a, fb, &mut cv);
                    black_box(&cv);
                })
            });
            g.bench_function(format!("{name}/{prod}/bf16"), |bn| {
                bn.iter(|| {
                    gemm_bf16_acc_stored(kernel, (pm, a, storage), bb, &mut cv, n);
                    black_box(&cv);
                })
            });
            pa.pack(kernel, a, pm, pk, storage);
            g.bench_function(format!("{name}/{prod}/bf16_kernel"), |bn| {
                bn.iter(|| {
                    gemm_bf16_acc(kernel, &pa, bb, &mut cv);
                    black_box(&cv);
                })
            });
        }
        // dW_ih = dG^T X: `4H x M` by `M x I`, dG read in place as its transpose.
        let mut dw = vec![0.0f32; gh * i];
        g.throughput(Throughput::Elements((2 * gh * m * i) as u64));
        // In f32, `X` packed a block of k at a time as the training step does.
        let mut xf = PackedB::new();
        g.bench_function(format!("{name}/dw/f32"), |bn| {
            bn.iter(|| {
                let block = Rows {
                    m: gh,
                    a: &dg,
                    storage: AStorage::ColMajor { ld: gh },
                    c: &mut dw,
                    bias: None,
                };
                gemm_set_blocked_b(block, &[&x[..m * *i]], *i, &mut xf);
                black_box(&dw);
            })
        });
        let mut xb = PackedBf16B::new();
        g.bench_function(format!("{name}/dw/bf16"), |bn| {
            bn.iter(|| {
                xb.pack(kernel, &x, m, *i);
                let a = (gh, &dg[..], AStorage::ColMajor { ld: gh });
                gemm_bf16_acc_stored(kernel, a, &xb, &mut dw, *i);
                black_box(&dw);
            })
        });
        xb.pack(kernel, &x, m, *i);
        pa.pack(kernel, &dg, gh, m, AStorage::ColMajor { ld: gh });
        g.bench_function(format!("{name}/dw/bf16_kernel"), |bn| {
            bn.iter(|| {
                gemm_bf16_acc(kernel, &pa, &xb, &mut dw);
                black_box(&dw);
            })
        });
    }
    g.finish();
}

/// Independent chains of fused multiply-adds (floating-point operations per second: the core's
/// peak, which no product can beat), and the rate at which one core reads a buffer of each size
/// again and again, in alternate directions by blocks of 64 KiB as the single step sweeps its
/// weights (bytes per second: from L2 up to its size, partly or wholly from L3 above it).
fn machine(c: &mut Criterion) {
    let mut g = c.benchmark_group("machine");
    // `recur::cpu::fma_peak_gflops`'s chains (`kernels::peak`).
    const ROUNDS: usize = 1000;
    g.throughput(Throughput::Elements(fma_chains_flops(ROUNDS)));
    g.bench_function("fma_peak", |b| {
        b.iter(|| black_box(fma_chains(black_box(ROUNDS))))
    });
    for kib in [384usize, 768, 1024, 1280, 1536, 4608] {
        // On a cache-line boundary, so that no load straddles two lines.
        let mut buf = AlignedBuf::from_buffer(Vec::new());
        buf.resize(kib * 1024 / 4);
        buf.values_mut()
            .copy_from_slice(&values(kib * 1024 / 4, 11));
        g.throughput(Throughput::Bytes((kib * 1024) as u64));
        let mut order = Sweep::Ascending;
        g.bench_function(format!("read/{kib}KiB"), |b| {
            b.iter(|| {
                let sum = read_sum(buf.values(), order);
                order = order.reversed();
                black_box(sum)
            })
        });
    }
    g.finish();
}

/// The sum of `xs` by eight vector accumulators, its blocks of 64 KiB taken in `order`.
fn read_sum(xs: &[f32], order: Sweep) -> f32 {
    const BLOCK: usize = (64 << 10) / 4;
    let step = 8 * f32::LANES;
    let blocks = 0..xs.len().div_ceil(BLOCK);
    let mut acc = [f32::splat(0.0); 8];
    for i in 0..blocks.len() {
        let j = order.nth(&blocks, i);
        let block = &xs[j * BLOCK..((j + 1) * BLOCK).min(xs.len())];
        for run in block.chunks_exact(step) {
            for (a, v) in acc.iter_mut().zip(run.chunks_exact(f32::LANES)) {
                *a += f32::load_n(v);
            }
        }
    }
    f32::reduce_add(acc.iter().fold(f32::splat(0.0), |s, &a| s + a))
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = steps, training_step, math, gemv, gemm_bf16, machine
}
criterion_main!(benches);
