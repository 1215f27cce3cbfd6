//! Matrix product: forward `C = op(A) op(B)`, backward `dA = dC op(B)^T`, `dB = op(A)^T dC`.

use super::{GradAcc, Op};
use crate::kernels::bf16::Bf16Kernel;
use crate::precision::gemm;
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Shape, Tensor};
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
