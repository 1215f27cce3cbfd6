//! f32 <-> bf16 conversion: the scalar reference, and the vector version that packing uses.
//!
//! bf16 is the upper half of an f32: its sign, its 8-bit exponent and the top 7 bits of its
//! significand (8 bits of precision with the implicit one). [`to_bf16`] rounds to the nearest
//! value, ties to even, as `vcvtneps2bf16` does, which also fixes the two special cases:
//!
//! - a NaN stays a NaN: its upper half, made quiet (bit 6 of the bf16 set), so a signalling NaN
//!   whose payload lies in the lower half cannot become an infinity;
//! - an f32 subnormal becomes a zero of its sign (the instruction treats denormal inputs as
//!   zero); the bf16 dot product would read a bf16 subnormal as zero anyway.
//!
//! Finite values above the largest bf16 (`0x7F7F`, about 3.39e38) round to an infinity, as
//! round-to-nearest does at the top of any format. Widening ([`to_f32`]) is exact.

use super::{Bf16Kernel, Isa};

/// A bfloat16 value, stored as its 16 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

/// `x` rounded to bf16: to nearest, ties to even; NaN to a quiet NaN, subnormals to zero (see
/// the module's notes). The scalar reference of every conversion in this module.
pub fn to_bf16(x: f32) -> Bf16 {
    let u = x.to_bits();
    let bits = if x.is_nan() {
        (u >> 16) | 0x0040
    } else if x.is_subnormal() {
        (u >> 16) & 0x8000
    } else {
        // Adding 0x7FFF rounds up exactly the lower halves above one half; the upper half's
        // lowest bit breaks a tie towards even. A carry out of the significand steps the
        // exponent, as rounding up should (up to infinity past the largest finite value).
        (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    };
    Bf16(bits as u16)
}

/// `x` as an f32 (exact: the bf16's bits are the f32's upper half).
pub fn to_f32(x: Bf16) -> f32 {
    f32::from_bits(u32::from(x.0) << 16)
}

/// `dst[i] = to_bf16(src[i])` for every `i`, 16 at a time with `vcvtneps2bf16` where `kernel`
/// has it, or [`to_bf16`]'s arithmetic on vectors of 8 with AVX2. Panics if the slices'
/// lengths differ.
pub fn convert_to_bf16(kernel: Bf16Kernel, src: &[f32], dst: &mut [Bf16]) {
    assert_eq!(src.len(), dst.len(), "convert_to_bf16: lengths differ");
    let done = match kernel.isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512Bf16` is only chosen once the CPU was seen to have AVX512_BF16
        // and AVX-512F (`Bf16Kernel::detect`).
        Isa::Avx512Bf16 => unsafe { avx512::to_bf16(src, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only chosen once the CPU was seen to have AVX2 and FMA
        // (`Bf16Kernel::portable`).
        Isa::Avx2Fma => unsafe { avx2::to_bf16(src, dst) },
        _ => 0,
    };
    for (d, &s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = to_bf16(s);
    }
}

/// `dst[i] = to_f32(src[i])` for every `i` (a shift by 16 bits, which the compiler vectorises).
/// Panics if the slices' lengths differ.
pub fn convert_to_f32(src: &[Bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "convert_to_f32: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_f32(s);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Bf16;
    use std::arch::x86_64::*;

    /// Converts the longest prefix of `src` that is whole vectors of 16 into `dst`, and returns
    /// its length (the caller converts the rest). Needs `dst.len() >= src.len()`.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX512_BF16 and AVX-512F.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn to_bf16(src: &[f32], dst: &mut [Bf16]) -> usize {
        let mut done = 0;
        for (s, d) in src.chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
            // SAFETY: `s` holds 16 f32 (an unaligned load reads exactly those).
            let v = unsafe { _mm512_loadu_ps(s.as_ptr()) };
            let h = _mm512_cvtneps_pbh(v);
            // SAFETY: `d` holds 16 `Bf16`, the 32 bytes of `h`, which the unaligned write
            // fills.
            unsafe { d.as_mut_ptr().cast::<__m256bh>().write_unaligned(h) };
            done += 16;
        }
        done
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Bf16;
    use std::arch::x86_64::*;

    /// Converts the longest prefix of `src` that is whole blocks of 16 into `dst` with
    /// [`to_bf16`](super::to_bf16)'s arithmetic, 8 lanes at a time, and returns its length
    /// (the caller converts the rest). Needs `dst.len() >= src.len()`.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn to_bf16(src: &[f32], dst: &mut [Bf16]) -> usize {
        let mut done = 0;
        for (s, d) in src.chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
            // SAFETY: `s` holds 16 f32, two vectors of 8 (unaligned loads read exactly those).
            let (x0, x1) = unsafe {
                (
                    _mm256_loadu_ps(s.as_ptr()),
                    _mm256_loadu_ps(s.as_ptr().add(8)),
                )
            };
            // Each lane's bf16 in the low 16 bits of its 32 (the high 16 zero), so packing with
            // unsigned saturation keeps them as they are; the pack works within each 128-bit
            // half, giving x0[0..4] x1[0..4] x0[4..8] x1[4..8], which the permutation orders.
            let packed = _mm256_packus_epi32(round(x0), round(x1));
            let h = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
            // SAFETY: `d` holds 16 `Bf16`, the 32 bytes of `h`, which the unaligned store fills.
            unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast::<__m256i>(), h) };
            done += 16;
        }
        done
    }

    /// [`to_bf16`](super::to_bf16) on each lane, the bf16 in the lane's low 16 bits.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn round(x: __m256) -> __m256i {
        let u = _mm256_castps_si256(x);
        let upper = _mm256_srli_epi32::<16>(u);
        // To nearest, ties to even: add 0x7FFF and the upper half's lowest bit, keep the upper
        // half. No lane wraps: the largest non-NaN pattern, 0xFF80_0000, gains at most 0x8000.
        let odd = _mm256_and_si256(upper, _mm256_set1_epi32(1));
        let bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF));
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, bias));
        // A zero exponent field (a subnormal or a zero) keeps only the sign; for a zero this is
        // what rounding gives too.
        let exponent = _mm256_and_si256(u, _mm256_set1_epi32(0x7F80_0000));
        let tiny = _mm256_cmpeq_epi32(exponent, _mm256_setzero_si256());
        let sign = _mm256_and_si256(upper, _mm256_set1_epi32(0x8000));
        let rounded = _mm256_blendv_epi8(rounded, sign, tiny);
        // A NaN: its upper half, made quiet.
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        let quiet = _mm256_or_si256(upper, _mm256_set1_epi32(0x0040));
        _mm256_blendv_epi8(rounded, quiet, nan)
    }
}
