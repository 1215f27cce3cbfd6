//! Token streams for language models trained with truncated backpropagation through time: the
//! [`TextStreams`] cut of a corpus as a [`DataSource`] whose chunks say when the carried state
//! starts afresh. The state itself is carried by [`crate::nn::CarriedState`].

use super::{DataSource, TextStreams};
use crate::Result;

/// One chunk of a language-model stream: inputs and next-token targets, time-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmChunk {
    /// Input ids `[T, B]`.
    pub x: Vec<usize>,
    /// Target ids `[T, B]`: each input's next token.
    pub y: Vec<usize>,
    /// Steps per chunk `T`.
    pub t_len: usize,
    /// Streams `B`.
    pub batch: usize,
    /// Whether this chunk starts the streams over (the first chunk of an epoch): the carried
    /// state must be reset to zeros before it. Otherwise the chunk continues the previous one
    /// in every stream, and the previous chunk's final state is its initial state.
    pub reset: bool,
}

/// [`TextStreams`] as a [`DataSource`]: an epoch is one pass over the streams, chunk by chunk,
/// in order (the order is what carries the state; there is no shuffling).
///
/// ```
/// use recur::data::{DataSource, LmStreams};
/// let ids: Vec<usize> = (0..41).collect();
/// let mut s = LmStreams::new(&ids, 2, 4)?; // 2 streams of 20 tokens, chunks of 4 steps
/// assert_eq!(s.batches_per_epoch(), 4);
/// let (c0, c1) = (s.batch(0, 0)?, s.batch(0, 1)?);
/// assert!(c0.reset && !c1.reset);
/// assert_eq!(&c0.x[..4], &[0, 20, 1, 21]); // [T, B]
/// assert_eq!(c1.x[0], c0.x[6] + 1); // chunk 1 continues stream 0 where chunk 0 stopped
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LmStreams {
    streams: TextStreams,
}

impl LmStreams {
    /// `batch` parallel streams over `ids` read `seq_len` steps at a time (see
    /// [`TextStreams::new`]).
    pub fn new(ids: &[usize], batch: usize, seq_len: usize) -> Result<Self> {
        Ok(LmStreams {
            streams: TextStreams::new(ids, batch, seq_len)?,
        })
    }

    /// The streams.
    pub fn streams(&self) -> &TextStreams {
        &self.streams
    }
}

impl From<TextStreams> for LmStreams {
    fn from(streams: TextStreams) -> Self {
        LmStreams { streams }
    }
}

impl DataSource for LmStreams {
    type Batch = LmChunk;

    fn batches_per_epoch(&self) -> usize {
        self.streams.chunks()
    }

    fn batch(&mut self, _epoch: usize, index: usize) -> Result<LmChunk> {
        let (x, y) = self.streams.chunk(index);
        Ok(LmChunk {
            x,
            y,
            t_len: self.streams.seq_len(),
            batch: self.streams.batch(),
            reset: index.is_multiple_of(self.streams.chunks()),
        })
    }
}
