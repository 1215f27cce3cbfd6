//! The packed operand: `B` (`k x n`) as panels of [`panel`]`::<T>()` columns, each `k` rows of
//! contiguous values on a cache line, packed as stored, transposed, or from stacked parts.

use super::PARALLEL_PACK_BYTES;
use crate::kernels::aligned::AlignedBuf;
use crate::kernels::simd::SimdFloat;

/// Vectors per panel.
pub(super) const NV: usize = 4;

/// Columns per panel for element type `T`.
pub fn panel<T: SimdFloat>() -> usize {
    NV * T::LANES
}

/// A `k x n` matrix packed in column panels for [`gemm_packed_acc`](super::gemm_packed_acc).
///
/// The values start on a cache-line boundary inside the buffer ([`AlignedBuf`]): the single-row
/// product, bound by the rate at which `B` streams from L2, runs considerably slower on values
/// off a line, where every vector load touches two lines. A clone is packed into a buffer of
/// its own, aligned the same way.
#[derive(Debug, Default)]
pub struct PackedB<T> {
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) buf: AlignedBuf<T>,
}

impl<T: SimdFloat> Clone for PackedB<T> {
    fn clone(&self) -> Self {
        PackedB {
            k: self.k,
            n: self.n,
            buf: self.buf.clone(),
        }
    }
}

impl<T: SimdFloat> PackedB<T> {
    /// An empty packing (0 x 0); fill it with [`PackedB::pack`] or [`PackedB::pack_transposed`].
    pub fn new() -> Self {
        Self::from_buffer(Vec::new())
    }

    /// An empty packing that will reuse `buf`'s memory (its contents do not matter).
    pub fn from_buffer(buf: Vec<T>) -> Self {
        PackedB {
            k: 0,
            n: 0,
            buf: AlignedBuf::from_buffer(buf),
        }
    }

    /// The packing's memory, for reuse.
    pub fn into_buffer(self) -> Vec<T> {
        self.buf.into_buffer()
    }

    /// Rows `k` of the packed matrix.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns `n` of the packed matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The length of a buffer that holds a packing of a `k x n` matrix (`n` rounded up to whole
    /// panels, and room to align the values), so a buffer for [`PackedB::from_buffer`] can be
    /// sized to need no growth. Panics if it overflows `usize`.
    pub fn packed_len(k: usize, n: usize) -> usize {
        AlignedBuf::<T>::buffer_len(Self::values_len(k, n))
    }

    /// The number of packed values of a `k x n` matrix: `n` rounded up to whole panels.
    pub(super) fn values_len(k: usize, n: usize) -> usize {
        let p = panel::<T>();
        // Checked: every later bound on panel offsets, `(q + Q) * k * p` with `q + Q <= panels`,
        // is then free of overflow too.
        n.div_ceil(p)
            .checked_mul(k)
            .and_then(|x| x.checked_mul(p))
            .expect("PackedB: packed size overflows usize")
    }

    /// Sets the shape and makes room for its packed values (stale values may stay: packing
    /// overwrites every value it uses, the padding included).
    pub(super) fn resize(&mut self, k: usize, n: usize) {
        self.k = k;
        self.n = n;
        self.buf.resize(Self::values_len(k, n));
    }

    /// The packed values: `n.div_ceil(panel)` panels of `k` rows of `panel` values.
    pub(super) fn values(&self) -> &[T] {
        self.buf.values()
    }

    /// The packed values, to be written.
    pub(super) fn values_mut(&mut self) -> &mut [T] {
        self.buf.values_mut()
    }

    /// Runs `fill(q, values)` for every panel `q` of the packing: on rayon's pool, a panel a
    /// task, when the packing is [`PARALLEL_PACK_BYTES`] or more and the pool has more than one
    /// thread (each panel's values are the same either way).
    pub(super) fn fill_panels(&mut self, fill: impl Fn(usize, &mut [T]) + Sync) {
        let len = (self.k * panel::<T>()).max(1);
        let values = self.values_mut();
        let bytes = std::mem::size_of_val(values);
        if bytes >= PARALLEL_PACK_BYTES && crate::threads::parallel() {
            use rayon::prelude::*;
            values
                .par_chunks_exact_mut(len)
                .enumerate()
                .for_each(|(q, pd)| fill(q, pd));
        } else {
            for (q, pd) in values.chunks_exact_mut(len).enumerate() {
                fill(q, pd);
            }
        }
    }

    /// Packs `b`, a row-major `k x n` matrix. Panics if `b` is shorter than `k * n`.
    pub fn pack(&mut self, b: &[T], k: usize, n: usize) {
        let len = k
            .checked_mul(n)
            .expect("PackedB: packed size overflows usize");
        assert!(b.len() >= len, "PackedB::pack: buffer too small");
        self.pack_stacked(&[&b[..len]], n);
    }

    /// Packs `[b_1; b_2; ...]`, row-major matrices of `n` columns (`b_i.len() / n` rows each)
    /// stacked along k: the rows of `b_1`, then of `b_2`, and so on. Panics if `n` is zero while
    /// a part is not empty, or a part's length is not a multiple of `n`.
    pub fn pack_stacked(&mut self, parts: &[&[T]], n: usize) {
        let k = stacked_rows("PackedB::pack_stacked", parts, n);
        self.resize(k, n);
        let p = panel::<T>();
        self.fill_panels(|q, pd| {
            let (j0, w) = (q * p, p.min(n - q * p));
            let rows = parts.iter().flat_map(|b| b.chunks_exact(n.max(1)));
            for (row, out) in rows.zip(pd.chunks_exact_mut(p)) {
                out[..w].copy_from_slice(&row[j0..j0 + w]);
                out[w..].fill(T::default());
            }
        });
    }

    /// Packs `w^T`, where `w` is a row-major `n x k` matrix (a weight in `[out, in]` layout), so
    /// that `A B = A w^T`. Panics if `w` is shorter than `n * k`.
    pub fn pack_transposed(&mut self, w: &[T], n: usize, k: usize) {
        self.pack_transposed_stacked(&[(w, k)], n);
    }

    /// Packs `[w_1^T; w_2^T; ...]`, the transposes of weights `w_i` (row-major `n x k_i`, the
    /// same `n` outputs) stacked along k, `k = k_1 + k_2 + ...`: with `A = [a_1 a_2 ...]`,
    /// `A B = a_1 w_1^T + a_2 w_2^T + ...` in one product, each value accumulated over the
    /// parts in order, as the products one after another onto the same `C` would. Panics if a
    /// `w_i` is shorter than `n * k_i`.
    pub fn pack_transposed_stacked(&mut self, parts: &[(&[T], usize)], n: usize) {
        let k = parts
            .iter()
            .try_fold(0usize, |k, &(_, ki)| k.checked_add(ki))
            .expect("PackedB: packed size overflows usize");
        self.resize(k, n);
        for &(w, ki) in parts {
            assert!(
                w.len() >= n * ki,
                "PackedB::pack_transposed: buffer too small"
            );
        }
        let (p, l) = (panel::<T>(), T::LANES);
        self.fill_panels(|q, pd| {
            let (j0, wd) = (q * p, p.min(n - q * p));
            let mut rows = pd;
            for &(w, ki) in parts {
                let part;
                (part, rows) = rows.split_at_mut(ki * p);
                // A whole panel by blocks of LANES x LANES, each transposed in registers
                // (`SimdFloat::transpose_block`): rows `r..r + LANES` of the packing, columns
                // `g..g + LANES` of the panel, from as many rows of `w`.
                let blocked = if wd == p { ki / l * l } else { 0 };
                for r in (0..blocked).step_by(l) {
                    for g in (0..p).step_by(l) {
                        let src = &w[(j0 + g) * ki + r..];
                        T::transpose_block(src, ki, &mut part[r * p + g..], p);
                    }
                }
                // The rest value by value: contiguous writes, the reads walking `wd` rows of
                // `w` side by side.
                for (r, out) in part.chunks_exact_mut(p).enumerate().skip(blocked) {
                    for (jj, o) in out[..wd].iter_mut().enumerate() {
                        *o = w[(j0 + jj) * ki + r];
                    }
                    out[wd..].fill(T::default());
                }
            }
        });
    }
}

/// The rows `k` of `[b_1; b_2; ...]`, row-major parts of `n` columns stacked along k, for the
/// packers' `pack_stacked`. Panics, naming `what`, if a part is not whole rows of `n` (or `n`
/// is zero while a part is not empty).
pub(crate) fn stacked_rows<T>(what: &str, parts: &[&[T]], n: usize) -> usize {
    assert!(
        parts.iter().all(|b| if n == 0 {
            b.is_empty()
        } else {
            b.len() % n == 0
        }),
        "{what}: a part is not whole rows of {n}"
    );
    parts.iter().map(|b| b.len() / n.max(1)).sum()
}
