//! The checkpoint of `recur train`: a library checkpoint ([`recur::io::checkpoint`]) whose
//! config JSON holds the model's configuration and the training state (step, batch, sequence
//! length, clipping, best validation loss, loss history), with the hidden state carried between
//! chunks stored as extra tensors. Written atomically; loading validates everything first.

use std::path::Path;

use serde::{Deserialize, Serialize};

use recur::io::Archive;
use recur::io::checkpoint::{CheckpointInfo, EXTRA, load_checkpoint, save_checkpoint_with_extras};
use recur::optim::Optimizer;
use recur::{Error, ParamStore, Result, Rng, Tensor};

use crate::charlm::{CharModel, ModelConfig, ModelConfigExt, State};
use crate::optimizer::optimizer_by_name;

/// Loss history: (step, loss) pairs. A loss that is not finite (a diverging step) is stored as
/// the JSON string `"NaN"`, `"inf"` or `"-inf"`, so that it reads back as it was; files written
/// before that stored it as `null`, which reads back as NaN.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(with = "points")]
    pub train: Vec<(usize, f64)>,
    #[serde(with = "points")]
    pub val: Vec<(usize, f64)>,
}

/// (step, loss) lists whose losses may be NaN or infinite.
mod points {
    use serde::de::{self, Deserializer, Visitor};
    use serde::{Deserialize, Serialize, Serializer};

    /// A loss as stored: a JSON number when finite, otherwise a string.
    struct Loss(f64);

    impl Serialize for Loss {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let v = self.0;
            if v.is_finite() {
                s.serialize_f64(v)
            } else if v.is_nan() {
                s.serialize_str("NaN")
            } else if v > 0.0 {
                s.serialize_str("inf")
            } else {
                s.serialize_str("-inf")
            }
        }
    }

    impl<'de> Deserialize<'de> for Loss {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Loss;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a number, null, \"NaN\", \"inf\" or \"-inf\"")
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Loss, E> {
                    Ok(Loss(v))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Loss, E> {
                    Ok(Loss(v as f64))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Loss, E> {
                    Ok(Loss(v as f64))
                }
                fn visit_unit<E: de::Error>(self) -> Result<Loss, E> {
                    Ok(Loss(f64::NAN))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Loss, E> {
                    match v {
                        "NaN" => Ok(Loss(f64::NAN)),
                        "inf" => Ok(Loss(f64::INFINITY)),
                        "-inf" => Ok(Loss(f64::NEG_INFINITY)),
                        other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                    }
                }
            }
            d.deserialize_any(V)
        }
    }

    /// One loss, stored as the list entries are.
    pub mod one {
        use super::*;

        pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
            Loss(*v).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
            Loss::deserialize(d).map(|l| l.0)
        }
    }

    pub fn serialize<S: Serializer>(v: &[(usize, f64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&(step, loss)| (step, Loss(loss))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(usize, f64)>, D::Error> {
        let v: Vec<(usize, Loss)> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|(step, l)| (step, l.0)).collect())
    }
}

/// Where training stands.
pub struct TrainState {
    pub step: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub clip: f64,
    pub dropout_rng: Rng,
    pub carried: State,
    pub best_val: f64,
    pub history: History,
    /// Sum and count of the training losses since the last validation (the next validation
    /// reports their mean), so that a run resumed between two validations reports the same.
    pub interval_loss: f64,
    pub interval_steps: usize,
    /// The training text's fingerprint ([`recur::io::checksum::fingerprint`] of its bytes, as
    /// `fnv1a64:` and 16 hex digits); `None` in checkpoints written before it was recorded.
    pub text_fingerprint: Option<String>,
}

/// The checkpoint's config JSON.
#[derive(Serialize, Deserialize)]
struct RunConfig {
    model: ModelConfig,
    batch: usize,
    seq_len: usize,
    clip: f64,
    /// `None` before the first validation (JSON has no infinity).
    best_val: Option<f64>,
    history: History,
    /// Absent in checkpoints of earlier versions (which saved only at validations, where both
    /// are zero).
    #[serde(default, with = "points::one")]
    interval_loss: f64,
    #[serde(default)]
    interval_steps: usize,
    #[serde(default)]
    text_fingerprint: Option<String>,
}

/// A checkpoint read back.
pub struct Resumed {
    pub model: CharModel,
    pub store: ParamStore<f32>,
    pub optimizer: Box<dyn Optimizer<f32>>,
    pub state: TrainState,
}

/// Writes the checkpoint to `path` (via a temporary file and a rename).
pub fn save(
    path: &Path,
    model: &CharModel,
    store: &ParamStore<f32>,
    opt: &dyn Optimizer<f32>,
    ts: &TrainState,
) -> Result<()> {
    let run = RunConfig {
        model: model.config.clone(),
        batch: ts.batch,
        seq_len: ts.seq_len,
        clip: ts.clip,
        best_val: ts.best_val.is_finite().then_some(ts.best_val),
        history: ts.history.clone(),
        interval_loss: ts.interval_loss,
        interval_steps: ts.interval_steps,
        text_fingerprint: ts.text_fingerprint.clone(),
    };
    let config = serde_json::to_string(&run)
        .map_err(|e| Error::format("checkpoint config", e.to_string()))?;
    let info = CheckpointInfo {
        config,
        step: ts.step as u64,
        schedule_step: ts.step as u64,
    };
    let mut extras = vec![("state.h", &ts.carried.h)];
    if let Some(c) = &ts.carried.c {
        extras.push(("state.c", c));
    }
    save_checkpoint_with_extras(path, store, opt, &ts.dropout_rng, &info, &extras)
}

/// Reads a checkpoint written by [`save`]; every part is validated and a problem is named.
pub fn load(path: &Path) -> Result<Resumed> {
    let bad = |msg: String| Error::format(format!("checkpoint {}", path.display()), msg);
    // The header says which model to build; the library then loads into it strictly.
    let archive = Archive::read(path)?;
    let config = archive.metadata.get("config").ok_or_else(|| {
        bad("no `config` metadata: not a checkpoint written by `recur train`".into())
    })?;
    let run: RunConfig = serde_json::from_str(config)
        .map_err(|e| bad(format!("not a `recur train` checkpoint (config: {e})")))?;
    // Check the config against the stored tensors before allocating the model it describes.
    let stored: u128 = archive
        .tensors
        .iter()
        .filter(|(n, _)| n.starts_with("model."))
        .map(|(_, t)| t.dims().iter().product::<usize>() as u128)
        .sum();
    if run.model.param_count() != Some(stored) {
        return Err(bad(format!(
            "the model config ({} {}x{}, embedding {}, {} characters) does not match the {stored} stored parameters",
            run.model.cell,
            run.model.layers,
            run.model.hidden,
            run.model.embed,
            run.model.vocab.chars().count()
        )));
    }
    let mut store = ParamStore::new();
    let model = CharModel::new(&mut store, run.model.clone(), &mut Rng::new(0))
        .map_err(|e| bad(format!("model config: {e}")))?;
    let opt_name = archive
        .metadata
        .get("optimizer")
        .ok_or_else(|| bad("no `optimizer` metadata".into()))?;
    let mut optimizer = optimizer_by_name(opt_name, 1e-3)
        .ok_or_else(|| bad(format!("unknown optimizer `{opt_name}`")))??;
    let mut rng = Rng::new(0);
    let info = load_checkpoint(path, &mut store, optimizer.as_mut(), &mut rng, |_| Ok(()))?;
    if info.step > 0 && optimizer.state_tensors(&store).is_empty() {
        return Err(bad(format!(
            "optimizer state is missing (step {} needs it)",
            info.step
        )));
    }
    let want = [run.model.layers, run.batch, run.model.hidden];
    let carried = |name: &str| -> Result<Tensor<f32>> {
        let key = format!("{EXTRA}{name}");
        let t: Tensor<f32> = archive.tensor(&key).map_err(|e| bad(e.to_string()))?;
        if t.dims() != want {
            return Err(bad(format!(
                "`{key}` has shape {:?}, expected {want:?}",
                t.dims()
            )));
        }
        Ok(t)
    };
    let state = TrainState {
        step: info.step as usize,
        batch: run.batch,
        seq_len: run.seq_len,
        clip: run.clip,
        dropout_rng: rng,
        carried: State {
            h: carried("state.h")?,
            c: model
                .rnn
                .kind()
                .has_cell_state()
                .then(|| carried("state.c"))
                .transpose()?,
        },
        best_val: run.best_val.unwrap_or(f64::INFINITY),
        history: run.history,
        interval_loss: run.interval_loss,
        interval_steps: run.interval_steps,
        text_fingerprint: run.text_fingerprint,
    };
    Ok(Resumed {
        model,
        store,
        optimizer,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_losses_round_trip_and_old_nulls_read_as_nan() {
        let history = History {
            train: vec![(5, f64::INFINITY), (10, 3.5)],
            val: vec![(5, f64::NAN), (10, f64::NEG_INFINITY), (15, 2.25)],
        };
        let text = serde_json::to_string(&history).unwrap();
        assert!(!text.contains("null"), "{text}");
        let back: History = serde_json::from_str(&text).unwrap();
        assert_eq!(back.train, history.train);
        assert!(back.val[0].1.is_nan());
        assert_eq!(back.val[1..], history.val[1..]);
        // What earlier versions wrote for a NaN loss.
        let old: History =
            serde_json::from_str(r#"{"train":[[5,1e30],[10,2]],"val":[[5,null],[10,4.07]]}"#)
                .unwrap();
        assert!(old.val[0].1.is_nan());
        assert_eq!(old.val[1], (10, 4.07));
        assert_eq!(old.train[1], (10, 2.0));
        assert!(serde_json::from_str::<History>(r#"{"train":[[1,"x"]],"val":[]}"#).is_err());
    }

    #[test]
    fn loss_history_survives_its_json_bit_for_bit() {
        // 2.4236041174994574 is a validation loss that serde_json's default float parser read
        // back one ulp off, so a resumed run's checkpoint differed from the uninterrupted one's.
        let mut val = vec![(20, 2.4236041174994574)];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..1000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            val.push((step, (seed >> 11) as f64 / (1u64 << 53) as f64 * 8.0));
        }
        let history = History {
            train: val.iter().map(|&(s, v)| (s, v / 3.0)).collect(),
            val,
        };
        let text = serde_json::to_string(&history).unwrap();
        let back: History = serde_json::from_str(&text).unwrap();
        let bits =
            |h: &[(usize, f64)]| h.iter().map(|&(s, v)| (s, v.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&back.train), bits(&history.train));
        assert_eq!(bits(&back.val), bits(&history.val));
    }
}
