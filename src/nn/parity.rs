//! Parity with PyTorch: runs a fixture recorded from `nn.RNN`, `nn.LSTM` or `nn.GRU` through
//! recur's layers and measures how far recur's outputs and gradients are from PyTorch's.
//!
//! # Fixture format
//!
//! One safetensors file per module (`tests/fixtures/gen_parity.py` writes them):
//!
//! - the module's `state_dict` under PyTorch's names (`weight_ih_l0`, `bias_hh_l1_reverse`, ...);
//! - `x` `[T, B, I]` (time-major), `h0` and, for the LSTM, `c0` `[D*L, B, H]`;
//! - optionally `lengths`, I64 `[B]`, each in `1..=T` and in any order: the batch ran through
//!   PyTorch as `pack_padded_sequence(x, lengths, enforce_sorted=False)`, so `y` is zero past
//!   each length and `h_n` (`c_n`) hold each sequence's state at its last real step; recur runs
//!   it with [`ForwardOptions::lengths`];
//! - loss weights `ry`, `rh` (and `rc`) shaped like `y`, `h_n` (and `c_n`);
//! - the expected `y` `[T, B, D*H]`, `h_n` (`c_n`) `[D*L, B, H]`, and the gradients of
//!   `loss = sum(y * ry) + sum(h_n * rh) (+ sum(c_n * rc))`: `grad.<parameter name>`, `grad.x`,
//!   `grad.h0` (`grad.c0`);
//! - metadata `cell` (`rnn`, `lstm` or `gru`), `input_size`, `hidden_size`, `num_layers`,
//!   `bidirectional` and `bias` (`true` or `false`), and for `rnn` `nonlinearity` (`tanh` or
//!   `relu`);
//! - for an LSTM with a projection, metadata `proj_size` `P` (absent or `0`: none): its
//!   `state_dict` holds `weight_hr_l{k}[_reverse]` `[P, H]`, `weight_hh_l{k}` is `[4H, P]`, and
//!   `h0`, `h_n` and each direction's part of `y` have `P` features in place of `H`.
//!
//! Every floating-point tensor the check reads has one dtype, F32 or F64, and the check
//! computes in that dtype.
//! Other tensors and metadata keys are ignored.
//!
//! # Relative error
//!
//! For each compared tensor `a` (recur) against `b` (PyTorch) the error is
//! `max_i |a_i - b_i| / max(max_i |b_i|, 1e-6)`: the largest deviation measured against the
//! tensor's largest magnitude, so elements near zero are not judged by their own tiny size, and
//! a tensor that is (almost) all zero is compared absolutely against the floor `1e-6`. A fixture
//! passes when every error is within [`ParityReport::tolerance`]: 1e-9 for F64, 1e-4 for F32,
//! and `2^-5` for F32 with recur's products in bf16 ([`check_fixture_with`]).

use std::path::Path;

use super::state_dict::{Module, load_state_dict};
use super::{Activation, CellKind, ForwardOptions, Implementation, Recurrent, RecurrentConfig};
use crate::io::{Archive, StoredDtype};
use crate::kernels::bf16::Bf16Kernel;
use crate::params::ParamStore;
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{Error, Precision, Result};

/// Smallest scale a relative error is measured against; see the [module docs](self).
pub const SCALE_FLOOR: f64 = 1e-6;

/// Tolerance for F64 fixtures.
pub const TOLERANCE_F64: f64 = 1e-9;

/// Tolerance for F32 fixtures.
pub const TOLERANCE_F32: f64 = 1e-4;

/// Tolerance for F32 fixtures computed with bf16 products ([`check_fixture_with`]): `2^-5`.
/// Rounding a product's inputs to bf16 moves each term by up to `2u = 2^-7` of its magnitude
/// (`u = 2^-8`, bf16's unit roundoff); the roundings of successive products are independent
/// and largely cancel, and the fixtures' worst error is 1.6 `u` (6.2e-3); `2^-5` leaves a
/// factor of 5 above it (torch.testing's default relative tolerance for bf16 is 1.6e-2).
pub const TOLERANCE_BF16: f64 = 1.0 / 32.0;

/// `max|a - b| / max(max|b|, SCALE_FLOOR)`; see the [module docs](self).
pub fn relative_error<T: Float>(a: &Tensor<T>, b: &Tensor<T>) -> Result<f64> {
    let scale = b
        .data()
        .iter()
        .fold(SCALE_FLOOR, |m, x| m.max(x.to_f64().abs()));
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch {
            op: "relative_error",
            lhs: a.shape(),
            rhs: b.shape(),
        });
    }
    let mut diff = 0.0f64;
    for (x, y) in a.data().iter().zip(b.data()) {
        let d = (x.to_f64() - y.to_f64()).abs();
        // A NaN or infinite difference must not vanish in a max.
        if !d.is_finite() {
            return Ok(f64::INFINITY);
        }
        diff = diff.max(d);
    }
    Ok(diff / scale)
}

/// What a fixture describes: the module and the dtype of its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct FixtureSpec {
    /// The cell kind (with the RNN's nonlinearity).
    pub kind: CellKind,
    /// The module's options (time-major, no dropout).
    pub config: RecurrentConfig,
    /// F32 or F64.
    pub dtype: StoredDtype,
    /// The length of each sequence, when the fixture has a `lengths` tensor.
    pub lengths: Option<Vec<usize>>,
}

/// The result of one parity check.
#[derive(Clone, Debug)]
pub struct ParityReport {
    /// What the fixture describes.
    pub spec: FixtureSpec,
    /// Relative error of every compared tensor, by its name in the fixture (`y`, `h_n`, `c_n`,
    /// `grad.x`, `grad.weight_ih_l0`, ...), outputs first.
    pub errors: Vec<(String, f64)>,
    /// The precision recur's products ran in ([`check_fixture_with`]).
    pub precision: Precision,
}

impl ParityReport {
    /// The tolerance for the fixture's dtype: 1e-9 for F64, 1e-4 for F32, and
    /// [`TOLERANCE_BF16`] for F32 computed in bf16.
    pub fn tolerance(&self) -> f64 {
        match (self.spec.dtype, self.precision) {
            (StoredDtype::F64, _) => TOLERANCE_F64,
            (_, Precision::Bf16) => TOLERANCE_BF16,
            _ => TOLERANCE_F32,
        }
    }

    fn worst(&self, grads: bool) -> (f64, &str) {
        self.errors
            .iter()
            .filter(|(n, _)| n.starts_with("grad.") == grads)
            .fold((0.0, ""), |(m, mn), (n, e)| {
                if *e > m || e.is_nan() {
                    (*e, n.as_str())
                } else {
                    (m, mn)
                }
            })
    }

    /// The largest relative error among the outputs (`y`, `h_n`, `c_n`) and its tensor's name.
    pub fn output_error(&self) -> (f64, &str) {
        self.worst(false)
    }

    /// The largest relative error among the gradients and its tensor's name.
    pub fn gradient_error(&self) -> (f64, &str) {
        self.worst(true)
    }

    /// Every error within [`ParityReport::tolerance`].
    pub fn passed(&self) -> bool {
        let tol = self.tolerance();
        self.errors.iter().all(|(_, e)| *e <= tol)
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::format("parity fixture", msg)
}

fn meta<'a>(a: &'a Archive, key: &str) -> Result<&'a str> {
    a.metadata
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| bad(format!("missing metadata key `{key}`")))
}

fn meta_usize(a: &Archive, key: &str) -> Result<usize> {
    let v = meta(a, key)?;
    // The cap keeps products of sizes far from overflow; real sizes are far below it.
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 && n <= 1 << 31 => Ok(n),
        _ => Err(bad(format!(
            "metadata `{key}` must be a positive integer (at most 2^31), got `{v}`"
        ))),
    }
}

/// An optional non-negative size: absent is 0.
fn meta_size_or_zero(a: &Archive, key: &str) -> Result<usize> {
    match a.metadata.get(key).map(|v| v.trim()) {
        None | Some("0") => Ok(0),
        Some(_) => meta_usize(a, key),
    }
}

fn meta_bool(a: &Archive, key: &str) -> Result<bool> {
    match meta(a, key)? {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        v => Err(bad(format!(
            "metadata `{key}` must be `true` or `false`, got `{v}`"
        ))),
    }
}

/// Reads and validates a fixture's metadata and the dtype of its `x`.
pub fn fixture_spec(archive: &Archive) -> Result<FixtureSpec> {
    let kind = match meta(archive, "cell")? {
        "rnn" => match meta(archive, "nonlinearity")? {
            "tanh" => CellKind::Rnn(Activation::Tanh),
            "relu" => CellKind::Rnn(Activation::Relu),
            v => {
                return Err(bad(format!(
                    "metadata `nonlinearity` must be `tanh` or `relu`, got `{v}`"
                )));
            }
        },
        "lstm" => CellKind::Lstm,
        "gru" => CellKind::Gru,
        v => {
            return Err(bad(format!(
                "metadata `cell` must be `rnn`, `lstm` or `gru`, got `{v}`"
            )));
        }
    };
    let config = RecurrentConfig::new(
        meta_usize(archive, "input_size")?,
        meta_usize(archive, "hidden_size")?,
    )
    .num_layers(meta_usize(archive, "num_layers")?)
    .bidirectional(meta_bool(archive, "bidirectional")?)
    .bias(meta_bool(archive, "bias")?)
    .proj_size(meta_size_or_zero(archive, "proj_size")?);
    if config.proj_size > 0 && kind != CellKind::Lstm {
        return Err(bad(format!(
            "metadata `proj_size` ({}) is for an LSTM, but `cell` is `{}`",
            config.proj_size,
            kind.name()
        )));
    }
    if config.proj_size > 0 && config.proj_size >= config.hidden_size {
        return Err(bad(format!(
            "metadata `proj_size` ({}) must be smaller than hidden_size ({})",
            config.proj_size, config.hidden_size
        )));
    }
    let x = archive
        .tensors
        .get("x")
        .ok_or_else(|| bad("missing tensor `x`"))?;
    let dtype = match x.dtype() {
        d @ (StoredDtype::F32 | StoredDtype::F64) => d,
        _ => return Err(bad("tensor `x` must be F32 or F64")),
    };
    let lengths = match archive.tensors.get("lengths") {
        None => None,
        Some(l) => {
            let (&[t_len, batch, _], &[n]) = (x.dims(), l.dims()) else {
                return Err(bad(format!(
                    "tensor `lengths` must be [B] beside `x` [T, B, I], got {:?} and {:?}",
                    l.dims(),
                    x.dims()
                )));
            };
            if n != batch {
                return Err(bad(format!(
                    "tensor `lengths` has {n} entries for a batch of {batch}"
                )));
            }
            let values = l
                .to_i64("lengths")
                .map_err(|_| bad(format!("tensor `lengths` must be I64, got {:?}", l.dtype())))?;
            let lengths = values
                .iter()
                .map(|&v| {
                    usize::try_from(v)
                        .ok()
                        .filter(|&v| (1..=t_len).contains(&v))
                        .ok_or_else(|| {
                            bad(format!(
                                "tensor `lengths` holds {v}, outside 1..={t_len} (the steps of `x`)"
                            ))
                        })
                })
                .collect::<Result<Vec<usize>>>()?;
            Some(lengths)
        }
    };
    Ok(FixtureSpec {
        kind,
        config,
        dtype,
        lengths,
    })
}

/// Runs a fixture through recur's layers with the given implementation (the fused kernels or
/// the reference built from primitive ops) and returns the relative error of every output and
/// gradient. A file that is not a valid fixture (missing tensors or metadata, wrong shapes or
/// dtypes, non-finite values) gives an [`Error::Format`] naming the problem.
pub fn check_fixture(archive: &Archive, implementation: Implementation) -> Result<ParityReport> {
    let spec = fixture_spec(archive)?;
    match spec.dtype {
        StoredDtype::F64 => run::<f64>(archive, spec, implementation, None),
        _ => run::<f32>(archive, spec, implementation, None),
    }
}

/// [`check_fixture`] with recur's products in `precision` (see [`Tape::set_precision`]): bf16
/// takes an F32 fixture, and is judged by [`TOLERANCE_BF16`].
///
/// ```
/// use recur::Precision;
/// use recur::io::Archive;
/// use recur::nn::Implementation;
/// use recur::nn::parity::{TOLERANCE_BF16, check_fixture_with};
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parity/gru_bidir_f32.safetensors");
/// let archive = Archive::read(std::path::Path::new(path))?;
/// if Precision::Bf16.supported::<f32>().is_ok() {
///     let report = check_fixture_with(&archive, Implementation::Fused, Precision::Bf16)?;
///     assert_eq!(report.tolerance(), TOLERANCE_BF16);
///     assert!(report.passed(), "{:?}", report.errors);
/// }
/// let report = check_fixture_with(&archive, Implementation::Fused, Precision::F32)?;
/// assert!(report.passed());
/// # Ok::<(), recur::Error>(())
/// ```
pub fn check_fixture_with(
    archive: &Archive,
    implementation: Implementation,
    precision: Precision,
) -> Result<ParityReport> {
    match precision.kernel::<f32>()? {
        Some(kernel) => check_fixture_bf16(archive, implementation, kernel),
        None => check_fixture(archive, implementation),
    }
}

/// [`check_fixture_with`] in bf16 on `kernel` (the portable one on any CPU).
#[doc(hidden)]
pub fn check_fixture_bf16(
    archive: &Archive,
    implementation: Implementation,
    kernel: Bf16Kernel,
) -> Result<ParityReport> {
    let spec = fixture_spec(archive)?;
    if spec.dtype != StoredDtype::F32 {
        return Err(Error::invalid(
            "parity fixture",
            format!("bf16 products need an F32 fixture, not {:?}", spec.dtype),
        ));
    }
    run::<f32>(archive, spec, implementation, Some(kernel))
}

/// Reads a fixture file and checks it with the fused kernels (see [`check_fixture`]). Errors
/// name the file.
pub fn check_fixture_file(path: &Path) -> Result<ParityReport> {
    let archive = Archive::read(path)?;
    check_fixture(&archive, Implementation::Fused).map_err(|e| match e {
        Error::Format { context, msg } => {
            Error::format(format!("{}: {context}", path.display()), msg)
        }
        other => other,
    })
}

/// Reads tensor `name`, checking dtype, shape and finiteness.
fn read<T: Float>(
    a: &Archive,
    name: &str,
    dtype: StoredDtype,
    dims: &[usize],
) -> Result<Tensor<T>> {
    let st = a
        .tensors
        .get(name)
        .ok_or_else(|| bad(format!("missing tensor `{name}`")))?;
    if st.dtype() != dtype {
        return Err(bad(format!(
            "tensor `{name}` is {:?} but `x` is {dtype:?}; a fixture has one dtype",
            st.dtype()
        )));
    }
    if st.dims() != dims {
        return Err(bad(format!(
            "tensor `{name}` has shape {:?}, expected {dims:?}",
            st.dims()
        )));
    }
    let t = st.to_tensor::<T>(name)?;
    if !t.all_finite() {
        return Err(bad(format!("tensor `{name}` holds a NaN or infinity")));
    }
    Ok(t)
}

fn run<T: Float>(
    archive: &Archive,
    spec: FixtureSpec,
    implementation: Implementation,
    bf16: Option<Bf16Kernel>,
) -> Result<ParityReport> {
    let cfg = &spec.config;
    let dt = spec.dtype;
    let lstm = spec.kind.has_cell_state();
    let x_dims = archive.get("x")?.dims().to_vec();
    let &[t_len, batch, i_size] = x_dims.as_slice() else {
        return Err(bad(format!(
            "tensor `x` must be [T, B, I], got shape {x_dims:?}"
        )));
    };
    if i_size != cfg.input_size {
        return Err(bad(format!(
            "tensor `x` has {i_size} features but metadata input_size is {}",
            cfg.input_size
        )));
    }
    let (d, l, h, o) = (
        cfg.directions(),
        cfg.num_layers,
        cfg.hidden_size,
        cfg.output_size(),
    );
    // With a projection the hidden state has P features; the cell state keeps H.
    let state = [d * l, batch, o];
    let cell_state = [d * l, batch, h];
    let y_dims = [t_len, batch, d * o];

    let x = read::<T>(archive, "x", dt, &x_dims)?;
    let h0 = read::<T>(archive, "h0", dt, &state)?;
    let ry = read::<T>(archive, "ry", dt, &y_dims)?;
    let rh = read::<T>(archive, "rh", dt, &state)?;
    let mut expected = vec![
        ("y".to_string(), read::<T>(archive, "y", dt, &y_dims)?),
        ("h_n".to_string(), read::<T>(archive, "h_n", dt, &state)?),
    ];
    let (c0, rc) = if lstm {
        expected.push(("c_n".into(), read::<T>(archive, "c_n", dt, &cell_state)?));
        (
            Some(read::<T>(archive, "c0", dt, &cell_state)?),
            Some(read::<T>(archive, "rc", dt, &cell_state)?),
        )
    } else {
        (None, None)
    };

    // Every parameter and its gradient must be in the file with the right shape before anything
    // is allocated from the metadata's sizes.
    for (name, dims) in param_shapes(&spec) {
        read::<T>(archive, &name, dt, &dims)?;
        expected.push((
            format!("grad.{name}"),
            read::<T>(archive, &format!("grad.{name}"), dt, &dims)?,
        ));
    }
    let mut store = ParamStore::<T>::new();
    let layer = Recurrent::new(&mut store, "", spec.kind, cfg.clone(), &mut Rng::new(0))?;
    load_state_dict(&layer, &mut store, archive, "", false)
        .map_err(|e| bad(format!("state_dict: {e}")))?;
    expected.push(("grad.x".into(), read::<T>(archive, "grad.x", dt, &x_dims)?));
    expected.push(("grad.h0".into(), read::<T>(archive, "grad.h0", dt, &state)?));
    if lstm {
        expected.push((
            "grad.c0".into(),
            read::<T>(archive, "grad.c0", dt, &cell_state)?,
        ));
    }

    let mut tape = Tape::<T>::new();
    if let Some(kernel) = bf16 {
        tape.set_bf16_kernel(kernel)?;
    }
    let xv = tape.input(x);
    let h0v = tape.input(h0);
    let c0v = c0.map(|c| tape.input(c));
    let out = layer.forward(
        &mut tape,
        &store,
        xv,
        ForwardOptions {
            h0: Some(h0v),
            c0: c0v,
            lengths: spec.lengths.as_deref(),
            implementation,
            ..Default::default()
        },
    )?;
    let mut actual: Vec<(String, Tensor<T>)> = vec![
        ("y".into(), tape.value(out.y)?.clone()),
        ("h_n".into(), tape.value(out.h_n)?.clone()),
    ];
    if let Some(c) = out.c_n {
        actual.push(("c_n".into(), tape.value(c)?.clone()));
    }
    let mut loss = weighted_sum(&mut tape, out.y, ry)?;
    let lh = weighted_sum(&mut tape, out.h_n, rh)?;
    loss = tape.add(loss, lh)?;
    if let (Some(c), Some(rc)) = (out.c_n, rc) {
        let lc = weighted_sum(&mut tape, c, rc)?;
        loss = tape.add(loss, lc)?;
    }
    let grads = tape.backward(loss)?;
    let zeros_like = |v: &Tensor<T>| Tensor::<T>::zeros_shape(v.shape());
    for (name, id) in layer.named_params() {
        // A parameter the loss does not reach has a zero gradient.
        let g = grads
            .param(id)
            .cloned()
            .unwrap_or_else(|| zeros_like(store.get(id)));
        actual.push((format!("grad.{name}"), g));
    }
    let wrt = |v: Var, dims: &[usize]| -> Result<Tensor<T>> {
        match grads.wrt(v) {
            Some(g) => Ok(g.clone()),
            None => Tensor::zeros(dims),
        }
    };
    actual.push(("grad.x".into(), wrt(xv, &x_dims)?));
    actual.push(("grad.h0".into(), wrt(h0v, &state)?));
    if let Some(c0v) = c0v {
        actual.push(("grad.c0".into(), wrt(c0v, &cell_state)?));
    }

    let mut errors = Vec::with_capacity(expected.len());
    for (name, want) in &expected {
        let got = &actual
            .iter()
            .find(|(n, _)| n == name)
            .expect("every expected tensor has a computed counterpart")
            .1;
        errors.push((name.clone(), relative_error(got, want)?));
    }
    // Outputs first, then gradients, as documented.
    errors.sort_by_key(|(n, _)| n.starts_with("grad."));
    let precision = tape.precision();
    Ok(ParityReport {
        spec,
        errors,
        precision,
    })
}

/// The PyTorch name and shape of every parameter of the module a fixture describes.
fn param_shapes(spec: &FixtureSpec) -> Vec<(String, Vec<usize>)> {
    let cfg = &spec.config;
    let (h, gh, o) = (
        cfg.hidden_size,
        spec.kind.gates() * cfg.hidden_size,
        cfg.output_size(),
    );
    let mut out = Vec::new();
    for layer in 0..cfg.num_layers {
        let in_size = if layer == 0 {
            cfg.input_size
        } else {
            o * cfg.directions()
        };
        for dir in 0..cfg.directions() {
            let sfx = if dir == 1 { "_reverse" } else { "" };
            out.push((format!("weight_ih_l{layer}{sfx}"), vec![gh, in_size]));
            out.push((format!("weight_hh_l{layer}{sfx}"), vec![gh, o]));
            if cfg.bias {
                out.push((format!("bias_ih_l{layer}{sfx}"), vec![gh]));
                out.push((format!("bias_hh_l{layer}{sfx}"), vec![gh]));
            }
            if cfg.proj_size > 0 {
                out.push((format!("weight_hr_l{layer}{sfx}"), vec![o, h]));
            }
        }
    }
    out
}

/// `sum(v * r)`.
fn weighted_sum<T: Float>(tape: &mut Tape<T>, v: Var, r: Tensor<T>) -> Result<Var> {
    let r = tape.constant(r);
    let m = tape.mul(v, r)?;
    tape.sum(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_shapes_agree_with_the_layer() {
        for kind in [
            CellKind::Lstm,
            CellKind::Gru,
            CellKind::Rnn(Activation::Relu),
        ] {
            let proj = if kind == CellKind::Lstm { 2 } else { 0 };
            for (layers, bidir, bias, proj) in [
                (1, false, true, 0),
                (3, true, false, 0),
                (2, true, true, 0),
                (2, true, false, proj),
                (1, false, true, proj),
            ] {
                let config = RecurrentConfig::new(3, 4)
                    .num_layers(layers)
                    .bidirectional(bidir)
                    .bias(bias)
                    .proj_size(proj);
                let mut store = ParamStore::<f32>::new();
                let layer =
                    Recurrent::new(&mut store, "", kind, config.clone(), &mut Rng::new(0)).unwrap();
                let spec = FixtureSpec {
                    kind,
                    config,
                    dtype: StoredDtype::F32,
                    lengths: None,
                };
                let from_layer: Vec<(String, Vec<usize>)> = layer
                    .named_params()
                    .into_iter()
                    .map(|(n, id)| (n, store.get(id).dims().to_vec()))
                    .collect();
                assert_eq!(param_shapes(&spec), from_layer);
            }
        }
    }
}
