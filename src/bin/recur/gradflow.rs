//! `recur gradflow`: ||dL/dh_t|| against t for RNN, LSTM and GRU, at initialisation and after a
//! short training on the adding problem, as CSV and a log-scale SVG plot.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use recur::nn::{Activation, CellKind};

use crate::CmdResult;
use crate::adding::{RunSpec, train};
use crate::plot::{Chart, Series, write_csv, write_svg};

/// A cell type named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CellArg {
    /// Vanilla RNN with tanh.
    Rnn,
    /// Vanilla RNN with ReLU.
    RnnRelu,
    /// Long short-term memory.
    Lstm,
    /// Gated recurrent unit.
    Gru,
}

impl std::fmt::Display for CellArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl CellArg {
    /// The library's cell kind.
    pub fn kind(self) -> CellKind {
        match self {
            CellArg::Rnn => CellKind::Rnn(Activation::Tanh),
            CellArg::RnnRelu => CellKind::Rnn(Activation::Relu),
            CellArg::Lstm => CellKind::Lstm,
            CellArg::Gru => CellKind::Gru,
        }
    }

    /// The name used in files and reports (the library's, [`CellKind::name`]).
    pub fn name(self) -> &'static str {
        self.kind().name()
    }
}

/// ||dL/dh_t|| curves of several runs, for `gradient_flow.csv` and `gradient_flow.svg`.
#[derive(Default)]
pub struct FlowReport {
    rows: Vec<Vec<String>>,
    series: Vec<Series>,
}

impl FlowReport {
    /// Adds the curve `g` (index t - 1) of `cell` measured `when` (e.g. "init").
    pub fn add(&mut self, cell: &str, when: &str, g: &[f64]) {
        for (t, v) in g.iter().enumerate() {
            self.rows.push(vec![
                cell.to_string(),
                when.to_string(),
                (t + 1).to_string(),
                format!("{v:.6e}"),
            ]);
        }
        self.series.push(Series {
            name: format!("{cell} ({when})"),
            points: g
                .iter()
                .enumerate()
                .map(|(t, &v)| ((t + 1) as f64, v))
                .collect(),
        });
    }

    /// Writes `gradient_flow.csv` and `gradient_flow.svg` (log scale) into `out`.
    pub fn write(&self, out: &Path, title: &str) -> Result<(), String> {
        write_csv(
            &out.join("gradient_flow.csv"),
            &["cell", "when", "t", "grad_norm"],
            &self.rows,
        )?;
        write_svg(
            &out.join("gradient_flow.svg"),
            &Chart {
                title,
                x_label: "timestep t",
                y_label: "||dL/dh_t||",
                log_y: true,
            },
            &self.series,
        )
    }
}

/// Options of `recur gradflow`.
#[derive(Args, Debug)]
pub struct GradflowArgs {
    /// Cells to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [CellArg::Rnn, CellArg::Lstm, CellArg::Gru])]
    pub cell: Vec<CellArg>,
    /// Sequence length T.
    #[arg(long, default_value_t = 100)]
    pub seq_len: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Training steps on the adding problem before the second measurement.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory.
    #[arg(long, default_value = "recur-gradflow")]
    pub out: PathBuf,
    /// Refuse to start if the estimated peak memory exceeds this (e.g. 800M, 4G; default: the
    /// available memory).
    #[arg(long, value_parser = crate::memory::parse_size)]
    pub max_memory: Option<u64>,
}

/// Runs the measurement.
pub fn run(args: &GradflowArgs) -> CmdResult {
    if args.seq_len < 2 || args.hidden == 0 {
        return Err("--seq-len must be >= 2 and --hidden >= 1".into());
    }
    crate::adding::check_sizes(args.seq_len, 32, args.hidden)?;
    let spec = |cell: CellArg| RunSpec {
        kind: cell.kind(),
        hidden: args.hidden,
        seq_len: args.seq_len,
        batch: 32,
        steps: args.steps,
        lr: 0.01,
        clip: Some(1.0),
        eval_every: args.steps.max(1),
        seed: args.seed,
    };
    let estimate = args
        .cell
        .iter()
        .map(|&c| crate::adding::estimate_bytes(&spec(c)))
        .max()
        .unwrap_or(0);
    crate::memory::check("recur gradflow", estimate, args.max_memory)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let mut report = FlowReport::default();
    for &cell in &args.cell {
        let spec = spec(cell);
        let r = train(&spec, |_, _| {}).map_err(|e| e.to_string())?;
        for (when, flow) in [("init", &r.flow_init), ("trained", &r.flow_trained)] {
            let g = flow;
            println!(
                "{:<8} {:<8} ||dL/dh_1|| = {:.3e}   ||dL/dh_T|| = {:.3e}",
                cell.name(),
                when,
                g[0],
                g[g.len() - 1]
            );
            report.add(cell.name(), when, g);
        }
    }
    report.write(
        &args.out,
        &format!(
            "||dL/dh_t|| against t (T = {}, loss at the last step)",
            args.seq_len
        ),
    )?;
    println!(
        "wrote {}",
        args.out.join("gradient_flow.{csv,svg}").display()
    );
    Ok(ExitCode::SUCCESS)
}
