//! The packed operands, in bf16 pairs of k: each `u32` holds `X[2p]` in its low half and
//! `X[2p + 1]` in its high half (a zero past an odd `k`), the layout `vdpbf16ps` multiplies.
//!
//! - [`PackedBf16B`]: `B` (`k x n`) as panels of [`PANEL`] columns, each `ceil(k / 2)` rows of
//!   `PANEL` pairs; columns past `n` are zero.
//! - [`PackedBf16A`]: `A` (`m x k`) as tiles of [`MR`] rows, each `ceil(k / 2)` steps of `MR`
//!   pairs, so that a register tile reads its `A` as one contiguous stream; rows past `m` are
//!   zero.
//!
//! Every value is converted once, by [`convert_to_bf16`] (vectorised where the kernel has it).

use super::Bf16Kernel;
use super::convert::{Bf16, convert_to_bf16};
use super::tile::{MR, PANEL};
use crate::kernels::aligned::AlignedBuf;
use crate::kernels::gemm_nn::AStorage;
use crate::kernels::gemm_nn::stacked_rows;

/// The pair `(lo, hi)` as one `u32`: `lo` in the low half.
fn pair(lo: Bf16, hi: Bf16) -> u32 {
    u32::from(lo.0) | (u32::from(hi.0) << 16)
}

/// `x * y`, panicking with `what` if it overflows `usize`.
fn mul(x: usize, y: usize, what: &str) -> usize {
    x.checked_mul(y)
        .unwrap_or_else(|| panic!("{what}: size overflows usize"))
}

/// `B` (`k x n`) packed in bf16 for [`gemm_bf16_acc`](super::gemm_bf16_acc): pack a weight once
/// and reuse it for every product against it.
#[derive(Clone, Debug, Default)]
pub struct PackedBf16B {
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) buf: AlignedBuf<u32>,
}

impl PackedBf16B {
    /// An empty packing (0 x 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows `k` of the packed matrix.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns `n` of the packed matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Sets the shape and makes room for its values, then returns them (stale until written).
    fn resize(&mut self, k: usize, n: usize) -> &mut [u32] {
        let len = mul(
            mul(n.div_ceil(PANEL), k.div_ceil(2), "PackedBf16B"),
            PANEL,
            "PackedBf16B",
        );
        (self.k, self.n) = (k, n);
        self.buf.resize(len);
        self.buf.values_mut()
    }

    /// Packs `b`, a row-major `k x n` matrix (the NN product's `B`, e.g. `W_hh` or `W_ih` for
    /// `dH = dG W_hh`, `dX = dG W_ih`). Panics if `b` is shorter than `k * n`.
    pub fn pack(&mut self, kernel: Bf16Kernel, b: &[f32], k: usize, n: usize) {
        assert!(
            b.len() >= mul(k, n, "PackedBf16B"),
            "PackedBf16B::pack: {} values for {k} x {n}",
            b.len()
        );
        if n == 0 {
            // No columns: nothing to pack, but the product still has `k` rows of `B`.
            self.resize(k, 0);
            return;
        }
        self.pack_stacked(kernel, &[&b[..k * n]], n);
    }

    /// Packs `[b_1; b_2; ...]`, row-major matrices of `n` columns stacked along k (the rows of
    /// `b_1`, then of `b_2`, ...), without copying them together first. Panics if a part is
    /// not whole rows of `n` (or `n` is zero while a part is not empty).
    pub fn pack_stacked(&mut self, kernel: Bf16Kernel, parts: &[&[f32]], n: usize) {
        let k = stacked_rows("PackedBf16B::pack_stacked", parts, n);
        let kp = k.div_ceil(2);
        let out = self.resize(k, n);
        if n == 0 {
            return;
        }
        let mut rows = parts.iter().flat_map(|b| b.chunks_exact(n));
        let mut scratch = Scratch::take();
        let Scratch { even, odd, .. } = &mut scratch;
        even.resize(n, Bf16::default());
        odd.resize(n, Bf16::default());
        for p in 0..kp {
            convert_to_bf16(kernel, rows.next().expect("row 2p of k"), even);
            match rows.next() {
                Some(row) => convert_to_bf16(kernel, row, odd),
                None => odd.fill(Bf16::default()),
            }
            for (q, panel) in out.chunks_exact_mut(kp * PANEL).enumerate() {
                let row = &mut panel[p * PANEL..(p + 1) * PANEL];
                let j0 = q * PANEL;
                let w = PANEL.min(n - j0);
                for (o, (&e, &d)) in row.iter_mut().zip(even[j0..j0 + w].iter().zip(&odd[j0..])) {
                    *o = pair(e, d);
                }
                row[w..].fill(0);
            }
        }
        scratch.put();
    }

    /// Packs `w^T`, where `w` is a row-major `n x k` matrix (a weight in `[out, in]` layout,
    /// for the NT products `X W_ih^T` and `H W_hh^T`). Panics if `w` is shorter than `n * k`.
    pub fn pack_transposed(&mut self, kernel: Bf16Kernel, w: &[f32], n: usize, k: usize) {
        assert!(
            w.len() >= mul(n, k, "PackedBf16B"),
            "PackedBf16B::pack_transposed: {} values for {n} x {k}",
            w.len()
        );
        let kp = k.div_ceil(2);
        let out = self.resize(k, n);
        if kp == 0 {
            return;
        }
        // Row `j` of `w`, in bf16, with a zero after an odd `k`: `kp` pairs of k.
        let mut scratch = Scratch::take();
        let row = &mut scratch.even;
        row.clear();
        row.resize(2 * kp, Bf16::default());
        for (q, panel) in out.chunks_exact_mut(kp * PANEL).enumerate() {
            let j0 = q * PANEL;
            let w_cols = PANEL.min(n - j0);
            for jj in 0..PANEL {
                if jj < w_cols {
                    let j = j0 + jj;
                    convert_to_bf16(kernel, &w[j * k..(j + 1) * k], &mut row[..k]);
                    for (p, two) in row.chunks_exact(2).enumerate() {
                        panel[p * PANEL + jj] = pair(two[0], two[1]);
                    }
                } else {
                    for p in 0..kp {
                        panel[p * PANEL + jj] = 0;
                    }
                }
            }
        }
        scratch.put();
    }
}

/// `A` (`m x k`) packed in bf16 for [`gemm_bf16_acc`](super::gemm_bf16_acc): packed once per
/// product (activations and gradients change at every call); keep one to reuse its memory.
#[derive(Clone, Debug, Default)]
pub struct PackedBf16A {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) buf: AlignedBuf<u32>,
}

impl PackedBf16A {
    /// An empty packing (0 x 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows `m` of the packed matrix.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Columns `k` of the packed matrix.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Whether columns `ks` of the packing are a product's `A` by themselves
    /// ([`gemm_bf16_part`](super::gemm_bf16_part)): inside it, starting on a pair (an even
    /// column), and ending on one or at the last column (where the last pair's other half is
    /// the packing's zero, as in a packing of just those columns).
    pub fn holds_part(&self, ks: &std::ops::Range<usize>) -> bool {
        ks.start <= ks.end
            && ks.end <= self.k
            && ks.start.is_multiple_of(2)
            && (ks.end.is_multiple_of(2) || ks.end == self.k)
    }

    /// Panics unless [`PackedBf16A::holds_part`].
    pub(super) fn check_part(&self, ks: &std::ops::Range<usize>) {
        assert!(
            self.holds_part(ks),
            "gemm_bf16: columns {ks:?} of a packed A of {} are not whole pairs",
            self.k
        );
    }

    /// Packs `a`, an `m x k` matrix stored as `storage` says: row by row (the NN and NT
    /// products' `A`), or column by column `ld` apart, i.e. the transpose of a row-major
    /// `k x ld` matrix read in place (the TN products' `dG^T` of the weight gradients
    /// `dW = dG^T X`). Panics if `a` is too short for that, or `ld < m`.
    pub fn pack(&mut self, kernel: Bf16Kernel, a: &[f32], m: usize, k: usize, storage: AStorage) {
        let src = ASource::new(a, m, k, storage);
        let kp = k.div_ceil(2);
        let len = mul(mul(m.div_ceil(MR), kp, "PackedBf16A"), MR, "PackedBf16A");
        (self.m, self.k) = (m, k);
        self.buf.resize(len);
        let out = self.buf.values_mut();
        let mut scratch = Scratch::take();
        src.pack_block(kernel, 0..m.div_ceil(MR), 0..kp, out, &mut scratch);
        scratch.put();
    }
}

/// An `m x k` matrix `A` as stored: row by row, or column by column ([`AStorage`]); its blocks
/// packed as [`PackedBf16A`] packs the whole.
#[derive(Clone, Copy, Debug)]
pub(super) struct ASource<'a> {
    a: &'a [f32],
    pub(super) m: usize,
    pub(super) k: usize,
    storage: AStorage,
}

/// Buffers that packing reuses between blocks, and the loops a block of `A` packed
/// (`block`). Each thread keeps one between calls ([`Scratch::take`], [`Scratch::put`]), so a
/// training step's products, thousands of small ones, allocate none once warm.
#[derive(Default)]
pub(super) struct Scratch {
    even: Vec<Bf16>,
    odd: Vec<Bf16>,
    pairs: Vec<u32>,
    pub(super) block: Vec<u32>,
}

thread_local! {
    /// This thread's [`Scratch`] between calls.
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

impl Scratch {
    /// This thread's scratch (empty if a call further up holds it).
    pub(super) fn take() -> Self {
        SCRATCH.with(std::cell::Cell::take)
    }

    /// Keeps `self` for this thread's next call.
    pub(super) fn put(self) {
        SCRATCH.with(|s| s.set(self));
    }
}

impl<'a> ASource<'a> {
    /// `A` in `a`, stored as `storage` says. Panics if `a` is too short for that, or a
    /// column-major `A`'s columns lie fewer than `m` apart.
    pub(super) fn new(a: &'a [f32], m: usize, k: usize, storage: AStorage) -> Self {
        let (rs, cs) = match storage {
            AStorage::RowMajor => (k, 1),
            AStorage::ColMajor { ld } => {
                assert!(ld >= m, "bf16 packing: columns {ld} apart for {m} rows");
                (1, ld)
            }
        };
        // The last value, `(m - 1, k - 1)`, lies within `a`.
        let need = if m == 0 || k == 0 {
            0
        } else {
            (m - 1)
                .checked_mul(rs)
                .and_then(|x| (k - 1).checked_mul(cs).and_then(|y| x.checked_add(y)))
                .and_then(|l| l.checked_add(1))
                .expect("bf16 packing: size overflows usize")
        };
        assert!(
            a.len() >= need,
            "bf16 packing: {} values for {m} x {k} ({storage:?})",
            a.len()
        );
        ASource { a, m, k, storage }
    }

    /// Packs tiles `tiles` (rows `tiles.start * MR` up to `tiles.end * MR`, those past `m`
    /// zero) and pairs `ps` of k into `out`: tile `tiles.start + t`'s pair `ps.start + p` of
    /// row `r` at `out[(t ps.len() + p) MR + r]`, so a tile's pairs are one contiguous run.
    /// Panics if `out` is too short or the ranges pass the matrix.
    pub(super) fn pack_block(
        &self,
        kernel: Bf16Kernel,
        tiles: std::ops::Range<usize>,
        ps: std::ops::Range<usize>,
        out: &mut [u32],
        scratch: &mut Scratch,
    ) {
        let (m, k) = (self.m, self.k);
        let np = ps.len();
        assert!(
            tiles.start <= tiles.end
                && tiles.end <= m.div_ceil(MR)
                && ps.end <= k.div_ceil(2)
                && out.len() >= tiles.len() * np * MR,
            "bf16 packing: block {tiles:?} x {ps:?} does not fit"
        );
        let (i0, i1) = (tiles.start * MR, m.min(tiles.end * MR));
        let rows = i1.saturating_sub(i0);
        // Columns `ks` of `A`, and where pair `p` (from `ps.start`) of block row `i` goes.
        let ks = 2 * ps.start..k.min(2 * ps.end);
        let at = |i: usize, p: usize| ((i / MR) * np + p) * MR + i % MR;
        match self.storage {
            AStorage::RowMajor => {
                let row = &mut scratch.even;
                row.clear();
                row.resize(2 * np, Bf16::default());
                for i in 0..rows {
                    let src = &self.a[(i0 + i) * k..][ks.clone()];
                    convert_to_bf16(kernel, src, &mut row[..ks.len()]);
                    for (p, two) in row.chunks_exact(2).enumerate() {
                        out[at(i, p)] = pair(two[0], two[1]);
                    }
                }
            }
            AStorage::ColMajor { ld } => {
                // Columns `2p` and `2p + 1` of `A` are rows of the stored matrix. `PB` pairs
                // at a time: the block's pairs of those rows first, then each tile's `PB x MR`
                // pairs written as one contiguous run (a pair at a time, each tile's writes
                // would lie `np MR` values apart, 75 KiB for a whole `dG^T` at `k = 6400`).
                const PB: usize = 8;
                let Scratch {
                    even, odd, pairs, ..
                } = scratch;
                even.resize(rows, Bf16::default());
                odd.resize(rows, Bf16::default());
                pairs.resize(PB * rows, 0);
                for q0 in (0..np).step_by(PB) {
                    let nq = PB.min(np - q0);
                    for (q, run) in pairs.chunks_exact_mut(rows.max(1)).take(nq).enumerate() {
                        let s = 2 * (ps.start + q0 + q);
                        convert_to_bf16(kernel, &self.a[s * ld + i0..][..rows], even);
                        if s + 1 < k {
                            convert_to_bf16(kernel, &self.a[(s + 1) * ld + i0..][..rows], odd);
                        } else {
                            odd.fill(Bf16::default());
                        }
                        for (x, (&e, &d)) in run.iter_mut().zip(even.iter().zip(odd.iter())) {
                            *x = pair(e, d);
                        }
                    }
                    for r0 in (0..rows).step_by(MR) {
                        let nr = MR.min(rows - r0);
                        let dst = &mut out[at(r0, q0)..][..nq * MR];
                        for (q, d) in dst.chunks_exact_mut(MR).enumerate() {
                            let src = &pairs[q * rows + r0..];
                            if nr == MR {
                                // A whole tile's column: a copy of known size, inlined (a
                                // call to `memcpy` for each took a tenth of the packing).
                                let d: &mut [u32; MR] = d.try_into().expect("MR values");
                                *d = src[..MR].try_into().expect("MR values");
                            } else {
                                d[..nr].copy_from_slice(&src[..nr]);
                            }
                        }
                    }
                }
            }
        }
        // The rows of the last tile past `m` are zero.
        if i0 + rows < tiles.end * MR {
            for p in 0..np {
                for i in rows..tiles.len() * MR {
                    out[at(i, p)] = 0;
                }
            }
        }
    }
}
