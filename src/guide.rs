//! # Train your own model
//!
//! From a `label<TAB>text` file to a trained classifier saved under PyTorch's names, and
//! predictions from it. Everything here is the public API; the example runs as a test.
//!
//! 1. **Read the data.** [`data::read_labelled`](crate::data::read_labelled) reads one example
//!    per line and names the line of any malformed one.
//! 2. **Vocabularies.** [`data::Vocab`](crate::data::Vocab) cuts texts into characters or
//!    words (id 0 pads, id 1 stands for unknown tokens); [`data::Labels`](crate::data::Labels)
//!    numbers the classes.
//! 3. **Batches.** [`data::SeqDataset`](crate::data::SeqDataset) pads each batch into the
//!    time-major `[T, B]` layout with one length per sequence (lengths need not be sorted);
//!    [`data::BatchPlan`](crate::data::BatchPlan) shuffles from a seed and buckets by length.
//! 4. **The model.** [`models::SequenceClassifier`](crate::models::SequenceClassifier), or a
//!    struct of your own layers with a forward over a [`nn::Ctx`](crate::nn::Ctx) (see
//!    [`nn`](crate::nn) and `examples/classify.rs`); it trains once it implements
//!    [`models::Objective`](crate::models::Objective).
//! 5. **Training.** [`models::Trainer`](crate::models::Trainer): epochs, clipping, validation,
//!    best/last checkpoints, resume, early stopping, progress events; on a CPU with
//!    AVX512_BF16, `TrainerConfig::precision(Precision::Bf16)` runs the products in bf16
//!    (mixed precision, see [`Precision`](crate::Precision)).
//! 6. **Saving and predicting.** [`nn::save_state_dict`](crate::nn::save_state_dict) writes the
//!    parameters under PyTorch's names (with the vocabulary in the header here);
//!    `predict` runs without a tape.
//!
//! ```
//! use recur::data::{read_labelled, Labels, SeqDataset, Tokenizer, Vocab};
//! use recur::models::{SequenceClassifier, SequenceClassifierConfig, Trainer, TrainerConfig};
//! use recur::nn::{load_state_dict_file, save_state_dict};
//! use recur::optim::{Adam, AdamConfig};
//! use recur::{ParamStore, Rng};
//!
//! let dir = std::env::temp_dir().join(format!("recur-guide-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| recur::Error::io(&dir, e))?;
//! // A toy task: is the word shouted?
//! let words = ["yes", "no", "maybe", "stop", "go", "wait", "run", "hello"];
//! let lines: String = words.iter()
//!     .flat_map(|w| [format!("calm\t{w}\n"), format!("loud\t{}!!\n", w.to_uppercase())])
//!     .collect();
//! let path = dir.join("train.tsv");
//! std::fs::write(&path, lines).map_err(|e| recur::Error::io(&path, e))?;
//!
//! // 1-3: examples, vocabularies, batches.
//! let examples = read_labelled(&path)?;
//! let vocab = Vocab::build(Tokenizer::Chars, examples.iter().map(|e| e.text.as_str()), 1)?;
//! let labels = Labels::new(examples.iter().map(|e| e.label.as_str()))?;
//! let mut train = SeqDataset::from_examples(&examples, &vocab, &labels, 4)?
//!     .with_plan(|p| p.shuffle(0).bucket(2));
//!
//! // 4-5: the model and its training, with checkpoints in `dir`.
//! let mut ps = ParamStore::<f32>::new();
//! let cfg = SequenceClassifierConfig::tokens(vocab.len(), 8, 16, labels.len());
//! let mut model = SequenceClassifier::new(&mut ps, "", cfg.clone(), &mut Rng::new(1))?;
//! let mut opt = Adam::new(AdamConfig::default().lr(0.02))?;
//! Trainer::new(TrainerConfig::epochs(40).clip(1.0).out_dir(&dir))
//!     .fit(&mut model, &mut ps, &mut opt, &mut train, None)?;
//! assert!(dir.join("best.safetensors").exists());
//!
//! // 6: save under PyTorch's names with the vocabulary, load into a fresh model, predict.
//! let mut meta = recur::io::Metadata::new();
//! meta.insert("vocab".into(), vocab.tokens().join("\u{1f}"));
//! save_state_dict(&model, &ps, &dir.join("model.safetensors"), "", &meta)?;
//!
//! let mut ps2 = ParamStore::<f32>::new();
//! let loaded = SequenceClassifier::new(&mut ps2, "", cfg, &mut Rng::new(2))?;
//! let meta = load_state_dict_file(&loaded, &mut ps2, &dir.join("model.safetensors"), "", true)?;
//! let tokens = meta["vocab"].split('\u{1f}').map(str::to_string);
//! let vocab2 = Vocab::from_tokens(Tokenizer::Chars, tokens)?;
//!
//! let new = ["GO!!", "maybe"];
//! let seqs: Vec<Vec<usize>> = new.iter().map(|t| vocab2.encode(t)).collect();
//! let batch = SeqDataset::new(seqs, vec![0; 2], 2)?.gather(&[0, 1])?;
//! let predicted: Vec<&str> = loaded.classify(&ps2, &batch)?
//!     .into_iter().map(|c| labels.name(c)).collect::<recur::Result<_>>()?;
//! assert_eq!(predicted, ["loud", "calm"]);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), recur::Error>(())
//! ```
