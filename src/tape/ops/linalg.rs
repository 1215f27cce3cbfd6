//! Matrix product: forward `C = op(A) op(B)`, backward `dA = dC op(B)^T`, `dB = op(A)^T dC`.

use super::{GradAcc, Op};
use crate::kernels::bf16::Bf16Kernel;
use crate::precision::gemm;
use crate::tape::{Tape, Var};
use crate::tensor::{self, Float, Shape, Tensor};
use crate::{Error, Result};

/// (rows, cols) of a rank-2 tensor, or an error naming the op and the shape.
fn matrix_dims(op: &'static str, s: Shape) -> Result<(usize, usize)> {
    match s.dims() {
        &[r, c] => Ok((r, c)),
        _ => Err(Error::invalid(
            op,
            format!("expected a matrix (rank 2), got shape {s}"),
        )),
    }
}

impl<T: Float> Tape<T> {
    /// Matrix product `a b` of `[m, k]` and `[k, n]` matrices.
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.matmul_t(a, false, b, false)
    }

    /// Matrix product with either operand read transposed: `op(a) op(b)`, where `op(x)` is `x^T`
    /// when its flag is set. No transposed copy is made.
    ///
    /// ```
    /// # use recur::{Tape, Tensor};
    /// let mut tape = Tape::<f64>::new();
    /// let x = tape.constant(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?);
    /// let w = tape.constant(Tensor::from_vec(vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0], &[2, 3])?);
    /// let y = tape.matmul_t(x, false, w, true)?; // x w^T: [2, 2]
    /// assert_eq!(tape.value(y)?.data(), &[4.0, 5.0, 10.0, 11.0]);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn matmul_t(&mut self, a: Var, trans_a: bool, b: Var, trans_b: bool) -> Result<Var> {
        let ia = self.check("matmul", a)?;
        let ib = self.check("matmul", b)?;
        let sa = self.slots[ia as usize].value.shape();
        let sb = self.slots[ib as usize].value.shape();
        let (ra, ca) = matrix_dims("matmul", sa)?;
        let (rb, cb) = matrix_dims("matmul", sb)?;
        let (m, k) = if trans_a { (ca, ra) } else { (ra, ca) };
        let (k2, n) = if trans_b { (cb, rb) } else { (rb, cb) };
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op: "matmul (inner dimensions)",
                lhs: sa,
                rhs: sb,
            });
        }
        let mut out = self.alloc(Shape::new(&[m, n])?);
        let (va, vb) = (
            &self.slots[ia as usize].value,
            &self.slots[ib as usize].value,
        );
        let bf16 = self.bf16_kernel();
        let (trans, c) = ((trans_a, trans_b), out.data_mut());
        gemm(bf16, (m, k, n), trans, va.data(), vb.data(), T::ZERO, c);
        let op = Op::MatMul {
            trans_a,
            trans_b,
            bf16,
        };
        self.push1(op, &[ia, ib], out)
    }

    /// `x W^T + b`, PyTorch's `F.linear`: `x` is `[..., in]` (any leading dimensions, all their
    /// rows in one matrix product), `w` is `[out, in]` and `b`, if given, `[out]`; the result is
    /// `[..., out]`. One node, with the values of `add(matmul_t(x, false, w, true), b)` on `x` as
    /// a matrix, without reshaped copies of `x` or of the result or a node for the sum.
    ///
    /// ```
    /// # use recur::{Tape, Tensor};
    /// let mut tape = Tape::<f64>::new();
    /// let x = tape.constant(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 1, 2])?); // [T, B, in]
    /// let w = tape.constant(Tensor::from_vec(vec![1.0, 0.0, 1.0, 1.0, 0.0, 2.0], &[3, 2])?);
    /// let b = tape.constant(Tensor::from_vec(vec![0.5, 0.0, -1.0], &[3])?);
    /// let y = tape.linear(x, w, Some(b))?;
    /// assert_eq!(tape.shape(y)?.dims(), &[2, 1, 3]);
    /// assert_eq!(tape.value(y)?.data(), &[1.5, 3.0, 3.0, 3.5, 7.0, 7.0]);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let ix = self.check("linear", x)?;
        let iw = self.check("linear", w)?;
        let ib = b.map(|b| self.check("linear", b)).transpose()?;
        let sx = self.slots[ix as usize].value.shape();
        let sw = self.slots[iw as usize].value.shape();
        let (n, k) = matrix_dims("linear (weight)", sw)?;
        if sx.rank() == 0 || sx.last() != k {
            return Err(Error::ShapeMismatch {
                op: "linear (input features against the weight's columns)",
                lhs: sx,
                rhs: sw,
            });
        }
        if let Some(ib) = ib {
            let sb = self.slots[ib as usize].value.shape();
            if sb.dims() != [n] {
                return Err(Error::ShapeMismatch {
                    op: "linear (bias against the weight's rows)",
                    lhs: sb,
                    rhs: sw,
                });
            }
        }
        let mut dims = sx.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = n;
        let mut out = self.alloc(Shape::new(&dims)?);
        let rows = sx.rows();
        let bf16 = self.bf16_kernel();
        let c = out.data_mut();
        let vx = self.slots[ix as usize].value.data();
        gemm(
            bf16,
            (rows, k, n),
            (false, true),
            vx,
            self.slots[iw as usize].value.data(),
            T::ZERO,
            c,
        );
        if let (Some(ib), true) = (ib, n > 0) {
            let bias = self.slots[ib as usize].value.data();
            for row in c.chunks_exact_mut(n) {
                tensor::add(row, bias);
            }
        }
        let ins: Vec<u32> = [ix, iw].into_iter().chain(ib).collect();
        self.push1(Op::Linear { bf16 }, &ins, out)
    }
}

/// `y = x W^T + b` backward: `dX += dY W`, `dW += dY^T X`, `db +=` the sum of `dY`'s rows
/// (`ins` = `[x, w]` or `[x, w, b]`).
pub(super) fn linear_backward<T: Float>(
    bf16: Option<Bf16Kernel>,
    ins: &[u32],
    gy: &Tensor<T>,
    acc: &mut GradAcc<'_, T>,
) {
    let (x, w) = (ins[0], ins[1]);
    let (vx, vw) = (acc.value(x).data(), acc.value(w).data());
    let (n, k) = (gy.shape().last(), acc.value(w).dims()[1]);
    let (rows, g) = (gy.shape().rows(), gy.data());
    if acc.needs(x) {
        // A first contribution sets dX (every value is written).
        let (dx, new) = acc.buf_or_new(x);
        let beta = if new { T::ZERO } else { T::ONE };
        gemm(bf16, (rows, n, k), (false, false), g, vw, beta, dx);
    }
    if acc.needs(w) {
        gemm(bf16, (n, rows, k), (true, false), g, vx, T::ONE, acc.buf(w));
    }
    if let Some(&b) = ins.get(2).filter(|&&b| acc.needs(b)) {
        tensor::add_col_sums(acc.buf(b), g);
    }
}

pub(super) fn matmul_backward<T: Float>(
    (trans_a, trans_b): (bool, bool),
    bf16: Option<Bf16Kernel>,
    a: u32,
    b: u32,
    dc: &Tensor<T>,
    acc: &mut GradAcc<'_, T>,
) {
    let (va, vb) = (acc.value(a), acc.value(b));
    let (m, n) = (dc.dims()[0], dc.dims()[1]);
    let k = va.dims()[if trans_a { 0 } else { 1 }];
    let (va, vb, dc) = (va.data(), vb.data(), dc.data());
    if acc.needs(a) {
        let da = acc.buf(a);
        if !trans_a {
            // dA[m,k] += dC[m,n] op(B)^T
            gemm(bf16, (m, n, k), (false, !trans_b), dc, vb, T::ONE, da);
        } else {
            // A is stored [k,m]: dA += op(B) dC^T
            gemm(bf16, (k, n, m), (trans_b, true), vb, dc, T::ONE, da);
        }
    }
    if acc.needs(b) {
        let db = acc.buf(b);
        if !trans_b {
            // dB[k,n] += op(A)^T dC
            gemm(bf16, (k, m, n), (!trans_a, false), va, dc, T::ONE, db);
        } else {
            // B is stored [n,k]: dB += dC^T op(A)
            gemm(bf16, (n, m, k), (true, trans_a), dc, va, T::ONE, db);
        }
    }
}
