//! Mixed-precision products: `C += A B` with `A` and `B` rounded to bf16 and `C` accumulated
//! in f32, by AVX512_BF16's `vdpbf16ps` (two products of k per instruction and lane).
//!
//! - `convert`: f32 <-> bf16, rounding to nearest even ([`to_bf16`] is the scalar reference).
//! - `packing`: both operands converted once per call into the pair layout the instruction
//!   reads; a weight's [`PackedBf16B`] can be packed once and reused.
//! - `tile`: the register tile with `vdpbf16ps`, and the scalar model of that instruction.
//! - `loops`: the cache blocks around the tile.
//! - [`peak`]: chains of `vdpbf16ps` alone, the CPU's own limit for every bf16 product.
//!
//! The training step's products are all one of three shapes, each an `A` and a `B` packing:
//!
//! | product | shape | `A` | `B` |
//! |---|---|---|---|
//! | `X W_ih^T`, `H W_hh^T` (forward) | NT | row-major | [`PackedBf16B::pack_transposed`] |
//! | `dG W_hh`, `dG W_ih` (backward) | NN | row-major | [`PackedBf16B::pack`] |
//! | `dG^T X`, `dG^T H` (weight gradients) | TN | [`AStorage::ColMajor`] | [`PackedBf16B::pack`] |
//!
//! # Dispatch
//!
//! [`Bf16Kernel::detect`] (or [`bf16_available`]) checks the CPU once and returns the token that
//! every function here takes; without AVX512_BF16 it returns an `Err` saying why, so no
//! instruction the CPU lacks is ever executed. Two kernels give the same values bit for bit
//! without AVX512_BF16:
//!
//! - [`Bf16Kernel::portable`]: an emulation of `vdpbf16ps` with AVX2 and FMA (each pair of k
//!   as two fused multiply-adds, the flushes of subnormals done with vector masks) where the
//!   CPU has them, else the scalar kernel. The same values as the native kernel, at a fraction
//!   of f32's speed: for trying and testing bf16 on CPUs without AVX512_BF16.
//! - [`Bf16Kernel::scalar`]: the scalar model of `vdpbf16ps` ([`dot_pair`]), on any machine
//!   (and under Miri), far slower.
//!
//! # Accuracy
//!
//! With `u = 2^-8`, the unit roundoff of bf16's 8-bit significand, each input is rounded to
//! `x (1 + d)` with `|d| <= u`, and the product of two bf16 values is exact in f32 (16
//! significant bits of 24). The accumulation is `k' = 2 ceil(k / 2)` fused multiply-adds in
//! f32, each rounded with relative error at most `v = 2^-24`. For inputs and results in f32's
//! normal range (no value flushed), every element of the result satisfies
//!
//! ```text
//! |C - C_exact| <= (2u + u^2) S + g (|C0| + (1 + u)^2 S),   S = sum_p |A[i][p] B[p][j]|,
//! ```
//!
//! `g = k' v / (1 - k' v)`, against the exact `C_exact = C0 + sum_p A[i][p] B[p][j]` of the f32
//! inputs: the first term is the rounding of the inputs, about `2^-7` of `S`, independent of
//! `k`; the second the f32 accumulation, growing with `k`. Against the same product of the
//! bf16-rounded inputs, only the second term remains.

mod convert;
mod loops;
mod packing;
pub mod peak;
#[cfg(test)]
mod tests;
mod tile;

use crate::kernels::gemm::GemmShape;
pub use crate::kernels::gemm_nn::AStorage;
pub use convert::{Bf16, convert_to_bf16, convert_to_f32, to_bf16, to_f32};
pub use packing::{PackedBf16A, PackedBf16B};
pub use tile::{MR, PANEL, dot_pair};

/// Why the bf16 kernel cannot run on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Bf16Unavailable {
    /// Not an x86_64 CPU.
    #[error("bf16 products need an x86_64 CPU with AVX512_BF16")]
    NotX86,
    /// An x86_64 CPU without AVX512_BF16 (or AVX-512F).
    #[error("this CPU lacks AVX512_BF16 (vdpbf16ps), which the bf16 products need")]
    NoAvx512Bf16,
    /// Running under Miri, which does not interpret AVX-512.
    #[error("Miri does not interpret the AVX512_BF16 instructions")]
    Miri,
}

/// Which instructions a [`Bf16Kernel`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// The scalar model, on any CPU.
    Scalar,
    /// AVX512_BF16 and AVX-512F, seen on this CPU.
    Avx512Bf16,
    /// AVX2 and FMA, seen on this CPU: `vdpbf16ps` emulated.
    Avx2Fma,
}

/// The kernel the bf16 functions run: a token made by [`Bf16Kernel::detect`] (the CPU's
/// AVX512_BF16, checked once), [`Bf16Kernel::portable`] (an AVX2 and FMA emulation where the
/// CPU has them) or [`Bf16Kernel::scalar`] (any CPU). All give the same values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bf16Kernel {
    isa: Isa,
}

impl Bf16Kernel {
    /// The AVX512_BF16 kernel if this CPU has it, else why not.
    pub fn detect() -> Result<Self, Bf16Unavailable> {
        if cfg!(miri) {
            return Err(Bf16Unavailable::Miri);
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512bf16")
                && std::arch::is_x86_feature_detected!("avx512f")
            {
                Ok(Bf16Kernel {
                    isa: Isa::Avx512Bf16,
                })
            } else {
                Err(Bf16Unavailable::NoAvx512Bf16)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Err(Bf16Unavailable::NotX86)
    }

    /// The scalar model of `vdpbf16ps`: the same values on any CPU, slowly.
    pub fn scalar() -> Self {
        Bf16Kernel { isa: Isa::Scalar }
    }

    /// The portable kernel: `vdpbf16ps` emulated with AVX2 and FMA if this CPU has them (and
    /// this is not Miri, which does not interpret them), else [`Bf16Kernel::scalar`]. The same
    /// values as the native kernel, at a fraction of f32's speed: for trying and testing bf16
    /// on CPUs without AVX512_BF16.
    pub fn portable() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if !cfg!(miri)
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Bf16Kernel { isa: Isa::Avx2Fma };
            }
        }
        Self::scalar()
    }

    /// Whether this kernel runs AVX512_BF16 instructions (not an emulation of them).
    pub fn is_native(self) -> bool {
        self.isa == Isa::Avx512Bf16
    }
}

/// [`Bf16Kernel::detect`]: the fast kernel if this CPU has AVX512_BF16, else why not.
pub fn bf16_available() -> Result<Bf16Kernel, Bf16Unavailable> {
    Bf16Kernel::detect()
}

/// `C += A B` in bf16 with f32 accumulation: `A` (`m x k`) and `B` (`k x n`) packed, `C`
/// `m x n` row-major. Panics if `A` and `B` disagree on `k` or `C` is shorter than `m * n`.
pub fn gemm_bf16_acc(kernel: Bf16Kernel, a: &PackedBf16A, b: &PackedBf16B, c: &mut [f32]) {
    gemm_bf16_acc_ld(kernel, a, b, c, b.n);
}

/// [`gemm_bf16_acc`] into a `C` whose rows lie `ldc >= n` apart.
pub fn gemm_bf16_acc_ld(
    kernel: Bf16Kernel,
    a: &PackedBf16A,
    b: &PackedBf16B,
    c: &mut [f32],
    ldc: usize,
) {
    gemm_bf16_part(kernel, (a, 0..a.k), b, (c, ldc), false);
}

/// `C += A[:, ks] B`, or with `set` `C = A[:, ks] B` (`C` only written): columns `ks` of a
/// packed `A` against `B` (`ks.len()` rows), `C` with rows `ldc` apart. The same values as a
/// packing of just those columns: so one packing of `dG^T` serves weight gradients over
/// different runs of time steps. `ks` must start on an even column and end on one or at
/// `a.k()`.
///
/// Panics if `ks` is not so, `B`'s rows are not `ks.len()`, or `C` is too short.
pub fn gemm_bf16_part(
    kernel: Bf16Kernel,
    (a, ks): (&PackedBf16A, std::ops::Range<usize>),
    b: &PackedBf16B,
    c: (&mut [f32], usize),
    set: bool,
) {
    let a = loops::AOperand::Packed(a, ks);
    product(kernel, a, b, 0..b.n.div_ceil(PANEL), c, set);
}

/// `C += A B` with `A` (`m x k`) as stored in f32, row by row or column by column (`storage`):
/// the same values as packing `A` first ([`PackedBf16A`]) and [`gemm_bf16_acc_ld`]. `A` by
/// rows is converted a cache block at a time as the product reaches it, without writing the
/// whole packing to memory and reading it back; `A` by columns (a weight gradient's `dG^T`) is
/// packed whole first, reading each stored row in one run (a block of rows at a time, the
/// runs were too short for the memory's rate). `C` has rows `ldc >= n` apart.
///
/// Panics if `a` is too short for `m x k` stored so (`k = b.k()`), or `C` too short.
pub fn gemm_bf16_acc_stored(
    kernel: Bf16Kernel,
    (m, a, storage): (usize, &[f32], AStorage),
    b: &PackedBf16B,
    c: &mut [f32],
    ldc: usize,
) {
    stored_cols(kernel, (m, a, storage), b, 0..b.n, (c, ldc), false);
}

/// `C = A B`: [`gemm_bf16_acc_stored`] writing `C` instead of adding to it. `C` is not read:
/// the values are those of a `C` filled with zeros first, bit for bit.
///
/// Panics as [`gemm_bf16_acc_stored`] does.
pub fn gemm_bf16_set_stored(
    kernel: Bf16Kernel,
    (m, a, storage): (usize, &[f32], AStorage),
    b: &PackedBf16B,
    c: &mut [f32],
    ldc: usize,
) {
    stored_cols(kernel, (m, a, storage), b, 0..b.n, (c, ldc), true);
}

/// [`gemm_bf16_acc_stored`] over columns `cols` of `B` only, `C` holding just those (column
/// `j` of `B` in column `j - cols.start` of `C`, rows `ldc` apart): each value as the whole
/// product computes it, so that two threads can each take a part of the columns. `cols` must
/// start on a panel ([`PANEL`] columns) and end on one or at `n`.
///
/// Panics if `cols` is not so, or as [`gemm_bf16_acc_stored`] does.
pub fn gemm_bf16_acc_stored_cols(
    kernel: Bf16Kernel,
    (m, a, storage): (usize, &[f32], AStorage),
    b: &PackedBf16B,
    cols: std::ops::Range<usize>,
    c: &mut [f32],
    ldc: usize,
) {
    stored_cols(kernel, (m, a, storage), b, cols, (c, ldc), false);
}

/// [`gemm_bf16_acc_stored_cols`], adding to `C` or (with `set`) writing it.
fn stored_cols(
    kernel: Bf16Kernel,
    (m, a, storage): (usize, &[f32], AStorage),
    b: &PackedBf16B,
    cols: std::ops::Range<usize>,
    c: (&mut [f32], usize),
    set: bool,
) {
    assert!(
        cols.start <= cols.end
            && cols.end <= b.n
            && (cols.is_empty()
                || cols.start.is_multiple_of(PANEL)
                    && (cols.end.is_multiple_of(PANEL) || cols.end == b.n)),
        "gemm_bf16: columns {cols:?} of {} are not whole panels",
        b.n
    );
    if cols.is_empty() {
        return;
    }
    let panels = cols.start / PANEL..cols.end.div_ceil(PANEL);
    if let AStorage::ColMajor { .. } = storage {
        return with_packed_a(|pa| {
            pa.pack(kernel, a, m, b.k, storage);
            product(
                kernel,
                loops::AOperand::Packed(pa, 0..pa.k),
                b,
                panels,
                c,
                set,
            );
        });
    }
    let src = packing::ASource::new(a, m, b.k, storage);
    let a = loops::AOperand::Stored(src, kernel);
    product(kernel, a, b, panels, c, set);
}

/// The loops with `kernel`'s tile, chosen once here.
fn product(
    kernel: Bf16Kernel,
    a: loops::AOperand<'_>,
    b: &PackedBf16B,
    panels: std::ops::Range<usize>,
    c: (&mut [f32], usize),
    set: bool,
) {
    match kernel.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => loops::product(&loops::Avx512Bf16(()), a, b, panels, c, set),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => loops::product(&loops::Avx2Fma(()), a, b, panels, c, set),
        _ => loops::product(&loops::Scalar, a, b, panels, c, set),
    }
}

/// One register tile with `kernel`'s tile: for the tests, which check each tile against the
/// scalar one directly.
#[cfg(test)]
fn run_tile(kernel: Bf16Kernel, t: tile::TileOps<'_>) {
    use loops::Tile;
    match kernel.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => loops::Avx512Bf16(()).tile(t),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => loops::Avx2Fma(()).tile(t),
        _ => loops::Scalar.tile(t),
    }
}

/// `C += op(A) op(B)` in bf16 with f32 accumulation, for the same [`GemmShape`] as the f32
/// [`sgemm`](crate::kernels::gemm::sgemm) (`alpha = beta = 1`): `op(A)` `m x k`, `op(B)`
/// `k x n`, each stored row-major and read transposed where its flag is set; `C` `m x n`
/// row-major. `B` is packed for this call, `A` converted block by block.
pub fn gemm_bf16(kernel: Bf16Kernel, s: GemmShape, a: &[f32], b: &[f32], c: &mut [f32]) {
    let storage = if s.trans_a {
        AStorage::ColMajor { ld: s.m }
    } else {
        AStorage::RowMajor
    };
    with_packed_b(|pb| {
        if s.trans_b {
            pb.pack_transposed(kernel, b, s.n, s.k);
        } else {
            pb.pack(kernel, b, s.k, s.n);
        }
        gemm_bf16_acc_stored(kernel, (s.m, a, storage), pb, c, s.n);
    });
}

/// `C += A [b_1; b_2; ...]`: `A` (`m x k`) as stored in f32 (`storage`), `B` the row-major
/// parts of `n` columns stacked along k (`k` their rows in all), packed for this call without
/// copying them together; `C` `m x n` with rows `ldc` apart. A weight gradient
/// `dW += dG^T [h_0; H]` reads its inputs so, the initial state apart from the outputs.
pub fn gemm_bf16_stacked(
    kernel: Bf16Kernel,
    (m, a, storage): (usize, &[f32], AStorage),
    parts: &[&[f32]],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    with_packed_b(|pb| {
        pb.pack_stacked(kernel, parts, n);
        gemm_bf16_acc_stored(kernel, (m, a, storage), pb, c, ldc);
    });
}

/// `C = A[:, ks] [b_1; b_2; ...]`: [`gemm_bf16_stacked`] over columns `ks` of a packed `A`
/// (as [`gemm_bf16_part`] reads them), writing `C` (rows `ldc` apart) instead of adding to it.
///
/// Panics as [`gemm_bf16_part`] does, or if the parts are not `ks.len()` rows of `n` in all.
pub fn gemm_bf16_stacked_part(
    kernel: Bf16Kernel,
    a: (&PackedBf16A, std::ops::Range<usize>),
    parts: &[&[f32]],
    n: usize,
    c: (&mut [f32], usize),
) {
    with_packed_b(|pb| {
        pb.pack_stacked(kernel, parts, n);
        gemm_bf16_part(kernel, a, pb, c, true);
    });
}

thread_local! {
    /// This thread's packing of a product's `B` between calls.
    static PACKED_B: std::cell::Cell<PackedBf16B> = std::cell::Cell::new(PackedBf16B::new());
    /// This thread's packing of a column-major `A` between calls.
    static PACKED_A: std::cell::Cell<PackedBf16A> = std::cell::Cell::new(PackedBf16A::new());
}

/// Runs `f` on this thread's packing of `A`, kept between calls as [`with_packed_b`]'s is (a
/// call further up holding it leaves `f` a new one).
fn with_packed_a<R>(f: impl FnOnce(&mut PackedBf16A) -> R) -> R {
    let mut pa = PACKED_A.with(std::cell::Cell::take);
    let r = f(&mut pa);
    PACKED_A.with(|c| c.set(pa));
    r
}

/// Runs `f` on this thread's packing of `B`, kept between calls so that products whose `B`
/// is packed for the call (a weight gradient's inputs, every step) allocate nothing once warm.
fn with_packed_b<R>(f: impl FnOnce(&mut PackedBf16B) -> R) -> R {
    let mut pb = PACKED_B.with(std::cell::Cell::take);
    let r = f(&mut pb);
    PACKED_B.with(|c| c.set(pb));
    r
}

/// `C += A B`, `A` `m x k` and `B` `k x n` row-major (`B` packed for this call, `A` converted block by block).
pub fn gemm_bf16_nn(
    kernel: Bf16Kernel,
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    let mut pb = PackedBf16B::new();
    pb.pack(kernel, b, k, n);
    gemm_bf16_acc_stored(kernel, (m, a, AStorage::RowMajor), &pb, c, n);
}

/// `C += A B^T`, `A` `m x k` and `B` `n x k` row-major (`B` packed for this call, `A` converted block by block).
pub fn gemm_bf16_nt(
    kernel: Bf16Kernel,
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    let mut pb = PackedBf16B::new();
    pb.pack_transposed(kernel, b, n, k);
    gemm_bf16_acc_stored(kernel, (m, a, AStorage::RowMajor), &pb, c, n);
}

/// `C += A^T B`, `A` `k x m` and `B` `k x n` row-major (`B` packed for this call, `A` converted block by block).
pub fn gemm_bf16_tn(
    kernel: Bf16Kernel,
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    let mut pb = PackedBf16B::new();
    pb.pack(kernel, b, k, n);
    gemm_bf16_acc_stored(kernel, (m, a, AStorage::ColMajor { ld: m }), &pb, c, n);
}
