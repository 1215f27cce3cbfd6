//! The `recur` command-line tool.
//!
//! Each subcommand lives in its own module; `main` only parses the arguments and maps a failure
//! to one clear line on stderr and a non-zero exit status.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod example;

/// Train recurrent sequence models (RNN, LSTM, GRU) on CPUs.
#[derive(Parser)]
#[command(name = "recur", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the chapter's worked example: a 2-unit tanh RNN over the inputs 1, -1, 2.
    Example,
    /// Time a training step (forward + BPTT of sum(outputs)) or, with --step-latency, one
    /// inference step at batch 1.
    Bench(bench::BenchArgs),
}

/// What a subcommand hands back: an exit status, or a message for stderr (exit status 1).
pub type CmdResult = Result<ExitCode, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None | Some(Command::Example) => example::run(),
        Some(Command::Bench(args)) => bench::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("recur: {msg}");
            ExitCode::FAILURE
        }
    }
}
