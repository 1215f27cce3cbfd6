//! A free list of buffers, so a cleared tape reuses its memory instead of freeing it.

use crate::kernels::aligned::AlignedBuf;

/// Buffers returned by a cleared tape, handed out again by size.
///
/// Two lists: plain buffers (tensors' storage, cut to their length) and the buffers of
/// [`Scratch`]es, which keep every value they ever held initialised; a lent buffer comes from
/// the second where one fits, so only values past every length it held are zeroed.
///
/// A buffer that stays unused through two whole steps is freed ([`Pool::age`]), so memory that
/// enters the tape from outside every step (an input tensor moved in) does not pile up.
#[derive(Debug, Default)]
pub(crate) struct Pool<T> {
    /// Free plain buffers, each with the number of steps it has sat unused.
    free: Vec<(Vec<T>, u8)>,
    /// Free buffers of [`Scratch`]es given back, likewise: each one's length is how far it is
    /// initialised.
    kept: Vec<(Vec<T>, u8)>,
}

impl<T: Copy + Default> Pool<T> {
    /// A zero-filled buffer of length `n`, reusing the smallest free buffer that is large enough.
    pub(crate) fn take(&mut self, n: usize) -> Vec<T> {
        let mut v = self.plain(n);
        v.clear();
        v.resize(n, T::default());
        v
    }

    /// A buffer of length `n` whose values are whatever it held before (every element is
    /// initialised, none is meaningful): for buffers that are about to be overwritten in full,
    /// which then skip the zeroing pass where the buffer held `n` values already.
    pub(crate) fn take_dirty(&mut self, n: usize) -> Vec<T> {
        let mut v = self.plain(n);
        // Cuts a longer buffer; zeroes only past a shorter one's length.
        v.resize(n, T::default());
        v
    }

    /// A [`Scratch`] of `n` stale values over a free buffer that keeps the values it held past
    /// them; only values past every length the buffer has held are zeroed (none, once its
    /// lengths have settled). The values start on a cache line ([`ALIGN`](crate::kernels::aligned::ALIGN) bytes): the buffer
    /// holds a few values more than `n` ([`AlignedBuf`]), and the view starts at the first
    /// aligned one.
    ///
    /// It takes the smallest given-back [`Scratch`] buffer that already holds those values,
    /// else the smallest that is large enough (zeroing its tail), else a plain buffer.
    pub(crate) fn lend(&mut self, n: usize) -> Scratch<T> {
        if n == 0 {
            return Scratch::default();
        }
        let len = AlignedBuf::<T>::buffer_len(n);
        let buf = match pick(&mut self.kept, len, |b| (b.len() < len, b.capacity())) {
            Some(b) => b,
            None => self.plain(len),
        };
        // Grows a shorter buffer (zeroing the growth alone) and aligns the values.
        let mut buf = AlignedBuf::from_buffer(buf);
        buf.resize(n);
        Scratch { buf }
    }

    /// Takes back a [`Scratch`], with every value its buffer holds.
    pub(crate) fn give_back(&mut self, s: Scratch<T>) {
        let buf = s.buf.into_buffer();
        if buf.capacity() > 0 {
            self.kept.push((buf, 0));
        }
    }

    /// The smallest free plain buffer of capacity at least `n` (of those, one that holds `n`
    /// values where there is one, as a shorter one must be zeroed past its length), else the
    /// smallest [`Scratch`] buffer, else a new empty one. A request for no values takes none:
    /// it gets a new empty buffer, which allocates nothing.
    fn plain(&mut self, n: usize) -> Vec<T> {
        pick(&mut self.free, n, |b| (b.capacity(), b.len() < n))
            .or_else(|| pick(&mut self.kept, n, |b| b.capacity()))
            .unwrap_or_else(|| Vec::with_capacity(n))
    }

    /// Returns a buffer for later reuse.
    pub(crate) fn give(&mut self, v: Vec<T>) {
        if v.capacity() > 0 {
            self.free.push((v, 0));
        }
    }

    /// Marks the end of a step: frees the buffers that went unused through this step and the one
    /// before it.
    pub(crate) fn age(&mut self) {
        for list in [&mut self.free, &mut self.kept] {
            list.retain_mut(|(_, idle)| {
                *idle += 1;
                *idle < 2
            });
        }
    }
}

/// Removes from `list` the buffer of capacity at least `n` that ranks lowest by `rank`, if
/// there is one; a request for no values gets a new empty buffer, which allocates nothing.
fn pick<T, K: Ord>(
    list: &mut Vec<(Vec<T>, u8)>,
    n: usize,
    rank: impl Fn(&Vec<T>) -> K,
) -> Option<Vec<T>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let best = (list.iter().enumerate())
        .filter(|(_, (b, _))| b.capacity() >= n)
        .min_by_key(|(_, (b, _))| rank(b))
        .map(|(i, _)| i)?;
    Some(list.swap_remove(best).0)
}

/// A working buffer of `n` values lent by a [`Pool`]: it reads as `n` values (stale, every one
/// initialised) starting on a cache line, over a buffer that may hold more.
///
/// A buffer a tape takes for a length that changes from step to step (sequences of different
/// lengths) would otherwise be cut to each request's length and zero-filled to the next one's:
/// about a quarter of the values taken were zeroed again in a bucketed classifier's training.
/// The values past `n` stay in the buffer, so a later, longer request finds them initialised.
///
/// The fused layers keep their saved gates, states and gradients in these buffers, and their
/// gate kernels load and store them a vector at a time. The allocator starts a large buffer 16
/// bytes past a cache line, where every 64-byte vector of AVX-512 straddles two lines: on an
/// Intel Xeon (family 6 model 207) the medium GRU's training step took 1.05 to 1.08 times as
/// long as with the values on a line.
#[derive(Debug, Default)]
pub(crate) struct Scratch<T> {
    buf: AlignedBuf<T>,
}

impl<T: Copy + Default> Scratch<T> {
    /// The whole buffer, every value it holds (at least the `n` lent), for a user that sizes
    /// its own part of it (a packing): give it back with [`Scratch::whole`].
    pub(crate) fn into_buffer(self) -> Vec<T> {
        self.buf.into_buffer()
    }

    /// A buffer taken with [`Scratch::into_buffer`] (or any buffer), whole again, to give back
    /// or to lend where a `Scratch` is expected: its values from its start, all of them.
    pub(crate) fn whole(buf: Vec<T>) -> Self {
        Scratch {
            buf: AlignedBuf::whole(buf),
        }
    }
}

impl<T: Copy + Default> std::ops::Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.buf.values()
    }
}

impl<T: Copy + Default> std::ops::DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.buf.values_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::aligned::{ALIGN, slack};

    #[test]
    fn a_dirty_buffer_comes_from_the_smallest_that_fits_and_skips_zeroing_where_it_can() {
        let mut pool = Pool::<f32>::default();
        let mut short = vec![1.0; 64];
        short.truncate(8);
        pool.give(short);
        pool.give(vec![2.0; 64]);
        pool.give(vec![3.0; 1000]);
        // Same capacity: the buffer that already holds 64 values, untouched.
        let v = pool.take_dirty(64);
        assert_eq!((v.len(), v.capacity()), (64, 64));
        assert!(v.iter().all(|&x| x == 2.0));
        // Then the shorter one: its tail is zeroed, its head kept.
        let w = pool.take_dirty(64);
        assert_eq!(w.capacity(), 64);
        assert!(w[..8].iter().all(|&x| x == 1.0) && w[8..].iter().all(|&x| x == 0.0));
        // `take` zeroes everything.
        let z = pool.take(100);
        assert!(z.len() == 100 && z.capacity() == 1000 && z.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn a_lent_buffer_keeps_its_values_past_a_shorter_request() {
        let mut pool = Pool::<f32>::default();
        let pad = slack::<f32>();
        pool.give(vec![5.0; 100 + pad]);
        let mut s = pool.lend(40);
        assert_eq!(s.len(), 40);
        assert!(s.iter().all(|&x| x == 5.0));
        s.fill(1.0);
        let start = s.as_ptr();
        pool.give_back(s);
        // Longer again, from the same buffer at the same place: nothing zeroed, the values past
        // the short request are still there.
        let s = pool.lend(100);
        assert_eq!((s.len(), s.as_ptr()), (100, start));
        assert!(s[..40].iter().all(|&x| x == 1.0) && s[40..].iter().all(|&x| x == 5.0));
        pool.give_back(s);
        // Past every earlier length: only the growth is zeroed.
        let mut big = Vec::with_capacity(300);
        big.resize(150, 7.0);
        pool.give(big);
        let s = pool.lend(200);
        assert_eq!(s.len(), 200);
        let whole = s.into_buffer();
        assert_eq!(whole.len(), 200 + pad);
        assert!(whole[..150].iter().all(|&x| x == 7.0) && whole[150..].iter().all(|&x| x == 0.0));
        // A plain buffer is cut to its request, as before (the smallest that fits: the first).
        pool.give_back(Scratch::whole(whole));
        let v = pool.take_dirty(10);
        assert_eq!((v.len(), v.capacity()), (10, 100 + pad));
    }

    #[test]
    fn lent_buffers_come_back_to_lending_and_plain_ones_to_tensors() {
        let mut pool = Pool::<f32>::default();
        let pad = slack::<f32>();
        // A tensor's storage, cut short, and a lent buffer that held 100 values.
        let mut plain = vec![1.0; 64];
        plain.truncate(8);
        pool.give(plain);
        let mut s = pool.lend(100);
        s.fill(2.0);
        pool.give_back(s);
        // Lending takes the lent buffer, although the plain one is smaller: nothing is zeroed.
        let s = pool.lend(50);
        assert!(s.len() == 50 && s.iter().all(|&x| x == 2.0));
        // A tensor takes the plain buffer, zeroing only past its old length.
        let v = pool.take_dirty(20);
        assert_eq!((v.len(), v.capacity()), (20, 64));
        assert!(v[..8].iter().all(|&x| x == 1.0) && v[8..].iter().all(|&x| x == 0.0));
        // A whole lent buffer (a packing's) keeps every value through the round trip.
        let whole = s.into_buffer();
        assert_eq!(whole.len(), 100 + pad);
        pool.give_back(Scratch::whole(whole));
        let s = pool.lend(100);
        assert!(s.iter().all(|&x| x == 2.0));
        // With no lent buffer left, a plain one serves the lending, zeroed only past its length.
        pool.give(v);
        let t = pool.lend(30);
        assert_eq!(t.len(), 30);
        let whole = t.into_buffer();
        assert_eq!(whole.len(), 30 + pad);
        assert!(whole[..8].iter().all(|&x| x == 1.0) && whole[20..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn lent_values_start_on_a_cache_line() {
        fn check<T: Copy + Default + PartialEq + std::fmt::Debug>(one: T) {
            let mut pool = Pool::<T>::default();
            // Buffers wherever the allocator puts them (large ones 16 bytes past a line), fresh
            // and reused, longer and shorter than before.
            for &n in &[1, 7, 64, 1000, 5000, 300, 1] {
                let mut s = pool.lend(n);
                assert_eq!(s.len(), n);
                assert_eq!(s.as_ptr() as usize % ALIGN, 0, "{n} values");
                s.fill(one);
                // The view lies inside its buffer.
                let (start, end) = (s.as_ptr(), s.as_ptr_range().end);
                let whole = s.into_buffer();
                assert!(whole.as_ptr_range().contains(&start) && end <= whole.as_ptr_range().end);
                pool.give_back(Scratch::whole(whole));
            }
            assert!(pool.lend(0).is_empty());
        }
        check(1.0f32);
        check(1.0f64);
    }
}
