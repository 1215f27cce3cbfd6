use super::*;
use crate::kernels::testutil::values;

/// The native kernel, or `None` after printing why its checks are skipped. The line goes to
/// stderr directly, past the test harness's capture (which only takes `print!` and
/// `eprint!`), so that a skip shows in the output of a passing run.
fn native(test: &str) -> Option<Bf16Kernel> {
    use std::io::Write;
    match Bf16Kernel::detect() {
        Ok(k) => Some(k),
        Err(why) => {
            let line = format!("SKIPPED {test} with the AVX512_BF16 kernel: {why}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

/// The AVX2 and FMA emulation, or `None` after printing why its checks are skipped (as
/// [`native`] does).
fn emulated(test: &str) -> Option<Bf16Kernel> {
    use std::io::Write;
    let k = Bf16Kernel::portable();
    if k == Bf16Kernel::scalar() {
        let why = if cfg!(miri) {
            "Miri does not interpret AVX2"
        } else {
            "this CPU lacks AVX2 or FMA"
        };
        let line = format!("SKIPPED {test} with the AVX2 emulation: {why}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        None
    } else {
        Some(k)
    }
}

/// The vector kernels this machine has: the AVX2 emulation and the native one.
fn vector_kernels(test: &str) -> Vec<Bf16Kernel> {
    emulated(test).into_iter().chain(native(test)).collect()
}

/// The scalar kernel, and the vector ones where this machine has them.
fn kernels(test: &str) -> Vec<Bf16Kernel> {
    std::iter::once(Bf16Kernel::scalar())
        .chain(vector_kernels(test))
        .collect()
}

/// Equal bits, or both NaN (a NaN's payload is not specified).
fn same(x: f32, y: f32) -> bool {
    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
}

#[test]
fn conversion_rounds_to_nearest_even() {
    let cases: [(f32, u16); 14] = [
        (1.0, 0x3F80),
        (-2.5, 0xC020),
        // Halfway between 1 and 1 + 2^-7: to the even one, 1.
        (1.0 + 1.0 / 256.0, 0x3F80),
        // Halfway between 1 + 2^-7 and 1 + 2^-6: to the even one, up.
        (1.0 + 3.0 / 256.0, 0x3F82),
        // Just above halfway: up.
        (1.0 + 1.0 / 256.0 + 1.0 / 65536.0, 0x3F81),
        // Just below halfway: down.
        (-(1.0 + 1.0 / 256.0 - 1.0 / 65536.0), 0xBF80),
        (f32::MIN_POSITIVE, 0x0080),
        // Subnormals become zeros of their sign.
        (1e-39, 0x0000),
        (-1e-39, 0x8000),
        // The largest f32 rounds past the largest bf16, to infinity.
        (f32::MAX, 0x7F80),
        (f32::MIN, 0xFF80),
        (f32::INFINITY, 0x7F80),
        (0.0, 0x0000),
        (-0.0, 0x8000),
    ];
    for (x, want) in cases {
        assert_eq!(to_bf16(x).0, want, "to_bf16({x:e})");
    }
    // NaN stays NaN, quiet, even when its payload lies only in the lower half.
    for bits in [0x7FC0_0000u32, 0x7F80_0001, 0xFF80_0001, 0x7FFF_FFFF] {
        let b = to_bf16(f32::from_bits(bits));
        assert!(
            to_f32(b).is_nan() && b.0 & 0x0040 != 0,
            "{bits:08x} -> {:04x}",
            b.0
        );
        assert_eq!(
            b.0 & 0x8000,
            ((bits >> 16) & 0x8000) as u16,
            "sign of {bits:08x}"
        );
    }
}

#[test]
fn conversion_picks_the_nearest_bf16() {
    // Every f32 pattern at a stride, checked against the definition rather than the bit trick:
    // no bf16 neighbour is nearer, and a tie goes to the even one.
    let stride = if cfg!(miri) { 0x0100_0193 } else { 0x0000_1F3D };
    for bits in (0..=u32::MAX).step_by(stride) {
        let x = f32::from_bits(bits);
        if x.is_nan() || x.is_subnormal() || x.is_infinite() {
            continue;
        }
        let b = to_bf16(x);
        let r = to_f32(b);
        if r.is_infinite() {
            // Only past the largest finite bf16 plus half a step.
            assert!(x.abs() >= to_f32(Bf16(0x7F7F)), "{x:e} -> {r:e}");
            continue;
        }
        let (x64, r64) = (f64::from(x), f64::from(r));
        for nb in [b.0.wrapping_add(1), b.0.wrapping_sub(1)] {
            let n = to_f32(Bf16(nb));
            if n.is_nan() || n.is_infinite() || (n.to_bits() ^ r.to_bits()) >> 31 != 0 {
                continue;
            }
            let (dr, dn) = ((x64 - r64).abs(), (x64 - f64::from(n)).abs());
            assert!(dr <= dn, "{x:e} -> {r:e}, but {n:e} is nearer");
            if dr == dn {
                assert_eq!(b.0 & 1, 0, "{x:e}: a tie goes to the even neighbour");
            }
        }
    }
}

#[test]
fn widening_is_exact_and_round_trips() {
    for bits in 0..=u16::MAX {
        let b = Bf16(bits);
        let x = to_f32(b);
        assert_eq!(x.to_bits() >> 16, u32::from(bits));
        if !x.is_nan() && !x.is_subnormal() {
            assert_eq!(to_bf16(x), b);
        }
    }
    let src: Vec<Bf16> = (0..37u16).map(|i| Bf16(0x3F80 + i)).collect();
    let mut dst = vec![0.0f32; 37];
    convert_to_f32(&src, &mut dst);
    assert!(dst.iter().zip(&src).all(|(&d, &s)| d == to_f32(s)));
}

/// f32 patterns for the conversion checks: ordinary values, the special ones, and the values
/// either side of each rounding boundary.
fn awkward_values(n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = values(5, n, 3.0);
    let specials = [
        f32::NAN,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0xFFC1_2345),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        1e-39,
        -1e-39,
        0.0,
        -0.0,
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
        f32::from_bits(0x3F80_7FFF),
        f32::from_bits(0x3F80_8001),
        f32::from_bits(0x7F7F_8000),
        f32::from_bits(0x7F7F_7FFF),
    ];
    for (i, s) in specials.into_iter().enumerate() {
        v[(i * 7) % n] = s;
    }
    v
}

#[test]
fn vector_conversion_matches_the_scalar_one() {
    let xs = awkward_values(1010);
    for kernel in vector_kernels("vector_conversion_matches_the_scalar_one") {
        for len in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 1000] {
            for start in [0, 1, 5] {
                let src = &xs[start..start + len];
                let mut got = vec![Bf16(0xAAAA); len];
                convert_to_bf16(kernel, src, &mut got);
                for (i, (&g, &x)) in got.iter().zip(src).enumerate() {
                    assert_eq!(g, to_bf16(x), "{kernel:?} len {len}, value {i}: {x:e}");
                }
            }
        }
    }
}

/// Every f32 pattern of a sparse sweep through the vector conversions, each stride's block
/// holding the values either side of every rounding boundary near it.
#[test]
fn vector_conversion_matches_the_scalar_one_across_patterns() {
    let kernels = vector_kernels("vector_conversion_matches_the_scalar_one_across_patterns");
    let mut xs = Vec::new();
    for hi in (0..=u16::MAX as u32)
        .step_by(97)
        .chain([0x7F7F, 0x7F80, 0x7FC0, 0xFF80])
    {
        for lo in [0, 1, 0x40, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFF] {
            xs.push(f32::from_bits(hi << 16 | lo));
        }
    }
    for kernel in kernels {
        let mut got = vec![Bf16::default(); xs.len()];
        convert_to_bf16(kernel, &xs, &mut got);
        for (&g, &x) in got.iter().zip(&xs) {
            assert_eq!(g, to_bf16(x), "{kernel:?} {:08x}", x.to_bits());
        }
    }
}

/// All 2^32 f32 patterns through the vector conversion (tens of seconds; run with
/// `cargo test --release --lib exhaustive -- --ignored`).
#[test]
#[ignore]
fn exhaustive_vector_conversion_matches_the_scalar_one() {
    let kernels = vector_kernels("exhaustive_vector_conversion_matches_the_scalar_one");
    let mut xs = vec![0.0f32; 1 << 16];
    let mut got = vec![Bf16::default(); 1 << 16];
    for hi in 0..=u16::MAX as u32 {
        for (lo, x) in xs.iter_mut().enumerate() {
            *x = f32::from_bits(hi << 16 | lo as u32);
        }
        for &kernel in &kernels {
            convert_to_bf16(kernel, &xs, &mut got);
            for (&g, &x) in got.iter().zip(&xs) {
                assert_eq!(g, to_bf16(x), "{kernel:?} {:08x}", x.to_bits());
            }
        }
    }
}

/// Pairs `(lo, hi)` of f32 values as the instruction reads them.
fn pair_of(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16(lo).0) | (u32::from(to_bf16(hi).0) << 16)
}

/// The instruction's corner cases: `(acc, a pair, b pair, expected)`.
fn dot_cases() -> Vec<(f32, [f32; 2], [f32; 2], f32)> {
    let big = 16_777_216.0; // 2^24: adding 1 rounds back to it (a tie, to even).
    vec![
        // Two roundings, not one: 2^24 + 1 + 1 stays 2^24.
        (big, [1.0, 1.0], [1.0, 1.0], big),
        // The odd product first: (2^24 + 1) - 2^24 = 0 ...
        (big, [-big, 1.0], [1.0, 1.0], 0.0),
        // ... and here (2^24 - 2^24) + 1 = 1.
        (big, [1.0, -big], [1.0, 1.0], 1.0),
        // A subnormal accumulator is read as zero.
        (1e-39, [0.0, 0.0], [0.0, 0.0], 0.0),
        // A subnormal result is flushed: 2^-70 * 2^-70 = 2^-140.
        (0.0, [2f32.powi(-70), 0.0], [2f32.powi(-70), 0.0], 0.0),
        // Infinity times zero.
        (0.0, [f32::INFINITY, 0.0], [0.0, 0.0], f32::NAN),
        (1.0, [f32::INFINITY, 2.0], [1.0, 3.0], f32::INFINITY),
        (f32::NAN, [1.0, 2.0], [1.0, 3.0], f32::NAN),
        // An ordinary sum: 1 + 2 * 3 + 4 * 5.
        (1.0, [2.0, 4.0], [3.0, 5.0], 27.0),
    ]
}

#[test]
fn dot_pair_follows_the_instruction() {
    for (acc, a, b, want) in dot_cases() {
        let got = dot_pair(acc, pair_of(a[0], a[1]), pair_of(b[0], b[1]));
        assert!(
            same(got, want),
            "{acc:e} + {a:?} . {b:?}: got {got:e}, want {want:e}"
        );
    }
    // A bf16 subnormal input is read as zero (no f32 converts to one: made from bits).
    let sub = 0x0040; // 2^-128 as bf16
    let huge = pair_of(2f32.powi(100), 0.0);
    assert_eq!(dot_pair(0.0, sub, huge), 0.0);
}

#[test]
fn the_instruction_matches_its_scalar_model() {
    for kernel in vector_kernels("the_instruction_matches_its_scalar_model") {
        // Each case as a 1 x 2 by 2 x 1 product onto C = acc.
        for (acc, a, b, want) in dot_cases() {
            let mut c = [acc];
            gemm_bf16_nn(kernel, (1, 2, 1), &a, &b, &mut c);
            assert!(
                same(c[0], want),
                "{kernel:?}: {acc:e} + {a:?} . {b:?}: got {:e}, want {want:e}",
                c[0]
            );
        }
    }
}

/// A small xorshift generator for the tile checks' operands.
struct Bits(u64);

impl Bits {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }

    /// One of `xs`.
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.next() as usize % xs.len()]
    }
}

/// `dot_pair` without its flushes: how the tile checks see that their operands reach them.
fn dot_pair_unflushed(acc: f32, a: u32, b: u32) -> f32 {
    let (lo, hi) = (
        |x: u32| f32::from_bits(x << 16),
        |x: u32| f32::from_bits(x & 0xFFFF_0000),
    );
    lo(a).mul_add(lo(b), hi(a).mul_add(hi(b), acc))
}

/// Operands for the tile checks: `(a, b, c)` for `steps` pairs, `C` `MR` rows of `ldc`.
/// `tiny`: values about the square root of `f32::MIN_POSITIVE` and `C` about it, so that sums
/// of products fall to f32 subnormals often; else ordinary values and, now and then, a NaN,
/// an infinity, a bf16 subnormal, a zero or a huge value.
/// A tile's operands (see [`tile::TileOps`]).
fn ops<'a>(
    a: &'a [u32],
    b: &'a [u32],
    steps: usize,
    c: &'a mut [f32],
    ldc: usize,
    (rows, width): (usize, usize),
) -> tile::TileOps<'a> {
    tile::TileOps {
        a,
        b,
        steps,
        c,
        ldc,
        rows,
        width,
        zero: false,
        ahead: std::ptr::null(),
    }
}

fn tile_operands(
    bits: &mut Bits,
    steps: usize,
    ldc: usize,
    tiny: bool,
) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let bf16 = |bits: &mut Bits| -> u16 {
        let sign = (bits.next() & 0x8000) as u16;
        let mantissa = (bits.next() & 0x7F) as u16;
        let exponent = if tiny {
            // 2^-64 .. 2^-61, or a bf16 subnormal or zero now and then.
            if bits.next().is_multiple_of(8) {
                0
            } else {
                63 + bits.next() as u16 % 4
            }
        } else {
            match bits.next() % 32 {
                0 => 0,    // subnormal or zero
                1 => 0xFF, // infinity or NaN
                2 => 0xFE, // huge
                _ => 124 + bits.next() as u16 % 6,
            }
        };
        sign | exponent << 7 | mantissa
    };
    let pairs = |bits: &mut Bits, n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| u32::from(bf16(bits)) | u32::from(bf16(bits)) << 16)
            .collect()
    };
    let a = pairs(bits, steps * MR);
    let b = pairs(bits, steps * PANEL);
    let c = (0..MR * ldc)
        .map(|_| {
            let sign = bits.next() & 0x8000_0000;
            let mantissa = bits.next() & 0x007F_FFFF;
            let exponent = if tiny {
                // f32 subnormals and zeros, and normals up to 2^-124.
                bits.next() % 4
            } else {
                bits.pick(&[0, 0xFF, 1, 126, 127, 128, 127, 130])
            };
            f32::from_bits(sign | exponent << 23 | mantissa)
        })
        .collect();
    (a, b, c)
}

/// Each vector tile against the scalar one, bit for bit (NaNs as NaNs), on every shape of
/// tile (1 to `MR` rows, 1 to `PANEL` columns) and on operands that exercise every flush: bf16
/// subnormal inputs, sums that fall to f32 subnormals, `C` starting subnormal; and NaN,
/// infinity and overflow. `C`'s values outside the tile are left as they were.
#[test]
fn vector_tiles_flush_as_the_scalar_tile_does() {
    let kernels = vector_kernels("vector_tiles_flush_as_the_scalar_tile_does");
    let ldc = PANEL + 3;
    let mut bits = Bits(0x9E37_79B9_7F4A_7C15);
    let (mut flushed, mut nans) = (0usize, 0usize);
    for tiny in [true, false] {
        let steps: &[usize] = if tiny { &[1, 7, 67] } else { &[1, 2, 5] };
        for &steps in steps {
            let (a, b, c0) = tile_operands(&mut bits, steps, ldc, tiny);
            // How many of the scalar tile's results its flushes change, and how many are NaN:
            // the operands must reach the cases this test is for.
            let mut want = c0.clone();
            tile::tile_scalar(ops(&a, &b, steps, &mut want, ldc, (MR, PANEL)));
            for r in 0..MR {
                for j in 0..PANEL {
                    let mut x = c0[r * ldc + j];
                    for p in 0..steps {
                        x = dot_pair_unflushed(x, a[p * MR + r], b[p * PANEL + j]);
                    }
                    flushed += usize::from(!same(x, want[r * ldc + j]));
                    nans += usize::from(want[r * ldc + j].is_nan());
                }
            }
            for &kernel in &kernels {
                for rows in 1..=MR {
                    for width in 1..=PANEL {
                        let mut want = c0.clone();
                        tile::tile_scalar(ops(&a, &b, steps, &mut want, ldc, (rows, width)));
                        let mut got = c0.clone();
                        run_tile(kernel, ops(&a, &b, steps, &mut got, ldc, (rows, width)));
                        for (e, (&g, &w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                same(g, w),
                                "{kernel:?} tiny {tiny}, {steps} pairs, {rows} x {width}: \
                                 C[{}][{}] = {g:e} ({:08x}), scalar tile {w:e} ({:08x})",
                                e / ldc,
                                e % ldc,
                                g.to_bits(),
                                w.to_bits()
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(flushed > 100 && nans > 10, "{flushed} flushed, {nans} NaN");
}

/// Which product: `C += A B` (NN), `C += A B^T` (NT), `C += A^T B` (TN).
#[derive(Clone, Copy, Debug)]
enum Shape {
    Nn,
    Nt,
    Tn,
}

const SHAPES: [Shape; 3] = [Shape::Nn, Shape::Nt, Shape::Tn];

impl Shape {
    /// `A[i][s]` of an `m x k` product, with `a` stored as this shape stores it.
    fn a(self, a: &[f32], (m, k): (usize, usize), i: usize, s: usize) -> f32 {
        match self {
            Shape::Tn => a[s * m + i],
            _ => a[i * k + s],
        }
    }

    /// `B[s][j]` of a `k x n` product.
    fn b(self, b: &[f32], (k, n): (usize, usize), s: usize, j: usize) -> f32 {
        match self {
            Shape::Nt => b[j * k + s],
            _ => b[s * n + j],
        }
    }

    /// `C += A op(B)` through a whole packing of `A` ([`PackedBf16A`]) rather than block by
    /// block as [`Shape::run`]'s functions convert it.
    fn run_packed(
        self,
        kernel: Bf16Kernel,
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
    ) {
        let (mut pa, mut pb) = (PackedBf16A::new(), PackedBf16B::new());
        let storage = match self {
            Shape::Tn => AStorage::ColMajor { ld: m },
            _ => AStorage::RowMajor,
        };
        pa.pack(kernel, a, m, k, storage);
        match self {
            Shape::Nt => pb.pack_transposed(kernel, b, n, k),
            _ => pb.pack(kernel, b, k, n),
        }
        gemm_bf16_acc(kernel, &pa, &pb, c);
    }

    fn run(
        self,
        kernel: Bf16Kernel,
        mkn: (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
    ) {
        match self {
            Shape::Nn => gemm_bf16_nn(kernel, mkn, a, b, c),
            Shape::Nt => gemm_bf16_nt(kernel, mkn, a, b, c),
            Shape::Tn => gemm_bf16_tn(kernel, mkn, a, b, c),
        }
    }
}

/// The scalar bf16 model of the product, written from the definition: each element
/// accumulates `dot_pair` over the pairs of k in order, the inputs rounded by `to_bf16`.
fn model(
    shape: Shape,
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c0: &[f32],
) -> Vec<f32> {
    let at = |i, s| if s < k { shape.a(a, (m, k), i, s) } else { 0.0 };
    let bt = |s, j| if s < k { shape.b(b, (k, n), s, j) } else { 0.0 };
    let mut c = c0.to_vec();
    for i in 0..m {
        for j in 0..n {
            let x = &mut c[i * n + j];
            for s in (0..k).step_by(2) {
                *x = dot_pair(
                    *x,
                    pair_of(at(i, s), at(i, s + 1)),
                    pair_of(bt(s, j), bt(s + 1, j)),
                );
            }
        }
    }
    c
}

/// The documented bound on `|C - C_exact|` for element `(i, j)`, and `C_exact`, in f64.
fn bound(
    shape: Shape,
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c0: f32,
    (i, j): (usize, usize),
) -> (f64, f64) {
    let (u, v) = (2f64.powi(-8), 2f64.powi(-24));
    let kk = (2 * k.div_ceil(2)) as f64;
    let g = kk * v / (1.0 - kk * v);
    let (mut exact, mut s) = (f64::from(c0), 0.0);
    for p in 0..k {
        let t = f64::from(shape.a(a, (m, k), i, p)) * f64::from(shape.b(b, (k, n), p, j));
        exact += t;
        s += t.abs();
    }
    let bound = (2.0 * u + u * u) * s + g * (f64::from(c0).abs() + (1.0 + u).powi(2) * s);
    (bound, exact)
}

/// Shapes `(m, k, n)` around the tile (6 rows, 64 columns) and the cache blocks (128 pairs of
/// k, 96 rows): remainders of each, odd k, k = 1, and empty products; the last three span more
/// than one block of k (the last three), the last more than one block of rows.
fn test_shapes() -> &'static [(usize, usize, usize)] {
    if cfg!(miri) {
        &[(0, 3, 2), (2, 0, 3), (3, 2, 0), (1, 1, 1), (7, 3, 17)]
    } else {
        &[
            (0, 5, 3),
            (4, 0, 5),
            (3, 5, 0),
            (1, 1, 1),
            (1, 2, 1),
            (2, 1, 70),
            (7, 3, 65),
            (6, 64, 64),
            (5, 127, 63),
            (13, 259, 70),
            (64, 512, 130),
            (100, 521, 200),
        ]
    }
}

#[test]
fn products_match_the_scalar_model_bit_for_bit() {
    for kernel in kernels("products_match_the_scalar_model_bit_for_bit") {
        for shape in SHAPES {
            for &(m, k, n) in test_shapes() {
                let a: Vec<f32> = values(m as u64 + 1, m * k, 1.0);
                let b: Vec<f32> = values(n as u64 + 2, k * n, 1.0);
                let c0: Vec<f32> = values(k as u64 + 3, m * n, 1.0);
                let want = model(shape, (m, k, n), &a, &b, &c0);
                for packed in [false, true] {
                    let mut got = c0.clone();
                    if packed {
                        shape.run_packed(kernel, (m, k, n), &a, &b, &mut got);
                    } else {
                        shape.run(kernel, (m, k, n), &a, &b, &mut got);
                    }
                    for (e, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            same(g, w),
                            "{kernel:?} {shape:?} {m}x{k}x{n} (A packed whole: {packed}): \
                             C[{}][{}] = {g:e}, model {w:e}",
                            e / n,
                            e % n
                        );
                    }
                }
            }
        }
    }
}

/// The general product reads each operand as its flag says: every one of the four cases
/// gives, bit for bit, what the matching fixed-shape product gives on the operands laid out
/// for it (the case of both transposed against `gemm_bf16_tn` over `B` transposed first).
#[test]
fn the_general_product_reads_each_transpose() {
    let kernel = Bf16Kernel::scalar();
    let transpose = |x: &[f32], rows: usize, cols: usize| -> Vec<f32> {
        (0..cols * rows)
            .map(|e| x[(e % rows) * cols + e / rows])
            .collect()
    };
    for &(m, k, n) in test_shapes() {
        let a: Vec<f32> = values(m as u64 + 5, m * k, 1.0);
        let b: Vec<f32> = values(n as u64 + 6, k * n, 1.0);
        let c0: Vec<f32> = values(k as u64 + 7, m * n, 1.0);
        // a as m x k or k x m, b as k x n or n x k.
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let s = GemmShape {
                m,
                k,
                n,
                trans_a,
                trans_b,
            };
            let mut want = c0.clone();
            match (trans_a, trans_b) {
                (false, false) => gemm_bf16_nn(kernel, (m, k, n), &a, &b, &mut want),
                (false, true) => gemm_bf16_nt(kernel, (m, k, n), &a, &b, &mut want),
                (true, false) => gemm_bf16_tn(kernel, (m, k, n), &a, &b, &mut want),
                (true, true) => {
                    gemm_bf16_tn(kernel, (m, k, n), &a, &transpose(&b, n, k), &mut want)
                }
            }
            let mut got = c0.clone();
            gemm_bf16(kernel, s, &a, &b, &mut got);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{m}x{k}x{n}, {s:?}");
        }
    }
}

#[test]
fn products_are_within_the_documented_bound() {
    let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
        &[(3, 9, 5)]
    } else {
        &[(7, 3, 65), (13, 129, 70), (9, 1000, 33)]
    };
    let kernel = Bf16Kernel::detect().unwrap_or(Bf16Kernel::scalar());
    for shape in SHAPES {
        for &(m, k, n) in shapes {
            let a: Vec<f32> = values(m as u64 + 11, m * k, 1.0);
            let b: Vec<f32> = values(n as u64 + 12, k * n, 2.0);
            let c0: Vec<f32> = values(k as u64 + 13, m * n, 1.0);
            let mut got = c0.clone();
            shape.run(kernel, (m, k, n), &a, &b, &mut got);
            let mut worst: f64 = 0.0;
            for i in 0..m {
                for j in 0..n {
                    let (bd, exact) = bound(shape, (m, k, n), &a, &b, c0[i * n + j], (i, j));
                    let err = (f64::from(got[i * n + j]) - exact).abs();
                    assert!(
                        err <= bd,
                        "{shape:?} {m}x{k}x{n} C[{i}][{j}]: error {err:e} > bound {bd:e}"
                    );
                    worst = worst.max(err / bd);
                }
            }
            // The inputs were rounded to bf16: the error is far above f32's somewhere.
            assert!(
                worst > 0.01,
                "{shape:?} {m}x{k}x{n}: error at most {worst} of the bound"
            );
        }
    }
}

#[test]
fn nan_and_infinity_propagate() {
    let (m, k, n) = if cfg!(miri) { (3, 5, 6) } else { (9, 33, 70) };
    for kernel in kernels("nan_and_infinity_propagate") {
        for shape in SHAPES {
            let mut a: Vec<f32> = values(21, m * k, 1.0);
            let mut b: Vec<f32> = values(22, k * n, 1.0);
            let c0: Vec<f32> = values(23, m * n, 1.0);
            // A NaN in row 1 of A; an infinity in column 2 of B; in column 3, an f32 too large
            // for bf16 (it rounds to infinity) facing a zero in row 2 of A (inf * 0 = NaN).
            let set_a = |a: &mut Vec<f32>, i: usize, s: usize, x: f32| match shape {
                Shape::Tn => a[s * m + i] = x,
                _ => a[i * k + s] = x,
            };
            let set_b = |b: &mut Vec<f32>, s: usize, j: usize, x: f32| match shape {
                Shape::Nt => b[j * k + s] = x,
                _ => b[s * n + j] = x,
            };
            set_a(&mut a, 1, 4 % k, f32::NAN);
            set_b(&mut b, 0, 2, f32::INFINITY);
            set_b(&mut b, 3, 3, f32::MAX);
            set_a(&mut a, 2, 3, 0.0);
            let want = model(shape, (m, k, n), &a, &b, &c0);
            let mut got = c0.clone();
            shape.run(kernel, (m, k, n), &a, &b, &mut got);
            assert!(
                got.iter().zip(&want).all(|(&g, &w)| same(g, w)),
                "{kernel:?} {shape:?}"
            );
            assert!((0..n).all(|j| got[n + j].is_nan()), "row 1 is NaN");
            assert!(got[2 * n + 3].is_nan(), "inf * 0 is NaN");
            let a00 = shape.a(&a, (m, k), 0, 0);
            assert_eq!(got[2], f32::INFINITY.copysign(a00), "C[0][2] is infinite");
            assert!(got[4].is_finite(), "untouched columns stay finite");
        }
    }
}

#[test]
fn a_packed_weight_serves_many_products() {
    let (m, k, n) = if cfg!(miri) { (3, 5, 7) } else { (11, 37, 100) };
    for kernel in kernels("a_packed_weight_serves_many_products") {
        let w: Vec<f32> = values(31, n * k, 1.0);
        // A packing reused after a larger one: no stale value may leak in.
        let mut pb = PackedBf16B::new();
        pb.pack_transposed(
            kernel,
            &values::<f32>(32, 2 * (n + 9) * (k + 5), 1.0),
            2 * (n + 9),
            k + 5,
        );
        pb.pack_transposed(kernel, &w, n, k);
        assert_eq!((pb.k(), pb.n()), (k, n));
        let mut pa = PackedBf16A::new();
        pa.pack(
            kernel,
            &values::<f32>(33, 2 * (m + 7) * (k + 3), 1.0),
            2 * (m + 7),
            k + 3,
            AStorage::RowMajor,
        );
        for seed in 0..3 {
            let x: Vec<f32> = values(40 + seed, m * k, 1.0);
            pa.pack(kernel, &x, m, k, AStorage::RowMajor);
            assert_eq!((pa.m(), pa.k()), (m, k));
            let mut got = vec![0.5f32; m * n];
            gemm_bf16_acc(kernel, &pa, &pb, &mut got);
            let want = model(Shape::Nt, (m, k, n), &x, &w, &vec![0.5; m * n]);
            assert!(
                got.iter().zip(&want).all(|(&g, &w)| same(g, w)),
                "{kernel:?} product {seed}"
            );
        }
    }
}

#[test]
fn a_wider_c_keeps_its_other_columns() {
    let (m, k, n, ldc) = (7, 9, 20, 29);
    for kernel in kernels("a_wider_c_keeps_its_other_columns") {
        let a: Vec<f32> = values(51, m * k, 1.0);
        let b: Vec<f32> = values(52, k * n, 1.0);
        let (mut pa, mut pb) = (PackedBf16A::new(), PackedBf16B::new());
        pa.pack(kernel, &a, m, k, AStorage::RowMajor);
        pb.pack(kernel, &b, k, n);
        let mut c = vec![7.0f32; (m - 1) * ldc + n];
        gemm_bf16_acc_ld(kernel, &pa, &pb, &mut c, ldc);
        let want = model(Shape::Nn, (m, k, n), &a, &b, &vec![7.0; m * n]);
        for i in 0..m {
            assert_eq!(&c[i * ldc..i * ldc + n], &want[i * n..(i + 1) * n]);
            if i + 1 < m {
                assert!(
                    c[i * ldc + n..(i + 1) * ldc].iter().all(|&x| x == 7.0),
                    "row {i}'s gap"
                );
            }
        }
    }
}

#[test]
fn detection_says_why_not() {
    let got = Bf16Kernel::detect();
    if cfg!(miri) {
        assert_eq!(got, Err(Bf16Unavailable::Miri));
    } else {
        #[cfg(target_arch = "x86_64")]
        {
            let has = std::arch::is_x86_feature_detected!("avx512bf16")
                && std::arch::is_x86_feature_detected!("avx512f");
            assert_eq!(got.is_ok(), has);
            assert_eq!(
                got.map(Bf16Kernel::is_native),
                if has {
                    Ok(true)
                } else {
                    Err(Bf16Unavailable::NoAvx512Bf16)
                }
            );
        }
    }
    if let Err(why) = got {
        assert!(why.to_string().contains("AVX512_BF16"), "{why}");
    }
    assert!(!Bf16Kernel::scalar().is_native());
    // The portable kernel is never the native one: the AVX2 emulation where the CPU has AVX2
    // and FMA (not under Miri), else the scalar one.
    let portable = Bf16Kernel::portable();
    assert!(!portable.is_native());
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = !cfg!(miri)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        assert_eq!(portable.isa == Isa::Avx2Fma, avx2);
    }
    if cfg!(miri) {
        assert_eq!(portable, Bf16Kernel::scalar());
    }
}

#[test]
#[should_panic(expected = "gemm_bf16")]
fn a_short_c_is_refused() {
    let kernel = Bf16Kernel::scalar();
    let (m, k, n) = (3, 4, 5);
    gemm_bf16_nn(kernel, (m, k, n), &[1.0; 12], &[1.0; 20], &mut [0.0; 14]);
}

/// GFLOP/s of `C += A B` (`m = 256`, `k = 512`, `n = 1024`, [`gemm_bf16_nn`]) on each bf16
/// kernel this machine has and of the f32 `sgemm` of the same shape, in alternating rounds
/// (the best of each kernel's timings); printed, not checked. Run with
/// `cargo test --release --lib bf16_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn bf16_speed() {
    use crate::kernels::gemm::sgemm;
    use std::time::Instant;
    let (m, k, n) = (256, 512, 1024);
    let a: Vec<f32> = values(1, m * k, 1.0);
    let b: Vec<f32> = values(2, k * n, 1.0);
    let mut c = vec![0.0f32; m * n];
    let flops = 2.0 * (m * k * n) as f64;
    let shape = GemmShape {
        m,
        k,
        n,
        trans_a: false,
        trans_b: false,
    };
    let mut names: Vec<String> = vec!["f32 sgemm".into()];
    let bf16: Vec<Bf16Kernel> = kernels("bf16_speed");
    names.extend(bf16.iter().map(|k| format!("bf16 {k:?}")));
    let mut best = vec![f64::INFINITY; names.len()];
    for _round in 0..3 {
        for (i, best) in best.iter_mut().enumerate() {
            // The scalar kernel takes about a second a product: once a round.
            let reps = if i > 0 && bf16[i - 1] == Bf16Kernel::scalar() {
                1
            } else {
                5
            };
            for _ in 0..reps {
                let t = Instant::now();
                if i == 0 {
                    sgemm(shape, 1.0, &a, &b, 1.0, &mut c);
                } else {
                    gemm_bf16_nn(bf16[i - 1], (m, k, n), &a, &b, &mut c);
                }
                *best = best.min(t.elapsed().as_secs_f64());
            }
        }
    }
    let f32_rate = flops / best[0] / 1e9;
    for (name, t) in names.iter().zip(&best) {
        let rate = flops / t / 1e9;
        println!(
            "{name:>34}: {:8.2} ms  {rate:7.2} GFLOP/s  {:6.3} of f32",
            t * 1e3,
            rate / f32_rate
        );
    }
}

/// Packing parts stacked along k gives the packing of the parts copied together, also where a
/// pair of k spans two parts (a part of an odd number of rows) and with empty parts.
#[test]
fn stacked_parts_pack_as_their_concatenation() {
    let kernel = Bf16Kernel::portable();
    for (rows, n) in [
        (vec![3, 4], 70),
        (vec![0, 5, 0], 9),
        (vec![1, 1, 1], 64),
        (vec![7], 1),
    ] {
        let parts: Vec<Vec<f32>> = rows
            .iter()
            .enumerate()
            .map(|(i, &r)| values(i as u64 + 40, r * n, 1.0))
            .collect();
        let whole: Vec<f32> = parts.iter().flatten().copied().collect();
        let k: usize = rows.iter().sum();
        let (mut want, mut got) = (PackedBf16B::new(), PackedBf16B::new());
        want.pack(kernel, &whole, k, n);
        let refs: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        got.pack_stacked(kernel, &refs, n);
        assert_eq!((got.k(), got.n()), (k, n));
        assert_eq!(
            got.buf.values(),
            want.buf.values(),
            "rows {rows:?}, n = {n}"
        );
    }
}

/// A product over a range of whole panels of `B` gives, into a `C` of just those columns, the
/// values of the whole product bit for bit: the two halves a split step computes on two
/// threads, a ragged last panel included.
#[test]
fn a_product_over_some_panels_computes_those_columns_as_the_whole() {
    let kernel = Bf16Kernel::portable();
    for &(m, k, n) in &[(7, 9, 200), (3, 64, 128), (1, 5, 65), (13, 1, 64)] {
        let a: Vec<f32> = values(m as u64 + 50, m * k, 1.0);
        let b: Vec<f32> = values(n as u64 + 51, k * n, 1.0);
        let c0: Vec<f32> = values(k as u64 + 52, m * n, 1.0);
        let mut pb = PackedBf16B::new();
        pb.pack(kernel, &b, k, n);
        let mut whole = c0.clone();
        gemm_bf16_acc_stored(kernel, (m, &a, AStorage::RowMajor), &pb, &mut whole, n);
        let panels = n.div_ceil(PANEL);
        for cut in 0..=panels {
            let split = (cut * PANEL).min(n);
            for cols in [0..split, split..n] {
                let w = cols.len();
                let mut part: Vec<f32> = (0..m * w)
                    .map(|e| c0[(e / w.max(1)) * n + cols.start + e % w.max(1)])
                    .collect();
                let a_op = (m, &a[..], AStorage::RowMajor);
                gemm_bf16_acc_stored_cols(kernel, a_op, &pb, cols.clone(), &mut part, w);
                for (e, &g) in part.iter().enumerate() {
                    let want = whole[(e / w) * n + cols.start + e % w];
                    assert!(same(g, want), "{m}x{k}x{n}, columns {cols:?}: value {e}");
                }
            }
        }
    }
}

/// `C = A B` writes `C` without reading it: every value as a product added to a `C` of zeros
/// gives, bit for bit, with `A` by rows and by columns, on every kernel; an empty sum (k = 0)
/// writes zeros; the columns of a wider `C` past `n` are left as they were.
#[test]
fn a_set_product_writes_what_a_zeroed_c_would_hold() {
    for kernel in kernels("a_set_product_writes_what_a_zeroed_c_would_hold") {
        for &(m, k, n) in test_shapes() {
            let a: Vec<f32> = values(m as u64 + 61, m * k, 1.0);
            // The same `A` stored by columns: `A^T` row-major, `k x m`.
            let a_t: Vec<f32> = (0..k * m).map(|e| a[(e % m) * k + e / m]).collect();
            let b: Vec<f32> = values(n as u64 + 62, k * n, 1.0);
            let mut pb = PackedBf16B::new();
            pb.pack(kernel, &b, k, n);
            let ldc = n + 3;
            let by_rows = (m, &a[..], AStorage::RowMajor);
            let by_cols = (m, &a_t[..], AStorage::ColMajor { ld: m });
            for (what, a_op) in [("rows", by_rows), ("columns", by_cols)] {
                let mut want = vec![0.0f32; m * ldc];
                gemm_bf16_acc_stored(kernel, a_op, &pb, &mut want, ldc);
                let mut got = vec![f32::NAN; m * ldc];
                gemm_bf16_set_stored(kernel, a_op, &pb, &mut got, ldc);
                for (e, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let (i, j) = (e / ldc, e % ldc);
                    if j < n {
                        assert!(
                            g.to_bits() == w.to_bits() || g.is_nan() && w.is_nan() && k > 0,
                            "{kernel:?} {m}x{k}x{n}, A by {what}: C[{i}][{j}] = {g:e}, want {w:e}"
                        );
                    } else {
                        assert!(
                            g.is_nan(),
                            "{kernel:?} {m}x{k}x{n}: C[{i}][{j}] past n written"
                        );
                    }
                }
            }
        }
    }
}

/// Columns `ks` of a packed `A` give, bit for bit, the product of a packing of just those
/// columns, added to `C` or written over it, also against stacked parts of `B`; an odd run is
/// allowed only at the packing's end, and a run that starts or ends inside a pair is refused.
#[test]
fn a_run_of_columns_of_a_packed_a_is_a_packing_of_them() {
    for kernel in kernels("a_run_of_columns_of_a_packed_a_is_a_packing_of_them") {
        let (m, k, n) = if cfg!(miri) { (7, 9, 5) } else { (13, 301, 70) };
        let a_t: Vec<f32> = values(71, k * m, 1.0);
        let b: Vec<f32> = values(72, k * n, 1.0);
        let c0: Vec<f32> = values(73, m * n, 1.0);
        let mut whole = PackedBf16A::new();
        whole.pack(kernel, &a_t, m, k, AStorage::ColMajor { ld: m });
        for ks in [0..k, 0..0, 2..k, 4..k - 1, 0..6, 2..3.min(k)] {
            if !(ks.end.is_multiple_of(2) || ks.end == k) {
                continue;
            }
            let a_part = &a_t[ks.start * m..ks.end * m];
            let mut alone = PackedBf16A::new();
            alone.pack(kernel, a_part, m, ks.len(), AStorage::ColMajor { ld: m });
            let b_part = &b[ks.start * n..ks.end * n];
            let mut pb = PackedBf16B::new();
            pb.pack(kernel, b_part, ks.len(), n);
            for set in [false, true] {
                let mut want = if set { vec![0.0; m * n] } else { c0.clone() };
                gemm_bf16_acc_ld(kernel, &alone, &pb, &mut want, n);
                let mut got = if set {
                    vec![f32::NAN; m * n]
                } else {
                    c0.clone()
                };
                gemm_bf16_part(kernel, (&whole, ks.clone()), &pb, (&mut got, n), set);
                let mut stacked = vec![f32::NAN; m * n];
                let parts: &[&[f32]] = &[
                    &b_part[..b_part.len() / n / 2 * n],
                    &b_part[b_part.len() / n / 2 * n..],
                ];
                gemm_bf16_stacked_part(kernel, (&whole, ks.clone()), parts, n, (&mut stacked, n));
                for e in 0..m * n {
                    assert!(
                        same(got[e], want[e]),
                        "{kernel:?} columns {ks:?} (set {set}): value {e}"
                    );
                    if set {
                        assert!(
                            same(stacked[e], want[e]),
                            "{kernel:?} columns {ks:?}, stacked: value {e}"
                        );
                    }
                }
            }
        }
        for ks in [1..k, 0..3] {
            let mut pb = PackedBf16B::new();
            pb.pack(kernel, &b[..ks.len() * n], ks.len(), n);
            let mut c = vec![0.0; m * n];
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                gemm_bf16_part(kernel, (&whole, ks.clone()), &pb, (&mut c, n), true)
            }));
            assert!(run.is_err(), "columns {ks:?} inside pairs were taken");
        }
    }
}
