//! What `recur train` checks and prepares before its first step: the arguments, the text (a
//! regular file of bounded size), the memory the run will need, the output directory, and on
//! `--resume` the flags and text that must match the checkpoint.

use std::path::Path;

use recur::data::{CharVocab, DataSource, LmStreams, Take, TextStreams, split_validation};
use recur::models::{CharLmConfig, RunInfo};

use super::TrainArgs;

pub(super) fn check_args(a: &TrainArgs) -> Result<(), String> {
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
    for (name, p) in [
        ("--dropout", a.dropout),
        ("--recurrent-dropout", a.recurrent_dropout),
        ("--weight-drop", a.weight_drop),
        ("--zoneout", a.zoneout),
    ] {
        if !(0.0..1.0).contains(&p) {
            return Err(format!("{name} must be in [0, 1), got {p}"));
        }
    }
    if a.proj > 0 && (a.cell.name() != "lstm" || a.proj >= a.hidden) {
        return Err(format!(
            "--proj {} needs --cell lstm and must be below --hidden ({})",
            a.proj, a.hidden
        ));
    }
    if a.proj > 0 {
        for (name, p) in [
            ("--recurrent-dropout", a.recurrent_dropout),
            ("--zoneout", a.zoneout),
        ] {
            if p > 0.0 {
                return Err(format!(
                    "{name} is not supported with --proj (--weight-drop is)"
                ));
            }
        }
    }
    if a.layer_norm {
        if !matches!(a.cell.name(), "lstm" | "gru") {
            return Err(format!(
                "--layer-norm needs --cell lstm or gru, not {}",
                a.cell.name()
            ));
        }
        for (name, on) in [
            ("--proj", a.proj > 0),
            ("--recurrent-dropout", a.recurrent_dropout > 0.0),
            ("--weight-drop", a.weight_drop > 0.0),
            ("--zoneout", a.zoneout > 0.0),
        ] {
            if on {
                return Err(format!("--layer-norm is not supported with {name}"));
            }
        }
    }
    if !(a.val_fraction > 0.0 && a.val_fraction < 0.5) {
        return Err(format!(
            "--val-fraction must be in (0, 0.5), got {}",
            a.val_fraction
        ));
    }
    Ok(())
}

/// The largest `--text` read, in bytes (1 GiB): the corpus is held in memory as 8-byte ids,
/// twice over.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Reads the text file: it must be a regular file (not a device, FIFO or directory) of at most
/// [`MAX_TEXT_BYTES`], be UTF-8, not look binary, and not be empty.
pub fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!(
            "cannot read {}: not a regular file (a directory, device or pipe)",
            path.display()
        ));
    }
    if meta.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "{} is too large: {} bytes, at most {MAX_TEXT_BYTES} (1 GiB) are read",
            path.display(),
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while it is read stops at the limit too.
    file.take(MAX_TEXT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_TEXT_BYTES {
        return Err(format!(
            "{} is too large: more than {MAX_TEXT_BYTES} bytes (1 GiB)",
            path.display()
        ));
    }
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

/// The fingerprint of a training text recorded in checkpoints.
pub(super) fn text_fingerprint(text: &str) -> String {
    format!(
        "fnv1a64:{:016x}",
        recur::io::checksum::fingerprint(text.as_bytes())
    )
}

/// An upper bound of the peak memory of training `config` with `batch` x `seq_len` chunks on a
/// text of `text_bytes` bytes and `chars` characters (see [`crate::memory`]): parameters,
/// gradients, two optimizer buffers, the packed recurrent weights and the checkpoint being
/// written, copied while it is serialised (about 14 copies of the parameters in f32, measured;
/// 18 counted); the tape of one step (embeddings, per layer the gate activations, cell
/// and hidden states, the dropout mask and the regularizers' masks, the logits, their softmax and gradient; forward and
/// backward); the text and its ids (8 bytes per character, twice).
pub(crate) fn estimate_bytes(
    config: &CharLmConfig,
    batch: usize,
    seq_len: usize,
    text_bytes: usize,
    chars: usize,
) -> u64 {
    let Some(params) = config.param_count() else {
        return u64::MAX;
    };
    let g = config.kind().map_or(4, |k| k.gates()) as f64;
    let (h, l, e) = (
        config.hidden as f64,
        config.layers as f64,
        config.embed as f64,
    );
    let v = config.vocab.chars().count() as f64;
    // The regularizers' masks and kept states: zoneout's keep weights of h and c (and a copy
    // of each in the reference's form), recurrent dropout's masked states.
    let reg = if config.zoneout > 0.0 { 4.0 * h } else { 0.0 }
        + if config.recurrent_dropout > 0.0 {
            h
        } else {
            0.0
        };
    // Layer normalization: both sides' normalized rows and their gradients, and the LSTM's
    // c_t, LN(c_t) and tanh(LN(c_t)).
    let ln = if config.layer_norm {
        4.0 * g * h + 3.0 * h
    } else {
        0.0
    };
    let per_position = e + l * (2.0 * g * h + 5.0 * h + reg + ln) + 3.0 * v;
    let tape = (batch * seq_len) as f64 * per_position * 4.0 * 2.0;
    let weights = params as f64 * 4.0 * 18.0;
    let text = text_bytes as f64 + chars as f64 * 8.0 * 2.2;
    crate::memory::BASE + crate::memory::bytes(tape + weights + text)
}

/// The most validation chunks read at each validation.
const MAX_VAL_CHUNKS: usize = 64;

/// The corpus, cut for training and validation.
pub(super) struct Corpus {
    pub(super) vocab: CharVocab,
    pub(super) train: LmStreams,
    /// Up to [`MAX_VAL_CHUNKS`] chunks of the held-out text, read from a zero state.
    pub(super) val: Take<LmStreams>,
    pub(super) unigram_nats: f64,
    pub(super) train_chars: usize,
    pub(super) total_chars: usize,
}

pub(super) fn load_corpus(
    args: &TrainArgs,
    text: &str,
    vocab: Option<CharVocab>,
) -> Result<Corpus, String> {
    let vocab = match vocab {
        Some(v) => v,
        None => CharVocab::from_text(text).map_err(|e| e.to_string())?,
    };
    let ids = vocab.encode(text).map_err(|e| {
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
        train: train_streams.into(),
        val: LmStreams::from(val_streams).take(MAX_VAL_CHUNKS),
    })
}

/// What `recur train` records in its checkpoints besides the model and the trainer's state.
pub(super) struct RunMeta {
    pub(super) batch: usize,
    pub(super) seq_len: usize,
    pub(super) clip: f64,
    /// `None` in checkpoints written before it was recorded.
    pub(super) text_fingerprint: Option<String>,
}

impl RunMeta {
    /// The metadata of the checkpoint `path`, whose run is `info`.
    pub(super) fn read(info: &RunInfo, path: &Path) -> Result<Self, String> {
        let get = |key: &str| {
            info.meta.get(key).ok_or_else(|| {
                format!(
                    "checkpoint {}: not a `recur train` checkpoint (no `{key}`)",
                    path.display()
                )
            })
        };
        let count = |key: &str| {
            get(key)?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| format!("checkpoint {}: `{key}` is not a count", path.display()))
        };
        Ok(RunMeta {
            batch: count("batch")?,
            seq_len: count("seq_len")?,
            clip: get("clip")?
                .as_f64()
                .ok_or_else(|| format!("checkpoint {}: `clip` is not a number", path.display()))?,
            text_fingerprint: info
                .meta
                .get("text_fingerprint")
                .and_then(|v| v.as_str())
                .map(String::from),
        })
    }
}

/// The flags of a resumed run that differ from its checkpoint (model `m`, run `info`, metadata
/// `meta`), one description each. `lr` and `clip` are returned to be applied instead when
/// `--override` is given; `batch` and `seq-len` must always match; the others are compared only
/// when given on the command line.
pub(super) fn resume_conflicts(
    args: &TrainArgs,
    m: &CharLmConfig,
    info: &RunInfo,
    meta: &RunMeta,
) -> (Vec<String>, Option<f64>, Option<f64>) {
    use clap::ValueEnum;
    let given = |id: &str| args.explicit.iter().any(|e| e == id);
    let mut conflicts = Vec::new();
    let mut differ = |flag: &str, wanted: String, stored: String, note: &str| {
        conflicts.push(format!("{flag} {wanted} (checkpoint: {stored}{note})"));
    };
    if given("cell") && args.cell.name() != m.cell {
        differ("--cell", args.cell.name().into(), m.cell.clone(), "");
    }
    for (id, wanted, stored) in [
        ("hidden", args.hidden, m.hidden),
        ("layers", args.layers, m.layers),
        ("embed", args.embed, m.embed),
    ] {
        if given(id) && wanted != stored {
            differ(
                &format!("--{id}"),
                wanted.to_string(),
                stored.to_string(),
                "",
            );
        }
    }
    for (id, wanted, stored) in [
        ("dropout", args.dropout, m.dropout),
        (
            "recurrent-dropout",
            args.recurrent_dropout,
            m.recurrent_dropout,
        ),
        ("weight-drop", args.weight_drop, m.weight_drop),
        ("zoneout", args.zoneout, m.zoneout),
    ] {
        if given(&id.replace('-', "_")) && wanted != stored {
            differ(
                &format!("--{id}"),
                wanted.to_string(),
                stored.to_string(),
                "",
            );
        }
    }
    if given("proj") && args.proj != m.proj {
        differ("--proj", args.proj.to_string(), m.proj.to_string(), "");
    }
    if given("layer_norm") && args.layer_norm != m.layer_norm {
        differ(
            "--layer-norm",
            args.layer_norm.to_string(),
            m.layer_norm.to_string(),
            "",
        );
    }
    let opt_name = args
        .optimizer
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    if given("optimizer") && opt_name != info.optimizer {
        differ("--optimizer", opt_name, info.optimizer.clone(), "");
    }
    for (flag, given_value, saved) in [
        ("--batch", args.batch, meta.batch),
        ("--seq-len", args.seq_len, meta.seq_len),
    ] {
        if saved != given_value {
            differ(flag, given_value.to_string(), saved.to_string(), "");
        }
    }
    let (mut lr, mut clip) = (None, None);
    let note = "; --override uses the new value";
    let stored_lr = info.lr.unwrap_or(f64::NAN);
    if given("lr") && args.lr != stored_lr {
        if args.override_ {
            lr = Some(args.lr);
        } else {
            differ("--lr", args.lr.to_string(), stored_lr.to_string(), note);
        }
    }
    if given("clip") && args.clip != meta.clip {
        if args.override_ {
            clip = Some(args.clip);
        } else {
            differ("--clip", args.clip.to_string(), meta.clip.to_string(), note);
        }
    }
    (conflicts, lr, clip)
}

/// Creates `out` and checks that files can be written into it, before the first step.
pub(super) fn prepare_out(out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let probe = out.join(format!(".recur-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write into {}: {e}", out.display()))
}
