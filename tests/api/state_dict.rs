//! Saving and loading a module's parameters under PyTorch `state_dict` names: round trips,
//! prefixes, dtype conversion, and errors that list every offending name while loading nothing.

use crate::common::temp_dir;
use recur::io::{self, Archive, Entry, Metadata};
use recur::nn::{
    CellConfig, Embedding, Gru, GruCell, Linear, Lstm, Module, Recurrent, RecurrentConfig,
    load_state_dict, load_state_dict_file, save_state_dict, state_dict, state_dict_bytes,
};
use recur::{Error, ParamStore, Rng, Tensor};

fn names<M: Module>(m: &M) -> Vec<String> {
    m.named_params().into_iter().map(|(n, _)| n).collect()
}

#[test]
fn pytorch_names_of_every_module() {
    let mut ps = ParamStore::<f64>::new();
    let mut rng = Rng::new(0);
    let cfg = RecurrentConfig::new(3, 4).num_layers(2).bidirectional(true);
    let lstm = Lstm::new(&mut ps, "enc.", cfg, &mut rng).unwrap();
    let n = names(&lstm);
    assert_eq!(n.len(), 16);
    assert_eq!(
        &n[..8],
        [
            "weight_ih_l0",
            "weight_hh_l0",
            "bias_ih_l0",
            "bias_hh_l0",
            "weight_ih_l0_reverse",
            "weight_hh_l0_reverse",
            "bias_ih_l0_reverse",
            "bias_hh_l0_reverse"
        ]
    );
    assert_eq!(n[15], "bias_hh_l1_reverse");
    // Local names plus the store prefix are exactly the store's names.
    for (local, id) in lstm.named_params() {
        assert_eq!(ps.name(id), format!("enc.{local}"));
    }
    let gru = Gru::new(
        &mut ps,
        "g.",
        RecurrentConfig::new(2, 2).bias(false),
        &mut rng,
    )
    .unwrap();
    assert_eq!(names(&gru), ["weight_ih_l0", "weight_hh_l0"]);
    let cell = GruCell::new(&mut ps, "c.", CellConfig::new(2, 2), &mut rng).unwrap();
    assert_eq!(
        names(&cell),
        ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    );
    let fc = Linear::new(&mut ps, "fc.", 2, 3, true, &mut rng).unwrap();
    assert_eq!(names(&fc), ["weight", "bias"]);
    let emb = Embedding::new(&mut ps, "emb.", 5, 2, &mut rng).unwrap();
    assert_eq!(names(&emb), ["weight"]);
    let sd = state_dict(&fc, &ps, "head.").unwrap();
    assert_eq!(sd[0].0, "head.weight");
    assert_eq!(sd[0].1.dims(), &[3, 2]);
}

#[test]
fn round_trip_through_a_file_with_prefix_and_dtype_change() {
    let dir = temp_dir("sd-rt");
    let path = dir.join("lstm.safetensors");
    let cfg = RecurrentConfig::new(3, 5).num_layers(2);
    let mut a = ParamStore::<f64>::new();
    let la = Lstm::new(&mut a, "x.", cfg.clone(), &mut Rng::new(1)).unwrap();
    let mut meta = Metadata::new();
    meta.insert("cell".into(), "lstm".into());
    save_state_dict(&la, &a, &path, "model.rnn.", &meta).unwrap();

    // Into another f64 store (other prefix in the store): bit-exact.
    let mut b = ParamStore::<f64>::new();
    let lb = Lstm::new(&mut b, "", cfg.clone(), &mut Rng::new(2)).unwrap();
    let got_meta = load_state_dict_file(&lb, &mut b, &path, "model.rnn.", true).unwrap();
    assert_eq!(got_meta.get("cell").map(String::as_str), Some("lstm"));
    for ((_, ia), (_, ib)) in la.named_params().iter().zip(lb.named_params()) {
        assert_eq!(a.get(*ia), b.get(ib));
    }
    // Into an f32 store: converted.
    let mut c = ParamStore::<f32>::new();
    let lc = Lstm::new(&mut c, "", cfg, &mut Rng::new(3)).unwrap();
    load_state_dict_file(&lc, &mut c, &path, "model.rnn.", true).unwrap();
    for ((_, ia), (_, ic)) in la.named_params().iter().zip(lc.named_params()) {
        assert!(a.get(*ia).max_abs_diff(&c.get(ic).cast()).unwrap() < 1e-7);
    }
    // A linear layer and an embedding too.
    let mut p = ParamStore::<f32>::new();
    let fc = Linear::new(&mut p, "", 4, 2, true, &mut Rng::new(4)).unwrap();
    let emb = Embedding::new(&mut p, "emb.", 7, 4, &mut Rng::new(5)).unwrap();
    let mut bytes_fc = state_dict_bytes(&fc, &p, "fc.", &Metadata::new()).unwrap();
    let a_fc = Archive::from_bytes(&bytes_fc, "fc").unwrap();
    let mut q = ParamStore::<f32>::new();
    let fc2 = Linear::new(&mut q, "", 4, 2, true, &mut Rng::new(6)).unwrap();
    let emb2 = Embedding::new(&mut q, "e.", 7, 4, &mut Rng::new(7)).unwrap();
    load_state_dict(&fc2, &mut q, &a_fc, "fc.", true).unwrap();
    assert_eq!(q.get(fc2.weight()), p.get(fc.weight()));
    assert_eq!(q.get(fc2.bias().unwrap()), p.get(fc.bias().unwrap()));
    bytes_fc = state_dict_bytes(&emb, &p, "", &Metadata::new()).unwrap();
    load_state_dict(
        &emb2,
        &mut q,
        &Archive::from_bytes(&bytes_fc, "e").unwrap(),
        "",
        true,
    )
    .unwrap();
    assert_eq!(q.get(emb2.weight()), p.get(emb.weight()));
    std::fs::remove_dir_all(&dir).ok();
}

/// Builds an archive from `(name, tensor)` pairs.
fn archive(entries: &[(&str, Tensor<f64>)]) -> Archive {
    let e: Vec<(String, Entry<'_, f64>)> = entries
        .iter()
        .map(|(n, t)| (n.to_string(), Entry::Float(t)))
        .collect();
    Archive::from_bytes(&io::to_bytes(&e, &Metadata::new()).unwrap(), "test").unwrap()
}

#[test]
fn errors_list_every_problem_and_load_nothing() {
    let mut ps = ParamStore::<f64>::new();
    let layer = Recurrent::new(
        &mut ps,
        "",
        recur::nn::CellKind::Gru,
        RecurrentConfig::new(2, 3),
        &mut Rng::new(0),
    )
    .unwrap();
    let before = ps.clone();
    let z = |d: &[usize]| Tensor::<f64>::full(d, 0.5).unwrap();
    // weight_ih good, weight_hh wrong shape, bias_ih missing, bias_hh good, one stray tensor.
    let a = archive(&[
        ("weight_ih_l0", z(&[9, 2])),
        ("weight_hh_l0", z(&[9, 4])),
        ("bias_hh_l0", z(&[9])),
        ("weight_ih_l1", z(&[9, 3])),
    ]);
    let e = load_state_dict(&layer, &mut ps, &a, "", true).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Format { .. }));
    assert!(msg.contains("missing: bias_ih_l0"), "{msg}");
    assert!(
        msg.contains("weight_hh_l0 (expected [9, 3], found [9, 4])"),
        "{msg}"
    );
    assert!(msg.contains("unexpected: weight_ih_l1"), "{msg}");
    assert!(!msg.contains("weight_ih_l0 "), "{msg}");
    // Nothing was loaded, not even the good tensors.
    for (id, _, t) in before.iter() {
        assert_eq!(ps.get(id), t);
    }

    // Not strict: the stray tensor is ignored but the other problems remain.
    let e = load_state_dict(&layer, &mut ps, &a, "", false).unwrap_err();
    assert!(!e.to_string().contains("unexpected"), "{e}");
    assert!(e.to_string().contains("missing: bias_ih_l0"), "{e}");

    // With a prefix, strictness only looks under that prefix.
    let good = archive(&[
        ("m.weight_ih_l0", z(&[9, 2])),
        ("m.weight_hh_l0", z(&[9, 3])),
        ("m.bias_ih_l0", z(&[9])),
        ("m.bias_hh_l0", z(&[9])),
        ("other.weight", z(&[1])),
    ]);
    load_state_dict(&layer, &mut ps, &good, "m.", true).unwrap();
    assert!(
        ps.iter()
            .all(|(_, _, t)| t.data().iter().all(|&x| x == 0.5))
    );
    // ...and with an empty prefix every extra tensor is unexpected.
    let e = load_state_dict(&layer, &mut ps, &good, "", true).unwrap_err();
    assert!(e.to_string().contains("missing: weight_ih_l0"), "{e}");

    // Non-finite values are refused, naming the tensor.
    let mut nan = z(&[9]);
    nan.data_mut()[4] = f64::NAN;
    let bad = archive(&[
        ("weight_ih_l0", z(&[9, 2])),
        ("weight_hh_l0", z(&[9, 3])),
        ("bias_ih_l0", nan),
        ("bias_hh_l0", z(&[9])),
    ]);
    let snapshot = ps.clone();
    let e = load_state_dict(&layer, &mut ps, &bad, "", true).unwrap_err();
    assert!(e.to_string().contains("bias_ih_l0 (holds a NaN"), "{e}");
    for (id, _, t) in snapshot.iter() {
        assert_eq!(ps.get(id), t);
    }

    // A missing file names the path.
    let e = load_state_dict_file(
        &layer,
        &mut ps,
        std::path::Path::new("/nonexistent/x.st"),
        "",
        true,
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.st"), "{e}");
}
