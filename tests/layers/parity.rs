//! Parity with PyTorch: every committed fixture in `tests/fixtures/parity/` (written by
//! `tests/fixtures/gen_parity.py` from `nn.RNN`, `nn.LSTM` and `nn.GRU`) is run through the fused
//! layers and through the reference built from primitive ops. Outputs and every gradient must
//! match PyTorch's to 1e-9 (F64) or 1e-4 (F32), measured as `max|a - b| / max(max|b|, 1e-6)` per
//! tensor. The fixtures include batches of sequences of different lengths (PyTorch's packed
//! sequences) and LSTMs with projections (`proj_size`). Files that are not valid fixtures give
//! clear errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use recur::io::{self, Archive, Entry, Metadata, StoredDtype};
use recur::nn::parity::{ParityReport, check_fixture, check_fixture_file, relative_error};
use recur::nn::{CellKind, Implementation};
use recur::{Error, Tensor};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("tests/fixtures/parity exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

fn describe(path: &Path, imp: Implementation, r: &ParityReport) -> String {
    let (oe, on) = r.output_error();
    let (ge, gn) = r.gradient_error();
    format!(
        "{} [{imp:?}]: outputs {oe:.2e} ({on}), gradients {ge:.2e} ({gn}), tol {:e}",
        path.file_name().unwrap().to_string_lossy(),
        r.tolerance()
    )
}

#[test]
fn every_fixture_matches_pytorch_fused_and_reference() {
    let files = fixtures();
    assert!(files.len() >= 30, "fixtures missing: {files:?}");
    let mut failures = Vec::new();
    for path in &files {
        let archive = Archive::read(path).unwrap();
        for imp in [Implementation::Fused, Implementation::Reference] {
            let r = check_fixture(&archive, imp).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let line = describe(path, imp, &r);
            println!("{line}");
            // Every output and every parameter, input and state gradient was compared.
            let lstm = r.spec.kind == CellKind::Lstm;
            let n_params = archive
                .tensors
                .keys()
                .filter(|k| k.starts_with("grad."))
                .count()
                - if lstm { 3 } else { 2 };
            let want = (if lstm { 3 } else { 2 }) * 2 + n_params;
            assert_eq!(r.errors.len(), want, "{line}");
            if !r.passed() {
                failures.push(line);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn fixture_set_covers_the_options() {
    let specs: Vec<_> = fixtures()
        .iter()
        .map(|p| {
            let a = Archive::read(p).unwrap();
            let t = a.tensors["x"].dims()[0];
            (recur::nn::parity::fixture_spec(&a).unwrap(), t)
        })
        .collect();
    let has = |f: &dyn Fn(&recur::nn::parity::FixtureSpec, usize) -> bool| {
        specs.iter().any(|(s, t)| f(s, *t))
    };
    use recur::nn::Activation::{Relu, Tanh};
    for kind in [
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::Rnn(Tanh),
        CellKind::Rnn(Relu),
    ] {
        assert!(has(&|s, _| s.kind == kind), "{kind:?}");
    }
    for dt in [StoredDtype::F32, StoredDtype::F64] {
        assert!(has(&|s, _| s.dtype == dt));
        assert!(has(&|s, t| s.dtype == dt && t >= 200));
    }
    assert!(has(&|s, _| s.config.num_layers >= 2));
    assert!(has(&|s, _| s.config.bidirectional));
    assert!(has(&|s, _| !s.config.bias));
    // Sequences of different lengths: every cell, both dtypes, both directions, several layers,
    // and in every such batch some sequence shorter than T and one of full length.
    let ragged = |s: &recur::nn::parity::FixtureSpec, t: usize| {
        s.lengths
            .as_ref()
            .is_some_and(|l| l.iter().any(|&n| n < t) && l.contains(&t))
    };
    for kind in [
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::Rnn(Tanh),
        CellKind::Rnn(Relu),
    ] {
        assert!(has(&|s, t| s.kind == kind && ragged(s, t)), "{kind:?}");
    }
    for dt in [StoredDtype::F32, StoredDtype::F64] {
        assert!(has(&|s, t| s.dtype == dt && ragged(s, t)));
        assert!(has(&|s, t| s.dtype == dt
            && ragged(s, t)
            && s.config.bidirectional));
        assert!(has(&|s, t| s.dtype == dt
            && ragged(s, t)
            && s.config.num_layers >= 2));
        // Projections, alone and with lengths.
        let proj = |s: &recur::nn::parity::FixtureSpec| s.config.proj_size > 0;
        assert!(has(&|s, _| s.dtype == dt && proj(s)));
        assert!(has(&|s, t| s.dtype == dt && proj(s) && ragged(s, t)));
        assert!(has(&|s, _| s.dtype == dt
            && proj(s)
            && s.config.num_layers >= 2));
        assert!(has(&|s, _| s.dtype == dt
            && proj(s)
            && s.config.bidirectional));
    }
}

#[test]
fn lengths_and_projections_are_what_is_compared() {
    // Without its lengths, a ragged fixture no longer matches: the lengths are honoured.
    let path = fixture_dir().join("lstm_lengths_bidir_2l_f64.safetensors");
    let r = check_fixture_file(&path).unwrap();
    assert!(r.passed(), "{}", describe(&path, Implementation::Fused, &r));
    assert_eq!(r.spec.lengths.as_deref(), Some(&[2, 6, 5][..]));
    for imp in [Implementation::Fused, Implementation::Reference] {
        let a = rebuild_with(&path, |_, _, l| *l = None);
        let r = check_fixture(&a, imp).unwrap();
        assert!(!r.passed() && r.output_error().0 > 1e-3, "{imp:?}");
    }
    // Other lengths than PyTorch's do not match either.
    let a = rebuild_with(&path, |_, _, l| *l = Some(vec![2, 6, 4]));
    assert!(!check_fixture(&a, Implementation::Fused).unwrap().passed());
    // The projection's gradient is compared, and a change to it is caught.
    let path = fixture_dir().join("lstm_proj_bidir_2l_lengths_f64.safetensors");
    let r = check_fixture_file(&path).unwrap();
    assert!(r.passed(), "{}", describe(&path, Implementation::Fused, &r));
    assert_eq!(r.spec.config.proj_size, 2);
    assert!(
        r.errors
            .iter()
            .any(|(n, _)| n == "grad.weight_hr_l1_reverse")
    );
    let a = rebuild(&path, |t, _| {
        t.get_mut("weight_hr_l0").unwrap().data_mut()[1] += 1e-6;
    });
    assert!(!check_fixture(&a, Implementation::Fused).unwrap().passed());
}

#[test]
fn file_entry_point_and_a_perturbed_expectation_fails() {
    let path = fixture_dir().join("lstm_bidir_2l_f64.safetensors");
    let r = check_fixture_file(&path).unwrap();
    assert!(r.passed(), "{}", describe(&path, Implementation::Fused, &r));
    assert!(r.output_error().0 < 1e-9 && r.gradient_error().0 < 1e-9);

    // A 1e-7 relative change to one expected gradient element is caught at the 1e-9 tolerance.
    let a = rebuild(&path, |t, _| {
        let g = t.get_mut("grad.weight_hh_l1_reverse").unwrap();
        let m = g.data().iter().fold(0.0f64, |m, x| m.max(x.abs()));
        g.data_mut()[3] += 1e-7 * m;
    });
    let r = check_fixture(&a, Implementation::Fused).unwrap();
    assert!(!r.passed());
    let (e, name) = r.gradient_error();
    assert_eq!(name, "grad.weight_hh_l1_reverse");
    assert!((e - 1e-7).abs() < 1e-8, "{e}");
    assert!(r.output_error().0 < 1e-9);
}

#[test]
fn relative_error_definition() {
    let b = Tensor::from_vec(vec![2.0, -4.0, 0.0], &[3]).unwrap();
    let a = Tensor::from_vec(vec![2.0, -4.0, 0.1], &[3]).unwrap();
    assert!((relative_error(&a, &b).unwrap() - 0.1 / 4.0).abs() < 1e-15);
    // An all-zero expectation is compared against the floor 1e-6.
    let z = Tensor::<f64>::zeros(&[2]).unwrap();
    let s = Tensor::from_vec(vec![1e-12, 0.0], &[2]).unwrap();
    assert!((relative_error(&s, &z).unwrap() - 1e-6).abs() < 1e-18);
    let n = Tensor::from_vec(vec![f64::NAN, 0.0], &[2]).unwrap();
    assert_eq!(relative_error(&n, &z).unwrap(), f64::INFINITY);
    assert!(relative_error(&z, &b).is_err());
}

/// A fixture read as f64 tensors, edited, and serialised again.
fn rebuild(
    path: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, Tensor<f64>>, &mut Metadata),
) -> Archive {
    rebuild_with(path, |t, m, _| edit(t, m))
}

/// [`rebuild`] that edits the I64 `lengths` too (`None` where the fixture has none).
fn rebuild_with(
    path: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, Tensor<f64>>, &mut Metadata, &mut Option<Vec<i64>>),
) -> Archive {
    let a = Archive::read(path).unwrap();
    let mut lengths = a
        .tensors
        .get("lengths")
        .map(|l| l.to_i64("lengths").unwrap());
    let mut tensors: BTreeMap<String, Tensor<f64>> = a
        .tensors
        .keys()
        .filter(|k| *k != "lengths")
        .map(|k| (k.clone(), a.tensor::<f64>(k).unwrap()))
        .collect();
    let mut meta = a.metadata.clone();
    edit(&mut tensors, &mut meta, &mut lengths);
    let mut entries: Vec<(String, Entry<'_, f64>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), Entry::Float(t)))
        .collect();
    if let Some(l) = &lengths {
        entries.push(("lengths".into(), Entry::I64(l)));
    }
    Archive::from_bytes(&io::to_bytes(&entries, &meta).unwrap(), "edited").unwrap()
}

fn invalid(a: &Archive, needle: &str) {
    let e = check_fixture(a, Implementation::Fused).unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(e.to_string().contains(needle), "`{e}` lacks `{needle}`");
}

#[test]
fn invalid_fixtures_give_clear_errors() {
    let p = fixture_dir().join("gru_f64.safetensors");
    let lp = fixture_dir().join("lstm_f64.safetensors");
    invalid(
        &rebuild(&p, |t, _| drop(t.remove("grad.x"))),
        "missing tensor `grad.x`",
    );
    invalid(
        &rebuild(&p, |t, _| drop(t.remove("weight_hh_l0"))),
        "missing tensor `weight_hh_l0`",
    );
    invalid(
        &rebuild(&p, |t, _| drop(t.remove("grad.bias_ih_l0"))),
        "missing tensor `grad.bias_ih_l0`",
    );
    invalid(
        &rebuild(&lp, |t, _| drop(t.remove("c0"))),
        "missing tensor `c0`",
    );
    invalid(
        &rebuild(&p, |t, _| drop(t.remove("x"))),
        "missing tensor `x`",
    );
    invalid(
        &rebuild(&p, |_, m| drop(m.remove("hidden_size"))),
        "missing metadata key `hidden_size`",
    );
    invalid(
        &rebuild(&p, |_, m| {
            drop(m.insert("cell".into(), "transformer".into()))
        }),
        "metadata `cell` must be",
    );
    invalid(
        &rebuild(&p, |_, m| drop(m.insert("num_layers".into(), "two".into()))),
        "metadata `num_layers` must be a positive integer",
    );
    invalid(
        &rebuild(&p, |_, m| drop(m.insert("bias".into(), "maybe".into()))),
        "metadata `bias` must be",
    );
    let rp = fixture_dir().join("rnn_tanh_f64.safetensors");
    invalid(
        &rebuild(&rp, |_, m| drop(m.remove("nonlinearity"))),
        "missing metadata key `nonlinearity`",
    );
    // Metadata that disagrees with the tensors.
    invalid(
        &rebuild(&p, |_, m| drop(m.insert("hidden_size".into(), "5".into()))),
        "expected",
    );
    invalid(
        &rebuild(&p, |_, m| drop(m.insert("input_size".into(), "7".into()))),
        "input_size is 7",
    );
    invalid(
        &rebuild(&p, |_, m| {
            drop(m.insert("bidirectional".into(), "true".into()))
        }),
        "expected",
    );
    // Wrong shapes.
    invalid(
        &rebuild(&p, |t, _| {
            let y = t["y"].clone();
            t.insert("y".into(), y.reshape(&[5, 1, 8]).unwrap());
        }),
        "tensor `y` has shape [5, 1, 8], expected [5, 2, 4]",
    );
    invalid(
        &rebuild(&p, |t, _| {
            t.insert("x".into(), Tensor::zeros(&[5, 6]).unwrap());
        }),
        "tensor `x` must be [T, B, I]",
    );
    // Bad values.
    invalid(
        &rebuild(&p, |t, _| t.get_mut("rh").unwrap().data_mut()[0] = f64::NAN),
        "tensor `rh` holds a NaN",
    );
    invalid(
        &rebuild(&p, |t, _| {
            t.get_mut("bias_hh_l0").unwrap().data_mut()[1] = f64::INFINITY
        }),
        "tensor `bias_hh_l0` holds a NaN or infinity",
    );
    // Lengths: outside 1..=T, the wrong count, the wrong dtype.
    let gl = fixture_dir().join("gru_lengths_bidir_f64.safetensors");
    invalid(
        &rebuild_with(&gl, |_, _, l| *l = Some(vec![1, 6, 3, 4])),
        "tensor `lengths` holds 6, outside 1..=5",
    );
    invalid(
        &rebuild_with(&gl, |_, _, l| *l = Some(vec![1, 0, 3, 4])),
        "tensor `lengths` holds 0, outside 1..=5",
    );
    invalid(
        &rebuild_with(&gl, |_, _, l| *l = Some(vec![-1, 5, 3, 4])),
        "tensor `lengths` holds -1",
    );
    invalid(
        &rebuild_with(&gl, |_, _, l| *l = Some(vec![5, 3])),
        "tensor `lengths` has 2 entries for a batch of 4",
    );
    invalid(
        &rebuild_with(&gl, |t, _, l| {
            let v: Vec<f64> = l.take().unwrap().iter().map(|&n| n as f64).collect();
            t.insert("lengths".into(), Tensor::from_vec(v, &[4]).unwrap());
        }),
        "tensor `lengths` must be I64",
    );
    // Projections: only for an LSTM, below hidden_size, and the metadata must match the file.
    let pp = fixture_dir().join("lstm_proj_f64.safetensors");
    invalid(
        &rebuild(&p, |_, m| drop(m.insert("proj_size".into(), "2".into()))),
        "metadata `proj_size` (2) is for an LSTM, but `cell` is `gru`",
    );
    invalid(
        &rebuild(&pp, |_, m| drop(m.insert("proj_size".into(), "6".into()))),
        "metadata `proj_size` (6) must be smaller than hidden_size (6)",
    );
    invalid(
        &rebuild(&pp, |_, m| drop(m.insert("proj_size".into(), "-3".into()))),
        "metadata `proj_size` must be a positive integer",
    );
    invalid(
        &rebuild(&pp, |_, m| drop(m.remove("proj_size"))),
        "tensor `h0` has shape [1, 2, 3], expected [1, 2, 6]",
    );
    invalid(
        &rebuild(&pp, |t, _| drop(t.remove("grad.weight_hr_l0"))),
        "missing tensor `grad.weight_hr_l0`",
    );
    // Garbage bytes are not a safetensors file at all.
    let e = Archive::from_bytes(b"definitely not a safetensors file", "junk").unwrap_err();
    assert!(
        e.to_string().contains("not a valid safetensors file"),
        "{e}"
    );
    let e = check_fixture_file(Path::new("/nonexistent/fixture.safetensors")).unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent/fixture.safetensors"),
        "{e}"
    );
}

#[test]
fn mixed_dtypes_are_refused() {
    let p = fixture_dir().join("rnn_relu_f32.safetensors");
    let a = Archive::read(&p).unwrap();
    assert_eq!(a.tensors["x"].dtype(), StoredDtype::F32);
    // Rewrite everything as F64 except x: the other tensors no longer share x's dtype.
    let mut tensors: BTreeMap<String, Tensor<f64>> = a
        .tensors
        .keys()
        .map(|k| (k.clone(), a.tensor::<f64>(k).unwrap()))
        .collect();
    let x32: Tensor<f32> = tensors.remove("x").unwrap().cast();
    let mut entries: Vec<(String, Entry<'_, f64>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), Entry::Float(t)))
        .collect();
    let x_bytes = io::to_bytes(&[("x".to_string(), Entry::Float(&x32))], &Metadata::new()).unwrap();
    let x_arch = Archive::from_bytes(&x_bytes, "x").unwrap();
    entries.retain(|(k, _)| k != "x");
    let mut mixed =
        Archive::from_bytes(&io::to_bytes(&entries, &a.metadata).unwrap(), "mixed").unwrap();
    mixed
        .tensors
        .insert("x".into(), x_arch.tensors["x"].clone());
    invalid(&mixed, "a fixture has one dtype");
}

/// Every F32 fixture with recur's products in bf16 (on the portable kernel, the same values as
/// AVX512_BF16's): outputs and gradients within [`recur::nn::parity::TOLERANCE_BF16`] of
/// PyTorch's f32 results, fused and reference alike.
#[test]
fn every_f32_fixture_matches_pytorch_in_bf16() {
    use recur::internals::bf16::Bf16Kernel;
    use recur::nn::parity::check_fixture_bf16;
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in fixtures()
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("_f32.safetensors"))
    {
        let archive = Archive::read(path).unwrap();
        for imp in [Implementation::Fused, Implementation::Reference] {
            let r = check_fixture_bf16(&archive, imp, Bf16Kernel::portable())
                .unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let line = describe(path, imp, &r);
            println!("{line}");
            checked += 1;
            if !r.passed() {
                failures.push(line);
            }
        }
    }
    assert!(checked >= 20, "only {checked} fixtures checked in bf16");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
