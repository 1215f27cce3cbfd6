//! The core's own limit: independent chains of fused multiply-adds on `f32` vectors, as many as
//! cover the FMA latency on two FMA units while staying in registers. No product can beat
//! their rate; the benchmarks quote every figure against it.

use super::simd::SimdFloat;

/// Chains: 12 `f32x16` where the build has AVX-512 (one register each, of 32), 6 without it
/// (two of AVX2's 16 registers each: 12 would spill and time the stack instead).
pub const CHAINS: usize = if cfg!(target_feature = "avx512f") {
    12
} else {
    6
};

/// Runs `rounds` rounds of one multiply-add on each chain and returns their sum, which
/// depends on every one of them (so that none is optimised away).
pub fn fma_chains(rounds: usize) -> f32 {
    let (x, y) = (f32::splat(0.999_999), f32::splat(1e-7));
    let mut acc = [f32::splat(1.0); CHAINS];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = <f32 as SimdFloat>::mul_add(*a, x, y);
        }
    }
    let sum = acc.iter().fold(f32::splat(0.0), |s, &a| s + a);
    f32::reduce_add(sum)
}

/// Floating-point operations of [`fma_chains`]`(rounds)`: two per lane of each multiply-add.
pub fn fma_chains_flops(rounds: usize) -> u64 {
    (CHAINS * rounds * f32::LANES * 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chains against the same recurrence in scalar f64: `a <- a x + y` from 1, `rounds`
    /// times, in every lane of every chain.
    #[test]
    fn the_chains_compute_their_recurrence() {
        let rounds = if cfg!(miri) { 3 } else { 1000 };
        let mut a = 1.0f64;
        for _ in 0..rounds {
            a = a * f64::from(0.999_999f32) + f64::from(1e-7f32);
        }
        let want = a * (CHAINS * f32::LANES) as f64;
        let got = f64::from(fma_chains(rounds));
        assert!((got - want).abs() < 1e-4 * want, "{got} against {want}");
        assert_eq!(fma_chains_flops(10), (CHAINS * 10 * f32::LANES * 2) as u64);
    }
}
