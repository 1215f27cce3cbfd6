//! Elementwise ops. Binary ops broadcast a row (shape `[n]` against a last dimension of `n`) or
//! a scalar over the left operand; their backward sums the broadcast gradient back.

use super::{GradAcc, Op};
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Shape, Tensor};
use crate::{Error, Result};

/// How the right operand of a binary op maps onto the left one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bcast {
    /// Same shape.
    Same,
    /// `b` is `[n]` and `n` is the last dimension of `a`: `b` is added to every row.
    Row,
    /// `b` has one element.
    Scalar,
}

impl Bcast {
    fn of(op: &'static str, a: Shape, b: Shape) -> Result<Bcast> {
        if a == b {
            Ok(Bcast::Same)
        } else if b.rank() == 1 && b.numel() == a.last() && a.rank() >= 1 {
            Ok(Bcast::Row)
        } else if b.numel() == 1 {
            Ok(Bcast::Scalar)
        } else {
            Err(Error::ShapeMismatch { op, lhs: a, rhs: b })
        }
    }

    /// Index into `b` for flat index `i` of `a` (last dimension `n`).
    #[inline(always)]
    fn j(self, i: usize, n: usize) -> usize {
        match self {
            Bcast::Same => i,
            Bcast::Row => i % n,
            Bcast::Scalar => 0,
        }
    }
}

impl<T: Float> Tape<T> {
    fn binary(
        &mut self,
        name: &'static str,
        a: Var,
        b: Var,
        op: fn(Bcast) -> Op<T>,
        f: impl Fn(T, T) -> T,
    ) -> Result<Var> {
        let ia = self.check(name, a)?;
        let ib = self.check(name, b)?;
        let (sa, sb) = (
            self.slots[ia as usize].value.shape(),
            self.slots[ib as usize].value.shape(),
        );
        let bc = Bcast::of(name, sa, sb)?;
        let mut out = self.alloc(sa);
        let (va, vb) = (
            self.slots[ia as usize].value.data(),
            self.slots[ib as usize].value.data(),
        );
        let n = sa.last();
        for (i, o) in out.data_mut().iter_mut().enumerate() {
            *o = f(va[i], vb[bc.j(i, n)]);
        }
        self.push1(op(bc), &[ia, ib], out)
    }

    /// `a + b`; `b` may be a row (`[n]` against last dimension `n`) or a scalar, broadcast.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary("add", a, b, Op::Add, |x, y| x + y)
    }

    /// `a - b`, broadcasting `b` as in [`Tape::add`].
    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary("sub", a, b, Op::Sub, |x, y| x - y)
    }

    /// Elementwise `a * b`, broadcasting `b` as in [`Tape::add`].
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary("mul", a, b, Op::Mul, |x, y| x * y)
    }

    /// `alpha * a`.
    pub fn scale(&mut self, a: Var, alpha: T) -> Result<Var> {
        self.unary("scale", a, Op::Scale(alpha), |x| alpha * x)
    }

    fn unary(&mut self, name: &'static str, a: Var, op: Op<T>, f: impl Fn(T) -> T) -> Result<Var> {
        let ia = self.check(name, a)?;
        let mut out = self.alloc(self.slots[ia as usize].value.shape());
        let va = self.slots[ia as usize].value.data();
        for (o, &x) in out.data_mut().iter_mut().zip(va) {
            *o = f(x);
        }
        self.push1(op, &[ia], out)
    }

    /// Logistic sigmoid `1 / (1 + e^-x)`; backward uses the saved output: `dy * y (1 - y)`.
    pub fn sigmoid(&mut self, a: Var) -> Result<Var> {
        self.unary("sigmoid", a, Op::Sigmoid, T::sigmoid)
    }

    /// `tanh(x)`; backward uses the saved output: `dy * (1 - y^2)`.
    pub fn tanh(&mut self, a: Var) -> Result<Var> {
        self.unary("tanh", a, Op::Tanh, T::tanh)
    }

    /// `max(x, 0)`; backward passes `dy` where the output is positive.
    pub fn relu(&mut self, a: Var) -> Result<Var> {
        self.unary(
            "relu",
            a,
            Op::Relu,
            |x| if x > T::ZERO { x } else { T::ZERO },
        )
    }

    /// `e^x`; backward: `dy * y`.
    pub fn exp(&mut self, a: Var) -> Result<Var> {
        self.unary("exp", a, Op::Exp, T::exp)
    }

    /// Natural logarithm; backward: `dy / x`. Non-positive inputs give NaN or -inf, which anomaly
    /// mode reports.
    pub fn log(&mut self, a: Var) -> Result<Var> {
        self.unary("log", a, Op::Log, T::ln)
    }
}

pub(super) fn add_backward<T: Float>(
    bc: Bcast,
    a: u32,
    b: u32,
    sign_b: T,
    gy: &Tensor<T>,
    acc: &mut GradAcc<'_, T>,
) {
    let g = gy.data();
    if acc.needs(a) {
        for (d, &x) in acc.buf(a).iter_mut().zip(g) {
            *d += x;
        }
    }
    if acc.needs(b) {
        let n = gy.shape().last();
        let db = acc.buf(b);
        for (i, &x) in g.iter().enumerate() {
            db[bc.j(i, n)] += sign_b * x;
        }
    }
}

pub(super) fn mul_backward<T: Float>(
    bc: Bcast,
    a: u32,
    b: u32,
    gy: &Tensor<T>,
    acc: &mut GradAcc<'_, T>,
) {
    let (va, vb) = (acc.value(a).data(), acc.value(b).data());
    let (g, n) = (gy.data(), gy.shape().last());
    if acc.needs(a) {
        let da = acc.buf(a);
        for (i, &x) in g.iter().enumerate() {
            da[i] += x * vb[bc.j(i, n)];
        }
    }
    if acc.needs(b) {
        let db = acc.buf(b);
        for (i, &x) in g.iter().enumerate() {
            db[bc.j(i, n)] += x * va[i];
        }
    }
}

pub(super) fn scale_backward<T: Float>(alpha: T, a: u32, gy: &Tensor<T>, acc: &mut GradAcc<'_, T>) {
    if acc.needs(a) {
        for (d, &x) in acc.buf(a).iter_mut().zip(gy.data()) {
            *d += alpha * x;
        }
    }
}

pub(super) fn unary_backward<T: Float>(
    op: &Op<T>,
    a: u32,
    y: &Tensor<T>,
    gy: &Tensor<T>,
    acc: &mut GradAcc<'_, T>,
) {
    if !acc.needs(a) {
        return;
    }
    let x = acc.value(a).data();
    let (y, g) = (y.data(), gy.data());
    let da = acc.buf(a);
    match op {
        Op::Sigmoid => {
            for i in 0..g.len() {
                da[i] += g[i] * y[i] * (T::ONE - y[i]);
            }
        }
        Op::Tanh => {
            for i in 0..g.len() {
                da[i] += g[i] * (T::ONE - y[i] * y[i]);
            }
        }
        Op::Relu => {
            for i in 0..g.len() {
                if y[i] > T::ZERO {
                    da[i] += g[i];
                }
            }
        }
        Op::Exp => {
            for i in 0..g.len() {
                da[i] += g[i] * y[i];
            }
        }
        Op::Log => {
            for i in 0..g.len() {
                da[i] += g[i] / x[i];
            }
        }
        _ => unreachable!("unary_backward called for {}", op.name()),
    }
}
