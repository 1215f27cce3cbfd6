//! The element types recur computes in: `f32` and `f64`.

use std::fmt::{Debug, Display};

use crate::kernels::SimdFloat;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// `C = alpha * op(A) op(B) + beta * C` on row-major slices of `T`.
pub type Gemm<T> = fn(crate::kernels::GemmShape, T, &[T], &[T], T, &mut [T]);

/// Rows `rows` of a [`Gemm`]'s product, `C[rows] = alpha * op(A)[rows] op(B) + beta * C[rows]`,
/// with the last slice holding just those rows of `C`.
pub type GemmRows<T> =
    fn(crate::kernels::GemmShape, std::ops::Range<usize>, T, &[T], &[T], T, &mut [T]);

/// A floating-point element type: implemented for `f32` and `f64`.
///
/// It carries the scalar math the reference ops need and the matrix product the kernels
/// dispatch to (`sgemm` or `dgemm`), and through [`SimdFloat`] the vector type and vectorised
/// `exp`, `sigmoid` and `tanh` of the kernels.
pub trait Float:
    SimdFloat
    + Copy
    + Send
    + Sync
    + Default
    + Debug
    + Display
    + PartialOrd
    + Sum
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// The safetensors dtype name ("F32" or "F64").
    const DTYPE: &'static str;
    /// Machine epsilon.
    const EPSILON: Self;
    /// Converts from `f64` (rounding for `f32`).
    fn from_f64(x: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Converts from `usize`.
    fn from_usize(x: usize) -> Self {
        Self::from_f64(x as f64)
    }
    /// e^x.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// The larger of two values (NaN-ignoring, as `f32::max`).
    fn max(self, other: Self) -> Self;
    /// The smaller of two values.
    fn min(self, other: Self) -> Self;
    /// `self^n`.
    fn powi(self, n: i32) -> Self;
    /// Neither NaN nor infinite.
    fn is_finite(self) -> bool;
    /// The matrix product of this type (sgemm or dgemm), called by [`Float::gemm`].
    const GEMM: Gemm<Self>;
    /// Rows of [`Float::GEMM`]'s product, `C[rows] = alpha * op(A)[rows] op(B) + beta *
    /// C[rows]` with the last slice holding just those rows of `C`. Cut at a multiple of 64
    /// rows, each row gets the values the whole product gives it: how a product splits between
    /// threads without changing its result.
    ///
    /// ```
    /// use recur::tensor::{Float, GemmShape};
    /// let (m, k, n) = (80, 3, 2);
    /// let s = GemmShape { m, k, n, trans_a: false, trans_b: false };
    /// let a: Vec<f64> = (0..m * k).map(|i| i as f64 * 0.01).collect();
    /// let b = [1.0, -1.0, 0.5, 2.0, 0.25, 0.0];
    /// let mut whole = vec![0.0; m * n];
    /// f64::gemm(s, 1.0, &a, &b, 0.0, &mut whole);
    /// let mut parts = vec![0.0; m * n];
    /// let (top, bottom) = parts.split_at_mut(64 * n);
    /// (f64::GEMM_ROWS)(s, 0..64, 1.0, &a, &b, 0.0, top);
    /// (f64::GEMM_ROWS)(s, 64..m, 1.0, &a, &b, 0.0, bottom);
    /// assert_eq!(parts, whole);
    /// ```
    const GEMM_ROWS: GemmRows<Self>;
    /// `C = alpha * op(A) op(B) + beta * C` on row-major slices (sgemm or dgemm).
    #[inline(always)]
    fn gemm(
        s: crate::kernels::GemmShape,
        alpha: Self,
        a: &[Self],
        b: &[Self],
        beta: Self,
        c: &mut [Self],
    ) {
        (Self::GEMM)(s, alpha, a, b, beta, c)
    }
    /// The values as `f32`, when this type is `f32` (`None` for `f64`): how the products in
    /// bf16, which only `f32` training has, reach their operands from generic code.
    ///
    /// ```
    /// use recur::Float;
    /// assert_eq!(f32::as_f32(&[1.5f32, 2.0]), Some(&[1.5f32, 2.0][..]));
    /// assert_eq!(f64::as_f32(&[1.5f64]), None);
    /// ```
    fn as_f32(x: &[Self]) -> Option<&[f32]>;
    /// [`Float::as_f32`], mutable.
    fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]>;
    /// The logistic sigmoid 1 / (1 + e^-x), computed without overflow.
    fn sigmoid(self) -> Self {
        if self >= Self::ZERO {
            Self::ONE / (Self::ONE + (-self).exp())
        } else {
            let e = self.exp();
            e / (Self::ONE + e)
        }
    }
}

/// Trait methods that call the float type's inherent method of the same name.
macro_rules! inherent_methods {
    ($t:ty, $($f:ident($($arg:ident: $at:ty),*) -> $r:ty),+ $(,)?) => {
        $(
            #[inline(always)]
            fn $f(self $(, $arg: $at)*) -> $r {
                <$t>::$f(self $(, $arg)*)
            }
        )+
    };
}

macro_rules! impl_float {
    ($t:ty, $name:expr, $gemm:path, $gemm_rows:path, $as_f32:expr) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const DTYPE: &'static str = $name;
            const EPSILON: Self = <$t>::EPSILON;
            const GEMM: Gemm<Self> = $gemm;
            const GEMM_ROWS: GemmRows<Self> = $gemm_rows;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            inherent_methods!(
                $t,
                exp() -> Self,
                ln() -> Self,
                tanh() -> Self,
                sqrt() -> Self,
                abs() -> Self,
                max(other: Self) -> Self,
                min(other: Self) -> Self,
                powi(n: i32) -> Self,
                is_finite() -> bool,
            );
            #[inline(always)]
            fn as_f32(x: &[Self]) -> Option<&[f32]> {
                ($as_f32)(x)
            }
            #[inline(always)]
            fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]> {
                ($as_f32)(x)
            }
        }
    };
}

impl_float!(
    f32,
    "F32",
    crate::kernels::gemm::sgemm,
    crate::kernels::gemm::sgemm_rows,
    Some
);
impl_float!(
    f64,
    "F64",
    crate::kernels::gemm::dgemm,
    crate::kernels::gemm::dgemm_rows,
    |_| None
);
