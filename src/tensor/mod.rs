//! `Tensor<T>`: an owned, contiguous, row-major buffer with a shape.

mod bulk;
mod float;
mod shape;
mod stats;

pub use crate::kernels::gemm::GemmShape;
pub use crate::kernels::simd::SimdFloat;
pub use float::Float;
pub use shape::{MAX_RANK, Shape};
pub use stats::accuracy;

pub(crate) use bulk::{add, add_col_sums, add_scalar, copy, fill, sum_f64};

use crate::{Error, Result};

/// An owned, contiguous, row-major array of `f32` or `f64` with a [`Shape`].
///
/// Tensors are plain values: no views, no strides. A transpose is a flag on the matrix product,
/// not a different layout.
///
/// ```
/// use recur::Tensor;
/// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
/// assert_eq!(t.dims(), &[2, 3]);
/// assert_eq!(t.get(&[1, 2]).unwrap(), 6.0);
/// // data and shape must agree:
/// assert!(Tensor::from_vec(vec![1.0f32; 5], &[2, 3]).is_err());
/// ```
#[derive(Clone, PartialEq)]
pub struct Tensor<T> {
    data: Vec<T>,
    shape: Shape,
}

impl<T: Float> Tensor<T> {
    /// A tensor from data in row-major order; fails when `data.len()` is not the shape's size.
    pub fn from_vec(data: Vec<T>, dims: &[usize]) -> Result<Self> {
        let shape = Shape::new(dims)?;
        Self::from_vec_shape(data, shape)
    }

    /// Like [`Tensor::from_vec`], with a ready [`Shape`].
    pub fn from_vec_shape(data: Vec<T>, shape: Shape) -> Result<Self> {
        if data.len() != shape.numel() {
            return Err(Error::invalid(
                "Tensor::from_vec",
                format!(
                    "data has {} elements but shape {shape} needs {}",
                    data.len(),
                    shape.numel()
                ),
            ));
        }
        Ok(Tensor { data, shape })
    }

    /// A tensor copied from a slice.
    pub fn from_slice(data: &[T], dims: &[usize]) -> Result<Self> {
        Self::from_vec(data.to_vec(), dims)
    }

    /// All zeros.
    pub fn zeros(dims: &[usize]) -> Result<Self> {
        let shape = Shape::new(dims)?;
        Ok(Self::zeros_shape(shape))
    }

    /// All zeros, with a ready [`Shape`].
    pub fn zeros_shape(shape: Shape) -> Self {
        Tensor {
            data: vec![T::ZERO; shape.numel()],
            shape,
        }
    }

    /// Every element `value`.
    pub fn full(dims: &[usize], value: T) -> Result<Self> {
        let shape = Shape::new(dims)?;
        Ok(Tensor {
            data: vec![value; shape.numel()],
            shape,
        })
    }

    /// A scalar (rank-0) tensor.
    pub fn scalar(value: T) -> Self {
        Tensor {
            data: vec![value],
            shape: Shape::scalar(),
        }
    }

    /// A tensor whose element at flat index `i` is `f(i)`.
    pub fn from_fn(dims: &[usize], f: impl FnMut(usize) -> T) -> Result<Self> {
        let shape = Shape::new(dims)?;
        Ok(Tensor {
            data: (0..shape.numel()).map(f).collect(),
            shape,
        })
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The elements in row-major order.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The elements in row-major order, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The elements, consuming the tensor.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }

    /// The same data under another shape with the same number of elements.
    pub fn reshape(mut self, dims: &[usize]) -> Result<Self> {
        let shape = Shape::new(dims)?;
        if shape.numel() != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "Tensor::reshape",
                lhs: self.shape,
                rhs: shape,
            });
        }
        self.shape = shape;
        Ok(self)
    }

    /// The element at a multi-index; fails on a wrong rank or an index out of range.
    pub fn get(&self, index: &[usize]) -> Result<T> {
        Ok(self.data[self.offset(index)?])
    }

    /// Sets the element at a multi-index.
    pub fn set(&mut self, index: &[usize], value: T) -> Result<()> {
        let o = self.offset(index)?;
        self.data[o] = value;
        Ok(())
    }

    fn offset(&self, index: &[usize]) -> Result<usize> {
        let dims = self.shape.dims();
        if index.len() != dims.len() {
            return Err(Error::invalid(
                "Tensor::get",
                format!(
                    "index {index:?} has rank {} but the shape is {}",
                    index.len(),
                    self.shape
                ),
            ));
        }
        let mut o = 0;
        for (&i, &d) in index.iter().zip(dims) {
            if i >= d {
                return Err(Error::IndexOutOfRange {
                    op: "Tensor::get",
                    index: i,
                    size: d,
                });
            }
            o = o * d + i;
        }
        Ok(o)
    }

    /// Converts every element to another float type.
    pub fn cast<U: Float>(&self) -> Tensor<U> {
        Tensor {
            data: self.data.iter().map(|&x| U::from_f64(x.to_f64())).collect(),
            shape: self.shape,
        }
    }

    /// The largest absolute element difference to `other`; fails on different shapes.
    pub fn max_abs_diff(&self, other: &Tensor<T>) -> Result<f64> {
        if self.shape != other.shape {
            return Err(Error::ShapeMismatch {
                op: "Tensor::max_abs_diff",
                lhs: self.shape,
                rhs: other.shape,
            });
        }
        Ok(self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a.to_f64() - b.to_f64()).abs())
            .fold(0.0, f64::max))
    }

    /// Sum of all elements, accumulated in f64 in a fixed order that depends only on the length
    /// (eight interleaved partial sums per chunk of 32768 values, the chunks' sums in order),
    /// never on the number of threads it runs on.
    pub fn sum(&self) -> f64 {
        sum_f64(&self.data, |x| x)
    }

    /// Euclidean (Frobenius) norm, accumulated in f64 as [`Tensor::sum`] is.
    pub fn norm(&self) -> f64 {
        sum_f64(&self.data, |x| x * x).sqrt()
    }

    /// Every element finite (no NaN, no infinity).
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }

    /// Trades this tensor's elements with `v`'s (crate-internal: a buffer computed elsewhere
    /// becomes the tensor's without a copy). Panics if the lengths differ.
    pub(crate) fn swap_data(&mut self, v: &mut Vec<T>) {
        assert_eq!(
            v.len(),
            self.data.len(),
            "Tensor::swap_data: length mismatch"
        );
        std::mem::swap(&mut self.data, v);
    }

    /// Builds from parts already known to agree (crate-internal fast path).
    pub(crate) fn from_parts(data: Vec<T>, shape: Shape) -> Self {
        debug_assert_eq!(data.len(), shape.numel());
        Tensor { data, shape }
    }
}

impl<T: Float> std::fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOW: usize = 16;
        write!(f, "Tensor<{}>{} [", T::DTYPE, self.shape)?;
        for (i, x) in self.data.iter().take(SHOW).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{x:.6}")?;
        }
        if self.data.len() > SHOW {
            write!(f, ", ... ({} more)", self.data.len() - SHOW)?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::values;

    #[test]
    fn sum_and_norm_agree_with_a_sequential_sum() {
        let xs: Vec<f64> = values(7, 12_345, 3.0);
        let t = Tensor::from_vec(xs.clone(), &[12_345]).unwrap();
        let seq: f64 = xs.iter().sum();
        let seq_sq: f64 = xs.iter().map(|x| x * x).sum();
        assert!((t.sum() - seq).abs() <= 1e-12 * seq_sq.sqrt() * 12_345f64.sqrt());
        assert!((t.norm() - seq_sq.sqrt()).abs() <= 1e-13 * seq_sq.sqrt());
        let v = Tensor::from_vec(vec![3.0f32, 4.0], &[2]).unwrap();
        assert_eq!(v.norm(), 5.0);
    }
}
