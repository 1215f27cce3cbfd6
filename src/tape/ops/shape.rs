//! Ops that move data without arithmetic: concatenating and slicing the feature (last) axis,
//! stacking and selecting timesteps (first axis), reshaping. Backward routes gradients back to
//! where each element came from.

use super::{GradAcc, Op};
use crate::tape::{Tape, Var};
use crate::tensor::{self, Float, MAX_RANK, Shape, Tensor};
use crate::{Error, Result};

impl<T: Float> Tape<T> {
    /// Concatenates along the last (feature) axis; every other dimension must agree.
    ///
    /// ```
    /// # use recur::{Tape, Tensor};
    /// let mut tape = Tape::<f32>::new();
    /// let a = tape.constant(Tensor::from_vec(vec![1.0, 2.0], &[2, 1])?);
    /// let b = tape.constant(Tensor::from_vec(vec![3.0, 4.0, 5.0, 6.0], &[2, 2])?);
    /// let c = tape.concat(&[a, b])?;
    /// assert_eq!(tape.value(c)?.data(), &[1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn concat(&mut self, parts: &[Var]) -> Result<Var> {
        if parts.is_empty() {
            return Err(Error::invalid("concat", "no tensors to concatenate"));
        }
        let mut ids = Vec::with_capacity(parts.len());
        let first = self.shape(parts[0]).map_err(|_| Error::ForeignVar {
            op: "concat",
            var: parts[0].idx,
        })?;
        let mut total = 0;
        for &p in parts {
            let i = self.check("concat", p)?;
            let s = self.slots[i as usize].value.shape();
            if s.rank() != first.rank()
                || s.rank() == 0
                || s.dims()[..s.rank() - 1] != first.dims()[..first.rank() - 1]
            {
                return Err(Error::ShapeMismatch {
                    op: "concat (all but the last axis)",
                    lhs: first,
                    rhs: s,
                });
            }
            total += s.last();
            ids.push(i);
        }
        let out_shape = first.with_last(total)?;
        let mut out = self.alloc(out_shape);
        let rows = out_shape.rows();
        let mut off = 0;
        for &i in &ids {
            let v = &self.slots[i as usize].value;
            let w = v.shape().last();
            for r in 0..rows {
                out.data_mut()[r * total + off..r * total + off + w]
                    .copy_from_slice(&v.data()[r * w..(r + 1) * w]);
            }
            off += w;
        }
        self.push1(Op::Concat, &ids, out)
    }

    /// The columns `start..end` of the last (feature) axis.
    pub fn slice(&mut self, a: Var, start: usize, end: usize) -> Result<Var> {
        let ia = self.check("slice", a)?;
        let s = self.slots[ia as usize].value.shape();
        let n = s.last();
        if s.rank() == 0 || start >= end || end > n {
            return Err(Error::invalid(
                "slice",
                format!("range {start}..{end} is empty or outside the last axis of shape {s}"),
            ));
        }
        let w = end - start;
        let mut out = self.alloc(s.with_last(w)?);
        let v = self.slots[ia as usize].value.data();
        for r in 0..s.rows() {
            out.data_mut()[r * w..(r + 1) * w].copy_from_slice(&v[r * n + start..r * n + end]);
        }
        self.push1(Op::Slice { start }, &[ia], out)
    }

    /// Stacks equally shaped tensors along a new first axis: `N` tensors of shape `S` give
    /// `[N, S...]` (timesteps `[B, H]` into a sequence `[T, B, H]`).
    pub fn stack(&mut self, items: &[Var]) -> Result<Var> {
        if items.is_empty() {
            return Err(Error::invalid("stack", "no tensors to stack"));
        }
        let mut ids = Vec::with_capacity(items.len());
        let mut shape0: Option<Shape> = None;
        for &v in items {
            let i = self.check("stack", v)?;
            let s = self.slots[i as usize].value.shape();
            if let Some(s0) = shape0
                && s0 != s
            {
                return Err(Error::ShapeMismatch {
                    op: "stack",
                    lhs: s0,
                    rhs: s,
                });
            }
            shape0 = Some(s);
            ids.push(i);
        }
        let s0 = shape0.expect("non-empty");
        if s0.rank() + 1 > MAX_RANK {
            return Err(Error::invalid(
                "stack",
                format!("stacking shape {s0} exceeds rank {MAX_RANK}"),
            ));
        }
        let mut dims = vec![items.len()];
        dims.extend_from_slice(s0.dims());
        let mut out = self.alloc(Shape::new(&dims)?);
        let m = s0.numel();
        for (k, &i) in ids.iter().enumerate() {
            out.data_mut()[k * m..(k + 1) * m].copy_from_slice(self.slots[i as usize].value.data());
        }
        self.push1(Op::Stack, &ids, out)
    }

    /// Element `index` of the first axis: `[T, B, H]` at `t` gives `[B, H]`.
    pub fn select(&mut self, a: Var, index: usize) -> Result<Var> {
        let ia = self.check("select", a)?;
        let s = self.slots[ia as usize].value.shape();
        if s.rank() == 0 {
            return Err(Error::invalid("select", "cannot select from a scalar"));
        }
        if index >= s.dims()[0] {
            return Err(Error::IndexOutOfRange {
                op: "select",
                index,
                size: s.dims()[0],
            });
        }
        let inner = Shape::new(&s.dims()[1..])?;
        let m = inner.numel();
        let mut out = self.alloc(inner);
        out.data_mut()
            .copy_from_slice(&self.slots[ia as usize].value.data()[index * m..(index + 1) * m]);
        self.push1(Op::Select { index }, &[ia], out)
    }

    /// Swaps the first two axes of a rank-3 tensor: `[B, T, F]` becomes `[T, B, F]` and back
    /// (for batch-first sequences).
    pub fn swap01(&mut self, a: Var) -> Result<Var> {
        let ia = self.check("swap01", a)?;
        let s = self.slots[ia as usize].value.shape();
        let &[d0, d1, f] = s.dims() else {
            return Err(Error::invalid(
                "swap01",
                format!("expected a rank-3 tensor, got shape {s}"),
            ));
        };
        let mut out = self.alloc(Shape::new(&[d1, d0, f])?);
        swap01_into(
            self.slots[ia as usize].value.data(),
            out.data_mut(),
            d0,
            d1,
            f,
            false,
        );
        self.push1(Op::Swap01, &[ia], out)
    }

    /// The same elements under another shape with as many elements.
    pub fn reshape(&mut self, a: Var, dims: &[usize]) -> Result<Var> {
        let ia = self.check("reshape", a)?;
        let s = self.slots[ia as usize].value.shape();
        let new = Shape::new(dims)?;
        if new.numel() != s.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: s,
                rhs: new,
            });
        }
        let mut out = self.alloc(new);
        tensor::copy(out.data_mut(), self.slots[ia as usize].value.data());
        self.push1(Op::Reshape, &[ia], out)
    }
}

pub(super) fn concat_backward<T: Float>(ins: &[u32], gy: &Tensor<T>, acc: &mut GradAcc<'_, T>) {
    let total = gy.shape().last();
    let rows = gy.shape().rows();
    let mut off = 0;
    for &i in ins {
        let w = acc.slots[i as usize].value.shape().last();
        if acc.needs(i) {
            let d = acc.buf(i);
            for r in 0..rows {
                for c in 0..w {
                    d[r * w + c] += gy.data()[r * total + off + c];
                }
            }
        }
        off += w;
    }
}

pub(super) fn slice_backward<T: Float>(
    a: u32,
    start: usize,
    gy: &Tensor<T>,
    acc: &mut GradAcc<'_, T>,
) {
    if !acc.needs(a) {
        return;
    }
    let n = acc.slots[a as usize].value.shape().last();
    let w = gy.shape().last();
    let d = acc.buf(a);
    for r in 0..gy.shape().rows() {
        for c in 0..w {
            d[r * n + start + c] += gy.data()[r * w + c];
        }
    }
}

pub(super) fn stack_backward<T: Float>(ins: &[u32], gy: &Tensor<T>, acc: &mut GradAcc<'_, T>) {
    let m = gy.numel() / ins.len();
    for (k, &i) in ins.iter().enumerate() {
        if acc.needs(i) {
            for (d, &g) in acc.buf(i).iter_mut().zip(&gy.data()[k * m..(k + 1) * m]) {
                *d += g;
            }
        }
    }
}

pub(super) fn select_backward<T: Float>(
    a: u32,
    index: usize,
    gy: &Tensor<T>,
    acc: &mut GradAcc<'_, T>,
) {
    if acc.needs(a) {
        let m = gy.numel();
        for (d, &g) in acc.buf(a)[index * m..(index + 1) * m]
            .iter_mut()
            .zip(gy.data())
        {
            *d += g;
        }
    }
}

/// `dst[j, i, :] (op)= src[i, j, :]` for `src` shaped `[d0, d1, f]`; adds when `accumulate`.
fn swap01_into<T: Float>(
    src: &[T],
    dst: &mut [T],
    d0: usize,
    d1: usize,
    f: usize,
    accumulate: bool,
) {
    for i in 0..d0 {
        for j in 0..d1 {
            let s = &src[(i * d1 + j) * f..(i * d1 + j + 1) * f];
            let d = &mut dst[(j * d0 + i) * f..(j * d0 + i + 1) * f];
            if accumulate {
                for (x, &y) in d.iter_mut().zip(s) {
                    *x += y;
                }
            } else {
                d.copy_from_slice(s);
            }
        }
    }
}

pub(super) fn swap01_backward<T: Float>(a: u32, gy: &Tensor<T>, acc: &mut GradAcc<'_, T>) {
    if acc.needs(a) {
        // gy is [d1, d0, f]; swapping back gives a's layout.
        let (d1, d0, f) = (gy.dims()[0], gy.dims()[1], gy.dims()[2]);
        swap01_into(gy.data(), acc.buf(a), d1, d0, f, true);
    }
}

pub(super) fn reshape_backward<T: Float>(a: u32, gy: &Tensor<T>, acc: &mut GradAcc<'_, T>) {
    if acc.needs(a) {
        tensor::add(acc.buf(a), gy.data());
    }
}
