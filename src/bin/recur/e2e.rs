//! `recur bench --e2e`: the whole training step of the character model, timed phase by phase
//! (the chunk's ids, the forward pass, backpropagation, clipping, the optimizer) and op by op
//! (the tape's profile), as `recur train` takes it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use recur::data::{DataSource, LmStreams};
use recur::models::{CharLm, CharLmConfig, Objective};
use recur::nn::{Ctx, backward_loss};
use recur::optim::{Adam, AdamConfig, Optimizer, clip_grad_norm};
use recur::{ParamStore, Rng, Tape};

use crate::CmdResult;
use crate::bench::{BenchArgs, median};

/// The phases of a step, in order.
const PHASES: [&str; 5] = ["data", "forward", "backward", "clip", "optimizer"];

/// Runs `recur bench --e2e`.
pub fn run(a: &BenchArgs) -> CmdResult {
    let bad = |msg: String| Err(format!("bench --e2e: {msg}"));
    for (name, v, max) in [
        ("--batch", a.batch, 1 << 16),
        ("--seq-len", a.seq_len, 1 << 16),
        ("--hidden", a.hidden, 16_384),
        ("--layers", a.layers, 64),
        ("--embed", a.embed, 16_384),
        ("--vocab", a.vocab, 1 << 16),
        ("--threads", a.threads, 1024),
    ] {
        if v == 0 || v > max {
            return bad(format!("{name} must be in 1..={max}, got {v}"));
        }
    }
    if a.steps < 5 || a.warmup < 3 {
        return bad(format!(
            "--steps must be at least 5 and --warmup at least 3, got {} and {}",
            a.steps, a.warmup
        ));
    }
    // Any characters will do: the step's cost does not depend on them.
    let vocab: String = (0..a.vocab as u32)
        .map(|i| char::from_u32(if i < 94 { 0x21 + i } else { 0x100 + i }).expect("a char"))
        .collect();
    let config = CharLmConfig {
        recurrent_dropout: a.recurrent_dropout,
        weight_drop: a.weight_drop,
        zoneout: a.zoneout,
        layer_norm: a.layer_norm,
        ..CharLmConfig::new(&a.cell, a.hidden, a.layers, a.embed, &vocab)
    };
    let chunks = a.warmup + a.steps;
    let text_len = a.batch * (chunks * a.seq_len + 1);
    let estimate = crate::train::estimate_bytes(&config, a.batch, a.seq_len, text_len, text_len);
    crate::memory::check("recur bench --e2e", estimate, a.max_memory)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()
        .map_err(|e| format!("bench --e2e: cannot start {} threads: {e}", a.threads))?;
    crate::note_bf16_rate(a.precision);
    crate::bench::print_cpu();
    let report = pool
        .install(|| measure(a, config, text_len))
        .map_err(|e| format!("bench --e2e: {e}"))?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// Takes the steps and returns the report.
fn measure(a: &BenchArgs, config: CharLmConfig, text_len: usize) -> recur::Result<String> {
    let mut rng = Rng::new(1);
    let ids: Vec<usize> = (0..text_len).map(|_| rng.below(a.vocab)).collect();
    let mut data = LmStreams::new(&ids, a.batch, a.seq_len)?;
    let mut store = ParamStore::<f32>::new();
    let mut lm = CharLm::new(&mut store, config, &mut rng)?;
    let mut opt = Adam::new(AdamConfig::default().lr(2e-3))?;
    let mut tape = Tape::new();
    tape.set_precision(a.precision)?;
    let mut phases = vec![Vec::new(); PHASES.len()];
    let mut totals = Vec::new();
    for k in 0..a.warmup + a.steps {
        if k == a.warmup {
            // The profile covers the timed steps only.
            tape.set_profiling(true);
        }
        let mut marks = [Instant::now(); PHASES.len() + 1];
        let chunk = data.batch(0, k)?;
        marks[1] = Instant::now();
        tape.clear();
        let loss = lm.loss(&mut Ctx::train(&mut tape, &store, &mut rng), &chunk)?;
        marks[2] = Instant::now();
        let (_, mut grads) = backward_loss(&mut tape, loss)?;
        marks[3] = Instant::now();
        clip_grad_norm(&mut grads, 5.0)?;
        marks[4] = Instant::now();
        opt.step(&mut store, &grads)?;
        marks[5] = Instant::now();
        if k >= a.warmup {
            for (p, times) in phases.iter_mut().enumerate() {
                times.push((marks[p + 1] - marks[p]).as_secs_f64());
            }
            totals.push((marks[PHASES.len()] - marks[0]).as_secs_f64());
        }
    }
    let step = median(totals);
    let per_step = |d: Duration| d.as_secs_f64() * 1e3 / a.steps as f64;
    let mut out = format!(
        "character model: {} x {} {}, embedding {}, {} characters, B = {}, T = {}, {} threads; \
         {} timed steps after {} warm-up\n\nphase        ms/step   share\n",
        a.layers,
        a.hidden,
        a.cell,
        a.embed,
        a.vocab,
        a.batch,
        a.seq_len,
        a.threads,
        a.steps,
        a.warmup
    );
    for (name, times) in PHASES.iter().zip(phases) {
        let ms = median(times) * 1e3;
        out += &format!(
            "{name:<10} {ms:>9.3} {:>6.1} %\n",
            100.0 * ms / (step * 1e3)
        );
    }
    out += &format!(
        "{:<10} {:>9.3}  (median)\n\nop              calls/step  forward ms  backward ms\n",
        "step",
        step * 1e3
    );
    for op in tape.profile() {
        out += &format!(
            "{:<16}{:>10.1}{:>12.3}{:>13.3}\n",
            op.name,
            op.calls as f64 / a.steps as f64,
            per_step(op.forward),
            per_step(op.backward)
        );
    }
    let chars = (a.batch * a.seq_len) as f64 / step;
    out += &format!("\nms_per_step={:.3} chars_per_sec={chars:.0}\n", step * 1e3);
    Ok(out)
}
