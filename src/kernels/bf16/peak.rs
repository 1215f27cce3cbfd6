//! The core's own limit in bf16: independent chains of `vdpbf16ps`, as
//! [`cpu::fma_peak_gflops`](crate::cpu::fma_peak_gflops) times fused multiply-adds in f32.
//! No bf16 product can beat their rate, and the instruction's rate against f32's decides
//! whether bf16 can be faster at all on a CPU: on an Intel Xeon (family 6 model 207) it
//! measured half of it.

use super::tile::LANES;
use super::{Bf16Kernel, Bf16Unavailable};

/// Chains of 16-lane accumulators: 24 of AVX-512's 32 registers, more than the latency times
/// the throughput of `vdpbf16ps` on the CPUs measured.
pub const CHAINS: usize = 24;

/// The pair of bf16 values every lane of `a` holds: `0.99609375` twice.
const A_PAIR: u32 = 0x3F7F_3F7F;
/// The pair of bf16 values every lane of `b` holds: about `9.98e-8` twice.
const B_PAIR: u32 = 0x33D6_33D6;

/// Runs `rounds` rounds of one `vdpbf16ps` on each of [`CHAINS`] accumulators from 1 (each
/// lane adds two products of bf16 values a round) and returns the sum of every lane, which
/// depends on all of them. `kernel` must be the native one (the CPU's AVX512_BF16, as
/// [`Bf16Kernel::detect`] gives it): the emulations' rate says nothing about the CPU's.
pub fn dot_chains(kernel: Bf16Kernel, rounds: usize) -> Result<f32, Bf16Unavailable> {
    if !kernel.is_native() {
        return Err(Bf16Unavailable::NoAvx512Bf16);
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: a native `Bf16Kernel` exists only once the CPU was seen to have AVX512_BF16
        // and AVX-512F, all that `chains` needs.
        Ok(unsafe { avx512::chains(rounds) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = rounds;
        Err(Bf16Unavailable::NotX86)
    }
}

/// Floating-point operations of [`dot_chains`]`(rounds)`: two products and two additions per
/// lane of each instruction, counted as a product of f32 values counts its multiply-add.
pub fn dot_chains_flops(rounds: usize) -> u64 {
    (CHAINS * rounds * LANES * 4) as u64
}

/// The value [`dot_chains`] returns, from the scalar model of the instruction
/// ([`dot_pair`](super::dot_pair)): every lane of every chain follows the same recurrence.
pub fn dot_chains_model(rounds: usize) -> f32 {
    let mut acc = 1.0f32;
    for _ in 0..rounds {
        acc = super::dot_pair(acc, A_PAIR, B_PAIR);
    }
    acc * (CHAINS * LANES) as f32
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{A_PAIR, B_PAIR, CHAINS};
    use std::arch::x86_64::*;

    /// [`dot_chains`](super::dot_chains) on the CPU's `vdpbf16ps`.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX512_BF16 and AVX-512F.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn chains(rounds: usize) -> f32 {
        // SAFETY: both are 64-byte vector types with no invalid bit patterns.
        let (a, b) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(A_PAIR as i32)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(B_PAIR as i32)),
            )
        };
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        // Every lane holds the same value, so the order of the sum changes nothing.
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chains give what the instruction's scalar model gives, where the CPU has the
    /// instruction; elsewhere the native-only function refuses the other kernels.
    #[test]
    fn the_chains_follow_the_scalar_model() {
        assert_eq!(dot_chains_flops(10), (CHAINS * 10 * 16 * 4) as u64);
        assert!(dot_chains(Bf16Kernel::scalar(), 1).is_err());
        assert!(dot_chains(Bf16Kernel::portable(), 1).is_err());
        match Bf16Kernel::detect() {
            Ok(kernel) => {
                for rounds in [0, 1, 7, 1000] {
                    // The lanes' sum is rounded in another order than the model's product.
                    let (got, want) = (
                        dot_chains(kernel, rounds).unwrap(),
                        dot_chains_model(rounds),
                    );
                    assert!(
                        (got - want).abs() <= 1e-6 * want,
                        "{rounds} rounds: {got} against {want}"
                    );
                }
                // The recurrence moves: its products are not lost below the accumulator's
                // rounding in the first rounds.
                assert!(dot_chains_model(10) > dot_chains_model(0));
            }
            Err(why) => {
                println!("the_chains_follow_the_scalar_model: native chains skipped: {why}")
            }
        }
    }
}
