//! Reductions to a scalar: `sum` and `mean`. Backward broadcasts the scalar gradient back.

use super::{GradAcc, Op};
use crate::Result;
use crate::tape::{Tape, Var};
use crate::tensor::{self, Float, Shape, Tensor};

impl<T: Float> Tape<T> {
    /// Sum of all elements, as a scalar (accumulated in f64 for f32 inputs).
    pub fn sum(&mut self, a: Var) -> Result<Var> {
        let ia = self.check("sum", a)?;
        let s = self.slots[ia as usize].value.sum();
        let mut out = self.alloc(Shape::scalar());
        out.data_mut()[0] = T::from_f64(s);
        self.push1(Op::Sum, &[ia], out)
    }

    /// Mean of all elements, as a scalar.
    pub fn mean(&mut self, a: Var) -> Result<Var> {
        let ia = self.check("mean", a)?;
        let v = &self.slots[ia as usize].value;
        let m = v.sum() / v.numel() as f64;
        let mut out = self.alloc(Shape::scalar());
        out.data_mut()[0] = T::from_f64(m);
        self.push1(Op::Mean, &[ia], out)
    }
}

/// `da += factor * dy` broadcast over every element of `a`.
pub(super) fn sum_backward<T: Float>(a: u32, factor: T, gy: &Tensor<T>, acc: &mut GradAcc<'_, T>) {
    if acc.needs(a) {
        let g = factor * gy.data()[0];
        match acc.buf_or_new(a) {
            (d, true) => tensor::fill(d, g),
            (d, false) => tensor::add_scalar(d, g),
        }
    }
}
