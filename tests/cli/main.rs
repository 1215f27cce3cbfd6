//! The command-line tool, run as a user runs it: train, sample, classify, demo, gradflow, parity and bench.

#[path = "../common/mod.rs"]
mod common;

mod classify;
mod cli_bench;
mod cli_demo;
mod cli_parity;
mod cli_train;

use std::ffi::OsStr;
use std::process::{Command, Output};

/// Runs the `recur` binary with `args` and waits for it.
fn recur<S: AsRef<OsStr>>(args: &[S]) -> Output {
    recur_with_env(args, &[])
}

/// [`recur`] with environment variables `env` set.
fn recur_with_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the recur binary runs")
}

/// Whether `--precision bf16` runs here: a CPU with AVX512_BF16, or `RECUR_BF16_KERNEL=portable`
/// in the environment.
fn bf16_runs_here() -> bool {
    recur::Precision::Bf16.supported::<f32>().is_ok()
}

/// `RECUR_BF16_KERNEL=portable`: bf16 on the portable kernel on any CPU.
const PORTABLE_BF16: (&str, &str) = ("RECUR_BF16_KERNEL", "portable");
