//! `recur bench`: times a training step (or one inference step) of a recurrent layer.
//!
//! A training step is the forward pass over the whole sequence and backpropagation through
//! time of `loss = sum(outputs)`, with every weight gradient. The figure is the median over
//! the timed steps, after warm-up steps; the last line printed is machine-readable.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use recur::nn::RecurrentConfig;
use recur::nn::{Activation, CellKind, ForwardOptions, Implementation, InferenceStep, Recurrent};
use recur::{Float, ParamStore, Rng, Tape, Tensor};

use crate::CmdResult;

/// Most worker threads accepted.
const MAX_THREADS: usize = 1024;
/// Most values in one activation buffer (about 4 GiB of f32).
const MAX_ELEMENTS: usize = 1 << 30;

/// Options of `recur bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Cell: lstm, gru or rnn (tanh).
    #[arg(long, default_value = "lstm")]
    pub(crate) cell: String,
    /// Batch size B.
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    /// Sequence length T.
    #[arg(long = "seq-len", default_value_t = 64)]
    pub(crate) seq_len: usize,
    /// Input features I.
    #[arg(long, default_value_t = 64)]
    input: usize,
    /// Hidden units H.
    #[arg(long, default_value_t = 128)]
    pub(crate) hidden: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Element type: f32 or f64.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Timed steps (at least 5); the median is reported.
    #[arg(long, default_value_t = 10)]
    pub(crate) steps: usize,
    /// Untimed warm-up steps before them (at least 3).
    #[arg(long, default_value_t = 3)]
    pub(crate) warmup: usize,
    /// Time one inference step at batch 1 instead of a training step (prints us_per_step);
    /// on more than one thread, large weights are stepped in two shares of the units at once
    /// while that is faster than one thread (`InferenceStep::with_threads`).
    #[arg(long = "step-latency")]
    step_latency: bool,
    /// Time matrixmultiply's sgemm on a square N x N x N product instead (one thread; prints
    /// sgemm_gflops): the reference rate for the training-step figures.
    #[arg(long = "sgemm-rate", value_name = "N")]
    sgemm_rate: Option<usize>,
    /// Time one core's peak rate of f32 fused multiply-adds instead (independent chains, the
    /// best of --steps trials; prints fma_peak_gflops): the ceiling every rate is quoted against.
    /// Where the CPU has AVX512_BF16, also the peak of its bf16 products (chains of
    /// `vdpbf16ps`; prints bf16_peak_gflops): the ceiling of --precision bf16
    #[arg(long = "fma-peak", conflicts_with_all = ["sgemm_rate", "e2e", "step_latency"])]
    fma_peak: bool,
    /// Refuse to start if the estimated peak memory exceeds this (e.g. 800M, 4G; default: the
    /// available memory).
    #[arg(long, value_parser = crate::memory::parse_size)]
    pub(crate) max_memory: Option<u64>,
    /// Time the whole training step of the character model (`recur train`'s: embedding ->
    /// recurrent stack -> linear head -> cross-entropy, backward, clipping, Adam) phase by phase
    /// and op by op, on --batch streams of --seq-len characters with --hidden units (the job of
    /// `recur train`'s defaults: `--e2e --hidden 256 --seq-len 100`).
    #[arg(long)]
    pub(crate) e2e: bool,
    /// With --e2e: recurrent layers.
    #[arg(long, default_value_t = 2, requires = "e2e")]
    pub(crate) layers: usize,
    /// With --e2e: embedding size.
    #[arg(long, default_value_t = 64, requires = "e2e")]
    pub(crate) embed: usize,
    /// With --e2e: characters in the vocabulary.
    #[arg(long, default_value_t = 86, requires = "e2e")]
    pub(crate) vocab: usize,
    /// Train with recurrent (variational) dropout of this probability (masks drawn each step).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) recurrent_dropout: f64,
    /// Train with weight drop on W_hh of this probability (W_hh masked each step).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) weight_drop: f64,
    /// Train with zoneout of this probability (masks drawn each step).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) zoneout: f64,
    /// Layer-normalized LSTM or GRU layers (not with --step-latency, the regularizers or an
    /// RNN cell).
    #[arg(long)]
    pub(crate) layer_norm: bool,
    /// Precision of the products: f32, or bf16 (operands rounded to bf16, accumulated in
    /// f32; needs a CPU with AVX512_BF16, or RECUR_BF16_KERNEL=portable for the portable
    /// kernel, an emulation slower than f32).
    #[arg(long, default_value = "f32")]
    pub(crate) precision: recur::Precision,
}

/// Runs the benchmark described by `args`.
pub fn run(args: &BenchArgs) -> CmdResult {
    if args.e2e {
        return crate::e2e::run(args);
    }
    if let Some(n) = args.sgemm_rate {
        return sgemm_rate(n, args.steps.max(5), args.warmup);
    }
    if args.fma_peak {
        print_cpu();
        let fma = recur::cpu::fma_peak_gflops(args.steps.max(5));
        match recur::cpu::bf16_peak_gflops(args.steps.max(5)) {
            Ok(bf16) => println!("fma_peak_gflops={fma:.2} bf16_peak_gflops={bf16:.2}"),
            Err(why) => {
                println!("bf16 peak: not measured ({why})");
                println!("fma_peak_gflops={fma:.2}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let kind = match args.cell.as_str() {
        "lstm" => CellKind::Lstm,
        "gru" => CellKind::Gru,
        "rnn" | "rnn_tanh" => CellKind::Rnn(Activation::Tanh),
        other => {
            return Err(format!(
                "bench: unknown --cell '{other}' (expected lstm, gru or rnn)"
            ));
        }
    };
    for (name, v) in [
        ("--batch", args.batch),
        ("--seq-len", args.seq_len),
        ("--input", args.input),
        ("--hidden", args.hidden),
        ("--threads", args.threads),
    ] {
        if v == 0 {
            return Err(format!("bench: {name} must be at least 1"));
        }
    }
    if args.threads > MAX_THREADS {
        return Err(format!(
            "bench: --threads {} is more than {MAX_THREADS}",
            args.threads
        ));
    }
    // The largest buffers are [T, B, 4H] and [T, B, I]; refuse shapes whose sizes overflow or
    // that could not fit in memory, instead of aborting on a failed allocation.
    let big = [args.input, 4 * args.hidden.max(1)]
        .iter()
        .map(|&w| args.seq_len.checked_mul(args.batch)?.checked_mul(w))
        .try_fold(0usize, |acc, v| v?.checked_add(acc));
    if big.is_none_or(|n| n > MAX_ELEMENTS) {
        return Err(format!(
            "bench: shape too large (--seq-len {} x --batch {} x max(--input {}, 4 x --hidden {}) \
             must stay below {MAX_ELEMENTS} values)",
            args.seq_len, args.batch, args.input, args.hidden
        ));
    }
    // The weights, their gradients and their packed copies, and the activations of every step
    // with their gradients: refused up front when that cannot fit in the available memory.
    let (b, t, i, h) = (
        args.batch as f64,
        args.seq_len as f64,
        args.input as f64,
        args.hidden as f64,
    );
    let g = kind.gates() as f64;
    let value = if args.dtype == "f64" { 8.0 } else { 4.0 };
    let estimate = value * (4.0 * g * h * (i + h) + 6.0 * t * b * (i + g * h + 2.0 * h));
    crate::memory::check(
        "recur bench",
        crate::memory::bytes(estimate),
        args.max_memory,
    )?;
    for (name, p) in [
        ("--recurrent-dropout", args.recurrent_dropout),
        ("--weight-drop", args.weight_drop),
        ("--zoneout", args.zoneout),
    ] {
        if !(0.0..1.0).contains(&p) {
            return Err(format!("bench: {name} must be in [0, 1), got {p}"));
        }
    }
    if args.precision == recur::Precision::Bf16 && args.step_latency {
        return Err(
            "bench: --step-latency times inference, which runs in f32 (no --precision)".into(),
        );
    }
    let supported = if args.dtype == "f64" {
        args.precision.supported::<f64>()
    } else {
        args.precision.supported::<f32>()
    };
    supported.map_err(|e| format!("bench: {e}"))?;
    if args.layer_norm && args.step_latency {
        return Err(
            "bench: --layer-norm is not supported with --step-latency (the tape-free \
                    step has no layer normalization)"
                .into(),
        );
    }
    if args.steps < 5 {
        return Err(format!(
            "bench: --steps must be at least 5, got {}",
            args.steps
        ));
    }
    if args.warmup < 3 {
        return Err(format!(
            "bench: --warmup must be at least 3, got {}",
            args.warmup
        ));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .map_err(|e| format!("bench: cannot start {} threads: {e}", args.threads))?;
    crate::note_bf16_rate(args.precision);
    print_cpu();
    let line = match args.dtype.as_str() {
        "f32" => pool.install(|| measure::<f32>(kind, args)),
        "f64" => pool.install(|| measure::<f64>(kind, args)),
        other => {
            return Err(format!(
                "bench: unknown --dtype '{other}' (expected f32 or f64)"
            ));
        }
    }
    .map_err(|e| format!("bench: {e}"))?;
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// Times `C = A B` for square `n x n` f32 matrices with matrixmultiply (median of `steps`).
fn sgemm_rate(n: usize, steps: usize, warmup: usize) -> CmdResult {
    if !(16..=4096).contains(&n) {
        return Err(format!("bench: --sgemm-rate {n} must be in 16..=4096"));
    }
    let mut rng = Rng::new(1);
    let a: Vec<f32> = (0..n * n).map(|_| rng.uniform() as f32).collect();
    let b: Vec<f32> = (0..n * n).map(|_| rng.uniform() as f32).collect();
    let mut c = vec![0f32; n * n];
    let shape = recur::internals::GemmShape {
        m: n,
        k: n,
        n,
        trans_a: false,
        trans_b: false,
    };
    print_cpu();
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t = Instant::now();
        recur::internals::sgemm(shape, 1.0, &a, &b, 0.0, &mut c);
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let secs = median(times);
    println!("sgemm_gflops={:.2}", 2.0 * (n as f64).powi(3) / secs / 1e9);
    Ok(ExitCode::SUCCESS)
}

/// Prints the CPU the figures below come from, and the register tiles its products use.
pub(crate) fn print_cpu() {
    let tiles = match recur::internals::Tiles::current() {
        recur::internals::Tiles::Wide => "wide (AVX-512)",
        recur::internals::Tiles::Narrow => "narrow (AVX2)",
    };
    println!("cpu: {}; tiles {tiles}", recur::cpu::CpuInfo::get());
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Times the configured step; returns the final line.
fn measure<T: Float>(kind: CellKind, a: &BenchArgs) -> recur::Result<String> {
    let mut rng = Rng::new(1);
    let mut ps = ParamStore::<T>::new();
    let cfg = RecurrentConfig::new(a.input, a.hidden)
        .recurrent_dropout(a.recurrent_dropout)
        .weight_drop(a.weight_drop)
        .zoneout(a.zoneout)
        .layer_norm(a.layer_norm);
    let layer = Recurrent::new(&mut ps, "", kind, cfg.clone(), &mut rng)?;
    let g = kind.gates();
    println!(
        "cell={} dtype={} threads={} B={} T={} I={} H={}{}{}{}",
        kind.name(),
        T::DTYPE,
        a.threads,
        if a.step_latency { 1 } else { a.batch },
        if a.step_latency { 1 } else { a.seq_len },
        a.input,
        a.hidden,
        if cfg.regularized() {
            format!(
                " recurrent_dropout={} weight_drop={} zoneout={}",
                a.recurrent_dropout, a.weight_drop, a.zoneout
            )
        } else {
            String::new()
        },
        if a.layer_norm { " layer_norm" } else { "" },
        if a.precision == recur::Precision::Bf16 {
            " precision=bf16"
        } else {
            ""
        }
    );
    if a.step_latency {
        let p = layer.direction_params(0, 0).expect("layer 0 exists");
        let w_ih = ps.get(p.w_ih).data();
        let w_hh = ps.get(p.w_hh).data();
        let bias = p
            .b_ih
            .zip(p.b_hh)
            .map(|(x, y)| (ps.get(x).data(), ps.get(y).data()));
        // Weights packed once, as when sampling a sequence from a trained model.
        let mut step = InferenceStep::<T>::new(kind, a.input, a.hidden, 1)?;
        step.pack_weights(w_ih, w_hh, bias)?;
        let x: Vec<T> = (0..a.input)
            .map(|_| T::from_f64(rng.uniform_range(-1.0, 1.0)))
            .collect();
        let (mut h, mut c) = (vec![T::ZERO; a.hidden], vec![T::ZERO; a.hidden]);
        // Each sample times a batch of steps, so the clock's resolution does not matter.
        let reps = 50;
        let mut times = Vec::new();
        step.with_threads(|step| -> recur::Result<()> {
            for k in 0..a.warmup + a.steps.max(20) {
                let t0 = Instant::now();
                for _ in 0..reps {
                    step.step_packed(&x, &mut h, &mut c)?;
                }
                if k >= a.warmup {
                    times.push(t0.elapsed().as_secs_f64() / reps as f64);
                }
            }
            Ok(())
        })?;
        std::hint::black_box(&h);
        return Ok(format!("us_per_step={:.3}", median(times) * 1e6));
    }
    let (b, t, i, h) = (a.batch, a.seq_len, a.input, a.hidden);
    let x_val = Tensor::from_fn(&[t, b, i], |_| T::from_f64(rng.uniform_range(-1.0, 1.0)))?;
    let mut tape = Tape::new();
    tape.set_precision(a.precision)?;
    let mut times = Vec::new();
    // Training mode with the regularizers on: their masks are drawn every step, as in training.
    let mut mask_rng = Rng::new(2);
    for k in 0..a.warmup + a.steps {
        tape.clear();
        let t0 = Instant::now();
        // The inputs need no gradient (as in PyTorch for a tensor without requires_grad): the
        // step computes every weight gradient, not dX.
        let x = tape.constant_copy(&x_val);
        let out = layer.forward(
            &mut tape,
            &ps,
            x,
            ForwardOptions {
                implementation: Implementation::Fused,
                dropout_rng: cfg.regularized().then_some(&mut mask_rng),
                ..ForwardOptions::default()
            },
        )?;
        let loss = tape.sum(out.y)?;
        let grads = tape.backward(loss)?;
        std::hint::black_box(grads.param(ps.iter().next().expect("a parameter").0));
        if k >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let secs = median(times);
    let flops = 3.0 * t as f64 * 2.0 * b as f64 * (i + h) as f64 * g as f64 * h as f64;
    Ok(format!(
        "ms_per_step={:.4} gflops={:.3}",
        secs * 1e3,
        flops / secs / 1e9
    ))
}
