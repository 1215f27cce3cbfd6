//! The order in which a per-step kernel walks a weight matrix.

/// The order in which a per-step product walks its weight matrix: the panels of a packed `B`
/// (`gemm_nn::gemm_packed_acc_cols`) or the rows of `W_hh` as stored
/// ([`super::gemv::gemv_rows_acc`]). It changes no value, only which part of the matrix is
/// read first.
///
/// A matrix a little larger than L2, read in the same order at every step, misses in L2 all
/// the way through: each line is evicted just before it is needed again. Read in the two orders
/// alternately, each step starts on the part the previous step read last, still in L2, and only
/// the rest comes from L3, which shortens the single-row step over a weight a little larger
/// than L2 (such as `[W_ih^T; W_hh^T]` of an LSTM with `H = 256` against a 1 MiB L2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sweep {
    /// First row (or panel) first.
    #[default]
    Ascending,
    /// Last row (or panel) first.
    Descending,
}

impl Sweep {
    /// The other order.
    pub fn reversed(self) -> Self {
        match self {
            Sweep::Ascending => Sweep::Descending,
            Sweep::Descending => Sweep::Ascending,
        }
    }

    /// The order of step `s` of a sequence: ascending at even steps, descending at odd ones.
    pub fn alternate(s: usize) -> Self {
        if s.is_multiple_of(2) {
            Sweep::Ascending
        } else {
            Sweep::Descending
        }
    }

    /// The `i`-th of `range`'s values in this order (`i < range.len()`).
    ///
    /// ```
    /// use recur::internals::Sweep;
    /// assert_eq!(Sweep::Ascending.nth(&(2..6), 0), 2);
    /// assert_eq!(Sweep::Descending.nth(&(2..6), 0), 5);
    /// ```
    pub fn nth(self, range: &std::ops::Range<usize>, i: usize) -> usize {
        match self {
            Sweep::Ascending => range.start + i,
            Sweep::Descending => range.end - 1 - i,
        }
    }
}
