//! `recur::set_threads(n)`: the calling thread is one of the `n` threads, and with `n = 1` the
//! kernels run on it alone, never handing work to a pool thread.
//!
//! The global pool can be set once per process, so each case runs in a process of its own:
//! the test re-runs this binary with only that case selected (an ignored test, which does
//! nothing when run by hand without [`CASE_ENV`]).

use std::process::Command;

use recur::data::SeqDataset;
use recur::models::{SequenceClassifier, SequenceClassifierConfig, Trainer, TrainerConfig};
use recur::optim::{Adam, AdamConfig};
use recur::{ParamStore, Rng};

/// Set in the child process that runs one case.
const CASE_ENV: &str = "RECUR_THREADS_CASE";

/// Runs the ignored test `name` alone in a child process of this binary; panics with its
/// output if it fails.
fn run_case(name: &str) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([name, "--exact", "--ignored", "--test-threads", "1"])
        .env(CASE_ENV, name)
        .output()
        .expect("the test binary runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "case {name} failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "case {name} did not run:\n{text}"
    );
}

/// Whether this process was started to run case `name`.
fn is_case(name: &str) -> bool {
    std::env::var(CASE_ENV).is_ok_and(|v| v == name)
}

/// How many times this thread has given up its core of its own accord (blocking on a lock or
/// a condition variable, as a thread that hands work to another and waits for it does).
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/thread-self/status")
}

/// Trains a small GRU classifier for `steps` steps of 64 sequences (several shards of rows)
/// and returns its parameters.
fn train(steps: usize) -> Vec<Vec<f32>> {
    let seqs: Vec<Vec<usize>> = (0..256)
        .map(|i| (0..3 + i % 7).map(|j| 2 + (i * 7 + j * 3) % 9).collect())
        .collect();
    let targets: Vec<usize> = seqs.iter().map(|s| s.contains(&5) as usize).collect();
    let mut data = SeqDataset::new(seqs, targets, 64)
        .unwrap()
        .with_plan(|p| p.shuffle(3));
    let mut ps = ParamStore::<f32>::new();
    let cfg = SequenceClassifierConfig::tokens(11, 8, 32, 2).cell("gru");
    let mut model = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(0)).unwrap();
    let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
    Trainer::new(TrainerConfig::steps(steps))
        .fit(&mut model, &mut ps, &mut opt, &mut data, None)
        .unwrap();
    ps.iter().map(|(_, _, t)| t.data().to_vec()).collect()
}

#[test]
fn with_one_thread_the_kernels_never_hand_work_to_the_pool() {
    run_case("one_thread");
}

#[test]
fn the_caller_is_one_of_the_threads_and_other_threads_still_run_work() {
    run_case("two_threads");
}

#[test]
#[ignore = "run in a process of its own by the test above it"]
fn one_thread() {
    if !is_case("one_thread") {
        return;
    }
    recur::set_threads(1).unwrap();
    assert_eq!(recur::threads(), 1);
    train(2); // first steps: buffers grown, files of the allocator mapped
    let before = voluntary_switches();
    train(40);
    let switches = voluntary_switches() - before;
    // Handing work to the pool's thread blocks the caller until it is done: several times a
    // step. Running it here blocks for nothing.
    assert!(switches < 10, "{switches} waits in 40 steps");
}

#[test]
#[ignore = "run in a process of its own by the test above it"]
fn two_threads() {
    if !is_case("two_threads") {
        return;
    }
    recur::set_threads(2).unwrap();
    assert_eq!(recur::threads(), 2);
    assert_eq!(
        rayon::current_thread_index(),
        Some(0),
        "the caller is thread 0"
    );
    let here = train(12);
    // Work started on a thread outside the pool runs on the pool's other thread, with the
    // same result.
    let there = std::thread::spawn(|| {
        assert_eq!(rayon::current_thread_index(), None);
        train(12)
    })
    .join()
    .unwrap();
    assert_eq!(here, there);
}
