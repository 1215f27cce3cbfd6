//! Per-parameter optimizer state: named buffers and a step count, with export and validated
//! import shared by every optimizer; and the checks and builder setters of their settings.

use crate::params::{ParamId, ParamStore};
use crate::tape::Grads;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// The state one optimizer keeps for one parameter.
#[derive(Clone, Debug)]
pub(crate) struct ParamState<T: Float> {
    /// Number of updates this parameter has received.
    pub(crate) step: u64,
    /// Buffers in the order of the optimizer's buffer names.
    pub(crate) bufs: Vec<Tensor<T>>,
}

/// State for every parameter, indexed by `ParamId`, with the buffer names of the optimizer.
#[derive(Clone, Debug)]
pub(crate) struct StateTable<T: Float> {
    pub(crate) names: Vec<&'static str>,
    pub(crate) slots: Vec<Option<ParamState<T>>>,
}

impl<T: Float> StateTable<T> {
    pub(crate) fn new() -> Self {
        StateTable {
            names: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Sets the buffer names (they may depend on options such as amsgrad or centered).
    pub(crate) fn set_names(&mut self, names: Vec<&'static str>) {
        self.names = names;
    }

    /// The state of `id`, created with zero buffers (or `init`) shaped like `like` if absent.
    pub(crate) fn get_or_init(
        &mut self,
        id: ParamId,
        like: &Tensor<T>,
        init: T,
    ) -> &mut ParamState<T> {
        if self.slots.len() <= id.index() {
            self.slots.resize_with(id.index() + 1, || None);
        }
        let n = self.names.len();
        self.slots[id.index()].get_or_insert_with(|| ParamState {
            step: 0,
            bufs: (0..n)
                .map(|_| {
                    let mut t = Tensor::zeros_shape(like.shape());
                    t.data_mut().fill(init);
                    t
                })
                .collect(),
        })
    }

    pub(crate) fn export(&self, store: &ParamStore<T>) -> Vec<(String, Tensor<T>)> {
        let mut out = Vec::new();
        for (k, slot) in self.slots.iter().enumerate() {
            let Some(st) = slot else { continue };
            let Some(id) = store.ids().nth(k) else {
                continue;
            };
            let pname = store.name(id);
            out.push((
                format!("{pname}.step"),
                Tensor::scalar(T::from_f64(st.step as f64)),
            ));
            for (b, name) in st.bufs.iter().zip(&self.names) {
                out.push((format!("{pname}.{name}"), b.clone()));
            }
        }
        out
    }

    /// Validates `tensors` against `store` and the buffer names, and returns the new table
    /// without touching `self`.
    pub(crate) fn import(
        &self,
        op: &'static str,
        store: &ParamStore<T>,
        tensors: &[(String, Tensor<T>)],
    ) -> Result<Vec<Option<ParamState<T>>>> {
        let mut slots: Vec<Option<ParamState<T>>> = vec![None; store.len()];
        let mut seen: Vec<Vec<Option<&Tensor<T>>>> = vec![Vec::new(); store.len()];
        let mut steps: Vec<Option<u64>> = vec![None; store.len()];
        let mut problems = Vec::new();
        for (name, t) in tensors {
            // The longest parameter name that prefixes `name` (names may contain dots).
            let found = store
                .iter()
                .filter_map(|(id, pname, _)| {
                    let rest = name.strip_prefix(pname)?.strip_prefix('.')?;
                    Some((id, pname.len(), rest))
                })
                .max_by_key(|&(_, len, _)| len)
                .map(|(id, _, rest)| (id, rest));
            let Some((id, rest)) = found else {
                problems.push(format!("`{name}` belongs to no parameter"));
                continue;
            };
            let k = id.index();
            if rest == "step" {
                let v = t.data()[0].to_f64();
                if t.numel() != 1 || !(v >= 0.0 && v.fract() == 0.0 && v < 9.0e15) {
                    problems.push(format!("`{name}` is not a step count"));
                } else {
                    steps[k] = Some(v as u64);
                }
                continue;
            }
            let Some(b) = self.names.iter().position(|n| *n == rest) else {
                problems.push(format!(
                    "`{name}`: unknown buffer `{rest}` (expected {:?})",
                    self.names
                ));
                continue;
            };
            let want = store.get(id).shape();
            if t.shape() != want {
                problems.push(format!("`{name}` has shape {} but needs {want}", t.shape()));
                continue;
            }
            if seen[k].is_empty() {
                seen[k] = vec![None; self.names.len()];
            }
            seen[k][b] = Some(t);
        }
        for (id, pname, _) in store.iter() {
            let k = id.index();
            let any = steps[k].is_some() || !seen[k].is_empty();
            if !any {
                continue;
            }
            let mut bufs = Vec::with_capacity(self.names.len());
            let Some(step) = steps[k] else {
                problems.push(format!("missing `{pname}.step`"));
                continue;
            };
            for (b, bname) in self.names.iter().enumerate() {
                match seen[k].get(b).copied().flatten() {
                    Some(t) => bufs.push(t.clone()),
                    None => problems.push(format!("missing `{pname}.{bname}`")),
                }
            }
            if bufs.len() == self.names.len() {
                slots[k] = Some(ParamState { step, bufs });
            }
        }
        if problems.is_empty() {
            Ok(slots)
        } else {
            Err(Error::format(op, problems.join("; ")))
        }
    }

    /// Validates exported state (see [`StateTable::import`]) and the learning rate in `scalars`,
    /// then installs the buffers and returns the learning rate. On any error nothing changes.
    /// Every optimizer's `load_state` is this plus storing the returned rate in its settings.
    pub(crate) fn load_with_lr(
        &mut self,
        op: &'static str,
        store: &ParamStore<T>,
        tensors: &[(String, Tensor<T>)],
        scalars: &[(String, f64)],
    ) -> Result<f64> {
        let slots = self.import(op, store, tensors)?;
        let lr = scalar(op, scalars, "lr")?;
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::format(op, format!("scalar `lr` is {lr}")));
        }
        self.slots = slots;
        Ok(lr)
    }
}

/// The value of scalar `name` in `scalars`, or an error naming it.
pub(crate) fn scalar(op: &'static str, scalars: &[(String, f64)], name: &str) -> Result<f64> {
    scalars
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| Error::format(op, format!("missing scalar `{name}`")))
}

/// Checks every gradient against its parameter's shape before any update, so a failed step
/// changes nothing. Returns the parameters to update, in id order.
pub(crate) fn grads_to_apply<T: Float>(
    op: &'static str,
    store: &ParamStore<T>,
    grads: &Grads<'_, T>,
) -> Result<Vec<ParamId>> {
    let mut ids = Vec::new();
    for id in store.ids() {
        let Some(g) = grads.param(id) else { continue };
        let p = store.get(id);
        if g.shape() != p.shape() {
            return Err(Error::ShapeMismatch {
                op,
                lhs: p.shape(),
                rhs: g.shape(),
            });
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Checks that a hyper-parameter is finite and not negative.
pub(crate) fn check_nonneg(op: &'static str, name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{name} must be finite and >= 0, got {v}"),
        ))
    }
}

/// Checks that a hyper-parameter lies in `[0, 1)`.
pub(crate) fn check_unit(op: &'static str, name: &str, v: f64) -> Result<()> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{name} must be in [0, 1), got {v}"),
        ))
    }
}

/// Builder-style setters for the plain fields of an optimizer's settings, one
/// `pub fn field(mut self, v: Type) -> Self` per field, each documented "Sets `field`.".
macro_rules! config_setters {
    ($cfg:ident { $($field:ident: $ty:ty),+ $(,)? }) => {
        impl $cfg {
            $(
                #[doc = concat!("Sets `", stringify!($field), "`.")]
                pub fn $field(mut self, v: $ty) -> Self {
                    self.$field = v;
                    self
                }
            )+
        }
    };
}
pub(crate) use config_setters;
