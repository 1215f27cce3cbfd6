//! The fused layers borrow their buffers from the tape's pool and give them back, so a training
//! loop that clears its tape reuses the same memory every step. Two things must hold:
//!
//! - a buffer's stale contents never leak into a result: a step on a reused tape (after steps
//!   of other shapes, lengths and cells) is bit-identical to the same step on a fresh tape;
//! - in the steady state nothing that grows with the sequence is allocated: a whole training
//!   step (forward, backward, optimizer) allocates exactly the same for a 4x longer sequence,
//!   and far less than the activations it works on. What remains are matrixmultiply's packing
//!   buffers (it allocates one of a fixed, capped size per product) and a few dozen small
//!   bookkeeping values (the boxed tape node, lists of inputs). Counted by a global allocator,
//!   per thread, in a one-thread pool.

use crate::common;
use crate::counted;
use recur::internals::bf16::Bf16Kernel;
use recur::nn::{Activation, CellKind, ForwardOptions, Recurrent, RecurrentConfig};
use recur::optim::{Optimizer, Sgd, SgdConfig};
use recur::{ParamStore, Rng, Tape, Tensor};

/// Each cell, and the LSTM with a projection of 3 features (`proj_size`).
const KINDS: [(CellKind, usize); 4] = [
    (CellKind::Lstm, 0),
    (CellKind::Gru, 0),
    (CellKind::Rnn(Activation::Tanh), 0),
    (CellKind::Lstm, 3),
];

/// A 2-layer bidirectional layer over a batch of 40 (two shards), with ragged lengths when
/// `ragged`; the loss weighs every output by a fixed random tensor. Returns every output and
/// gradient.
fn step(
    tape: &mut Tape<f64>,
    (kind, proj): (CellKind, usize),
    t: usize,
    seed: u64,
    ragged: bool,
) -> Vec<(String, Tensor<f64>)> {
    let (b, i, h) = (40, 5, 7);
    let cfg = RecurrentConfig::new(i, h)
        .num_layers(2)
        .bidirectional(true)
        .proj_size(proj);
    let o = cfg.output_size();
    let mut ps = ParamStore::<f64>::new();
    let layer = Recurrent::new(&mut ps, "", kind, cfg, &mut Rng::new(seed)).unwrap();
    let mut rng = Rng::new(seed + 1);
    let mut r = |dims: &[usize]| Tensor::from_fn(dims, |_| rng.uniform_range(-1.0, 1.0)).unwrap();
    let (x_v, h0_v, c0_v, ry) = (
        r(&[t, b, i]),
        r(&[4, b, o]),
        r(&[4, b, h]),
        r(&[t, b, 2 * o]),
    );
    let lengths: Vec<usize> = (0..b).map(|k| 1 + (k * 5 + seed as usize) % t).collect();
    tape.clear();
    let lengths = ragged.then_some(&lengths[..]);
    let (x, h0, c0, opts) = common::layer_inputs(tape, kind, (x_v, h0_v, c0_v), lengths);
    let out = layer.forward(tape, &ps, x, opts).unwrap();
    let w = tape.constant(ry);
    let m = tape.mul(out.y, w).unwrap();
    let s = tape.sum(m).unwrap();
    let hn = tape.sum(out.h_n).unwrap();
    let loss = tape.add(s, hn).unwrap();
    let mut res = vec![("y".to_string(), tape.value(out.y).unwrap().clone())];
    res.push(("h_n".into(), tape.value(out.h_n).unwrap().clone()));
    let g = tape.backward(loss).unwrap();
    common::push_grads(&mut res, &g, &ps, x, h0, c0);
    res
}

#[test]
fn a_reused_tape_gives_the_results_of_a_fresh_one() {
    for kind in KINDS {
        for ragged in [false, true] {
            let fresh = step(&mut Tape::new(), kind, 6, 3, ragged);
            // The same tape first runs steps of other cells, lengths and sizes, leaving stale
            // values of every magnitude in its pool.
            let mut tape = Tape::new();
            for (k, other) in KINDS.iter().enumerate() {
                step(&mut tape, *other, 4 + 3 * k, 11 + k as u64, !ragged);
            }
            let reused = step(&mut tape, kind, 6, 3, ragged);
            assert_eq!(fresh.len(), reused.len());
            for ((name, a), (_, b)) in fresh.iter().zip(&reused) {
                assert_eq!(a.dims(), b.dims(), "{kind:?} {name}");
                for (k, (p, q)) in a.data().iter().zip(b.data()).enumerate() {
                    assert_eq!(
                        p.to_bits(),
                        q.to_bits(),
                        "{kind:?} ragged={ragged} {name}[{k}]: {p} fresh, {q} reused"
                    );
                }
            }
        }
    }
}

/// Allocations (count, bytes) of one steady-state training step of an LSTM layer (projecting
/// its state to `proj` features, when not 0) over a sequence of `t` steps: forward,
/// loss = sum(y), backward, an SGD step; with bf16 products (on the portable kernel) where
/// `bf16`. Run on one thread.
fn steady_state_allocations(t: usize, proj: usize, bf16: bool) -> (usize, usize) {
    let (b, i, h) = (64, 32, 48);
    let mut ps = ParamStore::<f32>::new();
    let cfg = RecurrentConfig::new(i, h).proj_size(proj);
    let layer = Recurrent::new(&mut ps, "lstm.", CellKind::Lstm, cfg, &mut Rng::new(1)).unwrap();
    let mut rng = Rng::new(2);
    let x_val = Tensor::from_fn(&[t, b, i], |_| rng.uniform_range(-1.0, 1.0) as f32).unwrap();
    let mut opt = Sgd::new(SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        ..SgdConfig::default()
    })
    .unwrap();
    let mut tape = Tape::new();
    if bf16 {
        tape.set_bf16_kernel(Bf16Kernel::scalar()).unwrap();
    }
    let mut train_step = |tape: &mut Tape<f32>, ps: &mut ParamStore<f32>| {
        tape.clear();
        let x = tape.input_copy(&x_val);
        let out = layer
            .forward(tape, ps, x, ForwardOptions::default())
            .unwrap();
        let loss = tape.sum(out.y).unwrap();
        let grads = tape.backward(loss).unwrap();
        opt.step(ps, &grads).unwrap();
    };
    for _ in 0..3 {
        train_step(&mut tape, &mut ps);
    }
    let before = counted();
    train_step(&mut tape, &mut ps);
    let after = counted();
    (after.0 - before.0, after.1 - before.1)
}

#[test]
fn a_steady_state_training_step_allocates_nothing_that_grows_with_the_sequence() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for (proj, bf16) in [(0, false), (20, false), (0, true), (20, true)] {
        let (short, long) = pool.install(|| {
            (
                steady_state_allocations(25, proj, bf16),
                steady_state_allocations(100, proj, bf16),
            )
        });
        // What the step works on: at T = 100, the saved activations alone are 100 * 64 * 48 * 7
        // floats (8.6 MB).
        assert_eq!(
            short, long,
            "proj_size {proj}, bf16 {bf16}: allocations (count, bytes) per step: {short:?} at \
             T = 25, {long:?} at T = 100"
        );
        assert!(
            long.1 <= 1 << 20,
            "proj_size {proj}, bf16 {bf16}: a steady-state step allocated {} bytes in {} \
             allocations",
            long.1,
            long.0
        );
    }
}
