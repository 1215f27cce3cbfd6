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
use recur::data::{CharVocab, TextStreams};
use recur::optim::{DivergenceGuard, clip_grad_norm, grad_norm};
use recur::{ParamStore, Rng, Tape};

mod setup;

use setup::{
    check_args, estimate_bytes, load_corpus, prepare_out, read_text, resume_conflicts,
    text_fingerprint,
};

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
    /// from it. A flag given with another value than the checkpoint's is an error (--lr and
    /// --clip may change with --override); --batch and --seq-len must match it.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// With --resume: use the --lr and --clip given instead of the checkpoint's.
    #[arg(long = "override", requires = "resume")]
    pub override_: bool,
    /// With --resume: accept a text other than the one the checkpoint was trained on (the best
    /// validation loss starts afresh, as the validation text changes).
    #[arg(long, requires = "resume")]
    pub new_text: bool,
    /// Do not stop when the validation loss diverges (see the README for the bound).
    #[arg(long)]
    pub no_divergence_check: bool,
    /// Refuse to start if the estimated peak memory exceeds this (e.g. 800M, 4G; default: the
    /// available memory).
    #[arg(long, value_parser = crate::memory::parse_size)]
    pub max_memory: Option<u64>,
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
    /// The ids of the flags given on the command line (filled in by `main`).
    #[arg(skip)]
    pub explicit: Vec<String>,
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

/// Why a run stopped early.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Interrupt,
    Terminate,
}

/// Runs `recur train`.
pub fn run(args: &TrainArgs) -> CmdResult {
    check_args(args)?;
    crate::set_threads(args.threads)?;
    // Everything that can be wrong with the inputs is found before anything is written.
    let text = read_text(&args.text)?;
    let fingerprint = text_fingerprint(&text);
    let mut resumed = args
        .resume
        .as_ref()
        .map(|p| checkpoint::load(p).map_err(|e| e.to_string()))
        .transpose()?;
    let mut new_text_note = None;
    if let (Some(r), Some(p)) = (&mut resumed, &args.resume) {
        let (conflicts, lr, clip) = resume_conflicts(args, r);
        if !conflicts.is_empty() {
            return Err(format!(
                "--resume {}: the flags differ from the checkpoint: {}",
                p.display(),
                conflicts.join(", ")
            ));
        }
        if let Some(lr) = lr {
            r.optimizer.set_lr(lr);
        }
        if let Some(clip) = clip {
            r.state.clip = clip;
        }
        match &r.state.text_fingerprint {
            Some(stored) if *stored != fingerprint => {
                if !args.new_text {
                    return Err(format!(
                        "--resume {}: {} is not the text the checkpoint was trained on \
                         (fingerprint {fingerprint}, the checkpoint's {stored}); pass --new-text \
                         to train on it anyway",
                        p.display(),
                        args.text.display()
                    ));
                }
                new_text_note = Some(format!(
                    "training on a new text ({}): the best validation loss starts afresh",
                    args.text.display()
                ));
                r.state.best_val = f64::INFINITY;
            }
            _ => {}
        }
        r.state.text_fingerprint = Some(fingerprint.clone());
    }
    // The memory this run will need, from its sizes, before the model or the corpus is built.
    let config = match &resumed {
        Some(r) => r.model.config.clone(),
        None => ModelConfig {
            cell: args.cell.name().to_string(),
            hidden: args.hidden,
            layers: args.layers,
            embed: args.embed,
            dropout: args.dropout,
            vocab: CharVocab::from_text(&text)
                .map_err(|e| e.to_string())?
                .chars()
                .iter()
                .collect(),
        },
    };
    let estimate = estimate_bytes(
        &config,
        args.batch,
        args.seq_len,
        text.len(),
        text.chars().count(),
    );
    crate::memory::check("recur train", estimate, args.max_memory)?;
    let corpus = load_corpus(args, &text, resumed.as_ref().map(|r| r.model.vocab.clone()))?;
    drop(text);
    let (model, mut store, mut opt, mut ts) = match resumed {
        Some(r) => (r.model, r.store, r.optimizer, r.state),
        None => {
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
                interval_loss: 0.0,
                interval_steps: 0,
                text_fingerprint: Some(fingerprint),
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
    let mut guard = if args.no_divergence_check {
        None
    } else {
        Some(
            DivergenceGuard::for_classes(corpus.vocab.len().max(2))
                .map_err(|e| e.to_string())?
                .with_best(ts.best_val),
        )
    };
    prepare_out(&args.out)?;
    let removed = recur::io::remove_stale_temporaries(&args.out).map_err(|e| e.to_string())?;

    // SIGINT and SIGTERM ask the loop to save and stop; a second one of either ends the process
    // at once with the shell's status for that signal.
    let interrupt = Arc::new(AtomicBool::new(false));
    let terminate = Arc::new(AtomicBool::new(false));
    let any = Arc::new(AtomicBool::new(false));
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        use signal_hook::flag;
        for (signal, own, status) in [(SIGINT, &interrupt, 130), (SIGTERM, &terminate, 143)] {
            flag::register_conditional_shutdown(signal, status, any.clone())
                .and_then(|_| flag::register(signal, own.clone()))
                .and_then(|_| flag::register(signal, any.clone()))
                .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
        }
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
    if !removed.is_empty() {
        say(format!(
            "removed {} temporary file(s) left in {} by an interrupted write",
            removed.len(),
            args.out.display()
        ));
    }
    if let Some(p) = &args.resume {
        say(format!(
            "resuming {} at step {} (model and optimizer settings from the checkpoint)",
            p.display(),
            ts.step
        ));
    }
    if let Some(note) = new_text_note {
        say(note);
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
    let mut interval_start = Instant::now();
    let mut last_val = ts.history.val.last().map(|v| v.1);
    // The step the files in --out hold (a resumed run starts from its checkpoint's).
    let mut saved_at = args.resume.as_ref().map(|_| ts.step);
    let mut stopped = None;
    while ts.step < total_steps {
        if terminate.load(Ordering::SeqCst) {
            stopped = Some(Stop::Terminate);
            break;
        }
        if interrupt.load(Ordering::SeqCst) {
            stopped = Some(Stop::Interrupt);
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
        ts.interval_loss += loss_value;
        ts.interval_steps += 1;
        let secs = interval_start.elapsed().as_secs_f64();
        let cps = chars_per_step * ts.interval_steps as f64 / secs.max(1e-9);
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
            let train_loss = ts.interval_loss / ts.interval_steps as f64;
            let val = validate(&model, &store, &mut tape, &corpus.val)?;
            if let Some(guard) = guard.as_mut()
                && let Err(d) = guard.check(val)
            {
                bar.finish_and_clear();
                let kept = match saved_at {
                    Some(s) => format!(
                        "the checkpoints in {} are those of step {s}",
                        args.out.display()
                    ),
                    None => "no checkpoint was written".into(),
                };
                return Err(format!(
                    "step {}: the run is diverging: the validation {d}; stopped without \
                     saving this step ({kept}); try a smaller --lr, or --no-divergence-check",
                    ts.step
                ));
            }
            last_val = Some(val);
            // The next validation reports the mean over the steps after this one.
            ts.interval_loss = 0.0;
            ts.interval_steps = 0;
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
            saved_at = Some(ts.step);
            interval_start = Instant::now();
        }
        if at_end || (args.sample_every > 0 && ts.step % args.sample_every == 0) {
            write_sample(&args.out, &model, &store, ts.step, args.seed)?;
        }
    }
    bar.finish_and_clear();
    if let Some(stop) = stopped {
        save_to(
            &args.out,
            "last.safetensors",
            &model,
            &store,
            opt.as_ref(),
            &ts,
        )?;
        eprintln!(
            "interrupted at step {}: saved {}; continue with --resume {} ({}, exit status {})",
            ts.step,
            args.out.join("last.safetensors").display(),
            args.out.join("last.safetensors").display(),
            if stop == Stop::Terminate {
                "SIGTERM"
            } else {
                "SIGINT"
            },
            if stop == Stop::Terminate { 143 } else { 130 },
        );
        return Ok(ExitCode::from(if stop == Stop::Terminate {
            143
        } else {
            130
        }));
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
    let (lm, lm_store) = model.to_lm(store).map_err(|e| e.to_string())?;
    let text = lm
        .generate(&lm_store, &prime.to_string(), 400, 0.8, None, &mut rng)
        .map_err(|e| e.to_string())?;
    let path = out.join(format!("sample_{step:07}.txt"));
    recur::io::atomic_write(&path, format!("{prime}{text}\n").as_bytes()).map_err(|e| e.to_string())
}
