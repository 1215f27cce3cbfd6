//! The `recur` command-line tool.
//!
//! Each subcommand lives in its own module; `main` only parses the arguments and maps a failure
//! to one clear line on stderr and a non-zero exit status.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod adding;
mod bench;
mod classify;
mod demo;
mod e2e;
mod example;
mod gradflow;
mod memory;
mod optimizer;
mod parity;
mod plot;
mod ranks;
mod sample;
mod train;

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
    /// Train RNN, LSTM and GRU on the adding problem, with and without clipping, and report
    /// which beat the baseline and how the gradient flows (the default with no arguments).
    Demo(demo::DemoArgs),
    /// Train a character language model on a text file.
    Train(train::TrainArgs),
    /// Generate text from a checkpoint written by `recur train`.
    Sample(sample::SampleArgs),
    /// Train a text classifier on `label<TAB>text` files, and classify texts with it.
    Classify(classify::ClassifyArgs),
    /// Measure ||dL/dh_t|| through time for each cell, at initialisation and after training.
    Gradflow(gradflow::GradflowArgs),
    /// Check recur against PyTorch: run parity fixtures (tests/fixtures/gen_parity.py) and print
    /// the largest relative errors; exit status 1 if any fails, 2 if any is not a fixture.
    Parity {
        /// Fixture files (safetensors).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Time a training step (forward + BPTT of sum(outputs)) or, with --step-latency, one
    /// inference step at batch 1.
    Bench(bench::BenchArgs),
}

/// What a subcommand hands back: an exit status, or a message for stderr (exit status 1).
pub type CmdResult = Result<ExitCode, String>;

/// The precision a training run computes in: `--precision` when given on the command line
/// (`given`), else the one a resumed run recorded in its checkpoint (`stored`, the run
/// metadata's `precision`), else `flag`'s default (f32); checked to run on this CPU.
pub fn run_precision(
    flag: recur::Precision,
    given: bool,
    stored: Option<&serde_json::Value>,
) -> Result<recur::Precision, String> {
    let precision = match stored.and_then(|v| v.as_str()) {
        Some(name) if !given => name
            .parse()
            .map_err(|e: recur::Error| format!("the checkpoint's precision: {e}"))?,
        _ => flag,
    };
    precision.supported::<f32>().map_err(|e| e.to_string())?;
    note_bf16_rate(precision);
    Ok(precision)
}

/// With `precision` bf16 on a CPU whose bf16 products peak below its f32 ones, a line on
/// stderr that says so: the run goes on, slower than it would in f32.
pub fn note_bf16_rate(precision: recur::Precision) {
    if precision != recur::Precision::Bf16 {
        return;
    }
    if let Ok(ratio) = recur::cpu::bf16_against_f32(20)
        && ratio < 0.9
    {
        eprintln!(
            "note: this CPU's bf16 products (vdpbf16ps) peak at {ratio:.2}x the rate of its f32 \
             multiply-adds, so --precision bf16 trains slower here than f32 (`recur bench \
             --fma-peak` prints both peaks)"
        );
    }
}

/// Sets `--threads` (once, before any parallel work), the main thread being one of them.
pub fn set_threads(threads: Option<usize>) -> Result<(), String> {
    match threads {
        Some(0) => Err("--threads must be at least 1".into()),
        Some(n) => recur::set_threads(n).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let mut cli = match parsed {
        Ok((mut cli, matches)) => {
            // `--resume` needs to know which flags were given, not defaulted.
            let given = |m: &clap::ArgMatches| -> Vec<String> {
                m.ids()
                    .filter(|id| {
                        m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
                    })
                    .map(|id| id.to_string())
                    .collect()
            };
            match (&mut cli.command, matches.subcommand()) {
                (Some(Command::Train(args)), Some(("train", m))) => args.explicit = given(m),
                (Some(Command::Classify(args)), Some(("classify", m))) => {
                    if let (classify::ClassifyCommand::Train(t), Some(("train", m))) =
                        (&mut args.command, m.subcommand())
                    {
                        t.explicit = given(m);
                    }
                }
                _ => {}
            }
            cli
        }
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line: clap's first paragraph, without its "error: " prefix.
            let msg = e.to_string();
            let first: Vec<&str> = msg
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            let first = first.join(" ");
            eprintln!(
                "recur: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    // With no subcommand, run the demonstration with its defaults.
    let command = match cli.command.take() {
        Some(c) => c,
        None => match Cli::parse_from(["recur", "demo"]).command {
            Some(c) => c,
            None => unreachable!("`recur demo` names a subcommand"),
        },
    };
    let result = match command {
        Command::Example => example::run(),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Gradflow(args) => gradflow::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Sample(args) => sample::run(&args),
        Command::Classify(args) => classify::run(&args),
        Command::Parity { files } => parity::run(&files),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("recur: {msg}");
            ExitCode::FAILURE
        }
    }
}
