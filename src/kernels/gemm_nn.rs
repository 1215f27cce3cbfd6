//! `C += A B` for a few rows of `A` against a weight matrix packed once: the per-timestep
//! recurrent product (`B = W_hh^T` in forward, `B = W_hh` in backward).
//!
//! [`PackedB`] stores `B` (`k x n`) as panels of [`panel`]`::<T>()` columns, each panel `k` rows of
//! contiguous values (the last panel zero-padded), so the kernel streams memory in order instead
//! of striding by `n` (which, for `n` a multiple of 1024, maps every row to the same cache set).
//! Packing costs one pass over `B`, once per sequence rather than once per step.
//!
//! A tile keeps 5 rows of `C` by one panel in registers (6 or 2 to 4 for the last rows; a single
//! row by up to four panels), broadcasting one value of `A` per row and step of `k`: no
//! horizontal sums, no allocation. Every `C[i][j]` is `C[i][j] + sum_p A[i][p] B[p][j]`
//! accumulated by fused multiply-adds in the order `p = 0, 1, ...`, whichever tile it falls in,
//! so splitting `A` by rows (batch shards) gives bit-identical results.

// Register tiles are fixed-size arrays indexed by row, panel and vector: clearer than iterators.
#![allow(clippy::needless_range_loop)]

use super::simd::SimdFloat;

/// Vectors per panel.
const NV: usize = 4;

/// Columns per panel for element type `T`.
pub fn panel<T: SimdFloat>() -> usize {
    NV * T::LANES
}

/// A `k x n` matrix packed in column panels for [`gemm_packed_acc`].
#[derive(Clone, Debug, Default)]
pub struct PackedB<T> {
    k: usize,
    n: usize,
    data: Vec<T>,
}

impl<T: SimdFloat> PackedB<T> {
    /// An empty packing (0 x 0); fill it with [`PackedB::pack`] or [`PackedB::pack_transposed`].
    pub fn new() -> Self {
        PackedB {
            k: 0,
            n: 0,
            data: Vec::new(),
        }
    }

    /// An empty packing that will reuse `buf`'s memory (its contents do not matter).
    pub fn from_buffer(buf: Vec<T>) -> Self {
        PackedB {
            k: 0,
            n: 0,
            data: buf,
        }
    }

    /// The packing's memory, for reuse.
    pub fn into_buffer(self) -> Vec<T> {
        self.data
    }

    /// Rows `k` of the packed matrix.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns `n` of the packed matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The number of values a packing of a `k x n` matrix holds (`n` rounded up to whole
    /// panels), so a buffer for [`PackedB::from_buffer`] can be sized to need no growth.
    /// Panics if it overflows `usize`.
    pub fn packed_len(k: usize, n: usize) -> usize {
        let p = panel::<T>();
        // Checked: every later bound on panel offsets, `(q + Q) * k * p` with `q + Q <= panels`,
        // is then free of overflow too.
        n.div_ceil(p)
            .checked_mul(k)
            .and_then(|x| x.checked_mul(p))
            .expect("PackedB: packed size overflows usize")
    }

    /// Sets the shape and makes room; returns the packed length.
    fn resize(&mut self, k: usize, n: usize) -> usize {
        self.k = k;
        self.n = n;
        let len = Self::packed_len(k, n);
        // Stale values may stay: packing overwrites every value it uses, the padding included.
        // A longer buffer keeps its length (the kernel reads only the first `len` values), so
        // packings of different shapes into one buffer never zero a tail again.
        if self.data.len() < len {
            self.data.resize(len, T::default());
        }
        len
    }

    /// Packs `b`, a row-major `k x n` matrix. Panics if `b` is shorter than `k * n`.
    pub fn pack(&mut self, b: &[T], k: usize, n: usize) {
        let len = self.resize(k, n);
        assert!(b.len() >= k * n, "PackedB::pack: buffer too small");
        let p = panel::<T>();
        for (q, pd) in self.data[..len]
            .chunks_exact_mut((k * p).max(1))
            .enumerate()
        {
            let (j0, w) = (q * p, p.min(n - q * p));
            for (r, out) in pd.chunks_exact_mut(p).enumerate() {
                out[..w].copy_from_slice(&b[r * n + j0..r * n + j0 + w]);
                out[w..].fill(T::default());
            }
        }
    }

    /// Packs `w^T`, where `w` is a row-major `n x k` matrix (a weight in `[out, in]` layout), so
    /// that `A B = A w^T`. Panics if `w` is shorter than `n * k`.
    pub fn pack_transposed(&mut self, w: &[T], n: usize, k: usize) {
        let len = self.resize(k, n);
        assert!(
            w.len() >= n * k,
            "PackedB::pack_transposed: buffer too small"
        );
        let p = panel::<T>();
        for (q, pd) in self.data[..len]
            .chunks_exact_mut((k * p).max(1))
            .enumerate()
        {
            let (j0, wd) = (q * p, p.min(n - q * p));
            // Contiguous writes; the reads walk `wd` rows of `w` side by side.
            for (r, out) in pd.chunks_exact_mut(p).enumerate() {
                for (jj, o) in out[..wd].iter_mut().enumerate() {
                    *o = w[(j0 + jj) * k + r];
                }
                out[wd..].fill(T::default());
            }
        }
    }
}

/// `C += A B` with `A` `m x k` and `C` `m x n` row-major, `B` packed (`k x n`).
///
/// Panics if `A` or `C` is shorter than its shape needs.
pub fn gemm_packed_acc<T: SimdFloat>(m: usize, a: &[T], b: &PackedB<T>, c: &mut [T]) {
    let (k, n) = (b.k, b.n);
    let need = |x: usize| {
        m.checked_mul(x)
            .expect("gemm_packed_acc: shape overflows usize")
    };
    assert!(
        a.len() >= need(k) && c.len() >= need(n),
        "gemm_packed_acc: buffers too small for {m}x{n}x{k}"
    );
    if n == 0 || m == 0 || k == 0 {
        return;
    }
    let panels = n.div_ceil(panel::<T>());
    // Cache blocking for large products: a block of KB steps of k by MB rows of A stays in L2
    // while each panel's KB x PANEL slice of B is reused from L1 by every tile of the block.
    // Splitting k only stores and reloads C between blocks (exact), so the accumulation order
    // of every element is unchanged.
    // Fewer rows than a tile reuse no slice of B from L1: no k blocks, C loaded once.
    let kb = if m < MR { k } else { KB };
    for k0 in (0..k).step_by(kb) {
        let k1 = (k0 + kb).min(k);
        for i0 in (0..m).step_by(MB) {
            let i1 = (i0 + MB).min(m);
            // Tiles of MR rows; a remainder of one row joins the last of them (a tile of
            // MR + 1 rows: a lone row would stream every panel of B once more), other
            // remainders take one tile of 2 to 4 rows. Only a block of one row is left for the
            // single-row path below.
            let len = i1 - i0;
            let single = len == 1;
            let wide = len > 1 && len % MR == 1;
            let full = if wide {
                i0 + (len / MR - 1) * MR
            } else {
                i0 + len / MR * MR
            };
            let end = i1 - usize::from(single);
            for q in 0..panels {
                for i in (i0..full).step_by(MR) {
                    tile::<T, MR, 1>(i, q, k0..k1, m, a, b, c);
                }
                let ks = k0..k1;
                match end - full {
                    0 => {}
                    2 => tile::<T, 2, 1>(full, q, ks, m, a, b, c),
                    3 => tile::<T, 3, 1>(full, q, ks, m, a, b, c),
                    4 => tile::<T, 4, 1>(full, q, ks, m, a, b, c),
                    _ => tile::<T, { MR + 1 }, 1>(full, q, ks, m, a, b, c),
                }
            }
            // A block of a single row (B = 1) takes up to four panels at a time: 16
            // independent accumulators instead of 4 keep the FMA units busy.
            if single {
                let mut q = 0;
                while q + 4 <= panels {
                    tile::<T, 1, 4>(end, q, k0..k1, m, a, b, c);
                    q += 4;
                }
                while q + 2 <= panels {
                    tile::<T, 1, 2>(end, q, k0..k1, m, a, b, c);
                    q += 2;
                }
                if q < panels {
                    tile::<T, 1, 1>(end, q, k0..k1, m, a, b, c);
                }
            }
        }
    }
}

/// Rows of `C` per register tile: 5 rows by one panel of 4 vectors is 20 accumulators, which
/// with the 4 vectors of `B` and one broadcast of `A` fits the 32 vector registers of AVX-512
/// (on AVX2's 16, the compiler spills some; the results are the same). The 6-row tile that
/// takes a last odd row needs 29 of them.
const MR: usize = 5;
/// Steps of k per cache block.
const KB: usize = 128;
/// Rows of A per cache block.
const MB: usize = 40;

/// Column range of vector `v` of panel `q`, clipped to `n` (possibly empty).
#[inline(always)]
fn cols<T: SimdFloat>(q: usize, v: usize, n: usize) -> (usize, usize) {
    let s = (q * panel::<T>() + v * T::LANES).min(n);
    (s, (s + T::LANES).min(n))
}

/// Rows `i..i+R` of `C` by panels `q..q+Q`, over the steps `ks` of k.
#[inline(always)]
fn tile<T: SimdFloat, const R: usize, const Q: usize>(
    i: usize,
    q: usize,
    ks: std::ops::Range<usize>,
    m: usize,
    a: &[T],
    b: &PackedB<T>,
    c: &mut [T],
) {
    let (k, n, p) = (b.k, b.n, panel::<T>());
    assert!(i + R <= m && (q + Q) * k * p <= b.data.len());
    let mut acc: [[[T::V; NV]; Q]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|qq| {
            std::array::from_fn(|v| {
                let (s, e) = cols::<T>(q + qq, v, n);
                T::load_n(&c[(i + r) * n + s..(i + r) * n + e])
            })
        })
    });
    let a_rows: [&[T]; R] = std::array::from_fn(|r| &a[(i + r) * k..(i + r + 1) * k]);
    let base = b.data.as_ptr();
    for s in ks {
        let bv: [[T::V; NV]; Q] = std::array::from_fn(|qq| {
            std::array::from_fn(|v| {
                // SAFETY: panel `q + qq` occupies `[(q + qq) k p, (q + qq + 1) k p)` of `data`,
                // whose length the assert above bounds; row `s < k` of it holds `p = NV * LANES`
                // values, of which vector `v < NV` reads `LANES`.
                unsafe { T::load_ptr(base.add(((q + qq) * k + s) * p + v * T::LANES)) }
            })
        });
        for r in 0..R {
            let av = T::splat(a_rows[r][s]);
            for qq in 0..Q {
                for v in 0..NV {
                    acc[r][qq][v] = T::mul_add(av, bv[qq][v], acc[r][qq][v]);
                }
            }
        }
    }
    for r in 0..R {
        for qq in 0..Q {
            for v in 0..NV {
                let (s, e) = cols::<T>(q + qq, v, n);
                T::store_n(acc[r][qq][v], &mut c[(i + r) * n + s..(i + r) * n + e]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::{GemmShape, gemm_reference};
    use crate::kernels::testutil::values;

    #[test]
    fn matches_the_reference_product() {
        let shapes = [
            (1, 1, 1),
            (1, 9, 7),
            (3, 5, 8),
            (4, 32, 9),
            (5, 77, 33),
            (6, 40, 20),
            (11, 70, 33),
            (9, 64, 64),
            (16, 512, 128),
            (130, 70, 600),
        ];
        // Under Miri the two largest shapes (the cache-blocked loop order, same loads) would take
        // many minutes to interpret.
        let shapes = if cfg!(miri) {
            &shapes[..6]
        } else {
            &shapes[..]
        };
        for &(m, n, k) in shapes {
            for trans in [false, true] {
                let a: Vec<f64> = values(m as u64, m * k, 1.0);
                let b: Vec<f64> = values(n as u64 + 7, n * k, 1.0);
                let c0: Vec<f64> = values(k as u64 + 3, m * n, 1.0);
                let s = GemmShape {
                    m,
                    k,
                    n,
                    trans_a: false,
                    trans_b: trans,
                };
                let mut want = c0.clone();
                gemm_reference(s, 1.0, &a, &b, 1.0, &mut want);
                // A reused buffer full of stale values, longer than the packing: packing must
                // overwrite every value the kernel reads.
                let len = PackedB::<f64>::packed_len(k, n) + 3 * m + 7;
                let mut pb = PackedB::from_buffer(vec![f64::NAN; len]);
                if trans {
                    pb.pack_transposed(&b, n, k);
                } else {
                    pb.pack(&b, k, n);
                }
                let mut got = c0.clone();
                gemm_packed_acc(m, &a, &pb, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-12, "f64 {m}x{n}x{k}: {g} vs {w}");
                }
                let af: Vec<f32> = a.iter().map(|&x| x as f32).collect();
                let bf: Vec<f32> = b.iter().map(|&x| x as f32).collect();
                let mut pf = PackedB::new();
                if trans {
                    pf.pack_transposed(&bf, n, k);
                } else {
                    pf.pack(&bf, k, n);
                }
                let mut gotf: Vec<f32> = c0.iter().map(|&x| x as f32).collect();
                gemm_packed_acc(m, &af, &pf, &mut gotf);
                for (g, w) in gotf.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 1e-4, "f32 {m}x{n}x{k}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_neighbours() {
        // k > KB: the 11-row product (tiles of 5 and 6 rows) is cut into k blocks, a single
        // row is not.
        let (m, n, k) = (11, 75, 300);
        let a: Vec<f32> = values(1, m * k, 1.0);
        let b: Vec<f32> = values(2, n * k, 1.0);
        let mut pb = PackedB::new();
        pb.pack(&b, k, n);
        let mut whole = vec![0.0f32; m * n];
        gemm_packed_acc(m, &a, &pb, &mut whole);
        for i in 0..m {
            let mut one = vec![0.0f32; n];
            gemm_packed_acc(1, &a[i * k..(i + 1) * k], &pb, &mut one);
            for j in 0..n {
                assert_eq!(
                    one[j].to_bits(),
                    whole[i * n + j].to_bits(),
                    "row {i} col {j}"
                );
            }
        }
    }
}
