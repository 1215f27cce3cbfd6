//! A buffer whose values start on a cache-line boundary, for weights that the per-step kernels
//! stream through on every time step.
//!
//! `Vec` promises only the element's alignment, and large allocations typically start 16 bytes
//! past a page boundary: then every 512-bit load touches two cache lines, which slows down the
//! single-row product, bound by the rate at which the weight streams from L2, considerably.
//! The buffer keeps a few values of slack and starts its values at the first aligned one.

/// Bytes to which the values are aligned: a cache line, so that no vector load straddles two.
pub const ALIGN: usize = 64;

/// Values of slack a buffer holds beyond the values it serves: room to start them on an
/// [`ALIGN`]-byte boundary wherever the allocator put the buffer.
pub fn slack<T>() -> usize {
    ALIGN / std::mem::size_of::<T>()
}

/// `len` values on a cache-line boundary inside a `Vec` that can be lent and taken back.
#[derive(Debug, Default)]
pub struct AlignedBuf<T> {
    /// Where the values start in `data`.
    off: usize,
    len: usize,
    data: Vec<T>,
}

impl<T: Copy + Default> AlignedBuf<T> {
    /// A buffer that will reuse `buf`'s memory (its contents do not matter).
    pub fn from_buffer(buf: Vec<T>) -> Self {
        AlignedBuf {
            off: 0,
            len: 0,
            data: buf,
        }
    }

    /// All of `buf`'s values where they lie, from its start (aligned or not): a buffer handed
    /// in whole, to be read and written as it is.
    pub fn whole(buf: Vec<T>) -> Self {
        AlignedBuf {
            off: 0,
            len: buf.len(),
            data: buf,
        }
    }

    /// The memory, for reuse.
    pub fn into_buffer(self) -> Vec<T> {
        self.data
    }

    /// The length of a `Vec` that holds `len` aligned values (so that a buffer given to
    /// [`AlignedBuf::from_buffer`] needs no growth). Panics if it overflows `usize`.
    pub fn buffer_len(len: usize) -> usize {
        len.checked_add(slack::<T>())
            .expect("AlignedBuf: size overflows usize")
    }

    /// Makes room for `len` values and aligns them; their contents are stale until written.
    pub fn resize(&mut self, len: usize) {
        let need = Self::buffer_len(len);
        // A longer buffer keeps its length: resizing never zeroes a tail again.
        if self.data.len() < need {
            self.data.resize(need, T::default());
        }
        // `align_offset` may answer "cannot" (usize::MAX, e.g. under Miri's symbolic
        // alignment): the values then start at 0, unaligned but the same.
        self.off = match self.data.as_ptr().align_offset(ALIGN) {
            o if o < slack::<T>() => o,
            _ => 0,
        };
        self.len = len;
    }

    /// The values.
    pub fn values(&self) -> &[T] {
        &self.data[self.off..self.off + self.len]
    }

    /// The values, to be written.
    pub fn values_mut(&mut self) -> &mut [T] {
        &mut self.data[self.off..self.off + self.len]
    }
}

impl<T: Copy + Default> Clone for AlignedBuf<T> {
    /// A copy of the values in a buffer of its own, aligned the same way.
    fn clone(&self) -> Self {
        let mut c = AlignedBuf::from_buffer(Vec::new());
        c.resize(self.len);
        c.values_mut().copy_from_slice(self.values());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_start_on_a_cache_line_and_survive_a_clone() {
        // Small buffers (from the heap's bins) and large ones (mapped pages), fresh and grown.
        let lens: &[usize] = if cfg!(miri) {
            &[1, 5, 33]
        } else {
            &[1, 5, 33, 1 << 18, 1 << 20]
        };
        for &len in lens {
            let mut b = AlignedBuf::<f32>::from_buffer(vec![0.0; 3]);
            b.resize(len);
            for (i, v) in b.values_mut().iter_mut().enumerate() {
                *v = i as f32;
            }
            let c = b.clone();
            for x in [&b, &c] {
                assert_eq!(x.values().len(), len);
                // Miri does not model the allocator's alignment.
                if !cfg!(miri) {
                    assert_eq!(x.values().as_ptr() as usize % ALIGN, 0, "len {len}");
                }
                assert!(x.values().iter().enumerate().all(|(i, &v)| v == i as f32));
            }
        }
    }
}
