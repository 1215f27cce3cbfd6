//! Micro-batched steps in one process (`Trainer::fit_parallel` with `SingleProcess`): the same
//! result for every thread count, bit for bit, and the plain step's result up to rounding.

use recur::data::{CharVocab, LmStreams, SeqDataset};
use recur::dist::{DataParallel, SingleProcess};
use recur::models::{
    CharLm, CharLmConfig, SequenceClassifier, SequenceClassifierConfig, Trainer, TrainerConfig,
};
use recur::optim::{Adam, AdamConfig, Sgd, SgdConfig};
use recur::{Float, ParamStore, Rng, with_threads};

fn text() -> String {
    let words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "elit",
    ];
    let mut rng = Rng::new(3);
    (0..600)
        .map(|_| words[rng.below(words.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The parameters of a character model of `cell` after `steps` steps on 8 streams, with
/// `micro` micro-batches (or plain steps), SGD, clipping and the state carried across chunks.
fn train_lm<T: Float>(cell: &str, micro: Option<usize>, steps: usize, dropout: f64) -> Vec<T> {
    let text = text();
    let vocab = CharVocab::from_text(&text).unwrap();
    let chars: String = vocab.chars().iter().collect();
    let cfg = CharLmConfig {
        dropout,
        ..CharLmConfig::new(cell, 16, 2, 6, &chars)
    };
    let mut ps = ParamStore::<T>::new();
    let mut lm = CharLm::new(&mut ps, cfg, &mut Rng::new(1)).unwrap();
    let mut data = LmStreams::new(&vocab.encode(&text).unwrap(), 8, 12).unwrap();
    let mut opt = Sgd::new(SgdConfig::default().lr(0.5)).unwrap();
    let mut trainer = Trainer::new(TrainerConfig::steps(steps).clip(5.0));
    match micro {
        Some(m) => {
            let mut par = DataParallel::new(m, &SingleProcess).unwrap();
            trainer
                .fit_parallel(&mut lm, &mut ps, &mut opt, &mut data, None, &mut par)
                .unwrap();
        }
        None => {
            trainer
                .fit(&mut lm, &mut ps, &mut opt, &mut data, None)
                .unwrap();
        }
    }
    ps.iter().flat_map(|(_, _, t)| t.data().to_vec()).collect()
}

fn max_rel_diff<T: Float>(a: &[T], b: &[T]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().map(|x| x.to_f64().abs()).fold(0.0, f64::max);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.to_f64() - y.to_f64()).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn micro_batched_steps_do_not_depend_on_the_thread_count() {
    for cell in ["lstm", "gru"] {
        let one = with_threads(1, || train_lm::<f32>(cell, Some(4), 6, 0.2)).unwrap();
        let three = with_threads(3, || train_lm::<f32>(cell, Some(4), 6, 0.2)).unwrap();
        assert!(
            one.iter()
                .zip(&three)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{cell}: 1 and 3 threads differ by {}",
            max_rel_diff(&one, &three)
        );
        // And they did train: the parameters moved.
        let init = train_lm::<f32>(cell, Some(4), 1, 0.2);
        assert!(max_rel_diff(&one, &init) > 1e-3);
    }
}

#[test]
fn micro_batches_reproduce_the_plain_step() {
    for cell in ["lstm", "gru"] {
        // Several steps, so that each part's carried state matters: a part given another part's
        // state would be far off.
        let plain = train_lm::<f64>(cell, None, 5, 0.0);
        for m in [2, 4, 8] {
            let micro = train_lm::<f64>(cell, Some(m), 5, 0.0);
            let d = max_rel_diff(&plain, &micro);
            assert!(d < 1e-12, "{cell}, {m} micro-batches: {d}");
        }
        // In f32 too, at f32's rounding.
        let d = max_rel_diff(
            &train_lm::<f32>(cell, None, 5, 0.0),
            &train_lm::<f32>(cell, Some(4), 5, 0.0),
        );
        assert!(d < 1e-5, "{cell} f32: {d}");
    }
}

#[test]
fn one_micro_batch_is_the_plain_step_exactly() {
    let plain = train_lm::<f32>("lstm", None, 4, 0.0);
    let one = train_lm::<f32>("lstm", Some(1), 4, 0.0);
    assert!(
        plain
            .iter()
            .zip(&one)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

/// A classifier over sequences of several lengths, 10 examples in batches of 4: the last batch
/// of each epoch has 2, so that 4 micro-batches leave two parts empty.
fn train_classifier(micro: Option<usize>) -> Vec<f64> {
    let seqs: Vec<Vec<usize>> = (0..10)
        .map(|i| (0..1 + i % 5).map(|t| 1 + (i + t) % 4).collect())
        .collect();
    let targets: Vec<usize> = seqs.iter().map(|s| s.contains(&3) as usize).collect();
    let mut data = SeqDataset::new(seqs, targets, 4)
        .unwrap()
        .with_plan(|p| p.shuffle(2));
    let mut ps = ParamStore::<f64>::new();
    let cfg = SequenceClassifierConfig::tokens(5, 4, 8, 2).cell("gru");
    let mut model = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(0)).unwrap();
    let mut opt = Adam::new(AdamConfig::default().lr(0.01)).unwrap();
    let mut trainer = Trainer::new(TrainerConfig::epochs(3));
    match micro {
        Some(m) => {
            let mut par = DataParallel::new(m, &SingleProcess).unwrap();
            trainer
                .fit_parallel(&mut model, &mut ps, &mut opt, &mut data, None, &mut par)
                .unwrap();
        }
        None => {
            trainer
                .fit(&mut model, &mut ps, &mut opt, &mut data, None)
                .unwrap();
        }
    }
    ps.iter().flat_map(|(_, _, t)| t.data().to_vec()).collect()
}

#[test]
fn classifier_micro_batches_with_empty_parts() {
    let plain = train_classifier(None);
    let micro = train_classifier(Some(4));
    let d = max_rel_diff(&plain, &micro);
    // Adam divides by the root of the second moment: a little more rounding than SGD.
    assert!(d < 1e-10, "{d}");
}

#[test]
fn too_many_micro_batches_for_the_streams_is_an_error() {
    let text = text();
    let vocab = CharVocab::from_text(&text).unwrap();
    let chars: String = vocab.chars().iter().collect();
    let cfg = CharLmConfig::new("gru", 4, 1, 2, &chars);
    let mut ps = ParamStore::<f32>::new();
    let mut lm = CharLm::new(&mut ps, cfg, &mut Rng::new(1)).unwrap();
    let mut data = LmStreams::new(&vocab.encode(&text).unwrap(), 4, 12).unwrap();
    let mut opt = Sgd::new(SgdConfig::default().lr(0.1)).unwrap();
    let mut par = DataParallel::new(8, &SingleProcess).unwrap();
    let e = Trainer::new(TrainerConfig::steps(1))
        .fit_parallel(&mut lm, &mut ps, &mut opt, &mut data, None, &mut par)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot cut 4 streams into 8"), "{e}");
}
