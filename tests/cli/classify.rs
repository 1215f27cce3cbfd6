//! `recur classify train` and `recur classify predict` end to end: learning a synthetic
//! task, the per-class table, one label per line, exact resume, and one clear line for bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{output_text, temp_dir};
use crate::{PORTABLE_BF16, recur, recur_with_env};
use recur::Rng;

/// `n` words, each of one of two alphabets that share two letters: (label, word).
fn words(n: usize, seed: u64) -> Vec<(&'static str, String)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let (label, letters) = if rng.below(2) == 0 {
                ("west", "abcdefmn")
            } else {
                ("east", "tuvwxymn")
            };
            let len = 3 + rng.below(6);
            let word = (0..len)
                .map(|_| letters.as_bytes()[rng.below(letters.len())] as char)
                .collect();
            (label, word)
        })
        .collect()
}

fn write_tsv(path: &Path, rows: &[(&str, String)]) {
    let text: String = rows.iter().map(|(l, w)| format!("{l}\t{w}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Writes train.tsv (400 words) and valid.tsv (100 words) into `dir`.
fn dataset(dir: &Path) -> (PathBuf, PathBuf) {
    let (train, valid) = (dir.join("train.tsv"), dir.join("valid.tsv"));
    write_tsv(&train, &words(400, 1));
    write_tsv(&valid, &words(100, 2));
    (train, valid)
}

const SMALL: &[&str] = &[
    "--hidden",
    "16",
    "--embed",
    "8",
    "--batch",
    "16",
    "--lr",
    "0.02",
    "--threads",
    "1",
];

fn train(train: &Path, valid: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["classify", "train"];
    args.extend(["--train", train.to_str().unwrap()]);
    args.extend(["--valid", valid.to_str().unwrap()]);
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    recur(&args)
}

fn predict(checkpoint: &Path, input: &Path) -> Output {
    recur(&[
        "classify",
        "predict",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ])
}

#[test]
fn learns_two_alphabets_and_predicts_a_table_and_labels() {
    let dir = temp_dir("cli-classify-learn");
    let (tr, va) = dataset(&dir);
    let out = dir.join("run");
    let o = train(&tr, &va, &out, &["--epochs", "4", "--json"]);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    let lines: Vec<serde_json::Value> = output_text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    // One line per epoch (validation), then the summary.
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[3]["step"], 4 * 25);
    let last = &lines[4];
    assert_eq!(last["done"], true);
    let acc = last["val_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.95, "validation accuracy {acc}");
    let train_loss = |k: usize| lines[k]["train_loss"].as_f64().unwrap();
    assert!(train_loss(3) < train_loss(0) / 4.0, "{lines:?}");
    assert!(last["best_val_loss"].as_f64().unwrap() < 0.3, "{lines:?}");
    for f in ["best.safetensors", "last.safetensors"] {
        assert!(out.join(f).exists(), "{f} missing");
    }

    // Labelled input: accuracy and one row per class with its count.
    let o = predict(&out.join("best.safetensors"), &va);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    let report = output_text(&o.stdout);
    let rows: Vec<&str> = report.lines().collect();
    assert_eq!(rows.len(), 4, "{report}");
    assert!(rows[0].starts_with("accuracy "), "{report}");
    let pct: f64 = rows[0]["accuracy ".len()..]
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pct >= 95.0, "{report}");
    assert!(rows[1].contains("precision") && rows[1].contains("recall"));
    let truth = words(100, 2);
    for (row, label) in rows[2..].iter().zip(["east", "west"]) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], label, "{report}");
        let count = truth.iter().filter(|(l, _)| *l == label).count();
        assert_eq!(cols[3], count.to_string(), "{report}");
    }

    // Unlabelled input: one label per line, in order.
    let plain = dir.join("plain.txt");
    let text: String = truth.iter().map(|(_, w)| format!("{w}\n")).collect();
    std::fs::write(&plain, text).unwrap();
    let o = predict(&out.join("best.safetensors"), &plain);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    let labels: Vec<String> = output_text(&o.stdout).lines().map(str::to_string).collect();
    assert_eq!(labels.len(), truth.len());
    let right = labels
        .iter()
        .zip(&truth)
        .filter(|(p, (l, _))| p == l)
        .count();
    assert!(right >= 95, "{right} of 100 right");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn word_tokens_with_a_bidirectional_lstm() {
    let dir = temp_dir("cli-classify-words");
    let pick = |rng: &mut Rng, from: &[&str]| from[rng.below(from.len())].to_string();
    let mut rng = Rng::new(5);
    let mut rows = Vec::new();
    for _ in 0..200 {
        let (label, nouns) = if rng.below(2) == 0 {
            ("pets", ["cat", "dog", "hamster"])
        } else {
            ("fruit", ["apple", "pear", "plum"])
        };
        let text = format!(
            "the {} is {}",
            pick(&mut rng, &nouns),
            pick(&mut rng, &["nice", "here", "old"])
        );
        rows.push((label, text));
    }
    let (tr, va) = (dir.join("train.tsv"), dir.join("valid.tsv"));
    write_tsv(&tr, &rows[..150]);
    write_tsv(&va, &rows[150..]);
    let out = dir.join("run");
    let o = train(
        &tr,
        &va,
        &out,
        &[
            "--tokens",
            "word",
            "--cell",
            "lstm",
            "--bidirectional",
            "--epochs",
            "8",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    let stdout = output_text(&o.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "--quiet prints one line: {stdout}"
    );
    assert!(stdout.contains("validation accuracy 100.00%"), "{stdout}");
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, "the pear is nice\nthe dog is unknownword\n").unwrap();
    let o = predict(&out.join("best.safetensors"), &plain);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    assert_eq!(output_text(&o.stdout), "fruit\npets\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_continues_bit_for_bit() {
    let dir = temp_dir("cli-classify-resume");
    let (tr, va) = dataset(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    // 25 steps per epoch: both runs validate at the same steps (25, 50, 75), so the trainer's
    // record of the best loss is the same too.
    let o = train(&tr, &va, &a, &["--steps", "75", "--quiet"]);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    let o = train(&tr, &va, &b, &["--steps", "50", "--quiet"]);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    let at_50 = std::fs::read(b.join("last.safetensors")).unwrap();
    let resume = b.join("last.safetensors");
    let o = train(
        &tr,
        &va,
        &b,
        &[
            "--steps",
            "75",
            "--quiet",
            "--resume",
            resume.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    assert!(
        output_text(&o.stdout).contains("done: step 75"),
        "{}",
        output_text(&o.stdout)
    );
    for f in ["last.safetensors", "best.safetensors"] {
        let (fa, fb) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(
            fa == fb,
            "{f}: the resumed run differs from the uninterrupted one"
        );
    }
    assert!(
        at_50 != std::fs::read(b.join("last.safetensors")).unwrap(),
        "steps 51..75 changed nothing"
    );
    // Flags other than the checkpoint's are named, and nothing is written.
    let at_75 = std::fs::read(&resume).unwrap();
    let resumed = |extra: &[&str]| {
        let mut args = vec!["classify", "train", "--steps", "80", "--quiet"];
        args.extend([
            "--train",
            tr.to_str().unwrap(),
            "--valid",
            va.to_str().unwrap(),
        ]);
        args.extend([
            "--out",
            b.to_str().unwrap(),
            "--resume",
            resume.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        recur(&args)
    };
    one_line_error(
        &resumed(&["--hidden", "64", "--batch", "4", "--embed", "8"]),
        &["--hidden 64 (checkpoint: 16)", "--batch 4 (checkpoint: 16)"],
    );
    one_line_error(
        &resumed(&[
            "--seed", "3", "--cell", "lstm", "--lr", "0.5", "--batch", "16",
        ]),
        &[
            "--seed 3 (checkpoint: 0)",
            "--cell lstm (checkpoint: gru)",
            "--lr 0.5 (checkpoint: 0.02)",
        ],
    );
    let err = output_text(&resumed(&["--lr", "0.5", "--batch", "16"]).stderr);
    assert!(
        !err.contains("--embed") && !err.contains("--batch"),
        "{err}"
    );
    assert_eq!(std::fs::read(&resume).unwrap(), at_75);
    let _ = std::fs::remove_dir_all(&dir);
}

fn one_line_error(o: &Output, needles: &[&str]) {
    let err = output_text(&o.stderr);
    assert!(!o.status.success(), "succeeded: {}", output_text(&o.stdout));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "`{err}` lacks `{n}`");
    }
    assert!(
        o.stdout.is_empty(),
        "wrote to stdout: {}",
        output_text(&o.stdout)
    );
}

#[test]
fn bad_input_gives_one_line_and_writes_nothing() {
    let dir = temp_dir("cli-classify-bad");
    let (tr, va) = dataset(&dir);
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let no_tab = file("no_tab.tsv", "west\tabc\neast\tuvw\nwestabc\n");
    let empty = file("empty.tsv", "");
    let empty_text = file("empty_text.tsv", "west\tabc\neast\t  \n");
    let empty_label = file("empty_label.tsv", "west\tabc\n\tuvw\n");
    let new_label = file("new_label.tsv", "west\tabc\n\nnorth\tuvw\n");
    let out = dir.join("never");
    let missing = dir.join("missing.tsv");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(&Path, &Path, Vec<&str>)> = vec![
        (&no_tab, &va, vec!["no_tab.tsv", "line 3", "no tab"]),
        (&tr, &no_tab, vec!["no_tab.tsv", "line 3", "no tab"]),
        (&empty, &va, vec!["empty.tsv", "no examples"]),
        (
            &empty_text,
            &va,
            vec!["empty_text.tsv", "line 2", "empty text"],
        ),
        (
            &empty_label,
            &va,
            vec!["empty_label.tsv", "line 2", "empty label"],
        ),
        (
            &tr,
            &new_label,
            vec!["new_label.tsv", "line 3", "unknown label \"north\""],
        ),
        (&tr, &missing, vec!["missing.tsv"]),
    ];
    for (t, v, needles) in cases {
        one_line_error(&train(t, v, &out, &["--steps", "2"]), &needles);
        assert!(!out.exists(), "{needles:?}: {} was created", out.display());
    }
    one_line_error(
        &train(&tr, &va, &out, &["--steps", "2", "--hidden", "0"]),
        &["--hidden"],
    );

    // A classifier checkpoint, and one of `recur train`.
    let run = dir.join("run");
    let o = train(&tr, &va, &run, &["--steps", "3", "--quiet"]);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    let ckpt = run.join("last.safetensors");
    let text = file("corpus.txt", &"the cat sees the moon.\n".repeat(300));
    let lm = dir.join("lm");
    let o = recur(&[
        "train",
        "--text",
        &p(&text),
        "--out",
        &p(&lm),
        "--steps",
        "2",
        "--hidden",
        "8",
        "--layers",
        "1",
        "--embed",
        "4",
        "--seq-len",
        "8",
        "--batch",
        "2",
        "--eval-every",
        "2",
        "--sample-every",
        "0",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    let lm_ckpt = lm.join("last.safetensors");

    // Predict: unknown labels, malformed lines, blank lines, wrong checkpoints.
    let unknown = file("unknown.tsv", "west\tabc\nsouth\tuvw\n");
    one_line_error(
        &predict(&ckpt, &unknown),
        &[
            "unknown.tsv",
            "line 2",
            "unknown label \"south\"",
            "east, west",
        ],
    );
    let mixed = file("mixed.tsv", "west\tabc\nuvw\n");
    one_line_error(&predict(&ckpt, &mixed), &["mixed.tsv", "line 2", "no tab"]);
    let blank = file("blank.txt", "abc\n\nuvw\n");
    one_line_error(
        &predict(&ckpt, &blank),
        &["blank.txt", "line 2", "empty text"],
    );
    one_line_error(&predict(&ckpt, &empty), &["empty.tsv", "no texts"]);
    one_line_error(
        &predict(&lm_ckpt, &va),
        &["not a text classifier checkpoint"],
    );
    one_line_error(
        &predict(&dir.join("none.safetensors"), &va),
        &["none.safetensors"],
    );
    one_line_error(&predict(&tr, &va), &["train.tsv"]);
    // The other way round: `recur sample` and `recur train --resume` refuse a classifier.
    one_line_error(
        &recur(&["sample", "--checkpoint", &p(&ckpt)]),
        &["not a `recur train` checkpoint"],
    );
    let lm2 = dir.join("lm2");
    one_line_error(
        &recur(&[
            "train",
            "--text",
            &p(&text),
            "--out",
            &p(&lm2),
            "--resume",
            &p(&ckpt),
        ]),
        &["not a `recur train` checkpoint"],
    );
    assert!(!lm2.exists());
    // And a classifier run refuses to resume from a language model.
    one_line_error(
        &train(&tr, &va, &out, &["--steps", "2", "--resume", &p(&lm_ckpt)]),
        &["not a text classifier checkpoint"],
    );
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--precision bf16` (on the portable kernel): the classifier learns as in f32, and a
/// checkpoint trained so predicts as any other.
#[test]
fn learns_in_bf16() {
    let dir = temp_dir("cli-classify-bf16");
    let (tr, va) = dataset(&dir);
    let out = dir.join("run");
    let mut args = vec!["classify", "train"];
    args.extend([
        "--train",
        tr.to_str().unwrap(),
        "--valid",
        va.to_str().unwrap(),
    ]);
    args.extend(["--out", out.to_str().unwrap(), "--epochs", "4", "--json"]);
    args.extend(["--precision", "bf16"]);
    args.extend_from_slice(SMALL);
    let o = recur_with_env(&args, &[PORTABLE_BF16]);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    let last: serde_json::Value =
        serde_json::from_str(output_text(&o.stdout).lines().last().unwrap()).unwrap();
    let acc = last["val_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.95, "validation accuracy {acc} in bf16");
    let o = predict(&out.join("best.safetensors"), &va);
    assert!(o.status.success(), "{}", output_text(&o.stderr));
    assert!(output_text(&o.stdout).starts_with("accuracy "));
    let _ = std::fs::remove_dir_all(&dir);
}
