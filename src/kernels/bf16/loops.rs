//! The loops around the register tile: blocks of [`MB`] tiles of rows, each over cache blocks
//! of [`KB`] pairs of k, each of those over every panel, and the block's tiles by each panel.
//! The kernel is chosen once, before the loops ([`Tile`]).
//!
//! Every `C[i][j]` accumulates its pairs of k in order `p = 0, 1, ...` whatever the blocks (a
//! cache block only stores `C` and loads it again, exactly), so the order of the loops, the
//! block sizes and whether `A` was packed whole or block by block change no value.

use super::Bf16Kernel;
use super::packing::{ASource, PackedBf16A, PackedBf16B, Scratch};
use super::tile::{MR, PANEL, TileOps, tile_scalar};

/// Pairs of k per cache block: a panel's slice of `B` is `KB * PANEL * 4` bytes = 32 KiB, and
/// stays in L1 (48 KiB on the CPUs measured) while every tile of the block's rows runs over
/// it. Each tile call loads and stores its `C` once per block: at 64 pairs that overhead held
/// the tile to 90 % of the peak of `vdpbf16ps` on a Zen 5 with its operands in L1, at 128 to
/// 94 %.
const KB: usize = 128;
/// Tiles of rows per cache block: the block's `A`, `MB * MR * KB * 4` bytes = 48 KiB, stays in
/// L2 while the block runs over every panel.
const MB: usize = 16;
/// Most bytes of `A` as stored packed at a time (see [`product`]): 640 pairs of 96 rows.
const A_CHUNK_BYTES: usize = 256 << 10;

/// A register tile's implementation (see `tile.rs` for the arguments).
pub(super) trait Tile {
    /// `C += A B` for one tile.
    fn tile(&self, t: TileOps<'_>);
}

/// The portable tile, the scalar model of `vdpbf16ps`.
pub(super) struct Scalar;

impl Tile for Scalar {
    fn tile(&self, t: TileOps<'_>) {
        tile_scalar(t);
    }
}

/// The AVX-512 tile. Only [`Bf16Kernel`](super::Bf16Kernel)'s dispatch makes one, and only
/// after the CPU was seen to have AVX512_BF16 and AVX-512F.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512Bf16(pub(super) ());

#[cfg(target_arch = "x86_64")]
impl Tile for Avx512Bf16 {
    fn tile(&self, t: TileOps<'_>) {
        // SAFETY: an `Avx512Bf16` exists only once the CPU was seen to have the features the
        // tile needs (see the type).
        unsafe { super::tile::avx512::tile(t) }
    }
}

/// The AVX2 and FMA emulation of the AVX-512 tile. Only [`Bf16Kernel`](super::Bf16Kernel)'s
/// dispatch makes one, and only after the CPU was seen to have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2Fma(pub(super) ());

#[cfg(target_arch = "x86_64")]
impl Tile for Avx2Fma {
    fn tile(&self, t: TileOps<'_>) {
        // SAFETY: an `Avx2Fma` exists only once the CPU was seen to have the features the
        // tile needs (see the type).
        unsafe { super::tile::avx2::tile(t) }
    }
}

/// The `A` of a product: packed whole beforehand, or as stored, each cache block of it packed
/// as the loops reach it (into a buffer that stays in cache, instead of a whole packing
/// written to memory and read back).
pub(super) enum AOperand<'a> {
    /// Packed beforehand: its columns `ks` (see [`PackedBf16A::check_part`]).
    Packed(&'a PackedBf16A, std::ops::Range<usize>),
    /// As stored, converted with this kernel block by block.
    Stored(ASource<'a>, Bf16Kernel),
}

/// `C += A B` (with `set`, `C = A B`: `C` is only written) over the columns of `B`'s panels
/// `panels` (`C` holding just those columns, rows `ldc` apart: column `j` of `B` in column
/// `j - panels.start * PANEL` of `C`). Panics if `A` and `B` disagree on `k`, the panels pass
/// `B`'s, or `C` is too short.
pub(super) fn product(
    kernel: &impl Tile,
    a: AOperand<'_>,
    b: &PackedBf16B,
    panels: std::ops::Range<usize>,
    (c, ldc): (&mut [f32], usize),
    set: bool,
) {
    let (m, k) = match &a {
        AOperand::Packed(pa, ks) => {
            pa.check_part(ks);
            (pa.m, ks.len())
        }
        AOperand::Stored(src, _) => (src.m, src.k),
    };
    assert_eq!(k, b.k, "gemm_bf16: A has {k} columns, B {} rows", b.k);
    assert!(
        panels.start <= panels.end && panels.end <= b.n.div_ceil(PANEL),
        "gemm_bf16: panels {panels:?} of B's {}",
        b.n.div_ceil(PANEL)
    );
    // Columns of `B` (and of `C`) the product covers.
    let (j0, n) = (panels.start * PANEL, b.n.min(panels.end * PANEL));
    let width = n.saturating_sub(j0);
    let need = if m == 0 || width == 0 {
        Some(0)
    } else {
        (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(width))
    };
    assert!(
        ldc >= width && need.is_some_and(|need| c.len() >= need),
        "gemm_bf16: {} values of C for {m} x {width} (rows {ldc} apart)",
        c.len()
    );
    let kp = k.div_ceil(2);
    if m == 0 || width == 0 {
        return;
    }
    if kp == 0 {
        // An empty sum: `C = 0` with `set`, else unchanged.
        if set {
            for row in c.chunks_mut(ldc).take(m) {
                row[..width].fill(0.0);
            }
        }
        return;
    }
    let bv = b.buf.values();
    let tiles = m.div_ceil(MR);
    // Where the tiles' `C` lies, for the addresses they prefetch (only computed, never read).
    let c_base = c.as_ptr();
    // An `A` as stored is packed a block of rows by a run of `chunk` pairs (a whole number of
    // cache blocks of k) at a time, at most `A_CHUNK_BYTES`: long runs of each stored row
    // (short ones, a cache block of k from each of the block's rows, left the hardware's
    // prefetchers behind and the packing took twice as long).
    let mut scratch = Scratch::take();
    let mut block = std::mem::take(&mut scratch.block);
    let chunk = match &a {
        AOperand::Packed(..) => kp,
        AOperand::Stored(..) => {
            let chunk = (A_CHUNK_BYTES / (MB * MR * 4)).max(KB) / KB * KB;
            block.resize(MB.min(tiles) * chunk.min(kp) * MR, 0);
            chunk
        }
    };
    for t0 in (0..tiles).step_by(MB) {
        let t1 = tiles.min(t0 + MB);
        for c0 in (0..kp).step_by(chunk) {
            let c1 = kp.min(c0 + chunk);
            // Tile `t`'s pair `p` starts at `av[(t - origin.0) * stride + (p - origin.1) MR]`
            // (for a part of a packing, `av` starts at the part's first pair).
            let (av, origin, stride): (&[u32], _, _) = match &a {
                AOperand::Packed(pa, ks) => {
                    let first = ks.start / 2 * MR;
                    (&pa.buf.values()[first..], (0, 0), pa.k.div_ceil(2) * MR)
                }
                AOperand::Stored(src, conv) => {
                    src.pack_block(*conv, t0..t1, c0..c1, &mut block, &mut scratch);
                    (&block, (t0, c0), (c1 - c0) * MR)
                }
            };
            for p0 in (c0..c1).step_by(KB) {
                let steps = KB.min(c1 - p0);
                for q in panels.clone() {
                    let width = PANEL.min(n - q * PANEL);
                    let bs = &bv[(q * kp + p0) * PANEL..][..steps * PANEL];
                    for t in t0..t1 {
                        let rows = MR.min(m - t * MR);
                        let at = (t - origin.0) * stride + (p0 - origin.1) * MR;
                        // The tile after this one: the next of the block, else the block's
                        // first by the next panel.
                        let ahead = if t + 1 < t1 {
                            Some((t + 1) * MR * ldc + q * PANEL - j0)
                        } else if q + 1 < panels.end {
                            Some(t0 * MR * ldc + (q + 1) * PANEL - j0)
                        } else {
                            None
                        };
                        let ahead = ahead.map_or(std::ptr::null(), |at| c_base.wrapping_add(at));
                        let cs = &mut c[t * MR * ldc + q * PANEL - j0..];
                        kernel.tile(TileOps {
                            a: &av[at..][..steps * MR],
                            b: bs,
                            steps,
                            c: cs,
                            ldc,
                            rows,
                            width,
                            // The first block of k starts each sum from zero with `set`.
                            zero: set && p0 == 0,
                            ahead,
                        });
                    }
                }
            }
        }
    }
    scratch.block = block;
    scratch.put();
}
