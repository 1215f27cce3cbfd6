//! Batches of variable-length sequences: padding into the time-major layout the recurrent
//! layers take, lengths, bucketing by length and seeded shuffling, epoch by epoch.
//!
//! The recurrent layers take a batch as `[T, B, F]` (token ids `[T, B]` before the embedding)
//! with one length per sequence. **Lengths need not be sorted**: each sequence stops at its own
//! length (its state frozen, its outputs zero), in any order; there is nothing like PyTorch's
//! `enforce_sorted`. Bucketing only serves speed: batches of similar lengths waste fewer padded
//! steps.

use crate::rng::Rng;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// A source of batches that a training loop walks epoch by epoch. Batch `index` of `epoch` is
/// a function of the two (and the source's seed), so a run resumed at any step sees the same
/// batches as an uninterrupted one.
pub trait DataSource {
    /// What one batch is.
    type Batch;
    /// Batches in one epoch (at least 1).
    fn batches_per_epoch(&self) -> usize;
    /// Batch `index` (`< batches_per_epoch()`) of `epoch`.
    fn batch(&mut self, epoch: usize, index: usize) -> Result<Self::Batch>;

    /// The first `n` batches of each epoch (all of them if there are fewer): for example a
    /// validation on part of a long held-out text.
    ///
    /// ```
    /// use recur::data::{DataSource, LmStreams};
    /// let ids: Vec<usize> = (0..41).collect();
    /// let mut s = LmStreams::new(&ids, 2, 4)?.take(3);
    /// assert_eq!(s.batches_per_epoch(), 3);
    /// assert!(s.batch(0, 0)?.reset);
    /// assert_eq!(LmStreams::new(&ids, 2, 4)?.take(100).batches_per_epoch(), 4);
    /// # Ok::<(), recur::Error>(())
    /// ```
    fn take(self, n: usize) -> Take<Self>
    where
        Self: Sized,
    {
        Take { inner: self, n }
    }
}

/// The first batches of each epoch of a [`DataSource`] ([`DataSource::take`]).
#[derive(Clone, Debug)]
pub struct Take<D> {
    inner: D,
    n: usize,
}

impl<D: DataSource> DataSource for Take<D> {
    type Batch = D::Batch;

    fn batches_per_epoch(&self) -> usize {
        self.inner.batches_per_epoch().min(self.n)
    }

    fn batch(&mut self, epoch: usize, index: usize) -> Result<D::Batch> {
        if index >= self.batches_per_epoch() {
            return Err(Error::IndexOutOfRange {
                op: "DataSource::batch",
                index,
                size: self.batches_per_epoch(),
            });
        }
        self.inner.batch(epoch, index)
    }
}

/// A padded batch of token sequences, time-major, with their lengths and targets.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqBatch {
    /// Token ids `[T, B]`, time-major: `ids[t * batch + b]`; padded past each length.
    pub ids: Vec<usize>,
    /// Each sequence's length, in `1..=t_len`, in batch order (not sorted).
    pub lengths: Vec<usize>,
    /// The longest length `T`.
    pub t_len: usize,
    /// The number of sequences `B`.
    pub batch: usize,
    /// One target per sequence (a class id), in batch order.
    pub targets: Vec<usize>,
    /// Which examples of the data set the batch holds, in batch order.
    pub indices: Vec<usize>,
}

/// Pads token sequences into a time-major `[T, B]` block with `pad` past each length; returns
/// the ids, the lengths and `T`. Every sequence must be non-empty.
///
/// ```
/// use recur::data::pad_ids;
/// let (ids, lengths, t) = pad_ids(&[&[5, 6, 7], &[8]], 0)?;
/// assert_eq!((t, lengths), (3, vec![3, 1]));
/// assert_eq!(ids, [5, 8, 6, 0, 7, 0]); // [T, B]
/// assert!(pad_ids(&[&[1], &[]], 0).is_err());
/// # Ok::<(), recur::Error>(())
/// ```
pub fn pad_ids(seqs: &[&[usize]], pad: usize) -> Result<(Vec<usize>, Vec<usize>, usize)> {
    let lengths = check_lengths("pad_ids", seqs.iter().map(|s| s.len()))?;
    let (t_len, b) = (lengths.iter().copied().max().unwrap_or(0), seqs.len());
    let mut ids = vec![pad; t_len * b];
    for (k, s) in seqs.iter().enumerate() {
        for (t, &id) in s.iter().enumerate() {
            ids[t * b + k] = id;
        }
    }
    Ok((ids, lengths, t_len))
}

/// Pads sequences of feature vectors (each `len * features` values, step after step) into a
/// time-major tensor `[T, B, features]` of zeros past each length; returns it and the lengths.
///
/// ```
/// use recur::data::pad_dense;
/// let (x, lengths) = pad_dense::<f32>(&[&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0]], 2)?;
/// assert_eq!(x.dims(), &[2, 2, 2]);
/// assert_eq!(x.data(), &[1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 0.0, 0.0]);
/// assert_eq!(lengths, [2, 1]);
/// # Ok::<(), recur::Error>(())
/// ```
pub fn pad_dense<T: Float>(seqs: &[&[T]], features: usize) -> Result<(Tensor<T>, Vec<usize>)> {
    if features == 0 {
        return Err(Error::invalid("pad_dense", "features must be positive"));
    }
    if let Some((k, s)) = seqs
        .iter()
        .enumerate()
        .find(|(_, s)| s.len() % features != 0)
    {
        return Err(Error::invalid(
            "pad_dense",
            format!(
                "sequence {k} has {} values, not a multiple of {features} features",
                s.len()
            ),
        ));
    }
    let lengths = check_lengths("pad_dense", seqs.iter().map(|s| s.len() / features))?;
    let (t_len, b) = (lengths.iter().copied().max().unwrap_or(0), seqs.len());
    let mut x = vec![T::ZERO; t_len * b * features];
    for (k, s) in seqs.iter().enumerate() {
        for (t, step) in s.chunks_exact(features).enumerate() {
            let at = (t * b + k) * features;
            x[at..at + features].copy_from_slice(step);
        }
    }
    Ok((Tensor::from_vec(x, &[t_len, b, features])?, lengths))
}

fn check_lengths(op: &'static str, lens: impl Iterator<Item = usize>) -> Result<Vec<usize>> {
    let lengths: Vec<usize> = lens.collect();
    if lengths.is_empty() {
        return Err(Error::invalid(op, "no sequences"));
    }
    if let Some(k) = lengths.iter().position(|&l| l == 0) {
        return Err(Error::invalid(op, format!("sequence {k} is empty")));
    }
    Ok(lengths)
}

/// Cuts a data set into batches, epoch by epoch: optionally shuffled (seeded: epoch `e`'s order
/// is a function of the seed and `e`) and bucketed by length (examples are drawn in pools of
/// `pool` batches, sorted by length inside the pool, cut into batches, and the batches
/// shuffled), so that each batch holds sequences of similar lengths.
///
/// ```
/// use recur::data::BatchPlan;
/// let lengths = [5, 1, 4, 2, 3, 6];
/// let plan = BatchPlan::new(&lengths, 2)?.shuffle(7).bucket(3);
/// let epoch = plan.epoch(0);
/// assert_eq!(epoch.len(), 3);
/// for b in &epoch {
///     // with one pool of all 6, batches hold neighbours in length order
///     assert_eq!(lengths[b[0]].abs_diff(lengths[b[1]]), 1);
/// }
/// assert_eq!(plan.epoch(1).len(), 3);
/// assert_eq!(plan.epoch(0), epoch); // the same seed and epoch give the same batches
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct BatchPlan {
    lengths: Vec<usize>,
    batch: usize,
    seed: Option<u64>,
    pool: Option<usize>,
    drop_last: bool,
}

impl BatchPlan {
    /// Batches of `batch` examples over examples with these lengths, in order, neither
    /// shuffled nor bucketed; the last batch may be smaller.
    pub fn new(lengths: &[usize], batch: usize) -> Result<Self> {
        if batch == 0 || lengths.is_empty() {
            return Err(Error::invalid(
                "BatchPlan::new",
                format!(
                    "needs at least one example and batch >= 1 (got {} examples, batch {batch})",
                    lengths.len()
                ),
            ));
        }
        Ok(BatchPlan {
            lengths: lengths.to_vec(),
            batch,
            seed: None,
            pool: None,
            drop_last: false,
        })
    }

    /// Shuffles the examples every epoch, from `seed`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Buckets by length in pools of `pool` batches (at least 1).
    pub fn bucket(mut self, pool: usize) -> Self {
        self.pool = Some(pool.max(1));
        self
    }

    /// Drops a last batch smaller than the others (if there is more than one batch).
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The number of batches in an epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.lengths.len();
        if self.drop_last && n >= self.batch {
            n / self.batch
        } else {
            n.div_ceil(self.batch)
        }
    }

    /// The batches of epoch `epoch`, as example indices.
    pub fn epoch(&self, epoch: usize) -> Vec<Vec<usize>> {
        let n = self.lengths.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = self.seed.map(|s| {
            Rng::new(
                s ^ (epoch as u64)
                    .wrapping_add(1)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
        });
        if let Some(r) = rng.as_mut() {
            r.shuffle(&mut order);
        }
        if let Some(pool) = self.pool {
            for chunk in order.chunks_mut(pool * self.batch) {
                chunk.sort_by_key(|&i| self.lengths[i]);
            }
        }
        let mut batches: Vec<Vec<usize>> = order.chunks(self.batch).map(<[_]>::to_vec).collect();
        if self.drop_last && batches.len() > 1 && !n.is_multiple_of(self.batch) {
            // The short batch is the last cut; with bucketing it holds the longest of the last
            // pool, which is as good as any to drop.
            batches.pop();
        }
        if let (Some(r), Some(_)) = (rng.as_mut(), self.pool) {
            r.shuffle(&mut batches);
        }
        batches
    }
}

/// A data set of token sequences with one class each, batched by a [`BatchPlan`]: a
/// [`DataSource`] of [`SeqBatch`]es for sequence-to-one models.
///
/// ```
/// use recur::data::{BatchPlan, DataSource, SeqDataset};
/// let seqs = vec![vec![3, 4, 5], vec![6], vec![7, 8]];
/// let mut data = SeqDataset::new(seqs, vec![0, 1, 0], 2)?;
/// let b = data.batch(0, 0)?;
/// assert_eq!((b.t_len, b.batch), (3, 2));
/// assert_eq!(b.ids, [3, 6, 4, 0, 5, 0]);
/// assert_eq!(b.lengths, [3, 1]);
/// assert_eq!(b.targets, [0, 1]);
/// assert_eq!(data.batches_per_epoch(), 2);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SeqDataset {
    seqs: Vec<Vec<usize>>,
    targets: Vec<usize>,
    plan: BatchPlan,
    cached: Option<(usize, Vec<Vec<usize>>)>,
}

impl SeqDataset {
    /// Sequences (each non-empty) and their targets, in batches of `batch` in order; change the
    /// order with [`SeqDataset::with_plan`].
    pub fn new(seqs: Vec<Vec<usize>>, targets: Vec<usize>, batch: usize) -> Result<Self> {
        if seqs.len() != targets.len() {
            return Err(Error::invalid(
                "SeqDataset::new",
                format!("{} sequences but {} targets", seqs.len(), targets.len()),
            ));
        }
        let lengths = check_lengths("SeqDataset::new", seqs.iter().map(Vec::len))?;
        let plan = BatchPlan::new(&lengths, batch)?;
        Ok(SeqDataset {
            seqs,
            targets,
            plan,
            cached: None,
        })
    }

    /// Labelled texts (from [`crate::data::read_labelled`]) encoded with `vocab` and `labels`,
    /// in batches of `batch`. An unknown label, or a text without a token (a word vocabulary
    /// over text of only whitespace), is an error naming the example (counted from 0).
    ///
    /// ```
    /// use recur::data::{parse_labelled, Labels, SeqDataset, Tokenizer, Vocab};
    /// let ex = parse_labelled("en\tcat\nfr\tchat\n", "inline")?;
    /// let vocab = Vocab::build(Tokenizer::Chars, ex.iter().map(|e| e.text.as_str()), 1)?;
    /// let labels = Labels::new(ex.iter().map(|e| e.label.as_str()))?;
    /// let data = SeqDataset::from_examples(&ex, &vocab, &labels, 32)?;
    /// assert_eq!(data.targets(), [0, 1]);
    /// assert_eq!(data.seqs()[1].len(), 4);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn from_examples(
        examples: &[crate::data::Example],
        vocab: &crate::data::Vocab,
        labels: &crate::data::Labels,
        batch: usize,
    ) -> Result<Self> {
        let mut seqs = Vec::with_capacity(examples.len());
        let mut targets = Vec::with_capacity(examples.len());
        for (k, e) in examples.iter().enumerate() {
            let ids = vocab.encode(&e.text);
            if ids.is_empty() {
                return Err(Error::invalid(
                    "SeqDataset::from_examples",
                    format!("example {k} has no tokens: {:?}", e.text),
                ));
            }
            seqs.push(ids);
            targets.push(labels.id(&e.label).map_err(|err| {
                Error::invalid("SeqDataset::from_examples", format!("example {k}: {err}"))
            })?);
        }
        Self::new(seqs, targets, batch)
    }

    /// Replaces the batch plan by `f(plan)` (e.g. `|p| p.shuffle(seed).bucket(50)`).
    pub fn with_plan(mut self, f: impl FnOnce(BatchPlan) -> BatchPlan) -> Self {
        self.plan = f(self.plan);
        self.cached = None;
        self
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether there are no examples (never: construction needs one).
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The sequences.
    pub fn seqs(&self) -> &[Vec<usize>] {
        &self.seqs
    }

    /// The targets.
    pub fn targets(&self) -> &[usize] {
        &self.targets
    }

    /// The examples `indices`, padded with 0 ([`crate::data::Vocab::PAD`]).
    pub fn gather(&self, indices: &[usize]) -> Result<SeqBatch> {
        let mut seqs = Vec::with_capacity(indices.len());
        let mut targets = Vec::with_capacity(indices.len());
        for &i in indices {
            let s = self.seqs.get(i).ok_or(Error::IndexOutOfRange {
                op: "SeqDataset::gather",
                index: i,
                size: self.seqs.len(),
            })?;
            seqs.push(s.as_slice());
            targets.push(self.targets[i]);
        }
        let (ids, lengths, t_len) = pad_ids(&seqs, 0)?;
        Ok(SeqBatch {
            ids,
            lengths,
            t_len,
            batch: indices.len(),
            targets,
            indices: indices.to_vec(),
        })
    }
}

impl DataSource for SeqDataset {
    type Batch = SeqBatch;

    fn batches_per_epoch(&self) -> usize {
        self.plan.batches_per_epoch()
    }

    fn batch(&mut self, epoch: usize, index: usize) -> Result<SeqBatch> {
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.cached = Some((epoch, self.plan.epoch(epoch)));
        }
        let batches = &self.cached.as_ref().expect("just filled").1;
        let idx = batches.get(index).ok_or(Error::IndexOutOfRange {
            op: "SeqDataset::batch",
            index,
            size: batches.len(),
        })?;
        let idx = idx.clone();
        self.gather(&idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_example_once_and_differ() {
        let lengths: Vec<usize> = (0..103).map(|i| 1 + (i * 37) % 29).collect();
        let plan = BatchPlan::new(&lengths, 8).unwrap().shuffle(1).bucket(4);
        let (e0, e1) = (plan.epoch(0), plan.epoch(1));
        for e in [&e0, &e1] {
            let mut all: Vec<usize> = e.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..103).collect::<Vec<_>>());
            assert_eq!(e.len(), plan.batches_per_epoch());
        }
        assert_ne!(e0, e1);
        // Bucketing makes the padded steps fewer than plain shuffling does.
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| {
                    let m = b.iter().map(|&i| lengths[i]).max().unwrap();
                    b.iter().map(|&i| m - lengths[i]).sum::<usize>()
                })
                .sum()
        };
        let plain = BatchPlan::new(&lengths, 8).unwrap().shuffle(1);
        assert!(padded(&e0) * 3 < padded(&plain.epoch(0)));
        let dropped = plain.drop_last(true);
        assert_eq!(dropped.batches_per_epoch(), 12);
        assert!(dropped.epoch(0).iter().all(|b| b.len() == 8));
    }

    #[test]
    fn bad_batches_are_errors() {
        assert!(BatchPlan::new(&[], 2).is_err());
        assert!(BatchPlan::new(&[1], 0).is_err());
        assert!(SeqDataset::new(vec![vec![1]], vec![], 1).is_err());
        assert!(SeqDataset::new(vec![vec![]], vec![0], 1).is_err());
        assert!(pad_dense::<f32>(&[&[1.0, 2.0, 3.0]], 2).is_err());
        let mut d = SeqDataset::new(vec![vec![1]], vec![0], 1).unwrap();
        assert!(d.batch(0, 1).is_err());
        assert!(d.gather(&[3]).is_err());
    }
}
