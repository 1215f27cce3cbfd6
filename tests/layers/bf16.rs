//! The fused layers in bf16 ([`recur::Precision::Bf16`]), on the scalar kernel (the scalar
//! model of `vdpbf16ps`, the same values as the AVX512_BF16 kernel on any CPU): outputs and
//! every gradient against f64 within a bound derived from bf16's 8-bit significand, against
//! the reference built from primitive ops (whose products, `Tape::matmul`, are bf16 too), and
//! bit-identical for any number of threads.

use crate::support::{Case, KINDS, in_pool, max_rel, random_config, random_lengths, run, run_on};
use recur::internals::bf16::Bf16Kernel;
use recur::nn::{CellKind, Implementation, RecurrentConfig};
use recur::{Precision, Rng, Tape, Tensor};

/// A tape whose products run in bf16 on the scalar kernel.
fn bf16_tape() -> Tape<f32> {
    let mut tape = Tape::new();
    tape.set_bf16_kernel(Bf16Kernel::scalar()).unwrap();
    assert_eq!(tape.precision(), Precision::Bf16);
    tape
}

fn random_case(rng: &mut Rng, kind: CellKind, seed: u64) -> Case {
    let t = 1 + rng.below(6);
    let b = 1 + rng.below(4);
    Case {
        kind,
        cfg: random_config(rng, 2),
        t,
        b,
        lengths: random_lengths(rng, t, b),
        with_h0: rng.below(2) == 1,
        train: None,
        seed,
    }
}

/// The cells whose derivatives are continuous. ReLU's jumps at 0: where a pre-activation lies
/// within the bf16 error of zero, the rounding switches its path on or off, and a gradient
/// differs by a whole term (as a finite difference across the kink would).
const SMOOTH: [CellKind; 3] = [KINDS[0], KINDS[1], KINDS[2]];

/// Unit roundoff of bf16 (8 significant bits).
const U: f64 = 1.0 / 256.0;

/// The bound on the relative error of the case's outputs and gradients in bf16, against the
/// exact (f64) values, relative to the largest magnitude of each.
///
/// One product in bf16 is within `(2u + u^2) S` of the exact one, `S` the sum of its terms'
/// magnitudes (see `recur::internals::bf16`; the f32 accumulation adds far less at these
/// lengths). The terms here are of the size of the result (inputs and weights of either
/// sign, uniform in `[-1, 1]` and `[-1/sqrt(H), 1/sqrt(H)]`), so `S` stays within a small
/// factor, say 4, of the largest result. The activations' derivatives are at most 1, so an
/// error is carried along, not amplified, by each later product: a value is at most the sum of
/// the errors of the products on its path. The forward reaches `y` through the input
/// projection and `T` recurrent products per layer; the backward goes back along the same path
/// and through the weight-gradient product. Hence `4 (2u + u^2) P` with
/// `P = 2 L (T + 1) + 1`.
fn bound(c: &Case) -> f64 {
    let p = 2 * c.cfg.num_layers * (c.t + 1) + 1;
    4.0 * (2.0 * U + U * U) * p as f64
}

fn as_f64(t: &Tensor<f32>) -> Tensor<f64> {
    Tensor::from_vec(t.data().iter().map(|&v| f64::from(v)).collect(), t.dims()).unwrap()
}

/// Outputs and gradients in bf16 against f64, within [`bound`]; and farther from f64 than the
/// same layer in f32 somewhere, so the products did run in bf16.
#[test]
fn fused_bf16_is_within_the_bound_of_f64() {
    let mut rng = Rng::new(31);
    for kind in SMOOTH {
        for k in 0..8 {
            let c = random_case(&mut rng, kind, 300 + k);
            let exact = run::<f64>(&c, Implementation::Fused);
            let bf16 = run_on(&c, Implementation::Fused, bf16_tape());
            let f32s = run::<f32>(&c, Implementation::Fused);
            let tol = bound(&c);
            let (mut worst_bf16, mut worst_f32) = (0.0f64, 0.0f64);
            for (((n, e), (_, b)), (_, f)) in exact.iter().zip(&bf16).zip(&f32s) {
                let eb = max_rel(&as_f64(b), e);
                assert!(eb < tol, "{n}: relative error {eb:e} > {tol:e} in {c:?}");
                worst_bf16 = worst_bf16.max(eb);
                worst_f32 = worst_f32.max(max_rel(&as_f64(f), e));
            }
            // bf16 rounds each product's inputs to 8 bits, f32 to 24: at least 2^8 times
            // farther, given the f32 error is its own rounding.
            assert!(
                worst_bf16 > 256.0 * worst_f32 && worst_bf16 > U / 16.0,
                "bf16 {worst_bf16:e} against f32 {worst_f32:e}: the products ran in f32? {c:?}"
            );
        }
    }
}

/// The fused layers in bf16 against the reference in bf16: both round the same products'
/// inputs, so they differ only where a value computed in a different order in f32 rounds to
/// a different bf16, one step of `2u` at a time, far inside the bound against f64.
#[test]
fn fused_bf16_equals_reference_bf16() {
    let mut rng = Rng::new(32);
    for kind in SMOOTH {
        for k in 0..8 {
            let c = random_case(&mut rng, kind, 400 + k);
            let fused = run_on(&c, Implementation::Fused, bf16_tape());
            let reference = run_on(&c, Implementation::Reference, bf16_tape());
            let tol = bound(&c) / 4.0;
            for ((n, a), (_, b)) in fused.iter().zip(&reference) {
                let e = max_rel(a, b);
                assert!(e < tol, "{n}: relative error {e:e} > {tol:e} in {c:?}");
            }
        }
    }
}

/// In bf16 too, the outputs and gradients do not depend on the number of threads: sharded
/// batches (70 rows) and one shard (16 rows).
#[test]
fn fused_bf16_is_bit_identical_across_threads() {
    for kind in KINDS {
        for b in [16, 70] {
            let c = Case {
                kind,
                cfg: RecurrentConfig::new(5, 24).bidirectional(true),
                t: 4,
                b,
                lengths: (b == 70).then(|| (0..b).map(|i| 1 + i % 4).collect()),
                with_h0: true,
                train: None,
                seed: 7,
            };
            let runs: Vec<_> = [1, 2, 3]
                .map(|n| in_pool(n, || run_on(&c, Implementation::Fused, bf16_tape())))
                .into();
            for ((name, a), (_, o)) in runs[0]
                .iter()
                .zip(&runs[1])
                .chain(runs[0].iter().zip(&runs[2]))
            {
                let bits =
                    |t: &Tensor<f32>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(o), "{kind:?} B = {b}: {name}");
            }
        }
    }
}

/// What bf16 does not cover yet refuses a bf16 tape with an error that says so, and a tape
/// of f64 refuses bf16.
#[test]
fn bf16_refusals_name_the_problem() {
    use recur::ParamStore;
    use recur::nn::{ForwardOptions, Recurrent};
    for cfg in [
        RecurrentConfig::new(3, 4).proj_size(2),
        RecurrentConfig::new(3, 4).layer_norm(true),
    ] {
        let mut ps = ParamStore::<f32>::new();
        let layer = Recurrent::new(&mut ps, "", CellKind::Lstm, cfg, &mut Rng::new(1)).unwrap();
        let mut tape = bf16_tape();
        let x = tape.input(Tensor::zeros(&[2, 1, 3]).unwrap());
        let err = layer
            .forward(&mut tape, &ps, x, ForwardOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bf16 precision does not cover"), "{err}");
    }
    let mut t64 = Tape::<f64>::new();
    let err = t64
        .set_bf16_kernel(Bf16Kernel::scalar())
        .unwrap_err()
        .to_string();
    assert!(err.contains("f32 tape"), "{err}");
    assert_eq!(t64.precision(), Precision::F32);
}
