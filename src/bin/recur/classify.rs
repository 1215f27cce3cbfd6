//! `recur classify`: a text classifier trained on `label<TAB>text` files, and predictions with
//! it. The model, the data pipeline and the training loop are the library's
//! ([`TextClassifier`], [`recur::data`], [`Trainer`]); this module parses, prints and reads files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use recur::data::DataSource;
use recur::data::{Labels, Tokenizer, Vocab, parse_labelled, read_labelled};
use recur::models::{
    Control, Event, RunInfo, SequenceClassifierConfig, TextClassifier, TextClassifierConfig,
    Trainer, TrainerConfig, class_report,
};
use recur::optim::{Adam, AdamConfig};
use recur::{Error, ParamStore, Rng};

use crate::gradflow::CellArg;
use crate::{CmdResult, set_threads};

/// Options of `recur classify`.
#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// Train or predict.
    #[command(subcommand)]
    pub command: ClassifyCommand,
}

/// The subcommands of `recur classify`.
#[derive(Subcommand, Debug)]
pub enum ClassifyCommand {
    /// Train on a `label<TAB>text` file, validating on another; writes best.safetensors and
    /// last.safetensors (with the vocabulary and labels) into --out.
    Train(TrainArgs),
    /// Classify the texts of a file: on `label<TAB>text` lines, print the accuracy and a
    /// per-class table; on lines without a tab, print one predicted label per line.
    Predict(PredictArgs),
}

/// How texts are cut into tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokensArg {
    /// Characters.
    Char,
    /// Whitespace-separated words.
    Word,
}

/// Options of `recur classify train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training examples, one `label<TAB>text` per line.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation examples, in the same format (labels must occur in --train).
    #[arg(long)]
    pub valid: PathBuf,
    /// Output directory for best.safetensors and last.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens: characters or whitespace-separated words.
    #[arg(long, value_enum, default_value_t = TokensArg::Char)]
    pub tokens: TokensArg,
    /// Recurrent cell.
    #[arg(long, value_enum, default_value_t = CellArg::Gru)]
    pub cell: CellArg,
    /// Hidden units per layer and direction.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Recurrent layers.
    #[arg(long, default_value_t = 1)]
    pub layers: usize,
    /// Embedding size of the tokens.
    #[arg(long, default_value_t = 32)]
    pub embed: usize,
    /// Run the recurrent layers in both directions.
    #[arg(long)]
    pub bidirectional: bool,
    /// Examples per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Passes over the training data (default 10).
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<usize>,
    /// Train until this step instead, counted from the start of the run (also when resuming).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 5e-3)]
    pub lr: f64,
    /// Precision of the products: f32, or bf16 (operands rounded to bf16, accumulated in
    /// f32; needs a CPU with AVX512_BF16, or RECUR_BF16_KERNEL=portable for the portable
    /// kernel, an emulation slower than f32).
    #[arg(long, default_value = "f32")]
    pub precision: recur::Precision,
    /// Random seed (initialisation, shuffling, dropout).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: all cores); per process under mpirun.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cut every batch into this many micro-batches of sequences, whose gradients are summed in
    /// a fixed order: a run of one process and one of N processes under mpirun (N dividing it)
    /// then take the same steps, bit for bit. Default: the checkpoint's when resuming, else one
    /// per process under mpirun, else none (the whole batch at once).
    #[arg(long)]
    pub micro_batches: Option<usize>,
    /// How the processes' gradients are added up under mpirun: `ordered` (the micro-batches in
    /// order, the same weights bit for bit for any number of processes) or `allreduce` (one
    /// MPI_Allreduce of each process's sum: faster with many processes, equal up to rounding).
    #[arg(long, default_value = "ordered")]
    pub combine: recur::dist::Combine,
    /// Machine-readable progress: one JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Only the final line.
    #[arg(long, conflicts_with = "json")]
    pub quiet: bool,
    /// Continue the run saved in this checkpoint (the model, its vocabulary and labels come from
    /// it; give the same --train for the run to continue exactly). A model flag, --lr, --batch or
    /// --seed other than the checkpoint's is an error.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// The ids of the flags given on the command line (filled in by `main`).
    #[arg(skip)]
    pub explicit: Vec<String>,
}

/// Options of `recur classify predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A checkpoint written by `recur classify train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Texts to classify: `label<TAB>text` lines (to score), or one text per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Texts per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs `recur classify`.
pub fn run(args: &ClassifyArgs) -> CmdResult {
    match &args.command {
        ClassifyCommand::Train(a) => {
            let ranks = crate::ranks::Ranks::start()?;
            let result = train(a, &ranks);
            ranks.finish(result)
        }
        ClassifyCommand::Predict(a) => predict(a),
    }
}

/// A library error as one line; an error about a file's content is prefixed with the file.
fn in_file(path: &Path, e: Error) -> String {
    match e {
        Error::Invalid { msg, .. } => format!("{}: {msg}", path.display()),
        other => other.to_string(),
    }
}

fn check_args(a: &TrainArgs) -> Result<(), String> {
    let limits = [
        ("--hidden", a.hidden, 16_384),
        ("--layers", a.layers, 64),
        ("--embed", a.embed, 16_384),
        ("--batch", a.batch, 1_000_000),
    ];
    for (name, v, max) in limits {
        if v == 0 || v > max {
            return Err(format!("{name} must be in 1..={max}, got {v}"));
        }
    }
    if a.epochs == Some(0) || a.steps == Some(0) {
        return Err("--epochs and --steps must be at least 1".into());
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(format!("--lr must be a positive number, got {}", a.lr));
    }
    Ok(())
}

/// The flags of a resumed run that differ from its checkpoint (`config`, run `info`), one
/// description each: the model's flags and --lr when given; --batch and --seed always, as the
/// data order depends on them.
fn resume_conflicts(
    args: &TrainArgs,
    config: &TextClassifierConfig,
    info: &RunInfo,
) -> Vec<String> {
    let given = |id: &str| args.explicit.iter().any(|e| e == id);
    let net = &config.model;
    let tokens = match args.tokens {
        TokensArg::Char => Tokenizer::Chars,
        TokensArg::Word => Tokenizer::Words,
    };
    let mut flags: Vec<(&str, String, String)> = vec![
        ("tokens", tokens.name().into(), config.tokens.clone()),
        ("cell", args.cell.name().into(), net.cell.clone()),
        ("hidden", args.hidden.to_string(), net.hidden.to_string()),
        ("layers", args.layers.to_string(), net.layers.to_string()),
        (
            "embed",
            args.embed.to_string(),
            net.embed.map_or("none".into(), |e| e.to_string()),
        ),
        (
            "bidirectional",
            args.bidirectional.to_string(),
            net.bidirectional.to_string(),
        ),
    ];
    if let Some(lr) = info.lr {
        flags.push(("lr", args.lr.to_string(), lr.to_string()));
    }
    let mut conflicts: Vec<String> = flags
        .into_iter()
        .filter(|(id, wanted, stored)| given(id) && wanted != stored)
        .map(|(id, wanted, stored)| format!("--{id} {wanted} (checkpoint: {stored})"))
        .collect();
    for (id, wanted) in [("batch", args.batch as u64), ("seed", args.seed)] {
        if let Some(stored) = info.meta.get(id).and_then(|v| v.as_u64())
            && stored != wanted
        {
            conflicts.push(format!("--{id} {wanted} (checkpoint: {stored})"));
        }
    }
    conflicts
}

fn train(args: &TrainArgs, ranks: &crate::ranks::Ranks) -> CmdResult {
    check_args(args)?;
    set_threads(args.threads)?;
    let root = ranks.is_root();
    let stored = match &args.resume {
        Some(path) => RunInfo::read(path).map_err(|e| e.to_string())?.meta,
        None => Default::default(),
    };
    let stored_micro = stored
        .get("micro_batches")
        .and_then(|v| v.as_u64())
        .map(|m| m as usize);
    let given = args.explicit.iter().any(|e| e == "precision");
    let precision = crate::run_precision(args.precision, given, stored.get("precision"))?;
    let micro = ranks.micro_batches(args.micro_batches, stored_micro, args.batch)?;
    let mut parallel = micro.map(|m| ranks.parallel(m, args.combine)).transpose()?;
    // Everything is read and checked before anything is written.
    let train_ex = read_labelled(&args.train).map_err(|e| e.to_string())?;
    let valid_ex = read_labelled(&args.valid).map_err(|e| e.to_string())?;
    let mut store = ParamStore::<f32>::new();
    let mut rng = Rng::new(args.seed);
    let mut model = match &args.resume {
        Some(path) => {
            let config = TextClassifier::read_config(path).map_err(|e| e.to_string())?;
            let info = RunInfo::read(path).map_err(|e| e.to_string())?;
            let conflicts = resume_conflicts(args, &config, &info);
            if !conflicts.is_empty() {
                return Err(format!(
                    "--resume {}: the flags differ from the checkpoint: {}",
                    path.display(),
                    conflicts.join(", ")
                ));
            }
            TextClassifier::from_config(&mut store, config, &mut rng)
                .map_err(|e| in_file(path, e))?
        }
        None => {
            let tokenizer = match args.tokens {
                TokensArg::Char => Tokenizer::Chars,
                TokensArg::Word => Tokenizer::Words,
            };
            let vocab = Vocab::build(tokenizer, train_ex.iter().map(|e| e.text.as_str()), 1)
                .map_err(|e| in_file(&args.train, e))?;
            let labels = Labels::new(train_ex.iter().map(|e| e.label.as_str()))
                .map_err(|e| in_file(&args.train, e))?;
            if labels.len() < 2 {
                return Err(format!(
                    "{}: needs at least two labels, found only {:?}",
                    args.train.display(),
                    labels.names()[0]
                ));
            }
            let net = SequenceClassifierConfig::tokens(0, args.embed, args.hidden, 0)
                .cell(args.cell.name())
                .layers(args.layers)
                .bidirectional(args.bidirectional);
            TextClassifier::new(&mut store, vocab, labels, net, &mut rng)
                .map_err(|e| e.to_string())?
        }
    };
    let mut train_data = model
        .dataset(&train_ex, args.batch)
        .map_err(|e| in_file(&args.train, e))?
        .with_plan(|p| p.shuffle(args.seed).bucket(20));
    let mut valid_data = model
        .dataset(&valid_ex, args.batch.max(64))
        .map_err(|e| in_file(&args.valid, e))?;
    let per_epoch = train_data.batches_per_epoch();

    let config = match args.steps {
        Some(s) => TrainerConfig::steps(s),
        None => TrainerConfig::epochs(args.epochs.unwrap_or(10)),
    }
    .clip(5.0)
    .out_dir(&args.out)
    .seed(args.seed)
    .precision(precision);
    let mut opt = Adam::new(AdamConfig::default().lr(args.lr)).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let (json, quiet) = (args.json && root, args.quiet || !root);
    let mut trainer = Trainer::new(config)
        .meta("batch", args.batch)
        .meta("seed", args.seed)
        .meta("precision", precision.name());
    if let Some(m) = micro {
        trainer = trainer.meta("micro_batches", m);
    }
    let mut trainer = trainer.on_event(move |e, _| {
        if let Event::Eval {
            step,
            train_loss,
            val_loss,
            improved,
        } = *e
        {
            let epoch = step as f64 / per_epoch as f64;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "step": step, "epoch": epoch, "train_loss": train_loss,
                        "val_loss": val_loss, "best": improved,
                        "elapsed_s": start.elapsed().as_secs_f64(),
                    })
                );
            } else if !quiet {
                println!(
                    "epoch {epoch:>6.2}  step {step:>7}  train {train_loss:.4}  val {:.4}{}",
                    val_loss.unwrap_or(f64::NAN),
                    if improved { "  (best)" } else { "" }
                );
            }
        }
        Control::Continue
    });
    if let Some(path) = &args.resume {
        trainer = trainer.resume_from(path);
    }
    let summary = match parallel.as_mut() {
        Some(par) => trainer.fit_parallel(
            &mut model,
            &mut store,
            &mut opt,
            &mut train_data,
            Some(&mut valid_data),
            par,
        ),
        None => trainer.fit(
            &mut model,
            &mut store,
            &mut opt,
            &mut train_data,
            Some(&mut valid_data),
        ),
    }
    .map_err(|e| e.to_string())?;
    if !root {
        return Ok(ExitCode::SUCCESS);
    }

    // The accuracy of the best checkpoint (what `predict` uses) on the validation data.
    let best = args.out.join("best.safetensors");
    let (best_model, best_store) = TextClassifier::load::<f32>(&best).map_err(|e| e.to_string())?;
    let texts: Vec<&str> = valid_ex.iter().map(|e| e.text.as_str()).collect();
    let pred = best_model
        .predict(&best_store, &texts, 256)
        .map_err(|e| e.to_string())?;
    let acc = recur::tensor::accuracy(&pred, valid_data.targets()).map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "done": true, "step": summary.steps, "best_val_loss": summary.best,
                "val_accuracy": acc,
            })
        );
    } else {
        println!(
            "done: step {}, best validation loss {:.4}, validation accuracy {:.2}% ({} of {}); outputs in {}",
            summary.steps,
            summary.best,
            100.0 * acc,
            pred.iter()
                .zip(valid_data.targets())
                .filter(|(p, t)| p == t)
                .count(),
            pred.len(),
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn predict(args: &PredictArgs) -> CmdResult {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    set_threads(args.threads)?;
    let (model, store) =
        TextClassifier::load::<f32>(&args.checkpoint).map_err(|e| e.to_string())?;
    let input = &args.input;
    let bytes =
        std::fs::read(input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            input.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let ctx = input.display().to_string();
    if text.contains('\t') {
        // Labelled: score the predictions.
        let examples = parse_labelled(&text, &ctx).map_err(|e| e.to_string())?;
        let data = model
            .dataset(&examples, args.batch)
            .map_err(|e| in_file(input, e))?;
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let pred = model
            .predict(&store, &texts, args.batch)
            .map_err(|e| e.to_string())?;
        let labels = model.labels();
        let report =
            class_report(&pred, data.targets(), labels.len()).map_err(|e| e.to_string())?;
        let right = pred
            .iter()
            .zip(data.targets())
            .filter(|(p, t)| p == t)
            .count();
        let width = labels
            .names()
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut out = format!(
            "accuracy {:.2}% ({right} of {})\n{:<width$}  {:>9}  {:>7}  {:>7}\n",
            100.0 * right as f64 / pred.len() as f64,
            pred.len(),
            "label",
            "precision",
            "recall",
            "count"
        );
        for (name, s) in labels.names().iter().zip(&report) {
            out.push_str(&format!(
                "{name:<width$}  {:>8.2}%  {:>6.2}%  {:>7}\n",
                100.0 * s.precision,
                100.0 * s.recall,
                s.count
            ));
        }
        print!("{out}");
    } else {
        // Unlabelled: one text per line, one label per line.
        let mut texts = Vec::new();
        for (k, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                // A final newline ends the last line; any other blank line is an error.
                if text.split('\n').skip(k + 1).all(|l| l.trim().is_empty()) {
                    break;
                }
                return Err(format!("{ctx}: line {}: empty text", k + 1));
            }
            texts.push(line);
        }
        if texts.is_empty() {
            return Err(format!("{ctx}: no texts (the file is empty)"));
        }
        let pred = model
            .predict(&store, &texts, args.batch)
            .map_err(|e| in_file(input, e))?;
        let mut out = String::new();
        for p in pred {
            out.push_str(model.labels().name(p).map_err(|e| e.to_string())?);
            out.push('\n');
        }
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}
