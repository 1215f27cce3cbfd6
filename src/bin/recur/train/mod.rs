//! `recur train`: the library's [`CharLm`] trained by its [`Trainer`] on any UTF-8 text, with
//! truncated backpropagation through time (the hidden state is carried across consecutive
//! chunks, the gradient is not), a held-out validation split and checkpoints that resume
//! exactly. This module adds what a command line needs around them: argument and file checks,
//! the memory estimate, signals, the divergence check, the progress bar or JSON lines, the loss
//! plot and samples.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use recur::data::{CharVocab, DataSource};
use recur::models::{
    CharLm, CharLmConfig, Control, Ended, Event, History, RunInfo, Trainer, TrainerConfig,
};
use recur::optim::DivergenceGuard;
use recur::{ParamStore, Rng};

mod setup;

pub(crate) use setup::estimate_bytes;
use setup::{
    RunMeta, check_args, load_corpus, prepare_out, read_text, resume_conflicts, text_fingerprint,
};

use crate::CmdResult;
use crate::gradflow::CellArg;
use crate::optimizer::{OptArg, make_optimizer, optimizer_by_name};
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
    /// Recurrent (variational) dropout on the state entering each step's recurrent product: one
    /// mask per sequence, layer and direction per training step.
    #[arg(long, default_value_t = 0.0)]
    pub recurrent_dropout: f64,
    /// Weight drop (DropConnect) on the recurrent weights W_hh, one mask per training step.
    #[arg(long, default_value_t = 0.0)]
    pub weight_drop: f64,
    /// Zoneout on h (and the LSTM's c): each unit keeps its previous value with this
    /// probability in training; evaluation uses the expectation.
    #[arg(long, default_value_t = 0.0)]
    pub zoneout: f64,
    /// LSTM only: project the hidden state to this many features (0: no projection).
    #[arg(long, default_value_t = 0)]
    pub proj: usize,
    /// Layer-normalized LSTM or GRU layers: LN(W_ih x_t) and LN(W_hh h_{t-1}) with learned gains
    /// in each step's gates, and the LSTM's h_t = o * tanh(LN(c_t)). Not with --cell rnn or
    /// rnn-relu, --proj, --recurrent-dropout, --weight-drop or --zoneout. Kept in the
    /// checkpoint: a resumed run keeps it.
    #[arg(long)]
    pub layer_norm: bool,
    /// Precision of the products: f32, or bf16 (operands rounded to bf16, accumulated in
    /// f32; needs a CPU with AVX512_BF16, or RECUR_BF16_KERNEL=portable for the portable
    /// kernel, an emulation slower than f32).
    #[arg(long, default_value = "f32")]
    pub precision: recur::Precision,
    /// Random seed (initialisation, dropout, samples).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: all cores); per process under mpirun.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cut every batch into this many micro-batches of streams, whose gradients are summed in a
    /// fixed order: a run of one process and one of N processes under mpirun (N dividing it)
    /// then take the same steps, bit for bit. Default: the checkpoint's when resuming, else one
    /// per process under mpirun, else none (the whole batch at once).
    #[arg(long)]
    pub micro_batches: Option<usize>,
    /// How the processes' gradients are added up under mpirun: `ordered` (the micro-batches in
    /// order, the same weights bit for bit for any number of processes) or `allreduce` (one
    /// MPI_Allreduce of each process's sum: faster with many processes, equal up to rounding).
    #[arg(long, default_value = "ordered")]
    pub combine: recur::dist::Combine,
    /// Output directory.
    #[arg(long, default_value = "recur-run")]
    pub out: PathBuf,
    /// Continue the run saved in this checkpoint: the model, optimizer, clipping and dropout come
    /// from it. A flag given with another value than the checkpoint's is an error (--lr and
    /// --clip may change with --override); --batch and --seq-len must match it.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start from the weights in this safetensors file instead of random ones: a PyTorch
    /// `state_dict` of the same model under PyTorch's names (`embed.weight`,
    /// `rnn.weight_ih_l0`, ..., `head.weight`, `head.bias`), such as `bench/charlm_torch.py
    /// --save-init` writes. Every tensor must be there with the model's shape, and no other.
    #[arg(long, conflicts_with = "resume")]
    pub init_weights: Option<PathBuf>,
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

/// Why a run stopped early.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The shell's exit status for a process ended by this signal.
    fn status(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// SIGINT and SIGTERM ask the run to save and stop; a second one of either ends the process at
/// once with the shell's status for that signal. Returns the flags the first one sets.
fn catch_signals() -> Result<[Arc<AtomicBool>; 2], String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let flags = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let any = Arc::new(AtomicBool::new(false));
    for (signal, own, status) in [(SIGINT, &flags[0], 130), (SIGTERM, &flags[1], 143)] {
        flag::register_conditional_shutdown(signal, status, any.clone())
            .and_then(|_| flag::register(signal, own.clone()))
            .and_then(|_| flag::register(signal, any.clone()))
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    Ok(flags)
}

/// A run to resume: its checkpoint, what it records, and what `recur train` stored with it.
struct Resume<'a> {
    path: &'a Path,
    info: RunInfo,
    meta: RunMeta,
    config: CharLmConfig,
}

/// Runs `recur train`, in one process or as one rank of an MPI job.
pub fn run(args: &TrainArgs) -> CmdResult {
    let ranks = crate::ranks::Ranks::start()?;
    let result = run_on(args, &ranks);
    ranks.finish(result)
}

fn run_on(args: &TrainArgs, ranks: &crate::ranks::Ranks) -> CmdResult {
    check_args(args)?;
    let root = ranks.is_root();
    crate::set_threads(args.threads)?;
    // Everything that can be wrong with the inputs is found before anything is written.
    let text = read_text(&args.text)?;
    let fingerprint = text_fingerprint(&text);
    let resume = args
        .resume
        .as_deref()
        .map(|path| -> Result<Resume<'_>, String> {
            let info = RunInfo::read(path).map_err(|e| e.to_string())?;
            let meta = RunMeta::read(&info, path)?;
            let config = CharLmConfig::from_run(&info, path).map_err(|e| e.to_string())?;
            Ok(Resume {
                path,
                info,
                meta,
                config,
            })
        })
        .transpose()?;
    let precision = crate::run_precision(
        args.precision,
        args.explicit.iter().any(|e| e == "precision"),
        resume.as_ref().and_then(|r| r.info.meta.get("precision")),
    )?;
    let (mut lr_override, mut clip) = (None, args.clip);
    let mut new_text_note = None;
    if let Some(r) = &resume {
        let (conflicts, lr, new_clip) = resume_conflicts(args, &r.config, &r.info, &r.meta);
        if !conflicts.is_empty() {
            return Err(format!(
                "--resume {}: the flags differ from the checkpoint: {}",
                r.path.display(),
                conflicts.join(", ")
            ));
        }
        lr_override = lr;
        clip = new_clip.unwrap_or(r.meta.clip);
        match &r.meta.text_fingerprint {
            Some(stored) if *stored != fingerprint => {
                if !args.new_text {
                    return Err(format!(
                        "--resume {}: {} is not the text the checkpoint was trained on \
                         (fingerprint {fingerprint}, the checkpoint's {stored}); pass --new-text \
                         to train on it anyway",
                        r.path.display(),
                        args.text.display()
                    ));
                }
                new_text_note = Some(format!(
                    "training on a new text ({}): the best validation loss starts afresh",
                    args.text.display()
                ));
            }
            _ => {}
        }
    }
    // The memory this run will need, from its sizes, before the model or the corpus is built.
    let config = match &resume {
        Some(r) => r.config.clone(),
        None => CharLmConfig {
            dropout: args.dropout,
            recurrent_dropout: args.recurrent_dropout,
            weight_drop: args.weight_drop,
            zoneout: args.zoneout,
            proj: args.proj,
            layer_norm: args.layer_norm,
            ..CharLmConfig::new(
                args.cell.name(),
                args.hidden,
                args.layers,
                args.embed,
                &CharVocab::from_text(&text)
                    .map_err(|e| e.to_string())?
                    .chars()
                    .iter()
                    .collect::<String>(),
            )
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
    let stored_vocab = resume
        .as_ref()
        .map(|_| CharVocab::from_chars(config.vocab.chars().collect()))
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut corpus = load_corpus(args, &text, stored_vocab)?;
    drop(text);

    // The model, optimizer and trainer; a resumed run is loaded (and checked whole) now.
    let mut rng = Rng::new(args.seed);
    let mut store = ParamStore::new();
    let mut lm = CharLm::<f32>::new(&mut store, config, &mut rng).map_err(|e| e.to_string())?;
    if let Some(path) = &args.init_weights {
        recur::nn::load_state_dict_file(&lm, &mut store, path, "", true)
            .map_err(|e| format!("--init-weights: {e}"))?;
    }
    let mut opt = match &resume {
        Some(r) => optimizer_by_name(&r.info.optimizer, 1e-3).ok_or_else(|| {
            format!(
                "checkpoint {}: unknown optimizer `{}`",
                r.path.display(),
                r.info.optimizer
            )
        })?,
        None => make_optimizer(args.optimizer, args.lr),
    }
    .map_err(|e| e.to_string())?;
    let chunks = corpus.train.batches_per_epoch();
    let total_steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e
            .checked_mul(chunks)
            .ok_or_else(|| format!("--epochs {e} is too large"))?,
        (None, None) => 2000,
    };
    let mut tc = TrainerConfig::steps(total_steps)
        .eval_every(args.eval_every)
        .out_dir(&args.out)
        .precision(precision);
    if clip > 0.0 {
        tc = tc.clip(clip);
    }
    let stored_micro = resume.as_ref().and_then(|r| {
        r.info
            .meta
            .get("micro_batches")
            .and_then(|v| v.as_u64())
            .map(|m| m as usize)
    });
    let micro = ranks.micro_batches(args.micro_batches, stored_micro, args.batch)?;
    let mut parallel = micro.map(|m| ranks.parallel(m, args.combine)).transpose()?;
    let mut trainer = Trainer::new(tc)
        .rng(rng.fork())
        .meta("batch", args.batch)
        .meta("seq_len", args.seq_len)
        .meta("clip", clip)
        .meta("text_fingerprint", fingerprint)
        .meta("precision", precision.name());
    if let Some(m) = micro {
        trainer = trainer.meta("micro_batches", m);
    }
    let (mut start_step, mut best, mut history) = (0, f64::INFINITY, History::default());
    if let Some(r) = &resume {
        trainer
            .restore(r.path, &mut lm, &mut store, opt.as_mut())
            .map_err(|e| e.to_string())?;
        if let Some(lr) = lr_override {
            opt.set_lr(lr);
        }
        start_step = r.info.step;
        history = r.info.history.clone();
        if new_text_note.is_some() {
            trainer = trainer.forget_best();
        } else {
            best = r.info.best.unwrap_or(f64::INFINITY);
        }
    }
    let mut guard = if args.no_divergence_check {
        None
    } else {
        Some(
            DivergenceGuard::for_classes(corpus.vocab.len().max(2))
                .map_err(|e| e.to_string())?
                .with_best(best),
        )
    };
    // Rank 0 alone prints and writes files.
    let removed = if root {
        prepare_out(&args.out)?;
        recur::io::remove_stale_temporaries(&args.out).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let (quiet, json) = (args.quiet || !root, args.json && root);
    let [interrupt, terminate] = catch_signals()?;

    let chars_per_step = (args.batch * args.seq_len) as f64;
    let bar = if quiet || json || !std::io::stderr().is_terminal() {
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
    bar.set_position(start_step as u64);
    // Lines above the bar on a terminal; plain lines when stderr is redirected.
    let live = !(quiet || json) && std::io::stderr().is_terminal();
    let say = |msg: String| {
        if live {
            bar.println(msg);
        } else if !(quiet || json) {
            println!("{msg}");
        }
    };
    if !removed.is_empty() {
        say(format!(
            "removed {} temporary file(s) left in {} by an interrupted write",
            removed.len(),
            args.out.display()
        ));
    }
    if let Some(r) = &resume {
        say(format!(
            "resuming {} at step {} (model and optimizer settings from the checkpoint)",
            r.path.display(),
            start_step
        ));
    }
    if let Some(note) = new_text_note {
        say(note);
    }
    say(format!(
        "{} characters ({} distinct), {} for training, {} chunks per epoch; unigram entropy {:.3} nats = {:.3} bits per character",
        corpus.total_chars,
        corpus.vocab.len(),
        corpus.train_chars,
        chunks,
        corpus.unigram_nats,
        corpus.unigram_nats / std::f64::consts::LN_2
    ));

    // Everything the command line does around the library's loop happens in its events.
    let sampler = lm.clone();
    let sample_due = |step: usize| {
        step == total_steps || (args.sample_every > 0 && step.is_multiple_of(args.sample_every))
    };
    let mut interval_start = Instant::now();
    let mut last_val = history.val.last().map(|v| v.1);
    // The step the files in --out hold (a resumed run starts from its checkpoint's).
    let mut saved_at = resume.as_ref().map(|_| start_step);
    let mut signal = None;
    let mut failure: Option<String> = None;
    let (mut cps, mut steps_since) = (0.0, 0usize);
    let mut on_event = |e: &Event, store: &ParamStore<f32>| -> Result<Control, String> {
        if !root {
            // The other ranks only pass a signal on; rank 0's answers are everyone's.
            let asked = interrupt.load(Ordering::SeqCst) || terminate.load(Ordering::SeqCst);
            return Ok(if asked {
                Control::Stop
            } else {
                Control::Continue
            });
        }
        match *e {
            Event::Step { step, loss, .. } => {
                steps_since += 1;
                let secs = interval_start.elapsed().as_secs_f64();
                cps = chars_per_step * steps_since as f64 / secs.max(1e-9);
                bar.set_message(format!(
                    "epoch {} loss {:.3} val {} {:.0} char/s",
                    step / chunks + 1,
                    loss,
                    last_val.map_or("-".into(), |v| format!("{v:.3}")),
                    cps
                ));
                bar.set_position(step as u64);
                let eval_due = step.is_multiple_of(args.eval_every) || step == total_steps;
                if sample_due(step) && !eval_due {
                    write_sample(&args.out, &sampler, store, step, args.seed)?;
                }
                for (flag, which) in [
                    (&terminate, Signal::Terminate),
                    (&interrupt, Signal::Interrupt),
                ] {
                    if flag.load(Ordering::SeqCst) {
                        signal = Some(which);
                        return Ok(Control::Stop);
                    }
                }
            }
            Event::Eval {
                step,
                train_loss,
                val_loss,
                improved,
            } => {
                let val = val_loss.unwrap_or(f64::NAN);
                if let Some(guard) = guard.as_mut()
                    && let Err(d) = guard.check(val)
                {
                    let kept = match saved_at {
                        Some(s) => format!(
                            "the checkpoints in {} are those of step {s}",
                            args.out.display()
                        ),
                        None => "no checkpoint was written".into(),
                    };
                    return Err(format!(
                        "step {step}: the run is diverging: the validation {d}; stopped without \
                         saving this step ({kept}); try a smaller --lr, or --no-divergence-check"
                    ));
                }
                last_val = Some(val);
                history.train.push((step, train_loss));
                history.val.push((step, val));
                write_curves(&args.out, &history)?;
                let secs = interval_start.elapsed().as_secs_f64();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "step": step, "epoch": step as f64 / chunks as f64,
                            "train_loss": train_loss, "val_loss": val,
                            "val_bpc": val / std::f64::consts::LN_2,
                            "chars_per_sec": cps, "elapsed_s": secs,
                        })
                    );
                } else {
                    say(format!(
                        "step {:>6}  train {:.4}  val {:.4} nats = {:.3} bpc{}",
                        step,
                        train_loss,
                        val,
                        val / std::f64::consts::LN_2,
                        if improved { "  (best)" } else { "" }
                    ));
                }
                if sample_due(step) {
                    write_sample(&args.out, &sampler, store, step, args.seed)?;
                }
                interval_start = Instant::now();
                steps_since = 0;
            }
            Event::Checkpoint { step, .. } => saved_at = Some(step),
            Event::EarlyStop { .. } => {}
        }
        Ok(Control::Continue)
    };
    let trainer = trainer.on_event(|e, store| {
        on_event(e, store).unwrap_or_else(|msg| {
            failure = Some(msg);
            Control::Abort
        })
    });
    let summary = {
        let mut trainer = trainer;
        match parallel.as_mut() {
            Some(par) => trainer.fit_parallel(
                &mut lm,
                &mut store,
                opt.as_mut(),
                &mut corpus.train,
                Some(&mut corpus.val),
                par,
            ),
            None => trainer.fit(
                &mut lm,
                &mut store,
                opt.as_mut(),
                &mut corpus.train,
                Some(&mut corpus.val),
            ),
        }
    };
    bar.finish_and_clear();
    let summary = summary.map_err(|e| match e {
        recur::Error::NotFiniteStep {
            step,
            loss,
            grad_norm,
        } => format!(
            "step {step}: the loss or gradient is not finite (loss {loss}, gradient norm \
             {grad_norm}); try a smaller --lr or --clip"
        ),
        e => e.to_string(),
    })?;
    if let Some(msg) = failure {
        return Err(msg);
    }
    // Under mpirun another rank may have seen the signal first: the stop was agreed, and the
    // flags say which signal it was.
    let signal = signal.or_else(|| {
        if terminate.load(Ordering::SeqCst) {
            Some(Signal::Terminate)
        } else if interrupt.load(Ordering::SeqCst) {
            Some(Signal::Interrupt)
        } else {
            None
        }
    });
    if !root {
        return Ok(match signal {
            Some(s) if summary.ended == Ended::Stopped => ExitCode::from(s.status()),
            _ => ExitCode::SUCCESS,
        });
    }
    let timing = parallel.as_ref().map(|par| par.timing());
    if let (Some(par), Some(t)) = (&parallel, timing)
        && !quiet
        && !json
        && t.steps > 0
    {
        println!(
            "{} micro-batches on {} process(es): combining gradients ({:?}) took {:.3} ms per \
             step, waiting for the slowest process {:.3} ms",
            par.micro_batches(),
            ranks.size(),
            par.combining(),
            t.combine_ms_per_step(),
            t.wait_ms_per_step()
        );
    }
    if summary.ended == Ended::Stopped
        && let Some(signal) = signal
    {
        let last = args.out.join("last.safetensors");
        eprintln!(
            "interrupted at step {}: saved {}; continue with --resume {} ({}, exit status {})",
            summary.steps,
            last.display(),
            last.display(),
            signal.name(),
            signal.status(),
        );
        return Ok(ExitCode::from(signal.status()));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "done": true, "step": summary.steps, "best_val_loss": summary.best,
                "processes": ranks.size(),
                "combine_ms_per_step": timing.map(|t| t.combine_ms_per_step()),
                "wait_ms_per_step": timing.map(|t| t.wait_ms_per_step()),
            })
        );
    } else {
        println!(
            "done: step {}, best validation loss {:.4} nats = {:.3} bits per character (unigram entropy {:.3} bits); outputs in {}",
            summary.steps,
            summary.best,
            summary.best / std::f64::consts::LN_2,
            corpus.unigram_nats / std::f64::consts::LN_2,
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
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

/// Writes `sample_{step}.txt`: 400 characters after a random one, at temperature 0.8.
fn write_sample(
    out: &Path,
    lm: &CharLm<f32>,
    store: &ParamStore<f32>,
    step: usize,
    seed: u64,
) -> Result<(), String> {
    // Samples use their own generator, derived from the seed and step: they never disturb
    // training.
    let mut rng = Rng::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let vocab = lm.vocab();
    let prime = vocab
        .char(rng.below(vocab.len()))
        .map_err(|e| e.to_string())?;
    let text = lm
        .generate(store, &prime.to_string(), 400, 0.8, None, &mut rng)
        .map_err(|e| e.to_string())?;
    let path = out.join(format!("sample_{step:07}.txt"));
    recur::io::atomic_write(&path, format!("{prime}{text}\n").as_bytes()).map_err(|e| e.to_string())
}
