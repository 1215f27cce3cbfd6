//! `ParamStore`: the model's parameters, kept outside the tape and named as PyTorch names them.

use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// A handle to one parameter in a [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub(crate) u32);

impl ParamId {
    /// The parameter's position in its store (registration order).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Named parameters of a model, in registration order.
///
/// Layers register their weights here under PyTorch's `state_dict` names (`weight_ih_l0`, ...),
/// a [`crate::Tape`] reads them as leaves, and backward returns gradients keyed by [`ParamId`].
///
/// ```
/// use recur::{ParamStore, Tensor};
/// let mut ps = ParamStore::<f64>::new();
/// let w = ps.add("weight", Tensor::zeros(&[2, 3]).unwrap()).unwrap();
/// assert_eq!(ps.name(w), "weight");
/// assert_eq!(ps.find("weight"), Some(w));
/// assert!(ps.add("weight", Tensor::zeros(&[1]).unwrap()).is_err()); // names are unique
/// ```
#[derive(Clone, Debug)]
pub struct ParamStore<T: Float> {
    names: Vec<String>,
    values: Vec<Tensor<T>>,
}

impl<T: Float> Default for ParamStore<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> ParamStore<T> {
    /// An empty store.
    pub fn new() -> Self {
        ParamStore {
            names: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Registers a parameter; fails if the name is taken.
    pub fn add(&mut self, name: impl Into<String>, value: Tensor<T>) -> Result<ParamId> {
        let name = name.into();
        if self.find(&name).is_some() {
            return Err(Error::invalid(
                "ParamStore::add",
                format!("duplicate parameter name `{name}`"),
            ));
        }
        self.names.push(name);
        self.values.push(value);
        Ok(ParamId((self.values.len() - 1) as u32))
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// No parameters.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Total number of scalar elements over all parameters.
    pub fn numel(&self) -> usize {
        self.values.iter().map(|t| t.numel()).sum()
    }

    /// The parameter with this name.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| ParamId(i as u32))
    }

    /// The parameter's name.
    ///
    /// # Panics
    /// If `id` belongs to another store ([`ParamStore::check`] tells without panicking).
    pub fn name(&self, id: ParamId) -> &str {
        &self.names[id.index()]
    }

    /// The parameter's value.
    ///
    /// # Panics
    /// If `id` belongs to another store ([`ParamStore::check`] tells without panicking).
    pub fn get(&self, id: ParamId) -> &Tensor<T> {
        &self.values[id.index()]
    }

    /// The parameter's value, mutable (optimizers, initialisers, loading).
    ///
    /// # Panics
    /// If `id` belongs to another store ([`ParamStore::check`] tells without panicking).
    pub fn get_mut(&mut self, id: ParamId) -> &mut Tensor<T> {
        &mut self.values[id.index()]
    }

    /// Checks that `id` belongs to this store.
    pub fn check(&self, id: ParamId) -> Result<()> {
        if id.index() < self.values.len() {
            Ok(())
        } else {
            Err(Error::IndexOutOfRange {
                op: "ParamStore",
                index: id.index(),
                size: self.len(),
            })
        }
    }

    /// All parameter ids in registration order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.values.len()).map(|i| ParamId(i as u32))
    }

    /// `(id, name, value)` for every parameter in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &str, &Tensor<T>)> + '_ {
        self.names
            .iter()
            .zip(&self.values)
            .enumerate()
            .map(|(i, (n, v))| (ParamId(i as u32), n.as_str(), v))
    }
}
