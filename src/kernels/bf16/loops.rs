//! The loops around the register tile: cache blocks of [`KB`] pairs of k by [`MB`] tiles of
//! rows, each block's panels in turn, and the tiles of the block by each panel. The kernel is
//! chosen once, before the loops ([`Tile`]).

use super::packing::{PackedBf16A, PackedBf16B};
use super::tile::{MR, PANEL, tile_scalar};

/// Pairs of k per cache block: a panel's slice of `B` is `KB * PANEL * 4` bytes = 16 KiB, and
/// stays in L1 while every tile of the block's rows runs over it.
const KB: usize = 64;
/// Tiles of rows per cache block: the block's `A`, `MB * MR * KB * 4` bytes = 24 KiB, stays in
/// L2 while the block runs over every panel.
const MB: usize = 16;

/// A register tile's implementation (see `tile.rs` for the arguments).
pub(super) trait Tile {
    /// `C += A B` for one tile.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        a: &[u32],
        b: &[u32],
        steps: usize,
        c: &mut [f32],
        ldc: usize,
        rows: usize,
        width: usize,
    );
}

/// The portable tile, the scalar model of `vdpbf16ps`.
pub(super) struct Scalar;

impl Tile for Scalar {
    fn tile(
        &self,
        a: &[u32],
        b: &[u32],
        steps: usize,
        c: &mut [f32],
        ldc: usize,
        rows: usize,
        width: usize,
    ) {
        tile_scalar(a, b, steps, c, ldc, rows, width);
    }
}

/// The AVX-512 tile. Only [`Bf16Kernel`](super::Bf16Kernel)'s dispatch makes one, and only
/// after the CPU was seen to have AVX512_BF16 and AVX-512F.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512Bf16(pub(super) ());

#[cfg(target_arch = "x86_64")]
impl Tile for Avx512Bf16 {
    fn tile(
        &self,
        a: &[u32],
        b: &[u32],
        steps: usize,
        c: &mut [f32],
        ldc: usize,
        rows: usize,
        width: usize,
    ) {
        // SAFETY: an `Avx512Bf16` exists only once the CPU was seen to have the features the
        // tile needs (see the type).
        unsafe { super::tile::avx512::tile(a, b, steps, c, ldc, rows, width) }
    }
}

/// `C += A B`, `C` `m x n` with rows `ldc` apart. Panics if `A` and `B` disagree on `k`, or
/// `C` is too short.
pub(super) fn product(
    kernel: &impl Tile,
    a: &PackedBf16A,
    b: &PackedBf16B,
    c: &mut [f32],
    ldc: usize,
) {
    let (m, n, k) = (a.m, b.n, a.k);
    assert_eq!(k, b.k, "gemm_bf16: A has {k} columns, B {} rows", b.k);
    let need = if m == 0 || n == 0 {
        Some(0)
    } else {
        (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(n))
    };
    assert!(
        ldc >= n && need.is_some_and(|need| c.len() >= need),
        "gemm_bf16: {} values of C for {m} x {n} (rows {ldc} apart)",
        c.len()
    );
    let kp = k.div_ceil(2);
    if m == 0 || n == 0 || kp == 0 {
        return;
    }
    let (av, bv) = (a.buf.values(), b.buf.values());
    let tiles = m.div_ceil(MR);
    let panels = n.div_ceil(PANEL);
    for p0 in (0..kp).step_by(KB) {
        let steps = KB.min(kp - p0);
        for t0 in (0..tiles).step_by(MB) {
            for q in 0..panels {
                let width = PANEL.min(n - q * PANEL);
                let bs = &bv[(q * kp + p0) * PANEL..][..steps * PANEL];
                for t in t0..tiles.min(t0 + MB) {
                    let rows = MR.min(m - t * MR);
                    let as_ = &av[(t * kp + p0) * MR..][..steps * MR];
                    let cs = &mut c[t * MR * ldc + q * PANEL..];
                    kernel.tile(as_, bs, steps, cs, ldc, rows, width);
                }
            }
        }
    }
}
