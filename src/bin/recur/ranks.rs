//! The processes of a training job: one, or the ranks of an MPI job when `recur` is built with
//! the `mpi` feature and started by `mpirun`. Rank 0 alone prints and writes files; a rank that
//! fails ends the whole job (`MPI_Abort`) with one line naming it.

use recur::dist::{Collective, Combine, DataParallel, SingleProcess};

use crate::CmdResult;

/// The number of processes `mpirun` (Open MPI, MPICH or any PMI launcher) says the job has, if
/// it started this one.
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// This process's place in the job.
pub struct Ranks {
    #[cfg(feature = "mpi")]
    mpi: Option<recur::dist::MpiCollective>,
}

impl Ranks {
    /// Joins the MPI job when started by `mpirun` (with the `mpi` feature); otherwise a job of
    /// one process. Started by `mpirun` with more than one process but built without the
    /// feature is an error: every process would train alone into the same files.
    pub fn start() -> Result<Ranks, String> {
        let launched = launched_size();
        #[cfg(feature = "mpi")]
        {
            let mpi = match launched {
                Some(_) => Some(recur::dist::MpiCollective::init().map_err(|e| e.to_string())?),
                None => None,
            };
            let ranks = Ranks { mpi };
            if ranks.size() > 1 {
                let (rank, size) = (ranks.rank(), ranks.size());
                let default = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    line(&format!("recur: rank {rank} of {size} failed: {info}"));
                    default(info);
                    use mpi::topology::Communicator;
                    mpi::topology::SimpleCommunicator::world().abort(101);
                }));
            }
            Ok(ranks)
        }
        #[cfg(not(feature = "mpi"))]
        match launched {
            Some(n) if n > 1 => Err(format!(
                "started as one of {n} processes (mpirun), but this recur was built without the \
                 `mpi` feature: build it with `cargo build --release --features mpi`"
            )),
            _ => Ok(Ranks {}),
        }
    }

    /// The processes' messages.
    pub fn collective(&self) -> &dyn Collective {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            return m;
        }
        &SingleProcess
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.collective().rank()
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.collective().size()
    }

    /// Whether this process prints and writes files.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The micro-batches of a run: `given` (--micro-batches), else the checkpoint's `stored`,
    /// else one per rank in a job of several (none, the whole batch at once, in one process).
    /// They must divide among the ranks and not exceed `max_parts` (the examples per batch).
    pub fn micro_batches(
        &self,
        given: Option<usize>,
        stored: Option<usize>,
        max_parts: usize,
    ) -> Result<Option<usize>, String> {
        let m = match (given, stored) {
            (Some(g), Some(s)) if g != s => {
                return Err(format!(
                    "--micro-batches {g} differs from the checkpoint's {s} (the steps would not \
                     be the same computation)"
                ));
            }
            (Some(g), _) => Some(g),
            (None, Some(s)) => Some(s),
            (None, None) => (self.size() > 1).then(|| self.size()),
        };
        if let Some(m) = m {
            let n = self.size();
            if m == 0 || !m.is_multiple_of(n) {
                return Err(format!(
                    "--micro-batches {m} must be a positive multiple of the {n} processes"
                ));
            }
            if m > max_parts {
                return Err(format!(
                    "--micro-batches {m} exceeds the {max_parts} examples of a batch"
                ));
            }
        }
        Ok(m)
    }

    /// The data-parallel plan of `m` micro-batches over these ranks, combined as `combine` says.
    pub fn parallel(&self, m: usize, combine: Combine) -> Result<DataParallel<'_>, String> {
        Ok(DataParallel::new(m, self.collective())
            .map_err(|e| e.to_string())?
            .combine(combine))
    }

    /// A command's result: in a job of several processes a failure is reported with the rank
    /// and ends every rank at once.
    pub fn finish(&self, result: CmdResult) -> CmdResult {
        match result {
            Err(msg) if self.size() > 1 => {
                #[cfg(feature = "mpi")]
                if let Some(m) = &self.mpi {
                    if !self.is_root() {
                        // A failure every rank meets is reported once, by rank 0.
                        std::thread::sleep(std::time::Duration::from_millis(500));
                    }
                    line(&format!(
                        "recur: rank {} of {}: {msg}",
                        self.rank(),
                        self.size()
                    ));
                    m.abort(1);
                }
                Err(msg)
            }
            other => other,
        }
    }
}

/// Writes `text` and a newline to stderr in one write: `eprintln!` writes its pieces one by one,
/// and the launcher's own messages (Open MPI's banner after an abort) can land between them.
#[cfg(feature = "mpi")]
fn line(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}
