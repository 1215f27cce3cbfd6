//! `Embedding`: a lookup table of learned vectors, PyTorch's `nn.Embedding`.

use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// A table of `num_embeddings` vectors of size `embedding_dim`, PyTorch's `nn.Embedding`.
///
/// The table is registered as `{prefix}weight` (`[num, dim]`) and initialised from `N(0, 1)`, as
/// PyTorch does. Looking up ids shaped `[T, B]` gives `[T, B, dim]`; an id `>= num` is an error.
///
/// ```
/// use recur::nn::Embedding;
/// use recur::{ParamStore, Rng, Tape};
/// let mut ps = ParamStore::<f32>::new();
/// let emb = Embedding::new(&mut ps, "embed.", 10, 4, &mut Rng::new(0))?;
/// assert!(ps.find("embed.weight").is_some());
/// // A prefix without its dot would register `embedweight`: an error instead.
/// assert!(Embedding::new(&mut ps, "embed", 10, 4, &mut Rng::new(0)).is_err());
/// let mut tape = Tape::new();
/// let x = emb.forward(&mut tape, &ps, &[1, 2, 3, 9, 0, 0], &[3, 2])?; // ids [T, B]
/// assert_eq!(tape.shape(x)?.dims(), &[3, 2, 4]);
/// assert!(emb.forward(&mut tape, &ps, &[10], &[1]).is_err()); // out of range
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Embedding {
    weight: ParamId,
    num_embeddings: usize,
    embedding_dim: usize,
}

impl Embedding {
    /// Registers `{prefix}weight` (`[num_embeddings, embedding_dim]`) in `store`, drawn from
    /// `N(0, 1)`. `prefix` is empty or ends with a dot (`"embed."`, see
    /// [`crate::nn::check_prefix`]); `"embed"` is an error.
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        prefix: &str,
        num_embeddings: usize,
        embedding_dim: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        super::check_prefix(prefix)?;
        if num_embeddings == 0 || embedding_dim == 0 {
            return Err(Error::invalid(
                "Embedding::new",
                format!(
                    "num_embeddings ({num_embeddings}) and embedding_dim ({embedding_dim}) must be positive"
                ),
            ));
        }
        let w = Tensor::from_fn(&[num_embeddings, embedding_dim], |_| {
            T::from_f64(rng.normal())
        })?;
        let weight = store.add(format!("{prefix}weight"), w)?;
        Ok(Embedding {
            weight,
            num_embeddings,
            embedding_dim,
        })
    }

    /// The table `[num, dim]`.
    pub fn weight(&self) -> ParamId {
        self.weight
    }

    /// Number of rows (the vocabulary size).
    pub fn num_embeddings(&self) -> usize {
        self.num_embeddings
    }

    /// Size of each vector.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// Every parameter id (the table).
    pub fn param_ids(&self) -> Vec<ParamId> {
        vec![self.weight]
    }

    /// Looks up `ids` laid out as `ids_dims` (e.g. `[T, B]`): gives `[ids_dims..., dim]`. The
    /// gradient adds back into the rows that were read.
    pub fn forward<T: Float>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        ids: &[usize],
        ids_dims: &[usize],
    ) -> Result<Var> {
        let table = tape.param(store, self.weight)?;
        tape.embedding(table, ids, ids_dims)
    }

    /// The same lookup on plain tensors, without a tape (inference).
    pub fn lookup<T: Float>(
        &self,
        store: &ParamStore<T>,
        ids: &[usize],
        ids_dims: &[usize],
    ) -> Result<Tensor<T>> {
        let (n, d) = (self.num_embeddings, self.embedding_dim);
        let w = super::linear::param_value(store, self.weight, &[n, d], "Embedding::lookup")?;
        let mut dims = ids_dims.to_vec();
        dims.push(d);
        let count: usize = ids_dims.iter().product();
        if count != ids.len() || ids_dims.is_empty() {
            return Err(Error::invalid(
                "Embedding::lookup",
                format!("{} ids do not fill shape {ids_dims:?}", ids.len()),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i >= n) {
            return Err(Error::IndexOutOfRange {
                op: "Embedding::lookup",
                index: bad,
                size: n,
            });
        }
        let mut out = Vec::with_capacity(ids.len() * d);
        for &i in ids {
            out.extend_from_slice(&w.data()[i * d..(i + 1) * d]);
        }
        Tensor::from_vec(out, &dims)
    }
}
