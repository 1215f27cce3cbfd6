//! The `recur` command-line tool.
//!
//! Each subcommand lives in its own module; `main` only parses the arguments and maps a failure
//! to one clear line on stderr and a non-zero exit status.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod example;
mod parity;

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
    /// Check recur against PyTorch: run parity fixtures (tests/fixtures/gen_parity.py) and print
    /// the largest relative errors; exit status 1 if any fails, 2 if any is not a fixture.
    Parity {
        /// Fixture files (safetensors).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

/// What a subcommand hands back: an exit status, or a message for stderr (exit status 1).
pub type CmdResult = Result<ExitCode, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None | Some(Command::Example) => example::run(),
        Some(Command::Parity { files }) => parity::run(&files),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("recur: {msg}");
            ExitCode::FAILURE
        }
    }
}
