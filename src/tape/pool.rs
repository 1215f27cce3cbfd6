//! A free list of buffers, so a cleared tape reuses its memory instead of freeing it.

/// Buffers returned by a cleared tape, handed out again by size.
///
/// A buffer that stays unused through two whole steps is freed ([`Pool::age`]), so memory that
/// enters the tape from outside every step (an input tensor moved in) does not pile up.
#[derive(Debug, Default)]
pub(crate) struct Pool<T> {
    /// Free buffers, each with the number of steps it has sat unused.
    free: Vec<(Vec<T>, u8)>,
}

impl<T: Copy + Default> Pool<T> {
    /// A zero-filled buffer of length `n`, reusing the smallest free buffer that is large enough.
    pub(crate) fn take(&mut self, n: usize) -> Vec<T> {
        let mut v = self.pick(n);
        v.clear();
        v.resize(n, T::default());
        v
    }

    /// A buffer of length `n` whose values are whatever it held before (every element is
    /// initialised, none is meaningful): for buffers that are about to be overwritten in full,
    /// which then skip the zeroing pass.
    pub(crate) fn take_dirty(&mut self, n: usize) -> Vec<T> {
        let mut v = self.pick(n);
        v.truncate(n);
        v.resize(n, T::default());
        v
    }

    /// The smallest free buffer of capacity at least `n`, or a new empty one.
    fn pick(&mut self, n: usize) -> Vec<T> {
        let mut best: Option<usize> = None;
        for (i, (b, _)) in self.free.iter().enumerate() {
            if b.capacity() >= n && best.is_none_or(|j| b.capacity() < self.free[j].0.capacity()) {
                best = Some(i);
            }
        }
        match best {
            Some(i) => self.free.swap_remove(i).0,
            None => Vec::with_capacity(n),
        }
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
        self.free.retain_mut(|(_, idle)| {
            *idle += 1;
            *idle < 2
        });
    }
}
