//! The command-line tool, run as a user runs it: train, sample, classify, demo, gradflow, parity and bench.

mod classify;
mod cli_bench;
mod cli_demo;
mod cli_parity;
mod cli_train;
