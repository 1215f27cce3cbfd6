//! A corpus cut into parallel streams for truncated backpropagation through time.
//!
//! The token sequence is split into `batch` contiguous streams of equal length; chunk `k` holds
//! positions `k*T .. k*T + T` of every stream. Consecutive chunks continue each other, so the
//! hidden state at the end of chunk `k` is the right initial state for chunk `k + 1` (the state
//! is carried across chunks, the gradient is not).

use crate::{Error, Result};

/// Splits `ids` into a training part and a held-out validation part (the last `fraction` of the
/// text). Both parts must hold at least `min_len` tokens.
pub fn split_validation(
    ids: &[usize],
    fraction: f64,
    min_len: usize,
) -> Result<(&[usize], &[usize])> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::invalid(
            "split_validation",
            format!("validation fraction must be in (0, 1), got {fraction}"),
        ));
    }
    let n_val = ((ids.len() as f64) * fraction).round() as usize;
    let n_train = ids.len().saturating_sub(n_val);
    if n_val < min_len || n_train < min_len {
        return Err(Error::invalid(
            "split_validation",
            format!(
                "the text is too short: {} characters give {n_train} for training and {n_val} \
                 for validation, each needs at least {min_len}",
                ids.len()
            ),
        ));
    }
    Ok(ids.split_at(n_train))
}

/// `batch` parallel streams over a token sequence, read in chunks of `seq_len` steps.
#[derive(Clone, Debug)]
pub struct TextStreams {
    ids: Vec<usize>,
    batch: usize,
    seq_len: usize,
    stream_len: usize,
}

impl TextStreams {
    /// Cuts `ids` into `batch` streams read `seq_len` steps at a time. Each stream needs at least
    /// `seq_len + 1` tokens (inputs and next-token targets).
    pub fn new(ids: &[usize], batch: usize, seq_len: usize) -> Result<Self> {
        if batch == 0 || seq_len == 0 {
            return Err(Error::invalid(
                "TextStreams::new",
                format!("batch ({batch}) and seq_len ({seq_len}) must be positive"),
            ));
        }
        let stream_len = ids.len() / batch;
        if stream_len <= seq_len {
            return Err(Error::invalid(
                "TextStreams::new",
                format!(
                    "{} tokens are too few for {batch} streams of {seq_len} + 1 tokens",
                    ids.len()
                ),
            ));
        }
        Ok(TextStreams {
            ids: ids[..stream_len * batch].to_vec(),
            batch,
            seq_len,
            stream_len,
        })
    }

    /// The number of streams (the batch size).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The number of steps per chunk.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The number of chunks in one pass over the streams (one epoch).
    pub fn chunks(&self) -> usize {
        (self.stream_len - 1) / self.seq_len
    }

    /// Chunk `k` (taken modulo [`chunks`](Self::chunks)): time-major inputs and next-token
    /// targets, each `seq_len * batch` ids laid out `[T, B]`.
    pub fn chunk(&self, k: usize) -> (Vec<usize>, Vec<usize>) {
        let k = k % self.chunks();
        let (t_len, b_len) = (self.seq_len, self.batch);
        let mut x = Vec::with_capacity(t_len * b_len);
        let mut y = Vec::with_capacity(t_len * b_len);
        for t in 0..t_len {
            for b in 0..b_len {
                let pos = b * self.stream_len + k * t_len + t;
                x.push(self.ids[pos]);
                y.push(self.ids[pos + 1]);
            }
        }
        (x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_chunks_continue_each_stream() {
        let ids: Vec<usize> = (0..103).collect();
        let s = TextStreams::new(&ids, 2, 5).unwrap();
        assert_eq!(s.chunks(), 10); // stream_len 51: 50 input positions / 5
        let (x0, y0) = s.chunk(0);
        let (x1, _) = s.chunk(1);
        // stream 1 starts at 51; targets are inputs shifted by one.
        assert_eq!(&x0[..4], &[0, 51, 1, 52]);
        assert_eq!(&y0[..2], &[1, 52]);
        // chunk 1 picks up where chunk 0 stopped, in every stream.
        assert_eq!(x1[0], x0[8] + 1);
        assert_eq!(x1[1], x0[9] + 1);
        assert_eq!(s.chunk(10), s.chunk(0));
    }

    #[test]
    fn too_short_texts_are_errors() {
        let ids: Vec<usize> = (0..10).collect();
        assert!(TextStreams::new(&ids, 4, 5).is_err());
        assert!(TextStreams::new(&ids, 0, 5).is_err());
        assert!(TextStreams::new(&ids, 1, usize::MAX).is_err());
        assert!(split_validation(&ids, 0.1, 5).is_err());
        let (tr, va) = split_validation(&ids, 0.5, 5).unwrap();
        assert_eq!((tr.len(), va.len()), (5, 5));
        assert!(split_validation(&ids, 1.5, 1).is_err());
    }
}
