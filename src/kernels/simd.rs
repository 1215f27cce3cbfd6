//! Vectorised `exp`, `sigmoid` and `tanh` on `wide::f32x16` and `wide::f64x8`.
//!
//! 512-bit vectors: one AVX-512 register where the target has it (this crate builds with
//! `target-cpu=native`), two AVX registers otherwise. On an AVX-512 machine the wider type
//! runs the recurrent product faster than `f32x8`, which leaves half of each register unused.
//!
//! # Method
//!
//! All three functions share one range reduction. For `x`, take `n = round(x / ln 2)` and
//! `r = x - n ln 2` (`ln 2` split in a high part with trailing zero bits and a low part, so `n *
//! ln2_hi` is exact), giving `|r| <= ln2 / 2`. Then `q = e^r - 1` comes from its Taylor series
//! to degree 7 (f32) or 13 (f64), evaluated by Horner's rule with fused multiply-adds where the
//! target has them; the truncation error is below a quarter of an ulp. `2^n` is built from its
//! bits.
//!
//! - `exp(x) = (1 + q) * 2^n1 * 2^n2` with `n1 = floor(n / 2)`, `n2 = n - n1`, so that every
//!   scale factor is a normal number and results that over- or underflow (including subnormal
//!   results) are rounded once, at the last product.
//! - `sigmoid(x) = 1 / (1 + e)` for `x >= 0` and `e / (1 + e)` for `x < 0`, with
//!   `e = exp(-|x|) <= 1`: nothing overflows, large negative `x` gives the (subnormal, then zero)
//!   value `e^x`, and large positive `x` gives exactly `1`.
//! - `tanh(x) = sign(x) * m / (m + 2)` with `m = expm1(2|x|) = q 2^n + (2^n - 1)` computed from
//!   the same reduction without cancellation, so small arguments keep full relative accuracy
//!   (`tanh(x) = x` for tiny and subnormal `x`, `tanh(-0) = -0`). `|x|` is clamped to 20 first,
//!   where `tanh` already rounds to `1` in both precisions, so `m` never overflows.
//!
//! NaN in gives NaN out; `exp(+inf) = +inf`, `exp(-inf) = 0`, `sigmoid(+-inf) = 1, 0`,
//! `tanh(+-inf) = +-1`; huge finite arguments saturate the same way, never producing NaN.
//!
//! # Measured accuracy
//!
//! Largest distance, in units in the last place of the result, from the `std` `f64` functions
//! (rounded to `f32` for the f32 version; sigmoid from `std`'s `exp` in f64), over a dense sweep
//! of `[-110, 110]` in steps of `5e-5`, powers of ten from `1e-330` to `1e4` of either sign,
//! subnormals, and the overflow edges. The tests in this file assert these bounds:
//!
//! | function | f32 | f64 |
//! |---|---|---|
//! | `exp` (subnormal results included) | 1 ulp | 1 ulp |
//! | `sigmoid` | 2 ulps | 2 ulps |
//! | `tanh` | 2 ulps | 3 ulps |
//!
//! (For f32, 1 ulp is at most `1.2e-7` relative; for f64 at most `2.3e-16`.)
//!
//! # Lanes and tails
//!
//! A scalar is computed by placing it in a vector (the other lanes zero) and running the same
//! vector code, so an element's result never depends on where it sits in a row: the kernels'
//! scalar tails use [`SimdFloat::load_n`] and [`SimdFloat::store_n`], which pad and truncate.

use std::ops::{Add, Div, Mul, Neg, Sub};

use wide::{f32x16, f64x8, u32x16, u64x8};

/// A float type with a SIMD vector type and vectorised math.
///
/// Implemented for `f32` (`f32x16`) and `f64` (`f64x8`); [`crate::Float`] requires it, so
/// generic code can call the vector functions on any element type.
pub trait SimdFloat: Copy + Default + Send + Sync + 'static {
    /// The vector of `LANES` values.
    type V: Copy
        + Add<Output = Self::V>
        + Sub<Output = Self::V>
        + Mul<Output = Self::V>
        + Div<Output = Self::V>
        + Neg<Output = Self::V>;
    /// Number of lanes of [`Self::V`].
    const LANES: usize;

    /// Every lane set to `x`.
    fn splat(x: Self) -> Self::V;
    /// Loads the first `min(s.len(), LANES)` values of `s`, padding the rest with zeros.
    fn load_n(s: &[Self]) -> Self::V;
    /// Loads `LANES` values starting at `p`.
    ///
    /// # Safety
    /// `p` must be valid for reading `LANES` consecutive values (no alignment needed).
    unsafe fn load_ptr(p: *const Self) -> Self::V;
    /// Stores the first `min(out.len(), LANES)` lanes of `v` into `out`.
    fn store_n(v: Self::V, out: &mut [Self]);
    /// Stores the `LANES` lanes of `v` starting at `p`.
    ///
    /// # Safety
    /// `p` must be valid for writing `LANES` consecutive values (no alignment needed).
    unsafe fn store_ptr(v: Self::V, p: *mut Self);
    /// `a * b + c`, fused where the target has FMA.
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The sum of the lanes, in a fixed order.
    fn reduce_add(v: Self::V) -> Self;
    /// `x` where `x > 0`, else `0` (NaN stays NaN).
    fn relu(x: Self::V) -> Self::V;
    /// `g` where `h > 0`, else `0`: the gradient through a relu with output `h`.
    fn relu_grad(h: Self::V, g: Self::V) -> Self::V;
    /// Lane-wise `e^x`.
    fn exp_v(x: Self::V) -> Self::V;
    /// Lane-wise logistic sigmoid `1 / (1 + e^-x)`.
    fn sigmoid_v(x: Self::V) -> Self::V;
    /// Lane-wise hyperbolic tangent.
    fn tanh_v(x: Self::V) -> Self::V;
    /// `dst[i * ldd + j] = src[j * ld + i]` for `i, j < LANES`: the transpose of a square block
    /// of `LANES x LANES` values (`kernels::transpose`). Panics if a slice is too short for its
    /// block or a row stride is below `LANES`.
    fn transpose_block(src: &[Self], ld: usize, dst: &mut [Self], ldd: usize);

    /// `e^x` of one value, by the same code as the vector lanes.
    fn exp_s(x: Self) -> Self {
        first(Self::exp_v(Self::splat(x)))
    }
    /// The sigmoid of one value, by the same code as the vector lanes.
    fn sigmoid_s(x: Self) -> Self {
        first(Self::sigmoid_v(Self::splat(x)))
    }
    /// `tanh` of one value, by the same code as the vector lanes.
    fn tanh_s(x: Self) -> Self {
        first(Self::tanh_v(Self::splat(x)))
    }
}

/// Lane 0 of a vector.
fn first<T: SimdFloat>(v: T::V) -> T {
    let mut out = [T::default()];
    T::store_n(v, &mut out);
    out[0]
}

/// Applies `f` to `xs` in place, vector by vector, the tail padded: what every kernel does.
pub fn map_inplace<T: SimdFloat>(xs: &mut [T], f: impl Fn(T::V) -> T::V) {
    for chunk in xs.chunks_mut(T::LANES) {
        let v = f(T::load_n(chunk));
        T::store_n(v, chunk);
    }
}

macro_rules! impl_simd_float {
    (
        $t:ty, $v:ident, $u:ident, $ut:ty, $lanes:expr,
        magic = $magic:expr, mant = $mant:expr, bias = $bias:expr,
        lo = $lo:expr, hi = $hi:expr,
        ln2_hi = $ln2_hi:expr, ln2_lo = $ln2_lo:expr,
        terms = $terms:expr,
        transpose = $transpose:expr
    ) => {
        impl SimdFloat for $t {
            type V = $v;
            const LANES: usize = $lanes;

            #[inline(always)]
            fn splat(x: Self) -> $v {
                $v::splat(x)
            }
            #[inline(always)]
            fn load_n(s: &[Self]) -> $v {
                if s.len() >= $lanes {
                    let a: [$t; $lanes] = s[..$lanes].try_into().expect("length checked");
                    $v::new(a)
                } else {
                    let mut a = [0.0; $lanes];
                    a[..s.len()].copy_from_slice(s);
                    $v::new(a)
                }
            }
            #[inline(always)]
            unsafe fn load_ptr(p: *const Self) -> $v {
                // SAFETY: the caller guarantees `LANES` readable values at `p`; `[T; LANES]`
                // has no alignment requirement beyond `T`'s, and `read_unaligned` needs none.
                $v::new(unsafe { std::ptr::read_unaligned(p.cast::<[$t; $lanes]>()) })
            }
            #[inline(always)]
            unsafe fn store_ptr(v: $v, p: *mut Self) {
                // SAFETY: the caller guarantees room for `LANES` values at `p`;
                // `write_unaligned` needs no alignment.
                unsafe { std::ptr::write_unaligned(p.cast::<[$t; $lanes]>(), v.to_array()) }
            }
            #[inline(always)]
            fn store_n(v: $v, out: &mut [Self]) {
                let a = v.to_array();
                // A whole vector is one fixed-size copy (one store); only a tail needs the
                // variable-length one.
                if out.len() >= $lanes {
                    out[..$lanes].copy_from_slice(&a);
                } else {
                    out.copy_from_slice(&a[..out.len()]);
                }
            }
            #[inline(always)]
            fn transpose_block(src: &[Self], ld: usize, dst: &mut [Self], ldd: usize) {
                $transpose(src, ld, dst, ldd)
            }
            #[inline(always)]
            fn mul_add(a: $v, b: $v, c: $v) -> $v {
                a.mul_add(b, c)
            }
            #[inline(always)]
            fn reduce_add(v: $v) -> $t {
                v.reduce_add()
            }
            #[inline(always)]
            fn relu(x: $v) -> $v {
                let zero = $v::splat(0.0);
                x.is_nan().select(x, x.simd_gt(zero).select(x, zero))
            }
            #[inline(always)]
            fn relu_grad(h: $v, g: $v) -> $v {
                let zero = $v::splat(0.0);
                h.simd_gt(zero).select(g, zero)
            }
            #[inline(always)]
            fn exp_v(x: $v) -> $v {
                let (n, q) = reduce(x.fast_max($v::splat($lo)).fast_min($v::splat($hi)));
                let n1 = (n * $v::splat(0.5)).floor();
                let n2 = n - n1;
                let y = (q + $v::splat(1.0)) * pow2(n1) * pow2(n2);
                x.is_nan().select(x + x, y)
            }
            #[inline(always)]
            fn sigmoid_v(x: $v) -> $v {
                // e = exp(-|x|) <= 1 never overflows; 1 / (1 + e) for x >= 0, e / (1 + e)
                // below, which keeps subnormal results for large negative x.
                let one = $v::splat(1.0);
                let e = Self::exp_v(-x.abs());
                let neg = x.simd_lt($v::splat(0.0));
                neg.select(e, one) / (one + e)
            }
            #[inline(always)]
            fn tanh_v(x: $v) -> $v {
                let sign = $v::splat(-0.0);
                let ax = x.abs().fast_min($v::splat(20.0));
                let (n, q) = reduce(ax + ax);
                let s = pow2(n);
                let m = q.mul_add(s, s - $v::splat(1.0));
                let t = m / (m + $v::splat(2.0));
                let y = t | (x & sign);
                x.is_nan().select(x + x, y)
            }
        }

        /// `1 / k!` for `k = 2, 3, ...`: the Taylor coefficients of `(e^r - 1 - r) / r^2`, each
        /// factorial exact in the type and divided once, as the literal `1.0 / 720.0` would be.
        const INV_FACTORIALS: [$t; $terms] = {
            let mut c = [0.0; $terms];
            let mut factorial: $t = 1.0;
            let mut i = 0;
            while i < $terms {
                factorial *= (i + 2) as $t;
                c[i] = 1.0 / factorial;
                i += 1;
            }
            c
        };

        /// `(n, e^r - 1)` with `x = n ln 2 + r`, `|r| <= ln2 / 2`; `x` must be finite and
        /// within the clamp range.
        #[inline(always)]
        fn reduce(x: $v) -> ($v, $v) {
            let magic = $v::splat($magic);
            let t = x.mul_add($v::splat(std::f64::consts::LOG2_E as $t), magic);
            let n = t - magic;
            let r = n.mul_neg_add($v::splat($ln2_hi), x);
            let r = n.mul_neg_add($v::splat($ln2_lo), r);
            let coeffs: &[$t] = &INV_FACTORIALS;
            let mut p = $v::splat(coeffs[coeffs.len() - 1]);
            for &c in coeffs[..coeffs.len() - 1].iter().rev() {
                p = p.mul_add(r, $v::splat(c));
            }
            // q = r + r^2 (1/2 + r/6 + ...)
            let q = (r * r).mul_add(p, r);
            (n, q)
        }

        /// `2^k` for integral `k` in the normal exponent range, from its bits.
        #[inline(always)]
        fn pow2(k: $v) -> $v {
            // Adding the magic constant puts `k + bias` in the low mantissa bits; shifting
            // those into the exponent field drops the constant's own bits.
            let t = k + $v::splat($bias + $magic);
            let bits: $u = wide::bytemuck::cast(t);
            wide::bytemuck::cast::<$u, $v>(bits << $mant)
        }
    };
}

// The ln 2 splits are written out in full: the high parts are exact binary fractions.
#[allow(clippy::excessive_precision)]
mod f32_impl {
    use super::*;
    impl_simd_float!(
        f32,
        f32x16,
        u32x16,
        u32,
        16,
        magic = 12_582_912.0,
        mant = 23u32,
        bias = 127.0,
        lo = -104.0,
        hi = 89.0,
        ln2_hi = 0.693_359_375,
        ln2_lo = -2.121_944_4e-4,
        terms = 6,
        transpose = super::super::transpose::block_f32x16
    );
}

#[allow(clippy::excessive_precision)]
mod f64_impl {
    use super::*;
    impl_simd_float!(
        f64,
        f64x8,
        u64x8,
        u64,
        8,
        magic = 6_755_399_441_055_744.0,
        mant = 52u32,
        bias = 1023.0,
        lo = -746.0,
        hi = 710.0,
        ln2_hi = 6.931_471_803_691_238_164_9e-1,
        ln2_lo = 1.908_214_929_270_587_700_02e-10,
        terms = 12,
        transpose = |src: &[f64], ld, dst: &mut [f64], ldd| {
            super::super::transpose::block(src, ld, dst, ldd, 8)
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tensor::Float;

    /// A float's place among the representable values of its type, so that two places differ
    /// by the distance of the floats in ulps.
    trait Ordinal: Float + std::fmt::LowerExp {
        fn ordinal(self) -> i128;
    }

    macro_rules! impl_ordinal {
        ($($t:ty, $i:ty);*) => {
            $(impl Ordinal for $t {
                fn ordinal(self) -> i128 {
                    let i = self.to_bits() as $i;
                    (if i < 0 { <$i>::MIN - i } else { i }) as i128
                }
            })*
        };
    }
    impl_ordinal!(f32, i32; f64, i64);

    /// Distance in representable values between two floats (0 when both are NaN).
    fn ulps<T: Ordinal>(a: T, b: T) -> u64 {
        if a.to_f64().is_nan() && b.to_f64().is_nan() {
            return 0;
        }
        (a.ordinal() - b.ordinal()).unsigned_abs() as u64
    }

    type Case<V> = (&'static str, fn(V) -> V, fn(f64) -> f64, u64);

    fn sigmoid64(x: f64) -> f64 {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            let e = x.exp();
            e / (1.0 + e)
        }
    }

    /// A dense sweep of [-110, 110] plus subnormals, tiny values and extremes (under Miri, an
    /// interpreter, a sparse sweep and every fifteenth power of ten).
    fn points() -> Vec<f64> {
        let (n, step, every) = if cfg!(miri) {
            (275, 0.4, 15)
        } else {
            (2_200_000, 5e-5, 1)
        };
        let mut v: Vec<f64> = (-n..=n).map(|i| i as f64 * step).collect();
        for e in (-330..=4).step_by(every) {
            let m = 10f64.powi(e);
            v.extend([m, -m, 1.37 * m, -1.37 * m]);
        }
        v.extend([
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::from(f32::MIN_POSITIVE),
            1e-40,
            -1e-40,
            5e-324,
            -5e-324,
            1e4,
            -1e4,
            700.0,
            -700.0,
            709.7,
            709.9,
            -745.0,
            -746.0,
            88.7,
            88.8,
            -87.0,
            -103.0,
            -104.5,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]);
        v
    }

    /// Runs `f` over `xs` through whole vectors and a padded tail.
    fn apply<T: SimdFloat>(xs: &[T], f: fn(T::V) -> T::V) -> Vec<T> {
        let mut out = xs.to_vec();
        map_inplace(&mut out, f);
        out
    }

    /// Checks `exp`, `sigmoid` and `tanh` in `T` on [`points`] (rounded to `T`) against the
    /// `std` `f64` versions rounded to `T`, within `bounds` ulps (in that order: the table in
    /// the module's notes).
    fn accuracy_against_std<T: Ordinal>([exp, sigmoid, tanh]: [u64; 3]) {
        let cases: [Case<T::V>; 3] = [
            ("exp", T::exp_v, f64::exp, exp),
            ("sigmoid", T::sigmoid_v, sigmoid64, sigmoid),
            ("tanh", T::tanh_v, f64::tanh, tanh),
        ];
        let xs: Vec<T> = points().into_iter().map(T::from_f64).collect();
        for (name, fv, fs, bound) in cases {
            let got = apply(&xs, fv);
            let mut worst = (0, T::ZERO);
            for (&x, &g) in xs.iter().zip(&got) {
                let want = T::from_f64(fs(x.to_f64()));
                let d = ulps(g, want);
                if d > worst.0 {
                    worst = (d, x);
                }
                assert!(
                    d <= bound,
                    "{name}({x:e}) = {g:e}, want {want:e} ({d} ulps)"
                );
            }
            let (d, x) = worst;
            eprintln!("{} {name}: max {d} ulps at {x:e}", T::DTYPE);
        }
    }

    #[test]
    fn f32_accuracy_against_std_f64() {
        accuracy_against_std::<f32>([1, 2, 2]);
    }

    #[test]
    fn f64_accuracy_against_std() {
        accuracy_against_std::<f64>([1, 2, 3]);
    }

    /// A function of one value, an argument and the result it must give, bit for bit (in f64,
    /// rounded to the type).
    type Special<T> = (fn(T) -> T, f64, f64);

    /// Checks in `T` that NaN of either sign gives NaN, that infinite and huge arguments
    /// saturate, that `tanh` keeps `-0`, and the `cases` of `T` alone.
    fn special_values_in<T: Ordinal>(cases: &[Special<T>]) {
        let nan = T::from_f64(f64::NAN);
        for x in [nan, -nan] {
            for f in [T::exp_s, T::sigmoid_s, T::tanh_s] {
                assert!(f(x).to_f64().is_nan(), "{}: NaN", T::DTYPE);
            }
        }
        let inf = f64::INFINITY;
        let both: [Special<T>; 11] = [
            (T::exp_s, inf, inf),
            (T::exp_s, -inf, 0.0),
            (T::exp_s, 1e4, inf),
            (T::sigmoid_s, inf, 1.0),
            (T::sigmoid_s, -inf, 0.0),
            (T::sigmoid_s, 1e4, 1.0),
            (T::sigmoid_s, -1e4, 0.0),
            (T::tanh_s, inf, 1.0),
            (T::tanh_s, -inf, -1.0),
            (T::tanh_s, 1e4, 1.0),
            (T::tanh_s, -0.0, -0.0),
        ];
        for (k, &(f, x, want)) in both.iter().chain(cases).enumerate() {
            let (got, want) = (f(T::from_f64(x)), T::from_f64(want));
            assert_eq!(
                got.ordinal(),
                want.ordinal(),
                "{} case {k}: f({x:e}) = {got:e}, want {want:e}",
                T::DTYPE
            );
        }
    }

    #[test]
    fn special_values() {
        special_values_in::<f32>(&[
            (f32::exp_s, 100.0, f64::INFINITY),
            (f32::exp_s, -200.0, 0.0),
            (f32::tanh_s, -f32::MAX as f64, -1.0),
            (f32::tanh_s, 1e-40, 1e-40),
        ]);
        special_values_in::<f64>(&[
            (f64::sigmoid_s, f64::MAX, 1.0),
            (f64::tanh_s, 1e300, 1.0),
            (f64::tanh_s, 5e-324, 5e-324),
        ]);
        assert_eq!(
            f64::relu(f64x8::new([
                -1.0,
                2.0,
                f64::INFINITY,
                f64::NAN,
                0.0,
                0.0,
                0.0,
                0.0
            ]))
            .to_array()[..3],
            [0.0, 2.0, f64::INFINITY]
        );
        assert!(f64::relu(f64x8::splat(f64::NAN)).to_array()[0].is_nan());
    }

    #[test]
    fn a_value_does_not_depend_on_its_position() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        let whole = apply(&xs, f32::tanh_v);
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(whole[i].to_bits(), f32::tanh_s(x).to_bits());
            assert_eq!(
                apply(&xs[i..], f32::tanh_v)[0].to_bits(),
                whole[i].to_bits()
            );
        }
        let xs: Vec<f64> = (0..11).map(|i| (i as f64 - 5.0) * 0.91).collect();
        let whole = apply(&xs, f64::sigmoid_v);
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(whole[i].to_bits(), f64::sigmoid_s(x).to_bits());
        }
    }
}
