//! `Linear`: the affine map `y = x W^T + b` of PyTorch's `nn.Linear`, with its names and layout.

use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Shape, Tensor};
use crate::{Error, Result};

/// A fully connected layer, PyTorch's `nn.Linear`: `y = x W^T + b`.
///
/// Parameters, registered under `{prefix}weight` (`[out, in]`) and `{prefix}bias` (`[out]`), are
/// initialised as PyTorch does, from `U(-1/sqrt(in), 1/sqrt(in))`. The input is `[..., in]`, as
/// in PyTorch: one row `[in]`, rows `[N, in]`, a sequence `[T, B, in]` or more leading axes; the
/// map applies to the last axis.
///
/// ```
/// use recur::nn::Linear;
/// use recur::{ParamStore, Rng, Tape, Tensor};
/// let mut ps = ParamStore::<f64>::new();
/// let fc = Linear::new(&mut ps, "fc.", 3, 2, true, &mut Rng::new(0))?;
/// assert_eq!(ps.get(fc.weight()).dims(), &[2, 3]);
/// let mut tape = Tape::new();
/// let x = tape.constant(Tensor::zeros(&[5, 4, 3])?); // [T, B, in]
/// let y = fc.forward(&mut tape, &ps, x)?;
/// assert_eq!(tape.shape(y)?.dims(), &[5, 4, 2]);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Linear {
    weight: ParamId,
    bias: Option<ParamId>,
    in_features: usize,
    out_features: usize,
}

impl Linear {
    /// Registers `{prefix}weight` (`[out, in]`) and, when `bias` is set, `{prefix}bias` (`[out]`)
    /// in `store`, initialised from `U(-1/sqrt(in), 1/sqrt(in))`. `prefix` is empty or ends with
    /// a dot (`"head."`, see [`crate::nn::check_prefix`]); `"head"` is an error.
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        super::check_prefix(prefix)?;
        if in_features == 0 || out_features == 0 {
            return Err(Error::invalid(
                "Linear::new",
                format!(
                    "in_features ({in_features}) and out_features ({out_features}) must be positive"
                ),
            ));
        }
        let bound = 1.0 / (in_features as f64).sqrt();
        let mut uniform = |dims: &[usize]| -> Result<Tensor<T>> {
            Tensor::from_fn(dims, |_| T::from_f64(rng.uniform_range(-bound, bound)))
        };
        let w = uniform(&[out_features, in_features])?;
        let b = if bias {
            Some(uniform(&[out_features])?)
        } else {
            None
        };
        // Check both names before registering either, so a failure leaves the store unchanged.
        let (wn, bn) = (format!("{prefix}weight"), format!("{prefix}bias"));
        for n in [&wn, &bn] {
            if store.find(n).is_some() {
                return Err(Error::invalid(
                    "Linear::new",
                    format!("parameter name `{n}` is already taken"),
                ));
            }
        }
        let weight = store.add(wn, w)?;
        let bias = b.map(|b| store.add(bn, b)).transpose()?;
        Ok(Linear {
            weight,
            bias,
            in_features,
            out_features,
        })
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> ParamId {
        self.weight
    }

    /// The bias `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<ParamId> {
        self.bias
    }

    /// Input features per row.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output features per row.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Every parameter id, in registration order.
    pub fn param_ids(&self) -> Vec<ParamId> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }

    /// `x W^T + b` for `x` shaped `[..., in]` (gives `[..., out]`: `[N, out]` for `[N, in]`,
    /// `[T, B, out]` for `[T, B, in]`), as one matrix product over all rows ([`Tape::linear`]).
    pub fn forward<T: Float>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
    ) -> Result<Var> {
        self.check_input(tape.shape(x)?, "Linear::forward")?;
        let w = tape.param(store, self.weight)?;
        let b = self.bias.map(|b| tape.param(store, b)).transpose()?;
        tape.linear(x, w, b)
    }

    /// `x W^T + b` on plain tensors, without a tape (inference), for `x` shaped `[..., in]`.
    pub fn apply<T: Float>(&self, store: &ParamStore<T>, x: &Tensor<T>) -> Result<Tensor<T>> {
        let w = param_value(
            store,
            self.weight,
            &[self.out_features, self.in_features],
            "Linear::apply",
        )?;
        let s = x.shape();
        self.check_input(s, "Linear::apply")?;
        let rows = s.rows();
        let mut out = vec![T::ZERO; rows * self.out_features];
        if let Some(b) = self.bias {
            let bv = param_value(store, b, &[self.out_features], "Linear::apply")?.data();
            for row in out.chunks_exact_mut(self.out_features) {
                row.copy_from_slice(bv);
            }
        }
        let g = crate::kernels::GemmShape {
            m: rows,
            k: self.in_features,
            n: self.out_features,
            trans_a: false,
            trans_b: true,
        };
        T::gemm(g, T::ONE, x.data(), w.data(), T::ONE, &mut out);
        let mut dims = s.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = self.out_features;
        Tensor::from_vec(out, &dims)
    }

    /// An input `[..., in]`: at least one axis, the last of `in` features.
    fn check_input(&self, s: Shape, op: &'static str) -> Result<()> {
        match s.dims().last() {
            Some(&f) if f == self.in_features => Ok(()),
            Some(&f) => Err(Error::invalid(
                op,
                format!(
                    "input has {f} features but the layer expects {} (shape {s})",
                    self.in_features
                ),
            )),
            None => Err(Error::invalid(
                op,
                format!("input must be [..., {}], got a scalar", self.in_features),
            )),
        }
    }
}

/// The value of parameter `id`, checked to belong to `store` and to have shape `dims` (a store
/// edited by hand could hold anything under the id).
pub(crate) fn param_value<'s, T: Float>(
    store: &'s ParamStore<T>,
    id: ParamId,
    dims: &[usize],
    op: &'static str,
) -> Result<&'s Tensor<T>> {
    store.check(id)?;
    let v = store.get(id);
    if v.dims() != dims {
        return Err(Error::invalid(
            op,
            format!(
                "parameter `{}` has shape {} but the layer needs {dims:?}",
                store.name(id),
                v.shape()
            ),
        ));
    }
    Ok(v)
}
