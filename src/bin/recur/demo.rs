//! `recur demo`: the chapter's lesson measured. RNN, LSTM and GRU of equal size learn the adding
//! problem, with and without gradient clipping; the report shows which cells beat the 0.167
//! baseline and how differently the gradient flows back through time.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use recur::data::AddingBatch;

use crate::CmdResult;
use crate::adding::{RunResult, RunSpec, train};
use crate::gradflow::{CellArg, FlowReport};
use crate::plot::{Chart, Series, write_csv, write_svg};

/// Options of `recur demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Sequence length T of the adding problem.
    #[arg(long, default_value_t = 100)]
    pub seq_len: usize,
    /// Training steps per model.
    #[arg(long, default_value_t = 2500)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Hidden units of every cell.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Threshold tau of the runs with global-norm gradient clipping.
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Random seed (weights and data).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads for the batch (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cells to train (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [CellArg::Rnn, CellArg::Lstm, CellArg::Gru])]
    pub cell: Vec<CellArg>,
    /// Where the report goes.
    #[arg(long, default_value = "recur-demo")]
    pub out: PathBuf,
    /// Refuse to start if the estimated peak memory exceeds this (e.g. 800M, 4G; default: the
    /// available memory).
    #[arg(long, value_parser = crate::memory::parse_size)]
    pub max_memory: Option<u64>,
}

struct Named {
    label: String,
    cell: &'static str,
    clipped: bool,
    result: RunResult,
}

/// Runs the demonstration.
pub fn run(args: &DemoArgs) -> CmdResult {
    if args.seq_len < 2 || args.steps == 0 || args.batch == 0 || args.hidden == 0 {
        return Err("--seq-len must be >= 2 and --steps, --batch, --hidden >= 1".into());
    }
    crate::adding::check_sizes(args.seq_len, args.batch, args.hidden)?;
    if !(args.lr > 0.0 && args.lr.is_finite() && args.clip > 0.0 && args.clip.is_finite()) {
        return Err("--lr and --clip must be positive numbers".into());
    }
    let specs: Vec<(&str, bool, RunSpec)> = args
        .cell
        .iter()
        .flat_map(|&cell| {
            [false, true].map(|clipped| {
                let spec = RunSpec {
                    kind: cell.kind(),
                    hidden: args.hidden,
                    seq_len: args.seq_len,
                    batch: args.batch,
                    steps: args.steps,
                    lr: args.lr,
                    clip: clipped.then_some(args.clip),
                    eval_every: (args.steps / 30).max(1),
                    seed: args.seed,
                };
                (cell.name(), clipped, spec)
            })
        })
        .collect();
    // The runs follow one another: the peak is the largest run's.
    let estimate = specs
        .iter()
        .map(|(_, _, spec)| crate::adding::estimate_bytes(spec))
        .max()
        .unwrap_or(0);
    crate::memory::check("recur demo", estimate, args.max_memory)?;
    crate::set_threads(args.threads)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    println!(
        "adding problem, T = {}: RNN (tanh), LSTM, GRU with {} hidden units, {} steps of batch {}, \
         Adam lr {}, with and without clipping at tau = {}",
        args.seq_len, args.hidden, args.steps, args.batch, args.lr, args.clip
    );
    println!(
        "baseline (always predict 1): MSE {:.3}",
        AddingBatch::<f32>::BASELINE_MSE
    );
    let mut runs = Vec::new();
    for (name, clipped, spec) in specs {
        let label = format!("{name}{}", if clipped { " +clip" } else { "" });
        let live = std::io::stdout().is_terminal();
        let result = train(&spec, |step, mse| {
            if live {
                print!(
                    "\r  {label:<10} step {step:>6}/{}  val MSE {mse:.4}   ",
                    args.steps
                );
                let _ = std::io::stdout().flush();
            }
        })
        .map_err(|e| e.to_string())?;
        print!("{}", if live { "\r" } else { "" });
        println!(
            "  {label:<10} final val MSE {:.4}  ({:.1} s{})          ",
            result.final_mse,
            result.seconds,
            if result.diverged { ", diverged" } else { "" }
        );
        runs.push(Named {
            label,
            cell: name,
            clipped,
            result,
        });
    }
    let summary = write_report(&args.out, args, &runs)?;
    print!("{summary}");
    println!("report written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn write_report(out: &Path, args: &DemoArgs, runs: &[Named]) -> Result<String, String> {
    // Loss curves.
    let mut rows = Vec::new();
    for r in runs {
        for &(step, mse) in &r.result.curve {
            rows.push(vec![
                r.cell.to_string(),
                r.clipped.to_string(),
                step.to_string(),
                format!("{mse:.6e}"),
            ]);
        }
    }
    write_csv(
        &out.join("loss.csv"),
        &["cell", "clipped", "step", "val_mse"],
        &rows,
    )?;
    let mut series: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            name: r.label.clone(),
            points: r.result.curve.iter().map(|&(s, m)| (s as f64, m)).collect(),
        })
        .collect();
    series.push(Series {
        name: "baseline 0.167".into(),
        points: vec![
            (0.0, AddingBatch::<f32>::BASELINE_MSE),
            (args.steps as f64, AddingBatch::<f32>::BASELINE_MSE),
        ],
    });
    write_svg(
        &out.join("loss.svg"),
        &Chart {
            title: &format!("Adding problem, T = {}: validation MSE", args.seq_len),
            x_label: "training step",
            y_label: "MSE",
            log_y: true,
        },
        &series,
    )?;

    // Gradient flow: ||dL/dh_t|| against t, at initialisation and after training.
    let clipped: Vec<&Named> = runs.iter().filter(|r| r.clipped).collect();
    let mut report = FlowReport::default();
    for r in &clipped {
        for (when, flow) in [
            ("init", &r.result.flow_init),
            ("trained", &r.result.flow_trained),
        ] {
            report.add(r.cell, when, flow);
        }
    }
    report.write(
        out,
        "Gradient flow through time: ||dL/dh_t|| (loss at the last step)",
    )?;

    // The text summary.
    let base = AddingBatch::<f32>::BASELINE_MSE;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nrecur demo: the adding problem at T = {}",
        args.seq_len
    );
    let _ = writeln!(
        s,
        "budget per model: {} steps x batch {}, hidden {}, Adam lr {}, seed {}",
        args.steps, args.batch, args.hidden, args.lr, args.seed
    );
    let _ = writeln!(
        s,
        "\n{:<11} {:>10} {:>9} {:>13}  vs the 0.167 baseline",
        "model", "val MSE", "time s", "max |grad|"
    );
    for r in runs {
        let max_g = r.result.grad_norms.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "{:<11} {:>10.4} {:>9.1} {:>13.3e}  {}",
            r.label,
            r.result.final_mse,
            r.result.seconds,
            max_g,
            if r.result.diverged {
                "diverged"
            } else if r.result.final_mse < 0.01 {
                "solved (below 0.01)"
            } else if r.result.final_mse < 0.1 {
                "beats it"
            } else if r.result.final_mse < base {
                "about the same (no memory)"
            } else {
                "no better"
            }
        );
    }
    let _ = writeln!(
        s,
        "\ngradient reaching the first step, ||dL/dh_1|| / ||dL/dh_T||:"
    );
    for r in &clipped {
        let ratio = |g: &[f64]| g[0] / g[g.len() - 1].max(f64::MIN_POSITIVE);
        let _ = writeln!(
            s,
            "  {:<5} at init {:.3e}, after training {:.3e}",
            r.cell,
            ratio(&r.result.flow_init),
            ratio(&r.result.flow_trained)
        );
    }
    let _ = writeln!(
        s,
        "\nfiles: loss.csv, loss.svg, gradient_flow.csv, gradient_flow.svg, summary.txt"
    );
    recur::io::atomic_write(&out.join("summary.txt"), s.as_bytes()).map_err(|e| e.to_string())?;
    Ok(s)
}
