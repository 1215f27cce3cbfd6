//! The transpose of a square block of `LANES x LANES` values, for the transposed packing of a
//! weight ([`super::gemm_nn::PackedB::pack_transposed`]).
//!
//! Value by value, a transposed packing gathers each packed row from as many rows of the weight,
//! and the LSTM's `W_hh` is packed so at every forward. With AVX-512 a 16 x 16 block of f32 is
//! sixteen loads, four rounds of sixteen shuffles and sixteen stores, which packs the same
//! weights several times faster. With AVX (and not AVX-512) it is four 8 x 8 blocks, each eight
//! loads, three rounds of eight shuffles and eight stores.

/// Panics unless `src` holds an `n x n` block with rows `ld` apart and `dst` one with rows `ldd`
/// apart (rows at least `n` long).
fn check(src: usize, ld: usize, dst: usize, ldd: usize, n: usize) {
    let span = |stride: usize| {
        n.checked_sub(1)
            .and_then(|rows| rows.checked_mul(stride))
            .and_then(|x| x.checked_add(n))
            .unwrap_or(0)
    };
    assert!(
        ld >= n && ldd >= n && src >= span(ld) && dst >= span(ldd),
        "transpose: a {n} x {n} block does not fit (source {src} values, rows {ld} apart; \
         destination {dst}, rows {ldd} apart)"
    );
}

/// `dst[i * ldd + j] = src[j * ld + i]` for `i, j < n`, value by value.
///
/// Panics if either slice is too short for its block, or a row stride is below `n`.
pub fn block<T: Copy>(src: &[T], ld: usize, dst: &mut [T], ldd: usize, n: usize) {
    check(src.len(), ld, dst.len(), ldd, n);
    for i in 0..n {
        for j in 0..n {
            dst[i * ldd + j] = src[j * ld + i];
        }
    }
}

/// [`block`] for `n = 16` values of `f32`: in AVX-512 registers where the target has them, as
/// four 8 x 8 blocks in AVX registers where it has AVX only, else value by value. The values
/// are the same either way (only moved).
pub fn block_f32x16(src: &[f32], ld: usize, dst: &mut [f32], ldd: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        check(src.len(), ld, dst.len(), ldd, 16);
        // SAFETY: `check` proved rows `0..16` of 16 values each within both slices (row `i`
        // of `src` at `i * ld`, of `dst` at `i * ldd`), which are all `avx512_16` reads and
        // writes; the target has AVX-512F (the `cfg` above).
        unsafe { avx512_16(src.as_ptr(), ld, dst.as_mut_ptr(), ldd) }
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx",
        not(target_feature = "avx512f")
    ))]
    {
        check(src.len(), ld, dst.len(), ldd, 16);
        // Block (i, j) of the destination, rows 8i.. and columns 8j.., is block (j, i) of the
        // source transposed.
        for i in 0..2 {
            for j in 0..2 {
                let (s, d) = (8 * j * ld + 8 * i, 8 * i * ldd + 8 * j);
                // SAFETY: `check` proved rows `0..16` of 16 values each within both slices, so
                // rows `8j..8j + 8` of the source from column `8i` and rows `8i..8i + 8` of the
                // destination from column `8j`, 8 values each, are in them: all of `avx_8`'s
                // reads and writes. The target has AVX (the `cfg` above).
                unsafe { avx_8(src.as_ptr().add(s), ld, dst.as_mut_ptr().add(d), ldd) }
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx")))]
    block(src, ld, dst, ldd, 16);
}

/// The 8 x 8 transpose in AVX registers: row `i` of the block at `src + i ld`, written to
/// `dst + i ldd`.
///
/// Rows 2i and 2i+1 interleaved value by value (`unpack*_ps`), then pairs of values from
/// registers two apart (`shuffle_ps`), then the 128-bit halves of registers four apart
/// (`permute2f128_ps`): register `i` then holds column `i` of the block.
///
/// # Safety
///
/// `src + i ld` must be readable and `dst + i ldd` writable for 8 values each, `i < 8`.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx",
    not(target_feature = "avx512f")
))]
#[target_feature(enable = "avx")]
unsafe fn avx_8(src: *const f32, ld: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::{
        __m256, _mm256_loadu_ps, _mm256_permute2f128_ps, _mm256_setzero_ps, _mm256_shuffle_ps,
        _mm256_storeu_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    };
    let mut r: [__m256; 8] = [_mm256_setzero_ps(); 8];
    for (i, v) in r.iter_mut().enumerate() {
        // SAFETY: row `i < 8` of the source is readable (the caller's contract).
        *v = unsafe { _mm256_loadu_ps(src.add(i * ld)) };
    }
    let mut t = r;
    // t[2i] = a0 b0 a1 b1 | a4 b4 a5 b5, t[2i+1] = a2 b2 a3 b3 | a6 b6 a7 b7 (a, b: rows 2i, 2i+1).
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // r[4i + q] = column q (and q + 4) of rows 4i..4i + 4: a_q b_q c_q d_q | a_q+4 ...
    for i in 0..2 {
        let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        r[4 * i] = _mm256_shuffle_ps::<0x44>(a, c);
        r[4 * i + 1] = _mm256_shuffle_ps::<0xEE>(a, c);
        r[4 * i + 2] = _mm256_shuffle_ps::<0x44>(b, d);
        r[4 * i + 3] = _mm256_shuffle_ps::<0xEE>(b, d);
    }
    // Low halves of rows 0..4 and 4..8 give columns 0..4, high halves columns 4..8.
    for q in 0..4 {
        t[q] = _mm256_permute2f128_ps::<0x20>(r[q], r[4 + q]);
        t[4 + q] = _mm256_permute2f128_ps::<0x31>(r[q], r[4 + q]);
    }
    for (i, v) in t.into_iter().enumerate() {
        // SAFETY: row `i < 8` of the destination is writable (the caller's contract).
        unsafe { _mm256_storeu_ps(dst.add(i * ldd), v) };
    }
}

/// The 16 x 16 transpose in registers: row `i` of the block at `src + i ld`, written to
/// `dst + i ldd`.
///
/// Each round interleaves pairs of registers at a doubled grain: single values (`unpack*_ps`),
/// pairs (`unpack*_pd`), then 128-bit quarters twice (`shuffle_f32x4`). After the four rounds
/// register `i` holds column `i` of the block.
///
/// # Safety
///
/// `src + i ld` must be readable and `dst + i ldd` writable for 16 values each, `i < 16`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_16(src: *const f32, ld: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::{
        __m512, _mm512_castpd_ps as ps, _mm512_castps_pd as pd, _mm512_loadu_ps, _mm512_setzero_ps,
        _mm512_shuffle_f32x4, _mm512_storeu_ps, _mm512_unpackhi_pd, _mm512_unpackhi_ps,
        _mm512_unpacklo_pd, _mm512_unpacklo_ps,
    };
    let mut r: [__m512; 16] = [_mm512_setzero_ps(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        // SAFETY: row `i < 16` of the source is readable (the caller's contract).
        *v = unsafe { _mm512_loadu_ps(src.add(i * ld)) };
    }
    let mut t = r;
    // Rows 2i and 2i+1, value by value: t[2i] = a0 b0 a1 b1 | a4 b4 a5 b5 | ...
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Pairs of values, from the first round's registers two apart.
    for i in 0..4 {
        let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        r[4 * i] = ps(_mm512_unpacklo_pd(pd(a), pd(c)));
        r[4 * i + 1] = ps(_mm512_unpackhi_pd(pd(a), pd(c)));
        r[4 * i + 2] = ps(_mm512_unpacklo_pd(pd(b), pd(d)));
        r[4 * i + 3] = ps(_mm512_unpackhi_pd(pd(b), pd(d)));
    }
    // 128-bit quarters: even quarters of two registers, then odd ones.
    for i in 0..2 {
        for j in 0..4 {
            let (a, b) = (r[8 * i + j], r[8 * i + 4 + j]);
            t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(a, b);
            t[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(a, b);
        }
    }
    for j in 0..8 {
        let (a, b) = (t[j], t[8 + j]);
        r[j] = _mm512_shuffle_f32x4::<0x88>(a, b);
        r[8 + j] = _mm512_shuffle_f32x4::<0xDD>(a, b);
    }
    for (i, v) in r.into_iter().enumerate() {
        // SAFETY: row `i < 16` of the destination is writable (the caller's contract).
        unsafe { _mm512_storeu_ps(dst.add(i * ldd), v) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_transpose_matches_the_scalar_one() {
        // Rows 19 and 21 apart, a block inside larger buffers: every value lands where the
        // value-by-value transpose puts it, and nothing outside the block is written.
        let src: Vec<f32> = (0..19 * 16).map(|i| i as f32).collect();
        let mut want = vec![-1.0f32; 21 * 16];
        let mut got = want.clone();
        block(&src, 19, &mut want, 21, 16);
        block_f32x16(&src, 19, &mut got, 21);
        assert_eq!(want, got);
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(got[i * 21 + j], src[j * 19 + i]);
            }
            assert!(got[i * 21 + 16..i * 21 + 21].iter().all(|&x| x == -1.0));
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_block_past_its_source_is_refused() {
        let src = vec![0.0f32; 15 * 16];
        block_f32x16(&src, 16, &mut [0.0; 256], 16);
    }
}
