//! Data-parallel training: a step cut into micro-batches whose gradients are combined in one
//! fixed order, in one process or across the ranks of an MPI job, with the same result bit for
//! bit.
//!
//! # The step
//!
//! With [`DataParallel`] (micro-batches `M`), [`Trainer::fit_parallel`] takes each global batch
//! and cuts it into `M` micro-batches with [`MicroBatch::part`]: part `j` holds the examples
//! (streams of a language model, sequences of a classifier) [`part_range`]`(B, M, j)`. Part `j`'s
//! loss `l_j` and gradient `g_j` are computed on their own (dropout from a generator derived from
//! the step's draw and `j`; a model that carries state from batch to batch carries each part's
//! own slice of it). With `n_j` the examples of part `j` and `n` those of the batch, the step's
//! gradient is the left fold, element by element, in the parameters' type,
//!
//! ```text
//! G = (((0 + w_0 g_0) + w_1 g_1) + ...) + w_{M-1} g_{M-1},   w_j = n_j / n,
//! ```
//!
//! over the non-empty parts in order, and its loss the same fold of `w_j l_j` in f64: the
//! full-batch mean, up to rounding. Clipping and the optimizer update then see `G` as they would
//! see a plain step's gradient.
//!
//! # Across processes
//!
//! With `N` ranks (`N` divides `M`), rank `r` computes the parts `r M/N .. (r+1) M/N`. The fold
//! runs as a chain: rank 0 folds its parts into zeros and sends the running sum to rank 1, which
//! folds its own into it and sends it on; the last rank broadcasts the total. Every addition is
//! the one a single process does, in the same order, so `N` ranks and one process with the same
//! `M` give the same `G`, the same update and the same weights, bit for bit, for every `N` that
//! divides `M`. The part losses are gathered and folded on every rank alike. Carried state is
//! gathered (in part order) before a checkpoint is written, and cut again when a run resumes, so
//! checkpoints do not depend on `N` either and a run may resume with another `N`.
//!
//! [`Combine::AllReduce`] trades this for speed where bit-identity is not needed: each rank
//! folds its own parts and one `MPI_Allreduce` sums the ranks' partial sums in whatever order
//! the MPI library chooses, so the weights agree with one process's up to rounding only.
//!
//! A [`Collective`] carries the messages: [`SingleProcess`] for one process, and, with the `mpi`
//! feature, `MpiCollective` over rsmpi.
//!
//! [`Trainer::fit_parallel`]: crate::models::Trainer::fit_parallel

#[cfg(feature = "mpi")]
mod mpi;

#[cfg(feature = "mpi")]
pub use self::mpi::MpiCollective;

use std::any::Any;
use std::ops::Range;
use std::time::Instant;

use crate::data::{LmChunk, SeqBatch};
use crate::models::{Control, Objective};
use crate::nn::Ctx;
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::{Grads, Tape};
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// A buffer of values a [`Collective`] moves: the parameters' type, f32 or f64.
#[derive(Debug)]
pub enum Values<'a> {
    /// f32 values.
    F32(&'a mut [f32]),
    /// f64 values.
    F64(&'a mut [f64]),
}

impl Values<'_> {
    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `v` as [`Values`] (a [`Float`] is f32 or f64). A `Vec` because a slice cannot be seen as
/// `dyn Any`.
#[allow(clippy::ptr_arg)]
fn values<T: Float>(v: &mut Vec<T>) -> Values<'_> {
    let any = v as &mut dyn Any;
    if any.is::<Vec<f32>>() {
        Values::F32(any.downcast_mut::<Vec<f32>>().expect("checked"))
    } else {
        Values::F64(
            any.downcast_mut::<Vec<f64>>()
                .expect("a Float is f32 or f64"),
        )
    }
}

/// The messages data-parallel training needs between the processes of a job ("ranks",
/// numbered from 0). Every method is collective where it says so: each rank must call it, in
/// the same order.
pub trait Collective {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// Sends `buf` to rank `to`.
    fn send(&self, to: usize, buf: Values<'_>) -> Result<()>;

    /// Receives into `buf` what rank `from` sends; a message of another length is an error.
    fn receive(&self, from: usize, buf: Values<'_>) -> Result<()>;

    /// Collective: every rank's `buf` becomes rank `root`'s.
    fn broadcast(&self, root: usize, buf: Values<'_>) -> Result<()>;

    /// Collective: the concatenation, in rank order, of every rank's `local` (lengths may
    /// differ between ranks).
    fn all_gather(&self, local: &[f64]) -> Result<Vec<f64>>;

    /// Collective: every rank's `sum` becomes the element-wise sum of every rank's `local`,
    /// added in an order the implementation chooses (so not necessarily the same for another
    /// number of ranks). `local` and `sum` have the same type and length, on every rank.
    fn all_reduce_sum(&self, local: Values<'_>, sum: Values<'_>) -> Result<()>;

    /// Collective: returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// The [`Collective`] of a job of one process: nothing to send.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn send(&self, to: usize, _buf: Values<'_>) -> Result<()> {
        Err(Error::invalid(
            "SingleProcess::send",
            format!("there is no rank {to} in a job of one process"),
        ))
    }

    fn receive(&self, from: usize, _buf: Values<'_>) -> Result<()> {
        Err(Error::invalid(
            "SingleProcess::receive",
            format!("there is no rank {from} in a job of one process"),
        ))
    }

    fn broadcast(&self, _root: usize, _buf: Values<'_>) -> Result<()> {
        Ok(())
    }

    fn all_gather(&self, local: &[f64]) -> Result<Vec<f64>> {
        Ok(local.to_vec())
    }

    fn all_reduce_sum(&self, local: Values<'_>, sum: Values<'_>) -> Result<()> {
        match (local, sum) {
            (Values::F32(a), Values::F32(b)) if a.len() == b.len() => b.copy_from_slice(a),
            (Values::F64(a), Values::F64(b)) if a.len() == b.len() => b.copy_from_slice(a),
            (a, b) => {
                return Err(Error::invalid(
                    "SingleProcess::all_reduce_sum",
                    format!(
                        "{} values to add into {} (of the same type)",
                        a.len(),
                        b.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Part `j` of `total` items cut into `parts` near-equal consecutive ranges: items
/// `j * total / parts .. (j + 1) * total / parts`.
///
/// ```
/// use recur::dist::part_range;
/// assert_eq!(part_range(10, 4, 0), 0..2);
/// assert_eq!(part_range(10, 4, 3), 7..10);
/// assert_eq!(part_range(2, 4, 0), 0..0); // more parts than items: some are empty
/// ```
pub fn part_range(total: usize, parts: usize, j: usize) -> Range<usize> {
    let at = |k: usize| ((k as u128 * total as u128) / parts.max(1) as u128) as usize;
    at(j)..at(j + 1)
}

/// A batch that can be cut into micro-batches along its examples, for [`DataParallel`]
/// training.
pub trait MicroBatch: Sized {
    /// The number of terms the model's loss averages over (a part's weight in the step is its
    /// share of them).
    fn examples(&self) -> usize;

    /// Part `j` of `parts`: the examples [`part_range`]`(B, parts, j)` of the `B` in the batch.
    /// A part may be empty (then its [`MicroBatch::examples`] is 0 and it is not run).
    fn part(&self, parts: usize, j: usize) -> Result<Self>;
}

/// Cut by streams: part `j` holds streams [`part_range`]`(B, parts, j)`, every step of them, so
/// that a model carries each part's own slice of the state. Every part needs a stream.
impl MicroBatch for LmChunk {
    fn examples(&self) -> usize {
        self.t_len * self.batch
    }

    fn part(&self, parts: usize, j: usize) -> Result<Self> {
        if parts == 0 || j >= parts || parts > self.batch {
            return Err(Error::invalid(
                "LmChunk::part",
                format!(
                    "cannot cut {} streams into {parts} micro-batches (part {j}): each needs a \
                     stream",
                    self.batch
                ),
            ));
        }
        let r = part_range(self.batch, parts, j);
        let cut = |v: &[usize]| -> Vec<usize> {
            (0..self.t_len)
                .flat_map(|t| v[t * self.batch + r.start..t * self.batch + r.end].iter())
                .copied()
                .collect()
        };
        Ok(LmChunk {
            x: cut(&self.x),
            y: cut(&self.y),
            t_len: self.t_len,
            batch: r.len(),
            reset: self.reset,
        })
    }
}

/// Cut by sequences: part `j` holds sequences [`part_range`]`(B, parts, j)`, padded to the
/// longest of them.
impl MicroBatch for SeqBatch {
    fn examples(&self) -> usize {
        self.batch
    }

    fn part(&self, parts: usize, j: usize) -> Result<Self> {
        if parts == 0 || j >= parts {
            return Err(Error::invalid(
                "SeqBatch::part",
                format!("no part {j} of {parts}"),
            ));
        }
        let r = part_range(self.batch, parts, j);
        let lengths = self.lengths[r.clone()].to_vec();
        let t_len = lengths.iter().copied().max().unwrap_or(0);
        let ids = (0..t_len)
            .flat_map(|t| self.ids[t * self.batch + r.start..t * self.batch + r.end].iter())
            .copied()
            .collect();
        Ok(SeqBatch {
            ids,
            lengths,
            t_len,
            batch: r.len(),
            targets: self.targets[r.clone()].to_vec(),
            indices: self.indices[r].to_vec(),
        })
    }
}

/// How the ranks' gradients are added up (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Combine {
    /// The parts in order, as one process adds them: the same weights for every number of
    /// ranks, bit for bit.
    #[default]
    Ordered,
    /// Each rank's parts in order, then one all-reduce of the ranks' sums: the same weights as
    /// one process's up to rounding.
    AllReduce,
}

impl std::str::FromStr for Combine {
    type Err = Error;

    /// `ordered` or `allreduce`.
    ///
    /// ```
    /// use recur::dist::Combine;
    /// assert_eq!("allreduce".parse::<Combine>()?, Combine::AllReduce);
    /// assert!("tree".parse::<Combine>().is_err());
    /// # Ok::<(), recur::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ordered" => Ok(Combine::Ordered),
            "allreduce" => Ok(Combine::AllReduce),
            other => Err(Error::invalid(
                "Combine",
                format!("`{other}` is not a way to combine gradients (ordered or allreduce)"),
            )),
        }
    }
}

/// Where the time of the data-parallel steps went outside the parts' own forward and backward
/// passes, in seconds summed over [`Timing::steps`] steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    /// The steps taken.
    pub steps: usize,
    /// Waiting at the barrier before combining for the slowest rank to finish its parts (0 in
    /// one process): imbalance, not communication.
    pub wait_secs: f64,
    /// Combining the gradients and losses once every rank had its parts: the weighted sums and
    /// the messages.
    pub combine_secs: f64,
}

impl Timing {
    /// Milliseconds per step spent combining (0 before the first step).
    pub fn combine_ms_per_step(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            1e3 * self.combine_secs / self.steps as f64
        }
    }

    /// Milliseconds per step spent waiting for the slowest rank (0 before the first step).
    pub fn wait_ms_per_step(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            1e3 * self.wait_secs / self.steps as f64
        }
    }
}

/// How the [`crate::models::Trainer`] takes a step when data-parallel: the number of
/// micro-batches `M` each batch is cut into, the ranks that share them and how their gradients
/// are combined (see the module documentation for the fixed order of the sums). Also counts the
/// time spent combining.
pub struct DataParallel<'a> {
    micro_batches: usize,
    collective: &'a dyn Collective,
    combine: Combine,
    timing: Timing,
}

impl<'a> DataParallel<'a> {
    /// `micro_batches` parts per step, shared by the ranks of `collective` (which must divide
    /// it evenly).
    ///
    /// ```
    /// use recur::dist::{DataParallel, SingleProcess};
    /// assert!(DataParallel::new(4, &SingleProcess).is_ok());
    /// assert!(DataParallel::new(0, &SingleProcess).is_err());
    /// ```
    pub fn new(micro_batches: usize, collective: &'a dyn Collective) -> Result<Self> {
        let n = collective.size();
        if micro_batches == 0 || n == 0 || !micro_batches.is_multiple_of(n) {
            return Err(Error::invalid(
                "DataParallel::new",
                format!(
                    "{micro_batches} micro-batches cannot be shared evenly by {n} processes \
                     (the number of micro-batches must be a positive multiple of it)"
                ),
            ));
        }
        Ok(DataParallel {
            micro_batches,
            collective,
            combine: Combine::Ordered,
            timing: Timing::default(),
        })
    }

    /// Combines the gradients as `combine` says ([`Combine::Ordered`] unless set).
    ///
    /// ```
    /// use recur::dist::{Combine, DataParallel, SingleProcess};
    /// let par = DataParallel::new(2, &SingleProcess)?.combine(Combine::AllReduce);
    /// assert_eq!(par.combining(), Combine::AllReduce);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn combine(mut self, combine: Combine) -> Self {
        self.combine = combine;
        self
    }

    /// How the gradients are combined.
    pub fn combining(&self) -> Combine {
        self.combine
    }

    /// The number of micro-batches per step.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The ranks.
    pub fn collective(&self) -> &'a dyn Collective {
        self.collective
    }

    /// The time spent waiting for the slowest rank and combining, over the steps taken.
    pub fn timing(&self) -> Timing {
        self.timing
    }
}

/// How the [`crate::models::Trainer`]'s loop takes a step and agrees across ranks.
pub(crate) trait StepPlan<T: Float, M: Objective<T>> {
    /// After the run is restored, before the first step.
    fn start(&mut self, model: &mut M) -> Result<()>;

    /// The step's loss and gradients on `batch`.
    fn grads<'t>(
        &mut self,
        model: &mut M,
        store: &ParamStore<T>,
        tape: &'t mut Tape<T>,
        rng: &mut Rng,
        batch: &M::Batch,
    ) -> Result<(f64, Grads<'t, T>)>;

    /// Collective: the strongest of every rank's answer.
    fn agree(&mut self, c: Control) -> Result<Control>;

    /// Collective: puts the whole carried state (every part's) into `model`, before a
    /// checkpoint is written.
    fn gather_state(&mut self, model: &mut M) -> Result<()>;

    /// Whether this process writes checkpoints.
    fn writes(&self) -> bool;
}

/// The plain step: the whole batch at once.
pub(crate) struct Whole;

impl<T: Float, M: Objective<T>> StepPlan<T, M> for Whole {
    fn start(&mut self, _model: &mut M) -> Result<()> {
        Ok(())
    }

    fn grads<'t>(
        &mut self,
        model: &mut M,
        store: &ParamStore<T>,
        tape: &'t mut Tape<T>,
        rng: &mut Rng,
        batch: &M::Batch,
    ) -> Result<(f64, Grads<'t, T>)> {
        tape.clear();
        let loss = model.loss(&mut Ctx::train(tape, store, rng), batch)?;
        crate::nn::backward_loss(tape, loss)
    }

    fn agree(&mut self, c: Control) -> Result<Control> {
        Ok(c)
    }

    fn gather_state(&mut self, _model: &mut M) -> Result<()> {
        Ok(())
    }

    fn writes(&self) -> bool {
        true
    }
}

/// A model's carried state, by name.
type State<T> = Vec<(String, Tensor<T>)>;

/// The micro-batched step of [`DataParallel`].
pub(crate) struct MicroSteps<'p, 'a, T: Float> {
    par: &'p mut DataParallel<'a>,
    /// The state each of this rank's parts carries (empty: zeros).
    states: Vec<State<T>>,
    /// Scratch for the flat gradients of this rank's parts.
    flat: Vec<Vec<T>>,
}

impl<'p, 'a, T: Float> MicroSteps<'p, 'a, T> {
    pub(crate) fn new(par: &'p mut DataParallel<'a>) -> Self {
        MicroSteps {
            par,
            states: Vec::new(),
            flat: Vec::new(),
        }
    }

    /// This rank's parts.
    fn local(&self) -> Range<usize> {
        let per = self.par.micro_batches / self.par.collective.size();
        let r = self.par.collective.rank();
        r * per..(r + 1) * per
    }
}

/// The weights of the parts' gradients in the step: their shares of the examples.
fn weights(examples: &[usize]) -> Vec<f64> {
    let n: usize = examples.iter().sum();
    examples
        .iter()
        .map(|&e| if n == 0 { 0.0 } else { e as f64 / n as f64 })
        .collect()
}

impl<T: Float, M> StepPlan<T, M> for MicroSteps<'_, '_, T>
where
    M: Objective<T>,
    M::Batch: MicroBatch,
{
    fn start(&mut self, model: &mut M) -> Result<()> {
        let m = self.par.micro_batches;
        let whole = model.state_tensors();
        let mut parts: Vec<State<T>> = vec![Vec::new(); m];
        for (name, t) in whole {
            let (outer, b, inner) = batch_axis(&name, &t)?;
            if b < m {
                return Err(Error::invalid(
                    "DataParallel",
                    format!(
                        "the carried state `{name}` holds {b} examples, too few for {m} \
                         micro-batches"
                    ),
                ));
            }
            let dims = t.dims().to_vec();
            for (j, part) in parts.iter_mut().enumerate() {
                let r = part_range(b, m, j);
                let mut data = Vec::with_capacity(outer * r.len() * inner);
                for o in 0..outer {
                    let at = o * b * inner;
                    data.extend_from_slice(&t.data()[at + r.start * inner..at + r.end * inner]);
                }
                let mut d = dims.clone();
                let k = d.len() - 2;
                d[k] = r.len();
                part.push((name.clone(), Tensor::from_vec(data, &d)?));
            }
        }
        let local = self.local();
        self.states = parts.drain(local).collect();
        Ok(())
    }

    fn grads<'t>(
        &mut self,
        model: &mut M,
        store: &ParamStore<T>,
        tape: &'t mut Tape<T>,
        rng: &mut Rng,
        batch: &M::Batch,
    ) -> Result<(f64, Grads<'t, T>)> {
        let m = self.par.micro_batches;
        let local = self.local();
        // Every rank draws from the step's generator alike; part j's dropout is its own.
        let base = rng.next_u64();
        let ids: Vec<ParamId> = store.ids().collect();
        let len: usize = ids.iter().map(|&id| store.get(id).numel()).sum();
        let mut examples = vec![0usize; m];
        let mut losses = vec![0.0f64; local.len()];
        self.flat.resize_with(local.len(), Vec::new);
        if self.states.len() != local.len() {
            self.states.resize_with(local.len(), Vec::new);
        }
        // The sizes of all parts, so that every rank knows every weight.
        for (j, e) in examples.iter_mut().enumerate() {
            *e = if local.contains(&j) {
                0
            } else {
                batch.part(m, j)?.examples()
            };
        }
        for (k, j) in local.clone().enumerate() {
            let part = batch.part(m, j)?;
            examples[j] = part.examples();
            let flat = &mut self.flat[k];
            flat.clear();
            if part.examples() == 0 {
                continue;
            }
            model.load_state_tensors(std::mem::take(&mut self.states[k]))?;
            let mut part_rng = Rng::new(base ^ (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tape.clear();
            let loss = model.loss(&mut Ctx::train(tape, store, &mut part_rng), &part)?;
            let (value, grads) = crate::nn::backward_loss(tape, loss)?;
            losses[k] = value;
            flat.reserve(len);
            for &id in &ids {
                match grads.param(id) {
                    Some(g) => flat.extend_from_slice(g.data()),
                    None => flat.resize(flat.len() + store.get(id).numel(), T::ZERO),
                }
            }
            self.states[k] = model.state_tensors();
        }
        let w = weights(&examples);

        let coll = self.par.collective;
        let (r, n) = (coll.rank(), coll.size());
        // The slowest rank's parts are waited for here, so that what follows times the combining
        // alone.
        let t0 = Instant::now();
        if n > 1 {
            coll.barrier()?;
        }
        let t1 = Instant::now();
        let mut acc = vec![T::ZERO; len];
        let chain = self.par.combine == Combine::Ordered && n > 1;
        if chain && r > 0 {
            coll.receive(r - 1, values(&mut acc))?;
        }
        for (k, j) in local.clone().enumerate() {
            if examples[j] == 0 {
                continue;
            }
            let wj = T::from_f64(w[j]);
            for (a, &g) in acc.iter_mut().zip(&self.flat[k]) {
                *a += wj * g;
            }
        }
        if chain {
            if r + 1 < n {
                coll.send(r + 1, values(&mut acc))?;
            }
            coll.broadcast(n - 1, values(&mut acc))?;
        } else if n > 1 {
            let mut sum = vec![T::ZERO; len];
            coll.all_reduce_sum(values(&mut acc), values(&mut sum))?;
            acc = sum;
        }
        let all_losses = coll.all_gather(&losses)?;
        let t2 = Instant::now();
        self.par.timing.wait_secs += (t1 - t0).as_secs_f64();
        self.par.timing.combine_secs += (t2 - t1).as_secs_f64();
        self.par.timing.steps += 1;
        if all_losses.len() != m {
            return Err(Error::invalid(
                "DataParallel",
                format!("{} part losses came back, expected {m}", all_losses.len()),
            ));
        }
        let mut loss = 0.0f64;
        for j in (0..m).filter(|&j| examples[j] > 0) {
            loss += w[j] * all_losses[j];
        }

        let mut grads = Vec::with_capacity(ids.len());
        let mut at = 0;
        for &id in &ids {
            let p = store.get(id);
            let k = p.numel();
            grads.push((id, Tensor::from_vec(acc[at..at + k].to_vec(), p.dims())?));
            at += k;
        }
        Ok((loss, tape.grads_from(store, grads)?))
    }

    fn agree(&mut self, c: Control) -> Result<Control> {
        let code = |c: Control| match c {
            Control::Continue => 0.0,
            Control::Stop => 1.0,
            Control::Abort => 2.0,
        };
        let all = self.par.collective.all_gather(&[code(c)])?;
        let worst = all.into_iter().fold(0.0f64, f64::max);
        Ok(if worst >= 2.0 {
            Control::Abort
        } else if worst >= 1.0 {
            Control::Stop
        } else {
            Control::Continue
        })
    }

    fn gather_state(&mut self, model: &mut M) -> Result<()> {
        let coll = self.par.collective;
        let mut mine = Vec::new();
        for s in &self.states {
            encode_state(s, &mut mine);
        }
        let all = coll.all_gather(&mine)?;
        let mut at = 0;
        let mut parts = Vec::with_capacity(self.par.micro_batches);
        for _ in 0..self.par.micro_batches {
            parts.push(decode_state::<T>(&all, &mut at)?);
        }
        model.load_state_tensors(concat_states(parts)?)
    }

    fn writes(&self) -> bool {
        self.par.collective.rank() == 0
    }
}

/// A carried-state tensor `[.., B, H]` as (the product of the leading axes, B, H): its batch
/// is the second-to-last axis (as in [`crate::nn::CarriedState`]'s `[D*L, B, H]`).
fn batch_axis<T: Float>(name: &str, t: &Tensor<T>) -> Result<(usize, usize, usize)> {
    let d = t.dims();
    if d.len() < 2 {
        return Err(Error::invalid(
            "DataParallel",
            format!(
                "the carried state `{name}` has shape {d:?}; its batch must be the second-to-last \
                 axis"
            ),
        ));
    }
    let k = d.len() - 2;
    Ok((d[..k].iter().product(), d[k], d[k + 1]))
}

/// Appends `state` to `out` as numbers (every f32 and f64 value is exact in f64): the count of
/// tensors, then for each its name's length and bytes, its rank, dimensions and values.
fn encode_state<T: Float>(state: &State<T>, out: &mut Vec<f64>) {
    out.push(state.len() as f64);
    for (name, t) in state {
        out.push(name.len() as f64);
        out.extend(name.bytes().map(f64::from));
        out.push(t.dims().len() as f64);
        out.extend(t.dims().iter().map(|&d| d as f64));
        out.extend(t.data().iter().map(|x| x.to_f64()));
    }
}

/// Reads one state written by [`encode_state`] from `buf` at `at`.
fn decode_state<T: Float>(buf: &[f64], at: &mut usize) -> Result<State<T>> {
    let bad = || Error::format("DataParallel", "a gathered carried state is cut short");
    let mut next = |n: usize| -> Result<&[f64]> {
        let s = buf.get(*at..*at + n).ok_or_else(bad)?;
        *at += n;
        Ok(s)
    };
    let count = next(1)?[0] as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = next(1)?[0] as usize;
        let name: String = next(len)?.iter().map(|&b| b as u8 as char).collect();
        let rank = next(1)?[0] as usize;
        let dims: Vec<usize> = next(rank)?.iter().map(|&d| d as usize).collect();
        let numel = dims.iter().product();
        let data = next(numel)?.iter().map(|&x| T::from_f64(x)).collect();
        out.push((name, Tensor::from_vec(data, &dims)?));
    }
    Ok(out)
}

/// The parts' states joined along their batch axis, in part order; no state if no part has one.
fn concat_states<T: Float>(parts: Vec<State<T>>) -> Result<State<T>> {
    let Some(first) = parts.iter().find(|p| !p.is_empty()) else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = first.iter().map(|(n, _)| n.clone()).collect();
    let mismatch = || {
        Error::invalid(
            "DataParallel",
            "the micro-batches carry different states (some none, or other tensors)",
        )
    };
    if parts
        .iter()
        .any(|p| p.len() != names.len() || p.iter().zip(&names).any(|((a, _), b)| a != b))
    {
        return Err(mismatch());
    }
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let (outer, _, inner) = batch_axis(name, &first[i].1)?;
        let mut total = 0;
        for p in &parts {
            let (o, b, h) = batch_axis(name, &p[i].1)?;
            if (o, h) != (outer, inner) {
                return Err(mismatch());
            }
            total += b;
        }
        let mut data = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for p in &parts {
                let t = &p[i].1;
                let b = t.dims()[t.dims().len() - 2];
                data.extend_from_slice(&t.data()[o * b * inner..(o + 1) * b * inner]);
            }
        }
        let mut dims = first[i].1.dims().to_vec();
        let k = dims.len() - 2;
        dims[k] = total;
        out.push((name.clone(), Tensor::from_vec(data, &dims)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cut_by_streams() {
        // T = 2, B = 3: x[t * 3 + b] = 10 t + b.
        let c = LmChunk {
            x: vec![0, 1, 2, 10, 11, 12],
            y: vec![5, 6, 7, 15, 16, 17],
            t_len: 2,
            batch: 3,
            reset: true,
        };
        let p = c.part(2, 1).unwrap();
        assert_eq!((p.batch, p.t_len, p.reset), (2, 2, true));
        assert_eq!(p.x, [1, 2, 11, 12]);
        assert_eq!(p.y, [6, 7, 16, 17]);
        assert_eq!(c.part(2, 0).unwrap().x, [0, 10]);
        assert!(c.part(4, 0).is_err());
        assert!(c.part(2, 2).is_err());
    }

    #[test]
    fn sequences_cut_and_trimmed() {
        let b = SeqBatch {
            ids: vec![1, 2, 3, 4, 0, 6, 7, 0, 0],
            lengths: vec![3, 1, 2],
            t_len: 3,
            batch: 3,
            targets: vec![0, 1, 0],
            indices: vec![9, 8, 7],
        };
        let p = b.part(3, 1).unwrap();
        assert_eq!((p.ids, p.t_len, p.lengths), (vec![2], 1, vec![1]));
        assert_eq!((p.targets, p.indices), (vec![1], vec![8]));
        let p = b.part(2, 1).unwrap();
        assert_eq!(p.ids, [2, 3, 0, 6]);
        assert_eq!(b.part(4, 0).unwrap().examples(), 0);
    }

    #[test]
    fn states_split_and_join() {
        let t = Tensor::<f32>::from_fn(&[2, 5, 3], |i| i as f32).unwrap();
        let whole = vec![("h".to_string(), t.clone())];
        let mut buf = Vec::new();
        encode_state(&whole, &mut buf);
        let mut at = 0;
        assert_eq!(decode_state::<f32>(&buf, &mut at).unwrap(), whole);
        assert_eq!(at, buf.len());
        // Cut as `start` does, then joined.
        let parts: Vec<State<f32>> = (0..3)
            .map(|j| {
                let r = part_range(5, 3, j);
                let mut d = Vec::new();
                for o in 0..2 {
                    d.extend_from_slice(&t.data()[o * 15 + r.start * 3..o * 15 + r.end * 3]);
                }
                vec![(
                    "h".to_string(),
                    Tensor::from_vec(d, &[2, r.len(), 3]).unwrap(),
                )]
            })
            .collect();
        assert_eq!(concat_states(parts.clone()).unwrap(), whole);
        let mut bad = parts;
        bad[1].clear();
        assert!(concat_states(bad).is_err());
        assert!(decode_state::<f32>(&buf[..buf.len() - 1], &mut 0).is_err());
    }
}
