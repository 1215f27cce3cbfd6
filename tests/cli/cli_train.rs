//! `recur train` and `recur sample` end to end, as a user runs them: learning, exact resume
//! across processes, Ctrl-C, and clear errors for bad files and arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use recur::Rng;
use recur::data::CharVocab;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recur-cli-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A text with structure to learn: sentences built from a small grammar.
fn corpus(dir: &Path) -> PathBuf {
    let subjects = [
        "the cat",
        "a dog",
        "my old friend",
        "the small bird",
        "our teacher",
    ];
    let verbs = ["sees", "likes", "follows", "remembers", "greets"];
    let objects = [
        "the moon.",
        "a red ball.",
        "the river.",
        "every morning.",
        "the garden.",
    ];
    let mut rng = Rng::new(11);
    let mut text = String::new();
    while text.len() < 30_000 {
        text.push_str(subjects[rng.below(5)]);
        text.push(' ');
        text.push_str(verbs[rng.below(5)]);
        text.push(' ');
        text.push_str(objects[rng.below(5)]);
        text.push('\n');
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).unwrap();
    p
}

fn recur(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(args)
        .output()
        .expect("the recur binary runs")
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const SMALL: &[&str] = &[
    "--hidden",
    "24",
    "--layers",
    "2",
    "--embed",
    "8",
    "--dropout",
    "0.1",
    "--seq-len",
    "16",
    "--batch",
    "4",
    "--eval-every",
    "20",
    "--quiet",
];

#[test]
fn resume_in_a_new_process_continues_bit_for_bit() {
    let dir = temp_dir("resume");
    let text = corpus(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let t = text.to_str().unwrap();
    let run = |out: &Path, steps: &str, seed: &str, resume: Option<&Path>| {
        let mut args = vec!["train", "--text", t, "--steps", steps, "--seed", seed];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(SMALL.iter().filter(|a| **a != "--quiet"));
        if let Some(r) = resume {
            args.extend(["--resume", r.to_str().unwrap()]);
        }
        let o = recur(&args);
        assert!(o.status.success(), "{}", s(&o.stderr));
        s(&o.stdout)
    };
    run(&a, "60", "0", None);
    run(&b, "40", "0", None);
    let at_40 = std::fs::read(b.join("last.safetensors")).unwrap();
    // Another --seed on the resumed run: everything must come from the checkpoint.
    let out = run(&b, "60", "12345", Some(&b.join("last.safetensors")));
    assert!(out.contains("at step 40"), "{out}");
    let (fa, fb) = (
        std::fs::read(a.join("last.safetensors")).unwrap(),
        std::fs::read(b.join("last.safetensors")).unwrap(),
    );
    assert!(
        fa == fb,
        "the resumed run differs from the uninterrupted one"
    );
    assert!(at_40 != fb, "steps 41..60 changed nothing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn learns_well_below_the_unigram_entropy_and_samples_like_the_text() {
    let dir = temp_dir("learn");
    let text = corpus(&dir);
    let out = dir.join("run");
    let o = recur(&[
        "train",
        "--text",
        text.to_str().unwrap(),
        "--hidden",
        "64",
        "--layers",
        "1",
        "--seq-len",
        "32",
        "--batch",
        "8",
        "--steps",
        "400",
        "--eval-every",
        "100",
        "--lr",
        "0.01",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    let stdout = s(&o.stdout);
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    let best = v["best_val_loss"].as_f64().unwrap();
    // every progress line is JSON too
    for line in stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    let body = std::fs::read_to_string(&text).unwrap();
    let vocab = CharVocab::from_text(&body).unwrap();
    let unigram = vocab.unigram_entropy(&vocab.encode(&body).unwrap());
    assert!(
        best < 0.5 * unigram,
        "validation {best} vs unigram entropy {unigram}"
    );
    for f in [
        "last.safetensors",
        "best.safetensors",
        "loss.csv",
        "loss.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    // Samples use the training text's words.
    let o = recur(&[
        "sample",
        "--checkpoint",
        out.join("best.safetensors").to_str().unwrap(),
        "--prime",
        "the ",
        "--length",
        "300",
        "--temperature",
        "0.5",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    let sample = s(&o.stdout);
    let words = [
        "cat", "dog", "sees", "likes", "the", "moon", "river", "garden",
    ];
    let hits = words.iter().filter(|w| sample.contains(*w)).count();
    assert!(hits >= 4, "sample does not read like the text: {sample}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_files_and_arguments_give_one_line_and_write_nothing() {
    let dir = temp_dir("bad");
    let text = corpus(&dir);
    let t = text.to_str().unwrap();
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    std::fs::write(
        dir.join("binary.bin"),
        (0u8..=255).cycle().take(5000).collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(dir.join("nul.txt"), "abc\0def".repeat(1000)).unwrap();
    std::fs::write(dir.join("short.txt"), "hello world").unwrap();
    let out = dir.join("never");
    let o = out.to_str().unwrap();
    let path = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let (empty, binary, nul, short) = (
        path("empty.txt"),
        path("binary.bin"),
        path("nul.txt"),
        path("short.txt"),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--text", "/no/such/file.txt", "--out", o],
            "cannot read",
        ),
        (vec!["train", "--text", &empty, "--out", o], "empty"),
        (vec!["train", "--text", &binary, "--out", o], "UTF-8"),
        (vec!["train", "--text", &nul, "--out", o], "binary"),
        (vec!["train", "--text", &short, "--out", o], "too short"),
        (vec!["train", "--text", t, "--lr=-1", "--out", o], "--lr"),
        (
            vec!["train", "--text", t, "--dropout", "1.5", "--out", o],
            "--dropout",
        ),
        (
            vec!["train", "--text", t, "--batch", "0", "--out", o],
            "--batch",
        ),
        (
            vec!["train", "--text", t, "--cell", "transformer", "--out", o],
            "transformer",
        ),
        (
            vec!["train", "--text", t, "--resume", t, "--out", o],
            "safetensors",
        ),
        (vec!["sample", "--checkpoint", t], "safetensors"),
        (
            vec!["sample", "--checkpoint", "/no/such.safetensors"],
            "no/such",
        ),
    ];
    for (args, needle) in cases {
        let r = recur(&args);
        let err = s(&r.stderr);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: `{err}` lacks `{needle}`");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    let dir = temp_dir("sigint");
    let text = corpus(&dir);
    let out = dir.join("run");
    let mut args = vec![
        "train".to_string(),
        "--text".into(),
        text.to_str().unwrap().into(),
        "--steps".into(),
        "1000000".into(),
        "--out".into(),
        out.to_str().unwrap().into(),
    ];
    args.extend(SMALL.iter().map(|a| a.to_string()));
    let child = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let err = s(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("interrupted at step"), "{err}");
    let step: usize = err
        .split("interrupted at step ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(step > 0);
    let ckpt = out.join("last.safetensors");
    let target = (step + 5).to_string();
    let mut args = vec![
        "train",
        "--text",
        text.to_str().unwrap(),
        "--steps",
        &target,
    ];
    args.extend([
        "--out",
        out.to_str().unwrap(),
        "--resume",
        ckpt.to_str().unwrap(),
    ]);
    args.extend_from_slice(SMALL);
    let args: Vec<&str> = args.into_iter().filter(|a| *a != "--quiet").collect();
    let r = recur(&args);
    assert!(r.status.success(), "{}", s(&r.stderr));
    assert!(
        s(&r.stdout).contains(&format!("done: step {target}")),
        "{}",
        s(&r.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Copies checkpoint `src` to `dst` with its config JSON changed by `f`.
fn tamper_config(src: &Path, dst: &Path, f: impl Fn(&mut serde_json::Value)) {
    use recur::io::{Archive, Entry, StoredDtype, atomic_write, to_bytes};
    let a = Archive::read(src).unwrap();
    let floats: Vec<(String, recur::Tensor<f32>)> = a
        .tensors
        .iter()
        .filter(|(_, t)| t.dtype() == StoredDtype::F32)
        .map(|(n, t)| (n.clone(), t.to_tensor(n).unwrap()))
        .collect();
    let ints: Vec<(String, Vec<i64>)> = a
        .tensors
        .iter()
        .filter(|(_, t)| t.dtype() == StoredDtype::I64)
        .map(|(n, t)| (n.clone(), t.to_i64(n).unwrap()))
        .collect();
    let mut entries: Vec<(String, Entry<'_, f32>)> = floats
        .iter()
        .map(|(n, t)| (n.clone(), Entry::Float(t)))
        .collect();
    entries.extend(ints.iter().map(|(n, v)| (n.clone(), Entry::I64(v))));
    let mut md = a.metadata.clone();
    let mut config: serde_json::Value = serde_json::from_str(&md["config"]).unwrap();
    f(&mut config);
    md.insert("config".into(), config.to_string());
    atomic_write(dst, &to_bytes(&entries, &md).unwrap()).unwrap();
}

#[test]
fn a_checkpoint_whose_config_lies_about_its_size_is_refused() {
    let dir = temp_dir("lying");
    let text = corpus(&dir);
    let out = dir.join("run");
    let mut args = vec!["train", "--text", text.to_str().unwrap(), "--steps", "5"];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend_from_slice(SMALL);
    assert!(recur(&args).status.success());
    let good = out.join("last.safetensors");
    // the untouched copy round-trips through the tamper helper and still loads
    let same = dir.join("same.safetensors");
    tamper_config(&good, &same, |_| {});
    let ok = recur(&[
        "sample",
        "--checkpoint",
        same.to_str().unwrap(),
        "--length",
        "5",
    ]);
    assert!(ok.status.success(), "{}", s(&ok.stderr));
    for (key, value) in [("hidden", 1_000_000_000u64), ("layers", 3), ("embed", 9)] {
        let bad = dir.join(format!("bad_{key}.safetensors"));
        tamper_config(&good, &bad, |c| c["model"][key] = value.into());
        let before = std::fs::read(&bad).unwrap();
        let r = recur(&["sample", "--checkpoint", bad.to_str().unwrap()]);
        let err = s(&r.stderr);
        assert!(!r.status.success());
        assert!(err.contains("does not match"), "{key}: {err}");
        assert_eq!(std::fs::read(&bad).unwrap(), before);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
