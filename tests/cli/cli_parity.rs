//! `recur parity FILE...` end to end: exit status 0 for good fixtures, 1 when a file exceeds its
//! tolerance, 2 for a file that is not a valid fixture.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{output_text, temp_dir};
use crate::recur;
use recur::io::{self, Archive, Entry};
use recur::{Float, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

/// `recur parity` on the files `args`.
fn parity(args: &[&Path]) -> Output {
    recur(&[&[Path::new("parity")], args].concat())
}

/// Copies fixture `name` to `dest` (in the fixture's own dtype `T`), with element 0 of tensor
/// `key` moved by `rel` times the tensor's largest magnitude.
fn tampered<T: Float>(name: &str, key: &str, rel: f64, dest: &Path) {
    let a = Archive::read(&fixture(name)).unwrap();
    let mut tensors: Vec<(String, Tensor<T>)> = a
        .tensors
        .keys()
        .map(|k| (k.clone(), a.tensor::<T>(k).unwrap()))
        .collect();
    let (_, t) = tensors.iter_mut().find(|(k, _)| k == key).unwrap();
    let m = t.data().iter().fold(0.0f64, |m, x| m.max(x.to_f64().abs()));
    let v = t.data()[0].to_f64() + rel * m;
    t.data_mut()[0] = T::from_f64(v);
    let entries: Vec<(String, Entry<'_, T>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), Entry::Float(t)))
        .collect();
    io::atomic_write(dest, &io::to_bytes(&entries, &a.metadata).unwrap()).unwrap();
}

#[test]
fn ragged_and_projected_fixtures_exit_0() {
    let files = [
        fixture("gru_lengths_2l_nobias_f32.safetensors"),
        fixture("lstm_proj_bidir_2l_lengths_f64.safetensors"),
        fixture("lstm_proj_3l_f32.safetensors"),
    ];
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = parity(&args);
    let stdout = output_text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        output_text(&out.stderr)
    );
    assert!(
        stdout.contains("3 files: 3 ok, 0 failed, 0 invalid"),
        "{stdout}"
    );
}

#[test]
fn good_fixtures_exit_0() {
    let a = fixture("lstm_bidir_2l_f64.safetensors");
    let b = fixture("gru_long_f32.safetensors");
    let out = parity(&[&a, &b]);
    let stdout = output_text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        output_text(&out.stderr)
    );
    assert_eq!(stdout.matches(": ok").count(), 2, "{stdout}");
    assert!(
        stdout.contains("lstm_bidir_2l_f64.safetensors: outputs "),
        "{stdout}"
    );
    assert!(
        stdout.contains("tolerance 1e-9") && stdout.contains("tolerance 1e-4"),
        "{stdout}"
    );
}

#[test]
fn tampered_fixtures_exit_1() {
    let dir = temp_dir("cli-parity-tamper");
    let f64_path = dir.join("gru_f64_tampered.safetensors");
    tampered::<f64>("gru_f64.safetensors", "y", 1e-6, &f64_path);
    let out = parity(&[&fixture("gru_f64.safetensors"), &f64_path]);
    let stdout = output_text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        output_text(&out.stderr)
    );
    let bad_line = stdout.lines().find(|l| l.contains("tampered")).unwrap();
    assert!(
        bad_line.ends_with("FAIL") && bad_line.contains("(y)"),
        "{bad_line}"
    );
    assert!(stdout.lines().next().unwrap().ends_with(": ok"), "{stdout}");

    // F32: a 1e-3 relative change to an expected gradient exceeds the 1e-4 tolerance...
    let f32_path = dir.join("lstm_f32_tampered.safetensors");
    tampered::<f32>(
        "lstm_long_f32.safetensors",
        "grad.weight_hh_l0",
        1e-3,
        &f32_path,
    );
    let out = parity(&[&f32_path]);
    let stdout = output_text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("(grad.weight_hh_l0)") && stdout.trim_end().ends_with("FAIL"));
    // ...while a 1e-6 change stays within it.
    tampered::<f32>(
        "lstm_long_f32.safetensors",
        "grad.weight_hh_l0",
        1e-6,
        &f32_path,
    );
    assert_eq!(parity(&[&f32_path]).status.code(), Some(0));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn invalid_files_exit_2() {
    let dir = temp_dir("cli-parity-invalid");
    let junk = dir.join("junk.safetensors");
    std::fs::write(
        &junk,
        b"\x07\x00\x00\x00\x00\x00\x00\x00garbage bytes, not a header",
    )
    .unwrap();
    let out = parity(&[&junk]);
    let stderr = output_text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("junk.safetensors") && stderr.contains("not a valid"),
        "{stderr}"
    );

    let missing = dir.join("does-not-exist.safetensors");
    let out = parity(&[&missing]);
    assert_eq!(out.status.code(), Some(2));
    assert!(output_text(&out.stderr).contains("does-not-exist.safetensors"));

    // A valid safetensors file without the fixture's keys.
    let a = Archive::read(&fixture("rnn_tanh_f64.safetensors")).unwrap();
    let x = a.tensor::<f64>("x").unwrap();
    let partial = dir.join("partial.safetensors");
    let bytes = io::to_bytes(&[("x".to_string(), Entry::Float(&x))], &a.metadata).unwrap();
    io::atomic_write(&partial, &bytes).unwrap();
    let out = parity(&[&partial]);
    let stderr = output_text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing tensor"), "{stderr}");

    // Invalid beats failing: a good, a tampered and an invalid file together exit 2, and the
    // good and tampered ones are still reported.
    let bad = dir.join("tampered.safetensors");
    tampered::<f64>("rnn_tanh_f64.safetensors", "h_n", 1e-5, &bad);
    let out = parity(&[&fixture("rnn_tanh_f64.safetensors"), &bad, &junk]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = output_text(&out.stdout);
    assert!(
        stdout.contains(": ok") && stdout.contains("FAIL"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 files: 1 ok, 1 failed, 1 invalid"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
