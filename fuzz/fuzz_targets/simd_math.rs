//! The vectorised `exp`, `sigmoid` and `tanh` (f32 and f64) against the `std` f64 functions
//! over arbitrary floats (subnormals, infinities, NaN, past saturation): within the error bounds
//! documented in `recur::kernels::simd`, NaN in gives NaN out, and a value's result does not
//! depend on its position in a vector or the tail.

#![no_main]

use libfuzzer_sys::fuzz_target;
use recur::internals::{SimdFloat, map_inplace};

#[path = "bytes.rs"]
mod bytes;
use bytes::Bytes;

fn sigmoid64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Distance in representable values (0 when both are NaN, infinite when only one is).
fn ulps32(a: f32, b: f32) -> u64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => return 0,
        (true, false) | (false, true) => return u64::MAX,
        _ => {}
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        (if i < 0 { i32::MIN - i } else { i }) as i64
    };
    (key(a) - key(b)).unsigned_abs()
}

fn ulps64(a: f64, b: f64) -> u64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => return 0,
        (true, false) | (false, true) => return u64::MAX,
        _ => {}
    }
    let key = |x: f64| {
        let i = x.to_bits() as i64;
        (if i < 0 { i64::MIN - i } else { i }) as i128
    };
    (key(a) - key(b)).unsigned_abs() as u64
}

/// (name, vector function, reference, f32 bound, f64 bound): the table in `kernels::simd`.
type Fns<V> = (&'static str, fn(V) -> V, fn(f64) -> f64, u64);

fn check32(xs: &[f32]) {
    let fns: [Fns<<f32 as SimdFloat>::V>; 3] = [
        ("exp", f32::exp_v, f64::exp, 1),
        ("sigmoid", f32::sigmoid_v, sigmoid64, 2),
        ("tanh", f32::tanh_v, f64::tanh, 2),
    ];
    for (name, fv, reference, bound) in fns {
        let mut got = xs.to_vec();
        map_inplace(&mut got, fv);
        for (k, (&x, &g)) in xs.iter().zip(&got).enumerate() {
            let want = reference(x as f64) as f32;
            let d = ulps32(g, want);
            assert!(
                d <= bound,
                "f32 {name}({x:e} = {:#x}) = {g:e}, want {want:e} ({d} ulps)",
                x.to_bits()
            );
            // The same value alone, through the scalar path, and from the start of a vector.
            let alone = match name {
                "exp" => f32::exp_s(x),
                "sigmoid" => f32::sigmoid_s(x),
                _ => f32::tanh_s(x),
            };
            let mut shifted = xs[k..].to_vec();
            map_inplace(&mut shifted, fv);
            assert!(
                alone.to_bits() == g.to_bits() || (alone.is_nan() && g.is_nan()),
                "f32 {name}({x:e}): {g:e} in a vector, {alone:e} alone"
            );
            assert!(shifted[0].to_bits() == g.to_bits() || (shifted[0].is_nan() && g.is_nan()));
        }
    }
}

fn check64(xs: &[f64]) {
    let fns: [Fns<<f64 as SimdFloat>::V>; 3] = [
        ("exp", f64::exp_v, f64::exp, 1),
        ("sigmoid", f64::sigmoid_v, sigmoid64, 2),
        ("tanh", f64::tanh_v, f64::tanh, 3),
    ];
    for (name, fv, reference, bound) in fns {
        let mut got = xs.to_vec();
        map_inplace(&mut got, fv);
        for (k, (&x, &g)) in xs.iter().zip(&got).enumerate() {
            let want = reference(x);
            let d = ulps64(g, want);
            assert!(
                d <= bound,
                "f64 {name}({x:e} = {:#x}) = {g:e}, want {want:e} ({d} ulps)",
                x.to_bits()
            );
            let alone = match name {
                "exp" => f64::exp_s(x),
                "sigmoid" => f64::sigmoid_s(x),
                _ => f64::tanh_s(x),
            };
            let mut shifted = xs[k..].to_vec();
            map_inplace(&mut shifted, fv);
            assert!(
                alone.to_bits() == g.to_bits() || (alone.is_nan() && g.is_nan()),
                "f64 {name}({x:e}): {g:e} in a vector, {alone:e} alone"
            );
            assert!(shifted[0].to_bits() == g.to_bits() || (shifted[0].is_nan() && g.is_nan()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes::new(data);
    let mut xs32 = Vec::new();
    let mut xs64 = Vec::new();
    // Each value: raw bits (anything at all), or a point of the range where the functions
    // change the most, in fine steps.
    while !r.is_empty() && xs64.len() < 64 {
        match r.u8() % 4 {
            0 => xs32.push(f32::from_bits(r.u32())),
            1 => xs64.push(f64::from_bits(r.u64())),
            2 => {
                let x = (r.u32() as i32) as f64 * (120.0 / i32::MAX as f64);
                xs32.push(x as f32);
                xs64.push(x);
            }
            _ => {
                // Near the saturation and underflow edges, and tiny values.
                let edges = [
                    88.72, -87.34, -103.97, 709.78, -708.4, -745.13, 9.01, 19.06, 0.0,
                ];
                let e = edges[r.u8() as usize % edges.len()];
                let x = e + (r.u16() as i16) as f64 * 1e-4 * if r.bool() { 1.0 } else { 1e-6 };
                xs32.push(x as f32);
                xs64.push(x);
            }
        }
    }
    check32(&xs32);
    check64(&xs64);
});
