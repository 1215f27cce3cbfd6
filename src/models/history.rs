//! [`History`]: the losses a training run reported at each validation, stored with its
//! checkpoints so that a resumed run's curves continue where they stopped.

use serde::{Deserialize, Serialize};

/// The losses of a run at each validation, as `(step, loss)` pairs: the mean training loss since
/// the previous validation, and the validation loss when there is validation data.
///
/// Stored as JSON in checkpoints. A loss that is not finite (a diverging step) is written as the
/// string `"NaN"`, `"inf"` or `"-inf"`, so that it reads back as it was; `null` (what JSON
/// writers make of NaN) reads back as NaN. Finite losses read back bit for bit.
///
/// ```
/// use recur::models::History;
/// let h = History { train: vec![(10, 2.5)], val: vec![(10, f64::NAN)] };
/// let json = serde_json::to_string(&h).unwrap();
/// assert_eq!(json, r#"{"train":[[10,2.5]],"val":[[10,"NaN"]]}"#);
/// let back: History = serde_json::from_str(&json).unwrap();
/// assert!(back.val[0].1.is_nan());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Mean training loss over the steps since the previous validation.
    #[serde(default, with = "points")]
    pub train: Vec<(usize, f64)>,
    /// Validation loss.
    #[serde(default, with = "points")]
    pub val: Vec<(usize, f64)>,
}

/// (step, loss) lists whose losses may be NaN or infinite.
pub(crate) mod points {
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
    pub(crate) mod one {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
            Loss(*v).serialize(s)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
            Loss::deserialize(d).map(|l| l.0)
        }
    }

    pub(crate) fn serialize<S: Serializer>(v: &[(usize, f64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&(step, loss)| (step, Loss(loss))))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(usize, f64)>, D::Error> {
        let v: Vec<(usize, Loss)> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|(step, l)| (step, l.0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_losses_round_trip_and_nulls_read_as_nan() {
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
        let old: History =
            serde_json::from_str(r#"{"train":[[5,1e30],[10,2]],"val":[[5,null],[10,4.07]]}"#)
                .unwrap();
        assert!(old.val[0].1.is_nan());
        assert_eq!(old.val[1], (10, 4.07));
        assert_eq!(old.train[1], (10, 2.0));
        assert!(serde_json::from_str::<History>(r#"{"train":[[1,"x"]],"val":[]}"#).is_err());
    }

    #[test]
    fn losses_survive_their_json_bit_for_bit() {
        // 2.4236041174994574 is a loss that serde_json's default float parser reads back one ulp
        // off (the crate enables `float_roundtrip`).
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
