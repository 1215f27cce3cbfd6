//! The command-line tool, run as a user runs it: train, sample, demo, gradflow, parity and bench.

mod cli_bench;
mod cli_demo;
mod cli_parity;
mod cli_train;
