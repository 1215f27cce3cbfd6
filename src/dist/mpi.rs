//! [`MpiCollective`]: the [`Collective`] of an MPI job (rsmpi over the system's MPI library).

use ::mpi::Threading;
use ::mpi::collective::SystemOperation;
use ::mpi::datatype::Equivalence;
use ::mpi::environment::Universe;
use ::mpi::topology::{Communicator, SimpleCommunicator};
use ::mpi::traits::CommunicatorCollectives;
use ::mpi::traits::{Destination, Root, Source};
use ::mpi::{Count, datatype::PartitionMut};

use super::{Collective, Values};
use crate::{Error, Result};

/// The ranks of the job this process was started in by `mpirun` (MPI's world communicator).
/// Creating it initialises MPI; dropping it finalises MPI. Only the thread that created it may
/// use it (recur's worker threads never do).
///
/// ```no_run
/// use recur::dist::{Collective, DataParallel, MpiCollective};
/// let world = MpiCollective::init()?;
/// let parallel = DataParallel::new(4, &world)?; // 4 micro-batches shared by the ranks
/// # Ok::<(), recur::Error>(())
/// ```
pub struct MpiCollective {
    world: SimpleCommunicator,
    // Last: finalises MPI when dropped, after the communicator.
    _universe: Universe,
}

impl MpiCollective {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<Self> {
        let (universe, _) = ::mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::invalid("MpiCollective::init", "MPI is already initialised"))?;
        Ok(MpiCollective {
            world: universe.world(),
            _universe: universe,
        })
    }

    /// Ends every rank of the job at once (`MPI_Abort`) with exit status `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// An MPI rank or count as a `usize`.
fn index(r: i32) -> usize {
    usize::try_from(r).expect("MPI ranks and counts are not negative")
}

impl MpiCollective {
    fn rank_of(&self, r: usize) -> Result<i32> {
        let n = self.world.size();
        i32::try_from(r)
            .ok()
            .filter(|&x| x < n)
            .ok_or_else(|| Error::invalid("MpiCollective", format!("no rank {r} of {n}")))
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        index(self.world.rank())
    }

    fn size(&self) -> usize {
        index(self.world.size())
    }

    fn send(&self, to: usize, buf: Values<'_>) -> Result<()> {
        let p = self.world.process_at_rank(self.rank_of(to)?);
        match buf {
            Values::F32(v) => p.send(&v[..]),
            Values::F64(v) => p.send(&v[..]),
        }
        Ok(())
    }

    fn receive(&self, from: usize, buf: Values<'_>) -> Result<()> {
        let p = self.world.process_at_rank(self.rank_of(from)?);
        let want = buf.len();
        // A longer message than the buffer ends the job (MPI's truncation error).
        let got = match buf {
            Values::F32(v) => p.receive_into(&mut v[..]).count(f32::equivalent_datatype()),
            Values::F64(v) => p.receive_into(&mut v[..]).count(f64::equivalent_datatype()),
        };
        if index(got) != want {
            return Err(Error::invalid(
                "MpiCollective::receive",
                format!("rank {from} sent {got} values, expected {want}"),
            ));
        }
        Ok(())
    }

    fn broadcast(&self, root: usize, buf: Values<'_>) -> Result<()> {
        let p = self.world.process_at_rank(self.rank_of(root)?);
        match buf {
            Values::F32(v) => p.broadcast_into(&mut v[..]),
            Values::F64(v) => p.broadcast_into(&mut v[..]),
        }
        Ok(())
    }

    fn all_gather(&self, local: &[f64]) -> Result<Vec<f64>> {
        let n = self.size();
        let mine = Count::try_from(local.len()).map_err(|_| {
            Error::invalid(
                "MpiCollective::all_gather",
                format!("{} values are too many for one message", local.len()),
            )
        })?;
        let mut counts: Vec<Count> = vec![0; n];
        self.world.all_gather_into(&mine, &mut counts[..]);
        let mut displs = Vec::with_capacity(n);
        let mut total: usize = 0;
        for &c in &counts {
            displs.push(Count::try_from(total).map_err(|_| {
                Error::invalid(
                    "MpiCollective::all_gather",
                    "the gathered values are too many",
                )
            })?);
            total += index(c);
        }
        let mut out = vec![0.0f64; total];
        {
            let mut part = PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(local, &mut part);
        }
        Ok(out)
    }

    fn all_reduce_sum(&self, local: Values<'_>, sum: Values<'_>) -> Result<()> {
        if local.len() != sum.len() {
            return Err(Error::invalid(
                "MpiCollective::all_reduce_sum",
                format!("{} values to add into {}", local.len(), sum.len()),
            ));
        }
        let op = SystemOperation::sum();
        match (local, sum) {
            (Values::F32(a), Values::F32(b)) => self.world.all_reduce_into(&a[..], &mut b[..], op),
            (Values::F64(a), Values::F64(b)) => self.world.all_reduce_into(&a[..], &mut b[..], op),
            _ => {
                return Err(Error::invalid(
                    "MpiCollective::all_reduce_sum",
                    "the values and their sum are of different types",
                ));
            }
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
}
