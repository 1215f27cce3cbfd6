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
    Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(args)
        .output()
        .expect("the recur binary runs")
}
