//! Blocks of one or two SIMD vectors, so a gate kernel's arithmetic is written once and run
//! two vectors at a time.
//!
//! Each activation in a gate kernel is a long chain of dependent steps (an `exp`'s polynomial,
//! then a division), and a kernel chains two of them (the LSTM's `tanh(c)` waits on its gates).
//! With one vector per loop round the core spends most of each round waiting on those chains.
//! A [`Two`] runs every operation on both of its vectors back to back, so the two independent
//! chains fill each other's waits, which makes the gate kernels faster on data in L1, and
//! still somewhat faster in a training step, where they also wait on memory. A [`One`] takes
//! the last, possibly partial, vector of a row. Both compute each lane exactly as the vector
//! functions of [`SimdFloat`] do, so results do not depend on which block a value falls in.

use std::ops::{Add, Mul, Range, Sub};

use super::simd::SimdFloat;

/// One or two vectors of `T`, with the arithmetic the gate kernels use.
pub trait Block<T: SimdFloat>:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
{
    /// Every lane set to `x`.
    fn splat(x: T) -> Self;
    /// The values of `s`: exactly two vectors' worth for [`Two`], at most one for [`One`]
    /// (a shorter slice is padded with zeros).
    fn load(s: &[T]) -> Self;
    /// Writes the lanes that `out` has room for (as many values as [`Block::load`] takes).
    fn store(self, out: &mut [T]);
    /// `self * b + c`, fused where the target has FMA.
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// Lane-wise logistic sigmoid.
    fn sigmoid(self) -> Self;
    /// Lane-wise hyperbolic tangent.
    fn tanh(self) -> Self;
}

/// One vector (the last of a row may be partial).
#[derive(Clone, Copy)]
pub struct One<T: SimdFloat>(T::V);

/// Two whole vectors, each operation applied to both in turn.
#[derive(Clone, Copy)]
pub struct Two<T: SimdFloat>(T::V, T::V);

impl<T: SimdFloat> Add for One<T> {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        One(self.0 + o.0)
    }
}
impl<T: SimdFloat> Sub for One<T> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        One(self.0 - o.0)
    }
}
impl<T: SimdFloat> Mul for One<T> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        One(self.0 * o.0)
    }
}

impl<T: SimdFloat> Block<T> for One<T> {
    #[inline(always)]
    fn splat(x: T) -> Self {
        One(T::splat(x))
    }
    #[inline(always)]
    fn load(s: &[T]) -> Self {
        One(T::load_n(s))
    }
    #[inline(always)]
    fn store(self, out: &mut [T]) {
        T::store_n(self.0, out);
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        One(T::mul_add(self.0, b.0, c.0))
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        One(T::sigmoid_v(self.0))
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        One(T::tanh_v(self.0))
    }
}

impl<T: SimdFloat> Add for Two<T> {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Two(self.0 + o.0, self.1 + o.1)
    }
}
impl<T: SimdFloat> Sub for Two<T> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Two(self.0 - o.0, self.1 - o.1)
    }
}
impl<T: SimdFloat> Mul for Two<T> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Two(self.0 * o.0, self.1 * o.1)
    }
}

impl<T: SimdFloat> Block<T> for Two<T> {
    #[inline(always)]
    fn splat(x: T) -> Self {
        Two(T::splat(x), T::splat(x))
    }
    #[inline(always)]
    fn load(s: &[T]) -> Self {
        let (a, b) = s.split_at(T::LANES);
        Two(T::load_n(&a[..T::LANES]), T::load_n(&b[..T::LANES]))
    }
    #[inline(always)]
    fn store(self, out: &mut [T]) {
        let (a, b) = out.split_at_mut(T::LANES);
        T::store_n(self.0, &mut a[..T::LANES]);
        T::store_n(self.1, &mut b[..T::LANES]);
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        Two(T::mul_add(self.0, b.0, c.0), T::mul_add(self.1, b.1, c.1))
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        Two(T::sigmoid_v(self.0), T::sigmoid_v(self.1))
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        Two(T::tanh_v(self.0), T::tanh_v(self.1))
    }
}

/// The work a gate kernel does on the units `r` of one row, for any block type.
pub trait Units<T: SimdFloat> {
    /// Computes units `r`: two whole vectors for [`Two`], at most one for [`One`].
    fn units<B: Block<T>>(&mut self, r: Range<usize>);
}

/// Runs `u` over units `0..len`: two vectors at a time while they last, then one at a time
/// (the last one possibly partial).
#[inline(always)]
pub fn for_each_block<T: SimdFloat, U: Units<T>>(len: usize, u: &mut U) {
    let l = T::LANES;
    let mut j = 0;
    while j + 2 * l <= len {
        u.units::<Two<T>>(j..j + 2 * l);
        j += 2 * l;
    }
    while j < len {
        let e = (j + l).min(len);
        u.units::<One<T>>(j..e);
        j = e;
    }
}

/// The rows `B = states / hidden` of a gate kernel's call, after checking that every buffer holds
/// them: `bufs` pairs each buffer's length with its row width in blocks of `hidden` values.
/// Panics, naming `kernel`, if a buffer is too short.
#[inline]
pub fn checked_rows(kernel: &str, states: usize, hidden: usize, bufs: &[(usize, usize)]) -> usize {
    let rows = states / hidden;
    assert!(
        bufs.iter()
            .all(|&(len, width)| len >= rows * width * hidden),
        "{kernel}: buffers too small"
    );
    rows
}

/// Row `b` of a buffer whose rows are `N` blocks of `hidden` values (one per gate), cut into
/// its blocks.
///
/// The blocks are cut by a plain loop of `split_at`, not by `array::from_fn` over an iterator,
/// which the compiler may leave uninlined: the gate kernels' loops then see every block's length
/// as `hidden`, as they do with the blocks split by hand.
#[inline]
pub fn row_blocks<T, const N: usize>(buf: &[T], b: usize, hidden: usize) -> [&[T]; N] {
    let mut rest = &buf[b * N * hidden..(b + 1) * N * hidden];
    let mut blocks = [&rest[..0]; N];
    for block in &mut blocks {
        (*block, rest) = rest.split_at(hidden);
    }
    blocks
}

/// [`row_blocks`] for a buffer to write.
#[inline]
pub fn row_blocks_mut<T, const N: usize>(buf: &mut [T], b: usize, hidden: usize) -> [&mut [T]; N] {
    let mut rest = &mut buf[b * N * hidden..(b + 1) * N * hidden];
    let mut blocks: [&mut [T]; N] = [(); N].map(|()| Default::default());
    for block in &mut blocks {
        (*block, rest) = std::mem::take(&mut rest).split_at_mut(hidden);
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that records `sigmoid(x) * tanh(x) + x` and which block computed each unit.
    struct Probe<'a> {
        x: &'a [f32],
        out: &'a mut [f32],
        calls: Vec<(usize, usize)>,
    }

    impl Units<f32> for Probe<'_> {
        fn units<B: Block<f32>>(&mut self, r: Range<usize>) {
            let x = B::load(&self.x[r.clone()]);
            x.sigmoid()
                .mul_add(x.tanh(), x)
                .store(&mut self.out[r.clone()]);
            self.calls.push((r.start, r.end));
        }
    }

    #[test]
    fn blocks_cover_every_unit_once_and_match_one_vector_at_a_time() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 48, 64, 100] {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 - 50.0) / 7.0).collect();
            let mut out = vec![f32::NAN; len];
            let mut probe = Probe {
                x: &x,
                out: &mut out,
                calls: Vec::new(),
            };
            for_each_block::<f32, _>(len, &mut probe);
            // Consecutive, covering, pairs of whole vectors before single ones.
            let calls = probe.calls;
            let mut next = 0;
            for &(s, e) in &calls {
                assert_eq!(s, next, "len {len}: {calls:?}");
                assert!(e > s && e - s <= 32, "len {len}: {calls:?}");
                next = e;
            }
            assert_eq!(next, len, "len {len}: {calls:?}");
            assert_eq!(calls.iter().filter(|c| c.1 - c.0 == 32).count(), len / 32);
            // Bit for bit what one vector at a time gives.
            for (k, chunk) in x.chunks(16).enumerate() {
                let v = f32::load_n(chunk);
                let want = <f32 as SimdFloat>::mul_add(f32::sigmoid_v(v), f32::tanh_v(v), v);
                let mut w = [0.0f32; 16];
                f32::store_n(want, &mut w);
                let got = &out[k * 16..k * 16 + chunk.len()];
                assert_eq!(got, &w[..chunk.len()], "len {len}, vector {k}");
            }
        }
    }
}
