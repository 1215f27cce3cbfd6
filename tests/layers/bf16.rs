//! The fused layers in bf16 ([`recur::Precision::Bf16`]), on the portable kernel (an AVX2
//! emulation or a scalar model of `vdpbf16ps`, the same values as the AVX512_BF16 kernel on
//! any CPU): outputs and every gradient against f64 within a bound derived from bf16's 8-bit
//! significand, against the reference built from primitive ops (whose products,
//! `Tape::matmul`, are bf16 too), and bit-identical for any number of threads.

use crate::support::{Case, KINDS, in_pool, max_rel, random_case, run, run_on};
use recur::internals::bf16::Bf16Kernel;
use recur::nn::{CellKind, Implementation, RecurrentConfig};
use recur::{Precision, Rng, Tape, Tensor};

/// A tape whose products run in bf16 on the portable kernel.
fn bf16_tape() -> Tape<f32> {
    let mut tape = Tape::new();
    tape.set_bf16_kernel(Bf16Kernel::portable()).unwrap();
    assert_eq!(tape.precision(), Precision::Bf16);
    tape
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
/// One product in bf16 is within `e S` of the exact one, `e = 2u + u^2 + g (1 + u)^2`, `S` the
/// sum of its terms' magnitudes: `2u + u^2` from rounding both inputs to bf16, `g = k v /
/// (1 - k v)` (`v = 2^-24`) from accumulating its `k` terms in f32 (see
/// `recur::internals::bf16`); `k` here is the longest reduction of the case, over the inputs,
/// the gates or the `T B` rows of a weight gradient. The terms are of the size of the result
/// (inputs and weights of either sign, uniform in `[-1, 1]` and `[-1/sqrt(H), 1/sqrt(H)]`),
/// so `S` stays within a small factor, say 4, of the largest result. The activations'
/// derivatives are at most 1, so an error is carried along, not amplified, by each later
/// product: a value is at most the sum of the errors of the products on its path. The forward
/// reaches `y` through the input projection and `T` recurrent products per layer; the backward
/// goes back along the same path and through the weight-gradient product. Hence `4 e P` with
/// `P = 2 L (T + 1) + 1`.
fn bound(c: &Case) -> f64 {
    let cfg = &c.cfg;
    let k = [
        cfg.input_size,
        cfg.directions() * cfg.hidden_size,
        4 * cfg.hidden_size,
        c.t * c.b,
    ]
    .into_iter()
    .max()
    .unwrap_or(1);
    let kv = 2.0 * k.div_ceil(2) as f64 * 2f64.powi(-24);
    let e = 2.0 * U + U * U + kv / (1.0 - kv) * (1.0 + U).powi(2);
    let p = 2 * cfg.num_layers * (c.t + 1) + 1;
    4.0 * e * p as f64
}

fn as_f64(t: &Tensor<f32>) -> Tensor<f64> {
    Tensor::from_vec(t.data().iter().map(|&v| f64::from(v)).collect(), t.dims()).unwrap()
}

/// The case in bf16: every output and gradient within [`bound`] of f64, and somewhere farther
/// from it than the same layer in f32 (the products did run in bf16); and within a quarter of
/// the bound of the reference in bf16, which rounds the same products' inputs, so the two
/// differ only where a value computed in another order in f32 rounds to another bf16.
fn check_bf16(c: &Case) {
    let exact = run::<f64>(c, Implementation::Fused);
    let bf16 = run_on(c, Implementation::Fused, bf16_tape());
    let f32s = run::<f32>(c, Implementation::Fused);
    let reference = run_on(c, Implementation::Reference, bf16_tape());
    let tol = bound(c);
    let (mut worst_bf16, mut worst_f32) = (0.0f64, 0.0f64);
    for ((((n, e), (_, b)), (_, f)), (_, r)) in exact.iter().zip(&bf16).zip(&f32s).zip(&reference) {
        let eb = max_rel(&as_f64(b), e);
        assert!(eb < tol, "{n}: relative error {eb:e} > {tol:e} in {c:?}");
        let er = max_rel(b, r);
        assert!(er < tol / 4.0, "{n}: {er:e} from the reference in {c:?}");
        worst_bf16 = worst_bf16.max(eb);
        worst_f32 = worst_f32.max(max_rel(&as_f64(f), e));
    }
    // bf16 rounds each product's inputs to 8 bits, f32 to 24: at least 2^8 times farther,
    // given the f32 error is its own rounding.
    assert!(
        worst_bf16 > 256.0 * worst_f32 && worst_bf16 > U / 16.0,
        "bf16 {worst_bf16:e} against f32 {worst_f32:e}: the products ran in f32? {c:?}"
    );
}

/// Random shapes of every smooth cell ([`check_bf16`]).
#[test]
fn fused_bf16_is_within_the_bound_of_f64_and_matches_the_reference() {
    let mut rng = Rng::new(31);
    for kind in SMOOTH {
        for k in 0..8 {
            check_bf16(&random_case(&mut rng, kind, 300 + k, 2));
        }
    }
}

/// The LSTM with a projection and the layer-normalized LSTM and GRU ([`check_bf16`]; the
/// projection adds one product to each step's path, which the bound's factor 4 covers).
#[test]
fn projected_and_layer_normalized_layers_in_bf16() {
    let mut rng = Rng::new(33);
    for k in 0..6 {
        let mut c = random_case(&mut rng, CellKind::Lstm, 500 + k, 2);
        let p = 1 + rng.below(c.cfg.hidden_size - 1);
        c.cfg = c.cfg.proj_size(p);
        check_bf16(&c);
        for kind in [CellKind::Lstm, CellKind::Gru] {
            let mut c = random_case(&mut rng, kind, 600 + k, 2);
            c.cfg = c.cfg.layer_norm(true);
            check_bf16(&c);
        }
    }
}

/// In bf16 too, the outputs and gradients do not depend on the number of threads: sharded
/// batches (70 rows) and one shard (16 rows, whose products two threads split by columns
/// where they are large enough), and the projected and layer-normalized layers (one block,
/// split by rows).
#[test]
fn fused_bf16_is_bit_identical_across_threads() {
    let plain = RecurrentConfig::new(5, 24).bidirectional(true);
    let mut cases: Vec<(CellKind, RecurrentConfig)> =
        KINDS.iter().map(|&k| (k, plain.clone())).collect();
    cases.push((CellKind::Lstm, plain.clone().proj_size(10)));
    cases.push((CellKind::Lstm, plain.clone().layer_norm(true)));
    cases.push((CellKind::Gru, plain.clone().layer_norm(true)));
    // 200 units: at 16 rows (one shard) on more than one thread, each step's product is split
    // by columns between two threads, at a panel of the bf16 packing (ragged right half).
    cases.push((CellKind::Lstm, RecurrentConfig::new(5, 200)));
    cases.push((CellKind::Gru, RecurrentConfig::new(5, 200)));
    for (kind, cfg) in cases {
        for b in [16, 70] {
            let c = Case {
                kind,
                cfg: cfg.clone(),
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
                assert_eq!(bits(a), bits(o), "{kind:?} {cfg:?} B = {b}: {name}");
            }
        }
    }
}

/// A tape of f64 refuses bf16, and keeps its precision.
#[test]
fn an_f64_tape_refuses_bf16() {
    let mut t64 = Tape::<f64>::new();
    let err = t64
        .set_bf16_kernel(Bf16Kernel::scalar())
        .unwrap_err()
        .to_string();
    assert!(err.contains("f32 tape"), "{err}");
    assert_eq!(t64.precision(), Precision::F32);
}
