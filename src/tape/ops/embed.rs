//! Embedding lookup: row `ids[i]` of a `[V, D]` table; backward adds each gradient row back
//! into the row it was read from.

use super::{GradAcc, Op};
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Shape, Tensor};
use crate::{Error, Result};

impl<T: Float> Tape<T> {
    /// Looks up rows of `table` (`[V, D]`): `ids` shaped `ids_dims` (e.g. `[T, B]`) gives
    /// `[ids_dims..., D]`. An id `>= V` is an error.
    pub fn embedding(&mut self, table: Var, ids: &[usize], ids_dims: &[usize]) -> Result<Var> {
        let it = self.check("embedding", table)?;
        let s = self.slots[it as usize].value.shape();
        let &[v, d] = s.dims() else {
            return Err(Error::invalid(
                "embedding",
                format!("table must be [V, D], got {s}"),
            ));
        };
        let id_shape = Shape::new(ids_dims)?;
        if id_shape.numel() != ids.len() {
            return Err(Error::invalid(
                "embedding",
                format!("{} ids do not fill shape {id_shape}", ids.len()),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i >= v) {
            return Err(Error::IndexOutOfRange {
                op: "embedding",
                index: bad,
                size: v,
            });
        }
        let mut dims = ids_dims.to_vec();
        dims.push(d);
        let mut out = self.alloc(Shape::new(&dims)?);
        let w = self.slots[it as usize].value.data();
        for (r, &id) in ids.iter().enumerate() {
            out.data_mut()[r * d..(r + 1) * d].copy_from_slice(&w[id * d..(id + 1) * d]);
        }
        let start = self.aux.len();
        self.aux.extend_from_slice(ids);
        self.push1(
            Op::Embedding {
                ids: start..self.aux.len(),
            },
            &[it],
            out,
        )
    }
}

pub(super) fn embedding_backward<T: Float>(
    table: u32,
    ids: &[usize],
    gy: &Tensor<T>,
    acc: &mut GradAcc<'_, T>,
) {
    if !acc.needs(table) {
        return;
    }
    let d = gy.shape().last();
    let dw = acc.buf(table);
    for (r, &id) in ids.iter().enumerate() {
        for c in 0..d {
            dw[id * d + c] += gy.data()[r * d + c];
        }
    }
}
