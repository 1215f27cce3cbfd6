//! A free list of buffers, so a cleared tape reuses its memory instead of freeing it.

/// Buffers returned by a cleared tape, handed out again by size.
#[derive(Debug, Default)]
pub(crate) struct Pool<T> {
    free: Vec<Vec<T>>,
}

impl<T: Copy + Default> Pool<T> {
    /// A zero-filled buffer of length `n`, reusing the smallest free buffer that is large enough.
    pub(crate) fn take(&mut self, n: usize) -> Vec<T> {
        let mut best: Option<usize> = None;
        for (i, b) in self.free.iter().enumerate() {
            if b.capacity() >= n && best.is_none_or(|j| b.capacity() < self.free[j].capacity()) {
                best = Some(i);
            }
        }
        match best {
            Some(i) => {
                let mut v = self.free.swap_remove(i);
                v.clear();
                v.resize(n, T::default());
                v
            }
            None => vec![T::default(); n],
        }
    }

    /// Returns a buffer for later reuse.
    pub(crate) fn give(&mut self, v: Vec<T>) {
        if v.capacity() > 0 {
            self.free.push(v);
        }
    }
}
