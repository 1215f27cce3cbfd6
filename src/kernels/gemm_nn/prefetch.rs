//! Prefetching the next panel of a packed `B` that streams from L3 at every call, one cache line
//! per step of `k` while the current panel's tiles run.

use super::packing::{PackedB, panel};
use super::tile::prefetch_l2;
use crate::kernels::simd::SimdFloat;

/// Above this size a packed B is taken not to stay in L2 between calls (L2 is 1-2 MiB per core
/// on current x86 CPUs, shared with the rest of a step's data): its tiles then prefetch.
pub const STREAMED_BYTES: usize = 1 << 20;

/// Bytes per cache line, the unit of a prefetch.
pub(super) const LINE: usize = 64;

/// The cache lines one tile asks for ahead of use: lines `first`, `first + stride`, ... below
/// `lines`, of the contiguous run of B that starts at `base`, one per step of k.
#[derive(Clone, Copy)]
pub(super) struct Prefetch {
    pub(super) base: *const u8,
    pub(super) lines: usize,
    pub(super) first: usize,
    pub(super) stride: usize,
}

impl Prefetch {
    pub(super) fn none() -> Self {
        Prefetch {
            base: std::ptr::null(),
            lines: 0,
            first: 0,
            stride: 1,
        }
    }

    /// Rows `ks` of panel `q` of `b` (none past its last panel), shared by `tiles` tiles.
    pub(super) fn new<T: SimdFloat>(
        b: &PackedB<T>,
        q: usize,
        ks: std::ops::Range<usize>,
        tiles: usize,
    ) -> Self {
        let p = panel::<T>();
        if q >= b.n.div_ceil(p) {
            return Prefetch::none();
        }
        let start = (q * b.k + ks.start) * p;
        let bytes = ks.len() * p * std::mem::size_of::<T>();
        Prefetch {
            // In bounds: the run `[start, start + ks.len() p)` lies in panel `q` of the values.
            base: b.values()[start..].as_ptr().cast(),
            lines: bytes.div_ceil(LINE),
            first: 0,
            stride: tiles,
        }
    }

    /// The share of tile `t`: every `stride`-th line from line `t`.
    pub(super) fn part(self, t: usize) -> Self {
        Prefetch { first: t, ..self }
    }

    /// Asks for the line of step `r` (counted from the tile's first step of k), if any.
    #[inline(always)]
    pub(super) fn at(self, r: usize) {
        let line = self.first + r * self.stride;
        if line < self.lines {
            prefetch_l2(self.base.wrapping_add(line * LINE));
        }
    }
}
