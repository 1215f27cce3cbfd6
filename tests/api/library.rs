//! The library layer: composition of layers into models with PyTorch's nested names (checked
//! against models saved from PyTorch, `tests/fixtures/gen_library.py`), the ready-made models,
//! tape-free prediction, the data pipelines and the training loop (resume, early stopping).

use std::path::{Path, PathBuf};

use crate::common::temp_dir;
use recur::data::{
    CharVocab, DataSource, LmStreams, SeqBatch, SeqDataset, read_labelled, split_validation,
};
use recur::io::Archive;
use recur::models::{
    CharLm, CharLmConfig, Control, DenseDataset, Ended, Event, Objective, Pooling, RunInfo,
    SequenceClassifier, SequenceClassifierConfig, SequenceRegressor, SequenceRegressorConfig,
    Trainer, TrainerConfig,
};
use recur::nn::{
    CarriedState, CellConfig, CellKind, Ctx, Embedding, GruCell, Linear, Lstm, Module, Recurrent,
    RecurrentConfig, load_state_dict_file, named_children, save_state_dict, scope, state_dict,
};
use recur::optim::{Adam, AdamConfig, Sgd, SgdConfig};
use recur::{ParamId, ParamStore, Result, Rng, Tape, Tensor, Var};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/library")
        .join(name)
}

/// The fixture's inputs: ids `[T, B]`, lengths, and the expected logits `[B, C]`.
fn fixture_io(name: &str) -> (Vec<usize>, Vec<usize>, Tensor<f64>) {
    let a = Archive::read(&fixture(name)).unwrap();
    let ints = |n: &str| -> Vec<usize> {
        a.get(n)
            .unwrap()
            .to_i64(n)
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect()
    };
    (
        ints("ids"),
        ints("lengths"),
        a.tensor::<f64>("logits").unwrap(),
    )
}

/// PyTorch's `Encoder(embed=Embedding, rnn=LSTM 2 layers bidirectional)`.
struct Encoder {
    embed: Embedding,
    rnn: Lstm,
}

/// PyTorch's `Nested(encoder=Encoder, head=Linear)`.
struct Nested {
    encoder: Encoder,
    head: Linear,
}

impl Encoder {
    fn new(ps: &mut ParamStore<f64>, prefix: &str, rng: &mut Rng) -> Result<Self> {
        let cfg = RecurrentConfig::new(5, 4).num_layers(2).bidirectional(true);
        Ok(Encoder {
            embed: Embedding::new(ps, &scope(prefix, "embed")?, 11, 5, rng)?,
            rnn: Lstm::new(ps, &scope(prefix, "rnn")?, cfg, rng)?,
        })
    }

    /// `[h_n[-2], h_n[-1]]`: both directions' last real states of the last layer.
    fn forward(&self, cx: &mut Ctx<'_, f64>, ids: &[usize], lengths: &[usize]) -> Result<Var> {
        let t = ids.len() / lengths.len();
        let x = cx.embed(&self.embed, ids, &[t, lengths.len()])?;
        let out = cx.recurrent(&self.rnn, x, Some(lengths))?;
        let fwd = cx.tape.select(out.h_n, 2)?;
        let bwd = cx.tape.select(out.h_n, 3)?;
        cx.tape.concat(&[fwd, bwd])
    }
}

impl Module for Encoder {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        named_children(&[("embed", &self.embed), ("rnn", &self.rnn)])
    }
}

impl Nested {
    fn new(ps: &mut ParamStore<f64>, rng: &mut Rng) -> Result<Self> {
        Ok(Nested {
            encoder: Encoder::new(ps, "encoder.", rng)?,
            head: Linear::new(ps, "head.", 8, 3, true, rng)?,
        })
    }

    fn forward(&self, cx: &mut Ctx<'_, f64>, ids: &[usize], lengths: &[usize]) -> Result<Var> {
        let h = self.encoder.forward(cx, ids, lengths)?;
        cx.linear(&self.head, h)
    }
}

impl Module for Nested {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        named_children(&[("encoder", &self.encoder), ("head", &self.head)])
    }
}

#[test]
fn nested_state_dict_names_match_a_model_saved_from_pytorch() {
    let mut ps = ParamStore::<f64>::new();
    let model = Nested::new(&mut ps, &mut Rng::new(5)).unwrap();
    let path = fixture("nested_lstm_f64.safetensors");
    // Strict: every name of the file is a parameter of the model and the other way round.
    load_state_dict_file(&model, &mut ps, &path, "", true).unwrap();
    let mut ours: Vec<String> = model.named_params().into_iter().map(|(n, _)| n).collect();
    let mut theirs: Vec<String> = Archive::read(&path)
        .unwrap()
        .tensors
        .keys()
        .cloned()
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    assert!(ours.contains(&"encoder.rnn.weight_hh_l1_reverse".to_string()));
    // The store holds the same names, registered through `scope`.
    for (name, id) in model.named_params() {
        assert_eq!(ps.name(id), name);
    }

    // The loaded model computes PyTorch's logits (lengths unsorted, packed in PyTorch).
    let (ids, lengths, want) = fixture_io("nested_lstm_f64_io.safetensors");
    let mut tape = Tape::new();
    let logits = model
        .forward(&mut Ctx::eval(&mut tape, &ps), &ids, &lengths)
        .unwrap();
    let err = tape.value(logits).unwrap().max_abs_diff(&want).unwrap();
    assert!(err < 1e-12, "max abs error {err}");

    // Saved back, the file has PyTorch's names and values.
    let dir = temp_dir("library-nested");
    let out = dir.join("nested.safetensors");
    save_state_dict(&model, &ps, &out, "", &Default::default()).unwrap();
    let again = Archive::read(&out).unwrap();
    let orig = Archive::read(&path).unwrap();
    for (k, v) in &orig.tensors {
        let a = v.to_tensor::<f64>(k).unwrap();
        assert_eq!(again.tensor::<f64>(k).unwrap(), a, "{k}");
    }
    assert_eq!(again.tensors.len(), orig.tensors.len());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn classifier_matches_pytorch_and_predicts_without_a_tape() {
    let mut ps = ParamStore::<f64>::new();
    let cfg = SequenceClassifierConfig::tokens(11, 5, 4, 3).pooling(Pooling::Mean);
    let model = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(1)).unwrap();
    let path = fixture("classifier_gru_f64.safetensors");
    load_state_dict_file(&model, &mut ps, &path, "", true).unwrap();
    let (ids, lengths, want) = fixture_io("classifier_gru_f64_io.safetensors");
    let t = ids.len() / lengths.len();
    let mut tape = Tape::new();
    let logits = model
        .forward(&mut Ctx::eval(&mut tape, &ps), &ids, t, &lengths)
        .unwrap();
    let err = tape.value(logits).unwrap().max_abs_diff(&want).unwrap();
    assert!(err < 1e-12, "tape: max abs error {err}");
    let p = model.predict(&ps, &ids, t, &lengths).unwrap();
    let err = p.max_abs_diff(&want).unwrap();
    assert!(err < 1e-12, "predict: max abs error {err}");
}

#[test]
fn predict_steps_shards_of_a_large_batch_alike_on_any_number_of_threads() {
    // 70 rows: shards of 32, 32 and 6 rows, stepped on separate threads where there are two.
    let mut rng = Rng::new(5);
    let lengths: Vec<usize> = (0..70).map(|_| 1 + rng.below(9)).collect();
    let t = 9;
    let ids: Vec<usize> = (0..t * lengths.len()).map(|_| rng.below(9)).collect();
    for cell in ["lstm", "gru"] {
        let cfg = SequenceClassifierConfig::tokens(9, 6, 5, 4)
            .cell(cell)
            .layers(2)
            .bidirectional(true);
        let mut ps = ParamStore::<f64>::new();
        let m = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(7)).unwrap();
        let one = recur::with_threads(1, || m.predict(&ps, &ids, t, &lengths).unwrap()).unwrap();
        let two = recur::with_threads(2, || m.predict(&ps, &ids, t, &lengths).unwrap()).unwrap();
        assert_eq!(
            one.data(),
            two.data(),
            "{cell}: the thread count changed a value"
        );
        let mut tape = Tape::new();
        let logits = m
            .forward(&mut Ctx::eval(&mut tape, &ps), &ids, t, &lengths)
            .unwrap();
        let err = one.max_abs_diff(tape.value(logits).unwrap()).unwrap();
        assert!(err < 1e-12, "{cell}: {err}");
    }
}

#[test]
fn predict_equals_the_tape_for_every_cell_and_pooling() {
    let lengths = [4, 7, 1, 5, 7];
    let t = 7;
    let mut rng = Rng::new(3);
    let ids: Vec<usize> = (0..t * lengths.len()).map(|_| rng.below(9)).collect();
    for cell in ["rnn", "rnn_relu", "lstm", "gru"] {
        for (layers, bidir, pooling) in [
            (1, false, Pooling::Last),
            (2, true, Pooling::Last),
            (3, true, Pooling::Mean),
        ] {
            let cfg = SequenceClassifierConfig::tokens(9, 6, 5, 4)
                .cell(cell)
                .layers(layers)
                .bidirectional(bidir)
                .pooling(pooling)
                .dropout(0.3);
            let mut ps = ParamStore::<f64>::new();
            let m = SequenceClassifier::new(&mut ps, "clf.", cfg, &mut Rng::new(7)).unwrap();
            let mut tape = Tape::new();
            let logits = m
                .forward(&mut Ctx::eval(&mut tape, &ps), &ids, t, &lengths)
                .unwrap();
            let p = m.predict(&ps, &ids, t, &lengths).unwrap();
            let err = p.max_abs_diff(tape.value(logits).unwrap()).unwrap();
            assert!(err < 1e-12, "{cell} {layers} {bidir} {pooling:?}: {err}");
            // Training mode draws dropout masks: other logits.
            let mut rng = Rng::new(1);
            let tr = m
                .forward(&mut Ctx::train(&mut tape, &ps, &mut rng), &ids, t, &lengths)
                .unwrap();
            if layers > 1 {
                let d = tape.value(tr).unwrap().max_abs_diff(&p).unwrap();
                assert!(d > 1e-6, "{cell}: dropout had no effect");
            }
        }
    }
    // Bad lengths are errors, not panics.
    let mut ps = ParamStore::<f32>::new();
    let cfg = SequenceClassifierConfig::tokens(9, 6, 5, 4);
    let m = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(7)).unwrap();
    assert!(m.predict(&ps, &[1, 2, 3, 4], 2, &[3, 1]).is_err());
    assert!(m.predict(&ps, &[1, 2, 3, 4], 2, &[0, 1]).is_err());
    assert!(m.predict(&ps, &[1, 2, 3], 2, &[1, 1]).is_err());
    assert!(m.predict(&ps, &[1, 2, 3, 40], 2, &[2, 2]).is_err());
}

#[test]
fn malformed_prefixes_are_errors_not_renames() {
    let mut ps = ParamStore::<f32>::new();
    let mut rng = Rng::new(0);
    let e = Embedding::new(&mut ps, "embed", 4, 2, &mut rng).unwrap_err();
    assert!(e.to_string().contains("embedweight"), "{e}");
    assert!(Linear::new(&mut ps, "head", 2, 2, true, &mut rng).is_err());
    assert!(Linear::new(&mut ps, "a..", 2, 2, true, &mut rng).is_err());
    let cfg = RecurrentConfig::new(2, 3);
    assert!(Lstm::new(&mut ps, "rnn", cfg.clone(), &mut rng).is_err());
    assert!(Recurrent::new(&mut ps, "rnn", CellKind::Gru, cfg, &mut rng).is_err());
    assert!(GruCell::new(&mut ps, "cell", CellConfig::new(2, 3), &mut rng).is_err());
    assert!(ps.is_empty(), "nothing registered on error");
    assert!(scope("encoder", "rnn").is_err());
    let lin = Linear::new(&mut ps, "head.", 2, 2, true, &mut rng).unwrap();
    assert!(state_dict(&lin, &ps, "model").is_err());
    assert_eq!(
        state_dict(&lin, &ps, "model.").unwrap()[0].0,
        "model.weight"
    );
    // A child with an empty name gives `.weight`: refused when the names are used.
    struct Bad(Linear);
    impl Module for Bad {
        fn named_params(&self) -> Vec<(String, ParamId)> {
            named_children(&[("", &self.0)])
        }
    }
    assert!(state_dict(&Bad(lin), &ps, "").is_err());
}

/// A classifier with dropout on a learnable toy task, for the trainer's tests.
fn toy(seed: u64) -> (ParamStore<f64>, SequenceClassifier, SeqDataset, SeqDataset) {
    let mut rng = Rng::new(seed);
    let make = |rng: &mut Rng, n: usize| {
        let seqs: Vec<Vec<usize>> = (0..n)
            .map(|_| (0..1 + rng.below(6)).map(|_| 1 + rng.below(4)).collect())
            .collect();
        let targets = seqs.iter().map(|s| usize::from(s.contains(&4))).collect();
        (seqs, targets)
    };
    let (s, t) = make(&mut rng, 96);
    let train = SeqDataset::new(s, t, 16)
        .unwrap()
        .with_plan(|p| p.shuffle(9).bucket(2));
    let (s, t) = make(&mut rng, 32);
    let valid = SeqDataset::new(s, t, 16).unwrap();
    let mut ps = ParamStore::new();
    let cfg = SequenceClassifierConfig::tokens(5, 4, 6, 2)
        .cell("lstm")
        .layers(2)
        .dropout(0.2);
    let model = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(seed)).unwrap();
    (ps, model, train, valid)
}

#[test]
fn trainer_resume_is_bit_identical_to_an_uninterrupted_run() {
    let dir = temp_dir("library-resume");
    let run = |steps: usize, out: &Path, resume: Option<PathBuf>| {
        let (mut ps, mut model, mut train, mut valid) = toy(4);
        let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
        let mut t = Trainer::new(
            TrainerConfig::steps(steps)
                .clip(0.5)
                .eval_every(5)
                .out_dir(out)
                .seed(11),
        )
        .schedule(recur::optim::StepLr::new(0.01, 7, 0.5).unwrap());
        if let Some(p) = resume {
            t = t.resume_from(p);
        }
        let s = t
            .fit(&mut model, &mut ps, &mut opt, &mut train, Some(&mut valid))
            .unwrap();
        (ps, s)
    };
    let (a, sa) = run(17, &dir.join("a"), None);
    let _ = run(10, &dir.join("b"), None);
    let (b, sb) = run(17, &dir.join("b"), Some(dir.join("b/last.safetensors")));
    assert_eq!(sa, sb);
    assert_eq!(sa.steps, 17);
    for ((_, na, ta), (_, nb, tb)) in a.iter().zip(b.iter()) {
        assert_eq!(na, nb);
        assert_eq!(ta.data(), tb.data(), "{na} differs after resume");
    }
    // Best and last checkpoints exist; another model's checkpoint is refused.
    assert!(dir.join("a/best.safetensors").exists());
    let mut ps = ParamStore::<f64>::new();
    let cfg = SequenceClassifierConfig::tokens(5, 4, 7, 2);
    let mut other = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(0)).unwrap();
    let (_, _, mut train, _) = toy(4);
    let err = Trainer::new(TrainerConfig::steps(20))
        .resume_from(dir.join("a/last.safetensors"))
        .fit(
            &mut other,
            &mut ps,
            &mut Adam::new(AdamConfig::default()).unwrap(),
            &mut train,
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("model differs"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn trainer_stops_early_and_reports_events() {
    let (mut ps, mut model, mut train, mut valid) = toy(2);
    // A zero learning rate never improves on the first validation.
    let mut opt = Sgd::new(SgdConfig::default().lr(0.0)).unwrap();
    let mut events = Vec::new();
    let s = Trainer::new(TrainerConfig::epochs(50).eval_every(3).patience(2))
        .on_event(|e, _| {
            events.push(e.clone());
            Control::Continue
        })
        .fit(&mut model, &mut ps, &mut opt, &mut train, Some(&mut valid))
        .unwrap();
    assert_eq!(s.ended, Ended::EarlyStopped);
    assert_eq!(
        s.steps, 9,
        "evaluations at 3 (best), 6 and 9 (two without improvement)"
    );
    let steps = events
        .iter()
        .filter(|e| matches!(e, Event::Step { .. }))
        .count();
    let evals: Vec<bool> = events
        .iter()
        .filter_map(|e| match e {
            Event::Eval { improved, .. } => Some(*improved),
            _ => None,
        })
        .collect();
    assert_eq!((steps, evals), (9, vec![true, false, false]));
    assert!(matches!(events.last(), Some(Event::EarlyStop { step: 9 })));

    // The model sees every validation with the parameters.
    struct Watch(SequenceClassifier, Vec<(usize, bool)>);
    impl Objective<f64> for Watch {
        type Batch = SeqBatch;
        fn loss(&mut self, cx: &mut Ctx<'_, f64>, b: &SeqBatch) -> Result<Var> {
            self.0.loss(cx, b)
        }
        fn on_eval(
            &mut self,
            store: &ParamStore<f64>,
            step: usize,
            val: Option<f64>,
        ) -> Result<()> {
            let b = SeqDataset::new(vec![vec![1, 4]], vec![1], 1)?.gather(&[0])?;
            self.0.classify(store, &b)?;
            self.1.push((step, val.is_some()));
            Ok(())
        }
    }
    let (mut ps, model, mut train, mut valid) = toy(2);
    let mut watch = Watch(model, Vec::new());
    Trainer::new(TrainerConfig::steps(7).eval_every(3))
        .fit(&mut watch, &mut ps, &mut opt, &mut train, Some(&mut valid))
        .unwrap();
    assert_eq!(watch.1, [(3, true), (6, true), (7, true)]);

    // A callback can stop training.
    let (mut ps, mut model, mut train, _) = toy(2);
    let s = Trainer::new(TrainerConfig::steps(100))
        .on_event(|e, _| match e {
            Event::Step { step: 4, .. } => Control::Stop,
            _ => Control::Continue,
        })
        .fit(&mut model, &mut ps, &mut opt, &mut train, None)
        .unwrap();
    assert_eq!(s.steps, 4);
    // Bad settings are errors.
    let (mut ps, mut model, mut train, _) = toy(2);
    for cfg in [TrainerConfig::steps(0), TrainerConfig::steps(5).clip(-1.0)] {
        assert!(
            Trainer::new(cfg)
                .fit(&mut model, &mut ps, &mut opt, &mut train, None)
                .is_err()
        );
    }
}

#[test]
fn trainer_learns_the_toy_task_in_f64() {
    let (mut ps, mut model, mut train, mut valid) = toy(6);
    let mut opt = Adam::new(AdamConfig::default().lr(0.02)).unwrap();
    let s = Trainer::new(TrainerConfig::epochs(40).clip(1.0))
        .fit(&mut model, &mut ps, &mut opt, &mut train, Some(&mut valid))
        .unwrap();
    let all: Vec<usize> = (0..valid.len()).collect();
    let b: SeqBatch = valid.gather(&all).unwrap();
    let acc = recur::tensor::accuracy(&model.classify(&ps, &b).unwrap(), &b.targets).unwrap();
    assert!(
        acc > 0.9 && s.best < 0.3,
        "accuracy {acc}, best validation loss {}",
        s.best
    );
}

#[test]
fn regressor_beats_the_last_value_baseline_on_a_sine() {
    // Next-value prediction of sin(0.3 t + phase), series of different lengths.
    let mut rng = Rng::new(1);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..32 {
        let (phase, len) = (rng.uniform() * 6.0, 10 + rng.below(15));
        let s: Vec<f32> = (0..=len)
            .map(|t| (0.3 * t as f64 + phase).sin() as f32)
            .collect();
        xs.push(s[..len].to_vec());
        ys.push(s[1..].to_vec());
    }
    let baseline: f64 = xs
        .iter()
        .zip(&ys)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)))
        .sum::<f64>()
        / xs.iter().map(Vec::len).sum::<usize>() as f64;
    let mut data = DenseDataset::new(xs, ys, 1, 1, 8).unwrap();
    let mut ps = ParamStore::<f32>::new();
    let cfg = SequenceRegressorConfig::new(1, 16, 1).cell("gru");
    let mut model = SequenceRegressor::new(&mut ps, "", cfg, &mut Rng::new(0)).unwrap();
    let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
    Trainer::new(TrainerConfig::epochs(60))
        .fit(&mut model, &mut ps, &mut opt, &mut data, None)
        .unwrap();
    let mut tape = Tape::new();
    let mut total = 0.0;
    for k in 0..data.batches_per_epoch() {
        let b = data.batch(0, k).unwrap();
        tape.clear();
        let l = model.loss(&mut Ctx::eval(&mut tape, &ps), &b).unwrap();
        total += tape.value(l).unwrap().data()[0] as f64;
    }
    let mse = total / data.batches_per_epoch() as f64;
    assert!(
        mse < baseline / 4.0,
        "mse {mse} against the last-value baseline {baseline}"
    );
}

#[test]
fn lm_streams_with_carried_state_continue_the_whole_sequence() {
    let ids: Vec<usize> = (0..81).map(|i| (i * 7) % 5).collect();
    let mut streams = LmStreams::new(&ids, 2, 5).unwrap(); // 2 streams of 40, chunks of 5
    let mut ps = ParamStore::<f64>::new();
    let emb = Embedding::new(&mut ps, "embed.", 5, 3, &mut Rng::new(0)).unwrap();
    let lstm = Lstm::new(
        &mut ps,
        "rnn.",
        RecurrentConfig::new(3, 4),
        &mut Rng::new(1),
    )
    .unwrap();
    let mut tape = Tape::new();
    let mut carry = CarriedState::new();
    let chunks = streams.batches_per_epoch();
    assert_eq!(chunks, 7);
    for k in 0..chunks {
        let c = streams.batch(0, k).unwrap();
        assert_eq!(c.reset, k == 0);
        if c.reset {
            carry.reset();
        }
        tape.clear();
        let mut cx = Ctx::eval(&mut tape, &ps);
        let x = cx.embed(&emb, &c.x, &[c.t_len, c.batch]).unwrap();
        cx.recurrent_carry(&lstm, x, &mut carry).unwrap();
    }
    // The same 35 steps of each stream in one pass.
    let whole: Vec<usize> = (0..35).flat_map(|t| [ids[t], ids[40 + t]]).collect();
    tape.clear();
    let mut cx = Ctx::eval(&mut tape, &ps);
    let x = cx.embed(&emb, &whole, &[35, 2]).unwrap();
    let out = cx.recurrent(&lstm, x, None).unwrap();
    let want = tape.value(out.h_n).unwrap();
    assert!(carry.h().unwrap().max_abs_diff(want).unwrap() < 1e-13);
}

#[test]
fn labelled_files_read_and_report_bad_lines() {
    let dir = temp_dir("library-tsv");
    let good = dir.join("good.tsv");
    std::fs::write(&good, "en\tword\nfr\tmot\n\n").unwrap();
    let ex = read_labelled(&good).unwrap();
    assert_eq!(ex.len(), 2);
    let bad = dir.join("bad.tsv");
    std::fs::write(&bad, "en\tword\nfr mot\n").unwrap();
    let e = read_labelled(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.tsv") && e.contains("line 2"), "{e}");
    let empty = dir.join("empty.tsv");
    std::fs::write(&empty, "\n").unwrap();
    assert!(read_labelled(&empty).is_err());
    std::fs::write(&bad, [0xff, 0xfe]).unwrap();
    assert!(
        read_labelled(&bad)
            .unwrap_err()
            .to_string()
            .contains("UTF-8")
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn lm(
    cell: &str,
    layers: usize,
    dropout: f64,
) -> (ParamStore<f64>, CharLm<f64>, LmStreams, LmStreams) {
    let text = "the cat sat on the mat. the dog sat on the log. ".repeat(12);
    let vocab = CharVocab::from_text(&text).unwrap();
    let ids = vocab.encode(&text).unwrap();
    let (train, val) = split_validation(&ids, 0.2, 21).unwrap();
    let chars: String = vocab.chars().iter().collect();
    let cfg = CharLmConfig {
        dropout,
        ..CharLmConfig::new(cell, 12, layers, 6, &chars)
    };
    let mut ps = ParamStore::new();
    let model = CharLm::new(&mut ps, cfg, &mut Rng::new(3)).unwrap();
    let train = LmStreams::new(train, 8, 10).unwrap();
    let val = LmStreams::new(val, 2, 10).unwrap();
    (ps, model, train, val)
}

#[test]
fn char_lm_resume_is_bit_identical_with_the_carried_state() {
    let dir = temp_dir("library-lm-resume");
    let run = |steps: usize, out: &Path, resume: bool| {
        let (mut ps, mut model, mut train, mut val) = lm("lstm", 2, 0.1);
        let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
        let mut t = Trainer::new(
            TrainerConfig::steps(steps)
                .clip(1.0)
                .eval_every(4)
                .out_dir(out),
        );
        if resume {
            t = t.resume_from(out.join("last.safetensors"));
        }
        let s = t
            .fit(&mut model, &mut ps, &mut opt, &mut train, Some(&mut val))
            .unwrap();
        (ps, model.carried().clone(), s)
    };
    assert!(
        lm("lstm", 2, 0.1).2.batches_per_epoch() < 11,
        "the run crosses an epoch"
    );
    let (a, carry_a, sa) = run(14, &dir.join("a"), false);
    run(8, &dir.join("b"), false);
    let (b, carry_b, sb) = run(14, &dir.join("b"), true);
    assert_eq!(sa, sb);
    assert_eq!(carry_a, carry_b);
    for ((_, na, ta), (_, _, tb)) in a.iter().zip(b.iter()) {
        assert_eq!(ta.data(), tb.data(), "{na} differs after resume");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn char_lm_generates_without_a_tape_what_the_tape_predicts() {
    for cell in ["lstm", "gru", "rnn"] {
        let (mut ps, mut model, mut train, _) = lm(cell, 2, 0.0);
        let mut opt = Adam::new(AdamConfig::default().lr(0.02)).unwrap();
        Trainer::new(TrainerConfig::epochs(3))
            .fit(&mut model, &mut ps, &mut opt, &mut train, None)
            .unwrap();
        let got = model
            .generate(&ps, "the ", 30, 0.0, None, &mut Rng::new(0))
            .unwrap();
        // Greedy decoding on the tape, one character at a time with the state carried.
        let vocab = model.vocab().clone();
        let mut ids = vocab.encode("the ").unwrap();
        model.carried().reset();
        let mut tape = Tape::new();
        let mut want = String::new();
        let mut feed = ids.clone();
        for _ in 0..30 {
            tape.clear();
            let n = feed.len();
            let logits = model
                .logits(&mut Ctx::eval(&mut tape, &ps), &feed, n, 1)
                .unwrap();
            let last = tape.value(logits).unwrap().argmax_rows().unwrap()[n - 1];
            want.push(vocab.char(last).unwrap());
            ids.push(last);
            feed = vec![last];
        }
        assert_eq!(got, want, "{cell}");
        // top-k 1 is greedy at any temperature; bad arguments are errors.
        let k1 = model
            .generate(&ps, "the ", 30, 1.5, Some(1), &mut Rng::new(5))
            .unwrap();
        assert_eq!(k1, got);
        assert!(
            model
                .generate(&ps, "", 3, 1.0, None, &mut Rng::new(0))
                .is_err()
        );
        assert!(
            model
                .generate(&ps, "the", 3, -1.0, None, &mut Rng::new(0))
                .is_err()
        );
        assert!(
            model
                .generate(&ps, "Z", 3, 1.0, None, &mut Rng::new(0))
                .is_err()
        );
        // A seed gives the same sample; sampling at temperature 1 is not greedy everywhere.
        let s1 = model
            .generate(&ps, "the ", 60, 1.0, None, &mut Rng::new(9))
            .unwrap();
        let s2 = model
            .generate(&ps, "the ", 60, 1.0, None, &mut Rng::new(9))
            .unwrap();
        assert_eq!(s1, s2);
    }
}

/// A model whose layers are large enough to step in two shares of their units generates the
/// same text on one thread and on two (`InferenceStep::with_threads_all`), for each cell.
#[test]
fn char_lm_generates_the_same_text_on_one_thread_or_two() {
    let chars = " .abcdefghijklmnopqrstuvwxyz";
    for cell in ["lstm", "gru", "rnn"] {
        // RNN layers of 512 units hold 1.1 MiB; the others 256 units: over 256 KiB each.
        let hidden = if cell == "rnn" { 512 } else { 256 };
        let mut ps = ParamStore::<f32>::new();
        let model = CharLm::new(
            &mut ps,
            CharLmConfig::new(cell, hidden, 2, 16, chars),
            &mut Rng::new(4),
        )
        .unwrap();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                model
                    .generate(&ps, "the ", 200, 1.0, None, &mut Rng::new(7))
                    .unwrap()
            })
        };
        let one = on(1);
        assert_eq!(one.chars().count(), 200);
        assert_eq!(on(2), one, "{cell}");
    }
}

#[test]
fn regressor_resume_is_bit_identical() {
    let dir = temp_dir("library-reg-resume");
    let run = |steps: usize, out: &Path, resume: bool| {
        let mut rng = Rng::new(2);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let len = 3 + rng.below(6);
            xs.push(
                (0..2 * len)
                    .map(|_| rng.uniform() as f32)
                    .collect::<Vec<_>>(),
            );
            ys.push((0..len).map(|_| rng.uniform() as f32).collect::<Vec<_>>());
        }
        let mut data = DenseDataset::new(xs, ys, 2, 1, 6)
            .unwrap()
            .with_plan(|p| p.shuffle(3).bucket(2));
        let mut ps = ParamStore::<f32>::new();
        let mut cfg = SequenceRegressorConfig::new(2, 5, 1).layers(2);
        cfg.dropout = 0.25;
        let mut model = SequenceRegressor::new(&mut ps, "", cfg, &mut Rng::new(0)).unwrap();
        let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
        let mut t = Trainer::new(
            TrainerConfig::steps(steps)
                .eval_every(3)
                .out_dir(out)
                .seed(5),
        );
        if resume {
            t = t.resume_from(out.join("last.safetensors"));
        }
        t.fit(&mut model, &mut ps, &mut opt, &mut data, None)
            .unwrap();
        ps
    };
    let a = run(11, &dir.join("a"), false);
    run(6, &dir.join("b"), false);
    let b = run(11, &dir.join("b"), true);
    for ((_, na, ta), (_, _, tb)) in a.iter().zip(b.iter()) {
        assert_eq!(ta.data(), tb.data(), "{na} differs after resume");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn thread_count_is_settable_once_and_scoped_pools_are_separate() {
    assert!(recur::set_threads(0).is_err());
    // The first call may find the pool already built by another test; the second always does.
    let _ = recur::set_threads(2);
    let e = recur::set_threads(2).unwrap_err().to_string();
    assert!(e.contains("already"), "{e}");
    assert_eq!(recur::with_threads(3, recur::threads).unwrap(), 3);
    assert!(recur::with_threads(0, || ()).is_err());
}

#[test]
fn a_stop_between_validations_resumes_exactly_and_an_abort_writes_nothing() {
    let dir = temp_dir("library-stop-abort");
    // Stops after `stop_at` (between the validations at 4 and 8) or runs to 12.
    let run = |out: &Path, stop_at: Option<usize>, resume: bool| {
        let (mut ps, mut model, mut train, mut val) = lm("gru", 1, 0.2);
        let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
        let mut t = Trainer::new(TrainerConfig::steps(12).eval_every(4).out_dir(out))
            .meta("corpus", "cats and dogs")
            .on_event(move |e, _| match e {
                Event::Step { step, .. } if Some(*step) == stop_at => Control::Stop,
                _ => Control::Continue,
            });
        if resume {
            t = t.resume_from(out.join("last.safetensors"));
        }
        let s = t
            .fit(&mut model, &mut ps, &mut opt, &mut train, Some(&mut val))
            .unwrap();
        (ps, s)
    };
    let (a, sa) = run(&dir.join("a"), None, false);
    assert_eq!((sa.ended, sa.history.val.len()), (Ended::Finished, 3));
    let (_, stopped) = run(&dir.join("b"), Some(6), false);
    assert_eq!((stopped.ended, stopped.steps), (Ended::Stopped, 6));
    assert_eq!(stopped.history.val.len(), 1, "no validation at the stop");
    let info = RunInfo::read(&dir.join("b/last.safetensors")).unwrap();
    assert_eq!((info.step, info.optimizer.as_str()), (6, "adam"));
    assert_eq!(info.meta["corpus"], "cats and dogs");
    assert_eq!(info.history, stopped.history);
    let (b, sb) = run(&dir.join("b"), None, true);
    assert_eq!(
        sa, sb,
        "the resumed run reports what the uninterrupted one did"
    );
    for ((_, na, ta), (_, _, tb)) in a.iter().zip(b.iter()) {
        assert_eq!(ta.data(), tb.data(), "{na} differs after resume");
    }
    assert_eq!(
        std::fs::read(dir.join("a/last.safetensors")).unwrap(),
        std::fs::read(dir.join("b/last.safetensors")).unwrap()
    );

    // An abort at the second validation leaves the files of the first.
    let out = dir.join("c");
    let (mut ps, mut model, mut train, mut val) = lm("gru", 1, 0.0);
    let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
    let s = Trainer::new(TrainerConfig::steps(12).eval_every(4).out_dir(&out))
        .on_event(|e, _| match e {
            Event::Eval { step: 8, .. } => Control::Abort,
            _ => Control::Continue,
        })
        .fit(&mut model, &mut ps, &mut opt, &mut train, Some(&mut val))
        .unwrap();
    assert_eq!((s.ended, s.steps), (Ended::Aborted, 8));
    assert_eq!(
        RunInfo::read(&out.join("last.safetensors")).unwrap().step,
        4
    );
    // The trainer's own entries cannot be overwritten.
    let err = Trainer::new(TrainerConfig::steps(1))
        .meta("history", 1)
        .fit(&mut model, &mut ps, &mut opt, &mut train, None)
        .unwrap_err();
    assert!(err.to_string().contains("`history`"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_nan_loss_never_counts_as_the_best() {
    // Validation data whose loss is NaN: every validation is worse than none.
    struct NanVal(CharLm<f64>);
    impl Objective<f64> for NanVal {
        type Batch = recur::data::LmChunk;
        fn loss(&mut self, cx: &mut Ctx<'_, f64>, b: &Self::Batch) -> Result<Var> {
            let l = self.0.loss(cx, b)?;
            if cx.is_training() {
                Ok(l)
            } else {
                let nan = cx.tape.constant(Tensor::from_vec(vec![f64::NAN], &[1])?);
                let s = cx.tape.add(l, nan)?;
                cx.tape.sum(s)
            }
        }
        fn state_tensors(&self) -> Vec<(String, Tensor<f64>)> {
            self.0.state_tensors()
        }
        fn load_state_tensors(&mut self, t: Vec<(String, Tensor<f64>)>) -> Result<()> {
            self.0.load_state_tensors(t)
        }
    }
    let (mut ps, model, mut train, mut val) = lm("rnn", 1, 0.0);
    let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
    let mut improved = Vec::new();
    let s = Trainer::new(TrainerConfig::steps(4).eval_every(2))
        .on_event(|e, _| {
            if let Event::Eval { improved: i, .. } = e {
                improved.push(*i);
            }
            Control::Continue
        })
        .fit(
            &mut NanVal(model),
            &mut ps,
            &mut opt,
            &mut train,
            Some(&mut val),
        )
        .unwrap();
    assert_eq!(improved, [false, false]);
    assert_eq!(s.best, f64::INFINITY);
}

/// A trainer set to bf16 on an f64 model stops with an error that says why before its first
/// step, and writes nothing.
#[test]
fn a_bf16_trainer_on_an_f64_model_refuses_before_writing() {
    let dir = temp_dir("library-bf16-f64");
    let out = dir.join("run");
    let (mut ps, mut model, mut train, mut val) = lm("lstm", 1, 0.0);
    let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
    let config = TrainerConfig::steps(4)
        .out_dir(&out)
        .precision(recur::Precision::Bf16);
    let err = Trainer::new(config)
        .fit(&mut model, &mut ps, &mut opt, &mut train, Some(&mut val))
        .unwrap_err()
        .to_string();
    assert!(err.contains("f32 tape"), "{err}");
    assert!(!out.exists(), "{} was created", out.display());
    std::fs::remove_dir_all(&dir).ok();
}
