//! `recur train`: a character language model on any UTF-8 text, trained with truncated
//! backpropagation through time (the hidden state is carried across consecutive chunks, the
//! gradient is not), with a held-out validation split, checkpoints that resume exactly, samples,
//! a live progress bar and a loss plot.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use recur::data::{CharVocab, TextStreams, split_validation};
use recur::optim::{clip_grad_norm, grad_norm};
use recur::{ParamStore, Rng, Tape};

use crate::CmdResult;
use crate::charlm::{CharModel, ModelConfig};
use crate::checkpoint::{self, History, TrainState};
use crate::gradflow::CellArg;
use crate::optimizer::{OptArg, make_optimizer};
use crate::plot::{Chart, Series, write_csv, write_svg};

/// Options of `recur train`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// The training text (any UTF-8 file).
    #[arg(long)]
    pub text: PathBuf,
    /// Recurrent cell.
    #[arg(long, value_enum, default_value_t = CellArg::Lstm)]
    pub cell: CellArg,
    /// Hidden units per layer.
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Recurrent layers.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Embedding size of the characters.
    #[arg(long, default_value_t = 64)]
    pub embed: usize,
    /// Steps of backpropagation through time per chunk.
    #[arg(long, default_value_t = 100)]
    pub seq_len: usize,
    /// Parallel streams per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Train until this step, counted from the start of the run (also when resuming).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Train for this many passes over the training text instead.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptArg::Adam)]
    pub optimizer: OptArg,
    /// Clip the global gradient norm at this threshold (0 disables clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Dropout between recurrent layers.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Random seed (initialisation, dropout, samples).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output directory.
    #[arg(long, default_value = "recur-run")]
    pub out: PathBuf,
    /// Continue the run saved in this checkpoint: the model, optimizer, clipping and dropout come
    /// from it (their flags are not used); --batch and --seq-len must match it.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Validate, checkpoint and plot every this many steps.
    #[arg(long, default_value_t = 200)]
    pub eval_every: usize,
    /// Write a sample every this many steps (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    pub sample_every: usize,
    /// Fraction of the text held out for validation (taken from the end).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// No progress bar; only the final line.
    #[arg(long, conflicts_with = "json")]
    pub quiet: bool,
    /// Machine-readable progress: one JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
}

fn check_args(a: &TrainArgs) -> Result<(), String> {
    let positive = [
        ("--hidden", a.hidden),
        ("--layers", a.layers),
        ("--embed", a.embed),
        ("--seq-len", a.seq_len),
        ("--batch", a.batch),
        ("--eval-every", a.eval_every),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err(format!("{name} must be at least 1"));
        }
    }
    // Sizes far beyond what fits in memory are refused before any arithmetic on them.
    let limits = [
        ("--hidden", a.hidden, 16_384),
        ("--layers", a.layers, 64),
        ("--embed", a.embed, 16_384),
        ("--seq-len", a.seq_len, 1_000_000),
        ("--batch", a.batch, 1_000_000),
    ];
    for (name, v, max) in limits {
        if v > max {
            return Err(format!("{name} {v} is too large (at most {max})"));
        }
    }
    if a.steps == Some(0) || a.epochs == Some(0) {
        return Err("--steps / --epochs must be at least 1".into());
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(format!("--lr must be a positive number, got {}", a.lr));
    }
    if !(a.clip.is_finite() && a.clip >= 0.0) {
        return Err(format!("--clip must be >= 0, got {}", a.clip));
    }
    if !(0.0..1.0).contains(&a.dropout) {
        return Err(format!("--dropout must be in [0, 1), got {}", a.dropout));
    }
    if !(a.val_fraction > 0.0 && a.val_fraction < 0.5) {
        return Err(format!(
            "--val-fraction must be in (0, 0.5), got {}",
            a.val_fraction
        ));
    }
    Ok(())
}

/// Reads the text file: it must exist, be UTF-8, not look binary, and not be empty.
pub fn read_text(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "{} is not UTF-8 text (invalid byte at offset {}); is it a binary file?",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.contains('\0') {
        return Err(format!(
            "{} contains NUL bytes; is it a binary file?",
            path.display()
        ));
    }
    Ok(text)
}

/// The corpus, cut for training and validation.
struct Corpus {
    vocab: CharVocab,
    train: TextStreams,
    val: TextStreams,
    unigram_nats: f64,
    train_chars: usize,
    total_chars: usize,
}

fn load_corpus(args: &TrainArgs, vocab: Option<CharVocab>) -> Result<Corpus, String> {
    let text = read_text(&args.text)?;
    let vocab = match vocab {
        Some(v) => v,
        None => CharVocab::from_text(&text).map_err(|e| e.to_string())?,
    };
    let ids = vocab.encode(&text).map_err(|e| {
        format!(
            "{}: {e} (the checkpoint was trained on another text)",
            args.text.display()
        )
    })?;
    let min = args.seq_len + 1;
    let (train, val) = split_validation(&ids, args.val_fraction, min)
        .map_err(|e| format!("{}: {e}", args.text.display()))?;
    let train_streams = TextStreams::new(train, args.batch, args.seq_len).map_err(|_| {
        format!(
            "{}: too short for --batch {} x --seq-len {}: {} training characters, need at least {}",
            args.text.display(),
            args.batch,
            args.seq_len,
            train.len(),
            args.batch * (args.seq_len + 1)
        )
    })?;
    let val_batch = (val.len() / min).clamp(1, args.batch);
    let val_streams = TextStreams::new(val, val_batch, args.seq_len)
        .map_err(|e| format!("{}: {e}", args.text.display()))?;
    Ok(Corpus {
        unigram_nats: vocab.unigram_entropy(train),
        train_chars: train.len(),
        total_chars: ids.len(),
        vocab,
        train: train_streams,
        val: val_streams,
    })
}

/// Mean validation loss in nats per character over (up to 64) chunks, from a zero state.
fn validate(
    model: &CharModel,
    store: &ParamStore<f32>,
    tape: &mut Tape<f32>,
    val: &TextStreams,
) -> Result<f64, String> {
    let mut state = model.zero_state(val.batch()).map_err(|e| e.to_string())?;
    let n = val.chunks().min(64);
    let mut total = 0.0;
    for k in 0..n {
        let (x, y) = val.chunk(k);
        tape.clear();
        let (loss, next) = model
            .loss(
                tape,
                store,
                &x,
                &y,
                val.seq_len(),
                val.batch(),
                &state,
                None,
            )
            .map_err(|e| e.to_string())?;
        total += tape.value(loss).map_err(|e| e.to_string())?.data()[0] as f64;
        state = next;
    }
    Ok(total / n as f64)
}

/// Runs `recur train`.
pub fn run(args: &TrainArgs) -> CmdResult {
    check_args(args)?;
    crate::set_threads(args.threads)?;
    // Everything that can be wrong with the inputs is found before anything is written.
    let resumed = args
        .resume
        .as_ref()
        .map(|p| checkpoint::load(p).map_err(|e| e.to_string()))
        .transpose()?;
    let corpus = load_corpus(args, resumed.as_ref().map(|r| r.model.vocab.clone()))?;
    let (model, mut store, mut opt, mut ts) = match resumed {
        Some(r) => {
            if r.state.batch != args.batch || r.state.seq_len != args.seq_len {
                return Err(format!(
                    "the checkpoint was trained with --batch {} --seq-len {}; resume with the same",
                    r.state.batch, r.state.seq_len
                ));
            }
            (r.model, r.store, r.optimizer, r.state)
        }
        None => {
            let config = ModelConfig {
                cell: args.cell.name().to_string(),
                hidden: args.hidden,
                layers: args.layers,
                embed: args.embed,
                dropout: args.dropout,
                vocab: corpus.vocab.chars().iter().collect(),
            };
            let mut rng = Rng::new(args.seed);
            let mut store = ParamStore::new();
            let model = CharModel::new(&mut store, config, &mut rng).map_err(|e| e.to_string())?;
            let opt = make_optimizer(args.optimizer, args.lr).map_err(|e| e.to_string())?;
            let ts = TrainState {
                step: 0,
                batch: args.batch,
                seq_len: args.seq_len,
                clip: args.clip,
                dropout_rng: rng.fork(),
                carried: model.zero_state(args.batch).map_err(|e| e.to_string())?,
                best_val: f64::INFINITY,
                history: History::default(),
            };
            (model, store, opt, ts)
        }
    };
    let total_steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e
            .checked_mul(corpus.train.chunks())
            .ok_or_else(|| format!("--epochs {e} is too large"))?,
        (None, None) => 2000,
    };
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second handler cannot be installed in the same process; that only matters in tests.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }

    let chars_per_step = (args.batch * args.seq_len) as f64;
    let bar = if args.quiet || args.json || !std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total_steps as u64), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(total_steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} step {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .map_err(|e| e.to_string())?,
    );
    bar.set_position(ts.step as u64);
    // Lines above the bar on a terminal; plain lines when stderr is redirected.
    let live = !(args.quiet || args.json) && std::io::stderr().is_terminal();
    let say = |msg: String| {
        if live {
            bar.println(msg);
        } else if !(args.quiet || args.json) {
            println!("{msg}");
        }
    };
    let chunks = corpus.train.chunks();
    if let Some(p) = &args.resume {
        say(format!(
            "resuming {} at step {} (model and optimizer settings from the checkpoint)",
            p.display(),
            ts.step
        ));
    }
    {
        say(format!(
            "{} characters ({} distinct), {} for training, {} chunks per epoch; unigram entropy {:.3} nats = {:.3} bits per character",
            corpus.total_chars,
            corpus.vocab.len(),
            corpus.train_chars,
            chunks,
            corpus.unigram_nats,
            corpus.unigram_nats / std::f64::consts::LN_2
        ));
    }
    let mut tape = Tape::new();
    let mut interval_loss = 0.0;
    let mut interval_steps = 0usize;
    let mut interval_start = Instant::now();
    let mut last_val = ts.history.val.last().map(|v| v.1);
    let mut interrupted = false;
    while ts.step < total_steps {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let k = ts.step % chunks;
        if k == 0 {
            ts.carried = model.zero_state(args.batch).map_err(|e| e.to_string())?;
        }
        let (x, y) = corpus.train.chunk(k);
        tape.clear();
        let dropout_rng = (model.config.dropout > 0.0).then_some(&mut ts.dropout_rng);
        let (loss, next) = model
            .loss(
                &mut tape,
                &store,
                &x,
                &y,
                args.seq_len,
                args.batch,
                &ts.carried,
                dropout_rng,
            )
            .map_err(|e| e.to_string())?;
        let loss_value = tape.value(loss).map_err(|e| e.to_string())?.data()[0] as f64;
        let mut grads = tape.backward(loss).map_err(|e| e.to_string())?;
        let norm = if ts.clip > 0.0 {
            clip_grad_norm(&mut grads, ts.clip)
                .map_err(|e| format!("step {}: {e}; try a smaller --lr", ts.step + 1))?
        } else {
            grad_norm(&grads)
        };
        if !norm.is_finite() || !loss_value.is_finite() {
            return Err(format!(
                "step {}: the loss or gradient is not finite (loss {loss_value}, gradient norm {norm}); try a smaller --lr or --clip",
                ts.step + 1
            ));
        }
        opt.step(&mut store, &grads).map_err(|e| e.to_string())?;
        ts.carried = next;
        ts.step += 1;
        interval_loss += loss_value;
        interval_steps += 1;
        let secs = interval_start.elapsed().as_secs_f64();
        let cps = chars_per_step * interval_steps as f64 / secs.max(1e-9);
        bar.set_message(format!(
            "epoch {} loss {:.3} val {} {:.0} char/s",
            ts.step / chunks + 1,
            loss_value,
            last_val.map_or("-".into(), |v| format!("{v:.3}")),
            cps
        ));
        bar.set_position(ts.step as u64);
        let at_end = ts.step == total_steps;
        if ts.step % args.eval_every == 0 || at_end {
            let train_loss = interval_loss / interval_steps as f64;
            let val = validate(&model, &store, &mut tape, &corpus.val)?;
            last_val = Some(val);
            ts.history.train.push((ts.step, train_loss));
            ts.history.val.push((ts.step, val));
            let improved = val < ts.best_val;
            if improved {
                ts.best_val = val;
            }
            save_to(
                &args.out,
                "last.safetensors",
                &model,
                &store,
                opt.as_ref(),
                &ts,
            )?;
            if improved {
                save_to(
                    &args.out,
                    "best.safetensors",
                    &model,
                    &store,
                    opt.as_ref(),
                    &ts,
                )?;
            }
            write_curves(&args.out, &ts.history)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "step": ts.step, "epoch": ts.step as f64 / chunks as f64,
                        "train_loss": train_loss, "val_loss": val,
                        "val_bpc": val / std::f64::consts::LN_2,
                        "chars_per_sec": cps, "elapsed_s": secs,
                    })
                );
            } else {
                say(format!(
                    "step {:>6}  train {:.4}  val {:.4} nats = {:.3} bpc{}",
                    ts.step,
                    train_loss,
                    val,
                    val / std::f64::consts::LN_2,
                    if improved { "  (best)" } else { "" }
                ));
            }
            interval_loss = 0.0;
            interval_steps = 0;
            interval_start = Instant::now();
        }
        if at_end || (args.sample_every > 0 && ts.step % args.sample_every == 0) {
            write_sample(&args.out, &model, &store, ts.step, args.seed)?;
        }
    }
    bar.finish_and_clear();
    if interrupted {
        save_to(
            &args.out,
            "last.safetensors",
            &model,
            &store,
            opt.as_ref(),
            &ts,
        )?;
        eprintln!(
            "interrupted at step {}: saved {}; continue with --resume {}",
            ts.step,
            args.out.join("last.safetensors").display(),
            args.out.join("last.safetensors").display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let summary = format!(
        "done: step {}, best validation loss {:.4} nats = {:.3} bits per character (unigram entropy {:.3} bits); outputs in {}",
        ts.step,
        ts.best_val,
        ts.best_val / std::f64::consts::LN_2,
        corpus.unigram_nats / std::f64::consts::LN_2,
        args.out.display()
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"done": true, "step": ts.step, "best_val_loss": ts.best_val})
        );
    } else {
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Saves the checkpoint `name` into `out`.
fn save_to(
    out: &Path,
    name: &str,
    model: &CharModel,
    store: &ParamStore<f32>,
    opt: &dyn recur::optim::Optimizer<f32>,
    ts: &TrainState,
) -> Result<(), String> {
    checkpoint::save(&out.join(name), model, store, opt, ts).map_err(|e| e.to_string())
}

fn write_curves(out: &Path, h: &History) -> Result<(), String> {
    let mut rows = Vec::new();
    for (&(s, tr), &(_, va)) in h.train.iter().zip(&h.val) {
        rows.push(vec![
            s.to_string(),
            format!("{tr:.6}"),
            format!("{va:.6}"),
            format!("{:.6}", va / std::f64::consts::LN_2),
        ]);
    }
    write_csv(
        &out.join("loss.csv"),
        &["step", "train_loss", "val_loss", "val_bpc"],
        &rows,
    )?;
    let series = [
        Series {
            name: "training loss".into(),
            points: h.train.iter().map(|&(s, l)| (s as f64, l)).collect(),
        },
        Series {
            name: "validation loss".into(),
            points: h.val.iter().map(|&(s, l)| (s as f64, l)).collect(),
        },
    ];
    write_svg(
        &out.join("loss.svg"),
        &Chart {
            title: "Character model: loss (nats per character)",
            x_label: "step",
            y_label: "loss",
            log_y: false,
        },
        &series,
    )
}

fn write_sample(
    out: &Path,
    model: &CharModel,
    store: &ParamStore<f32>,
    step: usize,
    seed: u64,
) -> Result<(), String> {
    // Samples use their own generator, derived from the seed and step: they never disturb
    // training.
    let mut rng = Rng::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let prime = model
        .vocab
        .char(rng.below(model.vocab.len()))
        .map_err(|e| e.to_string())?;
    let text = model
        .sample(store, &prime.to_string(), 400, 0.8, &mut rng)
        .map_err(|e| e.to_string())?;
    let path = out.join(format!("sample_{step:07}.txt"));
    recur::io::atomic_write(&path, format!("{prime}{text}\n").as_bytes()).map_err(|e| e.to_string())
}
