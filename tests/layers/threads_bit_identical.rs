//! The fused layers give bit-identical outputs and gradients for any number of threads: the
//! batch is split into shards by a rule of the batch size alone, partial weight gradients are
//! added in shard order, and a batch of one shard on several threads splits each step's
//! product by columns, which computes every value as the whole product does. Also checks the
//! sharded and the column-split paths against the reference built from primitive ops.

use crate::common;

use recur::internals::SingleRow;
use recur::nn::{Activation, CellKind, ForwardOptions, Implementation, Recurrent, RecurrentConfig};
use recur::{Float, ParamStore, Rng, Tape, Tensor};

const KINDS: [CellKind; 4] = [
    CellKind::Lstm,
    CellKind::Gru,
    CellKind::Rnn(Activation::Tanh),
    CellKind::Rnn(Activation::Relu),
];

const T: usize = 6;
const I: usize = 5;

/// Batch and hidden size of a test, and for a batch of one row how it reads `W_hh`.
#[derive(Clone, Copy)]
struct Size {
    b: usize,
    h: usize,
    /// Forced on every machine: which one a machine chooses depends on its CPU.
    single: Option<SingleRow>,
}

/// Batch of 70: three shards of 32, 32 and 6 rows.
const SHARDED: Size = Size {
    b: 70,
    h: 11,
    single: None,
};
/// Batch of 16, one shard: on more than one thread each step's recurrent product is split by
/// columns between two threads (for every cell the product is large enough, and 200 columns
/// make two halves in f32's panels of 64 and f64's of 32, the right one ragged).
const SPLIT: Size = Size {
    b: 16,
    h: 200,
    single: None,
};
/// A batch of one row whose products read `W_hh` as stored: split by rows of `W_hh` in
/// forward and by columns in backward, on more than one thread (for every cell the product is
/// large enough; 370 is no whole number of vectors, so both halves' ends are ragged).
const SINGLE: Size = Size {
    b: 1,
    h: 370,
    single: Some(SingleRow::Stored),
};
/// A batch of one row whose `W_hh` is packed: the LSTM's and GRU's products split by panels,
/// the last one ragged.
const SINGLE_PACKED: Size = Size {
    b: 1,
    h: 230,
    single: Some(SingleRow::Packed),
};

/// Forward + backward of loss = sum(y * ry) + sum(h_n * rh) (+ sum(c_n * rc)) over a 2-layer
/// bidirectional layer with ragged lengths; returns every output and gradient.
fn run<T: Float>(kind: CellKind, imp: Implementation, size: Size) -> Vec<(String, Tensor<T>)> {
    match size.single {
        Some(choice) => choice.forced(|| run_as_chosen(kind, imp, size)),
        None => run_as_chosen(kind, imp, size),
    }
}

/// [`run`] with the machine's choices as they stand on this thread.
fn run_as_chosen<T: Float>(
    kind: CellKind,
    imp: Implementation,
    size: Size,
) -> Vec<(String, Tensor<T>)> {
    let Size { b, h, .. } = size;
    let cfg = RecurrentConfig::new(I, h).num_layers(2).bidirectional(true);
    let mut ps = ParamStore::<T>::new();
    let layer = Recurrent::new(&mut ps, "", kind, cfg, &mut Rng::new(5)).unwrap();
    let mut rng = Rng::new(9);
    let mut r = |dims: &[usize]| {
        Tensor::from_fn(dims, |_| T::from_f64(rng.uniform_range(-1.0, 1.0))).unwrap()
    };
    let (x_v, h0_v, c0_v) = (r(&[T, b, I]), r(&[4, b, h]), r(&[4, b, h]));
    let (ry, rh, rc) = (r(&[T, b, 2 * h]), r(&[4, b, h]), r(&[4, b, h]));
    // Every length from 1 to T, the first row's T (a batch of one runs every step).
    let lengths: Vec<usize> = (0..b).map(|i| T - (i * 7) % T).collect();
    let mut tape = Tape::new();
    let (x, h0, c0, opts) =
        common::layer_inputs(&mut tape, kind, (x_v, h0_v, c0_v), Some(&lengths));
    let opts = ForwardOptions {
        implementation: imp,
        ..opts
    };
    let out = layer.forward(&mut tape, &ps, x, opts).unwrap();
    let mut terms = vec![(out.y, ry), (out.h_n, rh)];
    if let Some(cn) = out.c_n {
        terms.push((cn, rc));
    }
    let mut loss = None;
    for (v, w) in terms {
        let w = tape.constant(w);
        let m = tape.mul(v, w).unwrap();
        let s = tape.sum(m).unwrap();
        loss = Some(match loss {
            None => s,
            Some(l) => tape.add(l, s).unwrap(),
        });
    }
    let loss = loss.unwrap();
    let mut res = vec![
        ("y".to_string(), tape.value(out.y).unwrap().clone()),
        ("h_n".to_string(), tape.value(out.h_n).unwrap().clone()),
    ];
    if let Some(cn) = out.c_n {
        res.push(("c_n".to_string(), tape.value(cn).unwrap().clone()));
    }
    let g = tape.backward(loss).unwrap();
    common::push_grads(&mut res, &g, &ps, x, h0, c0);
    res
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn check_bits<T: Float>(to_bits: fn(T) -> u64, size: Size) {
    for kind in KINDS {
        let one = in_pool(1, || run::<T>(kind, Implementation::Fused, size));
        let two = in_pool(2, || run::<T>(kind, Implementation::Fused, size));
        let three = in_pool(3, || run::<T>(kind, Implementation::Fused, size));
        assert_eq!(one.len(), two.len());
        for (((name, a), (_, b)), (_, c)) in one.iter().zip(&two).zip(&three) {
            assert_eq!(a.dims(), b.dims(), "{name}");
            for (k, ((&p, &q), &r)) in a.data().iter().zip(b.data()).zip(c.data()).enumerate() {
                assert_eq!(
                    (to_bits(p), to_bits(p)),
                    (to_bits(q), to_bits(r)),
                    "{kind:?} {name}[{k}] ({}): {p} with 1 thread, {q} with 2, {r} with 3",
                    T::DTYPE
                );
            }
        }
    }
}

#[test]
fn bit_identical_across_thread_counts_f32() {
    check_bits::<f32>(|x| u64::from(x.to_bits()), SHARDED);
}

#[test]
fn bit_identical_across_thread_counts_f64() {
    check_bits::<f64>(f64::to_bits, SHARDED);
}

#[test]
fn column_split_is_bit_identical_to_one_thread_f32() {
    check_bits::<f32>(|x| u64::from(x.to_bits()), SPLIT);
}

#[test]
fn column_split_is_bit_identical_to_one_thread_f64() {
    check_bits::<f64>(f64::to_bits, SPLIT);
}

#[test]
fn single_row_split_is_bit_identical_to_one_thread_f32() {
    check_bits::<f32>(|x| u64::from(x.to_bits()), SINGLE);
}

#[test]
fn single_row_split_is_bit_identical_to_one_thread_f64() {
    check_bits::<f64>(f64::to_bits, SINGLE);
}

#[test]
fn single_packed_row_split_is_bit_identical_to_one_thread_f32() {
    check_bits::<f32>(|x| u64::from(x.to_bits()), SINGLE_PACKED);
}

#[test]
fn single_packed_row_split_is_bit_identical_to_one_thread_f64() {
    check_bits::<f64>(f64::to_bits, SINGLE_PACKED);
}

#[test]
fn sharded_and_split_fused_equal_reference() {
    let sizes = [SHARDED, SPLIT, SINGLE, SINGLE_PACKED];
    for (kind, size) in KINDS.into_iter().flat_map(|k| sizes.map(|s| (k, s))) {
        let fused = in_pool(2, || run::<f64>(kind, Implementation::Fused, size));
        let reference = run::<f64>(kind, Implementation::Reference, size);
        for ((name, a), (_, b)) in fused.iter().zip(&reference) {
            let scale = b.data().iter().map(|x| x.abs()).fold(1e-3, f64::max);
            let e = a.max_abs_diff(b).unwrap() / scale;
            assert!(e < 1e-10, "{kind:?} {name}: relative error {e:e}");
        }
    }
}
