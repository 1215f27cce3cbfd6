//! `Shape`: the dimensions of a tensor, up to rank 4, stored inline (no heap allocation).

use std::fmt;

use crate::{Error, Result};

/// The largest rank a [`Shape`] holds. Recurrent models need at most [T, B, F] plus one.
pub const MAX_RANK: usize = 4;

/// The dimensions of a tensor, outermost first (row-major). Rank 0 is a scalar.
///
/// ```
/// use recur::Shape;
/// let s = Shape::new(&[3, 2, 4]).unwrap();
/// assert_eq!(s.numel(), 24);
/// assert_eq!(s.dims(), &[3, 2, 4]);
/// assert!(Shape::new(&[3, 0]).is_err()); // zero-size dimensions are rejected
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// A shape from its dimensions. Fails on rank > 4, a zero dimension, or overflow.
    pub fn new(dims: &[usize]) -> Result<Self> {
        if dims.len() > MAX_RANK {
            return Err(Error::invalid(
                "Shape::new",
                format!(
                    "rank {} exceeds the maximum {MAX_RANK} (dims {dims:?})",
                    dims.len()
                ),
            ));
        }
        let mut numel: usize = 1;
        for &d in dims {
            if d == 0 {
                return Err(Error::invalid(
                    "Shape::new",
                    format!("zero-size dimension in {dims:?}"),
                ));
            }
            numel = numel.checked_mul(d).ok_or_else(|| {
                Error::invalid("Shape::new", format!("element count of {dims:?} overflows"))
            })?;
        }
        let mut s = Shape {
            dims: [0; MAX_RANK],
            rank: dims.len() as u8,
        };
        s.dims[..dims.len()].copy_from_slice(dims);
        Ok(s)
    }

    /// The scalar shape `[]` (one element).
    pub const fn scalar() -> Self {
        Shape {
            dims: [0; MAX_RANK],
            rank: 0,
        }
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.rank as usize
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// The last (innermost) dimension; 1 for a scalar.
    pub fn last(&self) -> usize {
        self.dims().last().copied().unwrap_or(1)
    }

    /// Number of rows when the tensor is viewed as a matrix [numel / last, last].
    pub fn rows(&self) -> usize {
        self.numel() / self.last()
    }

    /// This shape with the last dimension replaced by `n`.
    pub fn with_last(&self, n: usize) -> Result<Self> {
        let mut d = *self;
        if d.rank == 0 {
            return Shape::new(&[n]);
        }
        d.dims[d.rank as usize - 1] = n;
        Shape::new(d.dims())
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl TryFrom<&[usize]> for Shape {
    type Error = Error;
    fn try_from(d: &[usize]) -> Result<Self> {
        Shape::new(d)
    }
}

impl<const N: usize> TryFrom<[usize; N]> for Shape {
    type Error = Error;
    fn try_from(d: [usize; N]) -> Result<Self> {
        Shape::new(&d)
    }
}
