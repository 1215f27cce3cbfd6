//! `recur train` and `recur classify train` under `mpirun` (the `mpi` feature; Open MPI's
//! `mpirun` on the PATH): 1, 2 and 4 ranks write the same checkpoints, byte for byte, as one
//! process with the same micro-batches; a run resumes with another number of ranks; a failing
//! rank ends the job.

#![cfg(feature = "mpi")]

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const RECUR: &str = env!("CARGO_BIN_EXE_recur");

/// `recur args` in one process (no mpirun), or under `mpirun -n ranks`.
fn run(ranks: Option<usize>, args: &[&str]) -> Output {
    let mut cmd = match ranks {
        None => Command::new(RECUR),
        Some(n) => {
            let mut c = Command::new("mpirun");
            c.args(["--allow-run-as-root", "--oversubscribe", "-n"])
                .arg(n.to_string())
                .arg(RECUR);
            c
        }
    };
    cmd.args(args).output().expect("mpirun runs")
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        common::output_text(&out.stdout),
        common::output_text(&out.stderr)
    );
    out
}

/// Asserts that `out` failed and that its stderr holds `needle`; returns the stderr.
fn fails_with(out: Output, needle: &str) -> String {
    assert!(!out.status.success(), "the run succeeded");
    let err = common::output_text(&out.stderr);
    assert!(err.contains(needle), "{err}");
    err
}

/// Asserts that `out` failed within 30 s of `start`, with exactly one error line of a rank on
/// stderr, which starts with `prefix`; returns that line.
fn one_rank_error(out: Output, start: Instant, prefix: &str) -> String {
    assert!(!out.status.success(), "the run succeeded");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let err = common::output_text(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("recur: rank"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with(prefix), "{err}");
    lines[0].to_string()
}

fn text_file(dir: &Path) -> PathBuf {
    let words = [
        "north",
        "wind",
        "and",
        "the",
        "sun",
        "were",
        "disputing",
        "which",
    ];
    let mut x = 7u64;
    let text: Vec<&str> = (0..5000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            words[(x >> 33) as usize % words.len()]
        })
        .collect();
    let path = dir.join("text.txt");
    std::fs::write(&path, text.join(" ")).unwrap();
    path
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The arguments of a small `recur train` run into `out`.
fn lm_args<'a>(text: &'a str, cell: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--text",
        text,
        "--cell",
        cell,
        "--hidden",
        "24",
        "--layers",
        "2",
        "--embed",
        "8",
        "--batch",
        "8",
        "--seq-len",
        "16",
        "--steps",
        steps,
        "--eval-every",
        "5",
        "--sample-every",
        "0",
        "--dropout",
        "0.1",
        "--micro-batches",
        "4",
        "--threads",
        "1",
        "--quiet",
        "--out",
        out,
    ]
}

#[test]
fn lm_ranks_write_the_checkpoints_of_one_process() {
    let dir = common::temp_dir("mpi-lm");
    let text = text_file(&dir);
    let text = text.to_str().unwrap();
    for cell in ["lstm", "gru"] {
        let single = dir.join(format!("{cell}-single"));
        ok(
            run(None, &lm_args(text, cell, single.to_str().unwrap(), "10")),
            "one process",
        );
        for n in [1, 2, 4] {
            let out = dir.join(format!("{cell}-{n}"));
            let o = ok(
                run(Some(n), &lm_args(text, cell, out.to_str().unwrap(), "10")),
                &format!("{n} ranks"),
            );
            // Rank 0 alone prints: one final line.
            let stdout = common::output_text(&o.stdout);
            assert_eq!(stdout.matches("done: step 10").count(), 1, "{stdout}");
            for file in ["last.safetensors", "best.safetensors", "loss.csv"] {
                assert!(
                    bytes(&single.join(file)) == bytes(&out.join(file)),
                    "{cell}: {file} of {n} ranks differs from one process's"
                );
            }
        }
    }
    // Without micro-batches the step is another computation: the comparison above can fail.
    let plain = dir.join("plain");
    let mut args = lm_args(text, "gru", plain.to_str().unwrap(), "10");
    args.truncate(args.len() - 2);
    let at = args.iter().position(|a| *a == "--micro-batches").unwrap();
    args.drain(at..at + 2);
    args.extend(["--out", plain.to_str().unwrap()]);
    ok(run(None, &args), "plain");
    assert!(
        bytes(&plain.join("last.safetensors")) != bytes(&dir.join("gru-single/last.safetensors"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lm_run_resumes_with_another_number_of_ranks() {
    let dir = common::temp_dir("mpi-resume");
    let text = text_file(&dir);
    let text = text.to_str().unwrap();
    let whole = dir.join("whole");
    ok(
        run(None, &lm_args(text, "lstm", whole.to_str().unwrap(), "10")),
        "one process",
    );
    let split = dir.join("split");
    let split_s = split.to_str().unwrap();
    ok(
        run(Some(4), &lm_args(text, "lstm", split_s, "5")),
        "4 ranks",
    );
    let last = split.join("last.safetensors");
    let mut args = lm_args(text, "lstm", split_s, "10");
    args.extend(["--resume", last.to_str().unwrap()]);
    ok(run(Some(2), &args), "resumed on 2 ranks");
    assert!(bytes(&whole.join("last.safetensors")) == bytes(&last));
    // The checkpoint records its micro-batches: another count is refused.
    let mut args = lm_args(text, "lstm", split_s, "12");
    args.extend(["--resume", last.to_str().unwrap()]);
    let at = args.iter().position(|a| *a == "4").unwrap();
    args[at] = "2";
    fails_with(
        run(Some(2), &args),
        "--micro-batches 2 differs from the checkpoint's 4",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn classifier_ranks_write_the_checkpoints_of_one_process() {
    let dir = common::temp_dir("mpi-classify");
    let mut lines = Vec::new();
    for i in 0..90 {
        let (label, word) = if i % 3 == 0 {
            ("a", "alpha")
        } else {
            ("b", "beta")
        };
        lines.push(format!("{label}\t{word} {} {word}", "x".repeat(1 + i % 7)));
    }
    let train = dir.join("train.tsv");
    std::fs::write(&train, lines.join("\n")).unwrap();
    let args = |out: &str| -> Vec<String> {
        [
            "classify",
            "train",
            "--train",
            train.to_str().unwrap(),
            "--valid",
            train.to_str().unwrap(),
            "--cell",
            "lstm",
            "--hidden",
            "16",
            "--embed",
            "8",
            "--batch",
            "16",
            "--epochs",
            "2",
            "--micro-batches",
            "4",
            "--threads",
            "1",
            "--quiet",
            "--out",
            out,
        ]
        .map(String::from)
        .to_vec()
    };
    let single = dir.join("single");
    let a = args(single.to_str().unwrap());
    ok(
        run(None, &a.iter().map(String::as_str).collect::<Vec<_>>()),
        "one process",
    );
    for n in [2, 4] {
        let out = dir.join(format!("r{n}"));
        let a = args(out.to_str().unwrap());
        ok(
            run(Some(n), &a.iter().map(String::as_str).collect::<Vec<_>>()),
            &format!("{n} ranks"),
        );
        assert!(bytes(&single.join("last.safetensors")) == bytes(&out.join("last.safetensors")));
        assert!(bytes(&single.join("best.safetensors")) == bytes(&out.join("best.safetensors")));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn allreduce_combines_up_to_rounding() {
    let dir = common::temp_dir("mpi-allreduce");
    let text = text_file(&dir);
    let text = text.to_str().unwrap();
    let with = |out: &Path, micro: &'static str, combine: &'static str| -> Vec<String> {
        let mut a: Vec<String> = lm_args(text, "lstm", out.to_str().unwrap(), "10")
            .into_iter()
            .map(String::from)
            .collect();
        let at = a.iter().position(|x| x == "--micro-batches").unwrap();
        a[at + 1] = micro.into();
        a.extend(["--combine".into(), combine.into()]);
        a
    };
    // Two ranks of one micro-batch each: the all-reduce adds the same two terms as the chain.
    let (ordered, reduced) = (dir.join("ordered2"), dir.join("reduced2"));
    ok(
        run(Some(2), &strs(&with(&ordered, "2", "ordered"))),
        "2 ranks, ordered",
    );
    ok(
        run(Some(2), &strs(&with(&reduced, "2", "allreduce"))),
        "2 ranks, allreduce",
    );
    assert!(bytes(&ordered.join("last.safetensors")) == bytes(&reduced.join("last.safetensors")));
    // Four ranks: the validation losses agree with the fixed order's to rounding.
    let (ordered, reduced) = (dir.join("ordered4"), dir.join("reduced4"));
    ok(
        run(Some(4), &strs(&with(&ordered, "4", "ordered"))),
        "4 ranks, ordered",
    );
    ok(
        run(Some(4), &strs(&with(&reduced, "4", "allreduce"))),
        "4 ranks, allreduce",
    );
    let val = |dir: &Path| -> Vec<f64> {
        let csv = std::fs::read_to_string(dir.join("loss.csv")).unwrap();
        csv.lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(2)?.parse().ok())
            .collect()
    };
    let (a, b) = (val(&ordered), val(&reduced));
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "{a:?} against {b:?}");
    }
    fails_with(
        run(Some(2), &strs(&with(&reduced, "2", "tree"))),
        "`tree` is not a way to combine",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn micro_batches_must_divide_among_the_ranks() {
    let dir = common::temp_dir("mpi-divide");
    let text = text_file(&dir);
    let out = dir.join("out");
    fails_with(
        run(
            Some(3),
            &lm_args(text.to_str().unwrap(), "gru", out.to_str().unwrap(), "4"),
        ),
        "rank 0 of 3: --micro-batches 4 must be a positive multiple of the 3",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_rank_ends_the_job() {
    let dir = common::temp_dir("mpi-fault");
    let text = text_file(&dir);
    // Rank 0 cannot write its output (a file stands where the directory should be); the other
    // ranks are already waiting for it in the first step.
    let out = dir.join("blocked");
    std::fs::write(&out, "not a directory").unwrap();
    let start = Instant::now();
    let o = run(
        Some(2),
        &lm_args(text.to_str().unwrap(), "gru", out.to_str().unwrap(), "4"),
    );
    one_rank_error(o, start, "recur: rank 0 of 2: ");

    // Bad input on one rank only (its own --text, which does not exist): rank 1 names itself
    // and the file, and rank 0, already in the first step, does not wait for it.
    let good = dir.join("good");
    let missing = dir.join("missing.txt");
    let start = Instant::now();
    let o = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-n", "1"])
        .arg(RECUR)
        .args(lm_args(
            text.to_str().unwrap(),
            "gru",
            good.to_str().unwrap(),
            "1000000",
        ))
        .args([":", "-n", "1"])
        .arg(RECUR)
        .args(lm_args(
            missing.to_str().unwrap(),
            "gru",
            good.to_str().unwrap(),
            "1000000",
        ))
        .output()
        .unwrap();
    let line = one_rank_error(o, start, "recur: rank 1 of 2: ");
    assert!(line.contains("missing.txt"), "{line}");

    // A rank killed in the middle of training ends the job too: mpirun names it.
    let out = dir.join("killed");
    let mut args = lm_args(
        text.to_str().unwrap(),
        "lstm",
        out.to_str().unwrap(),
        "1000000",
    );
    let hidden = args.iter().position(|a| *a == "24").unwrap();
    args[hidden] = "64";
    let marker = format!("recur-test-{}", std::process::id());
    let child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-n", "2", "-x"])
        .arg(format!("RECUR_TEST_MARKER={marker}"))
        .arg(RECUR)
        .args(&args)
        .env("RECUR_TEST_MARKER", &marker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training runs (the first checkpoint is written), then kill rank 1.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join("last.safetensors").exists() {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = rank_pid(&marker, 1).expect("rank 1 runs");
    let killed = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "{:?}",
        killed.elapsed()
    );
    let err = common::output_text(&o.stderr);
    assert!(err.contains("rank 1"), "{err}");
    // The checkpoint rank 0 last wrote is whole: it loads and samples.
    let sample = Command::new(RECUR)
        .args(["sample", "--checkpoint"])
        .arg(out.join("last.safetensors"))
        .args(["--length", "20"])
        .output()
        .unwrap();
    let sample = ok(sample, "sampling the checkpoint of the killed run");
    assert!(!sample.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_to_mpirun_stops_every_rank_at_one_step() {
    let dir = common::temp_dir("mpi-sigterm");
    let text = text_file(&dir);
    let out = dir.join("out");
    let child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-n", "2"])
        .arg(RECUR)
        .args(lm_args(
            text.to_str().unwrap(),
            "lstm",
            out.to_str().unwrap(),
            "1000000",
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join("last.safetensors").exists() {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(sent.elapsed() < Duration::from_secs(20));
    // Rank 0 saved the step every rank stopped at, and said so once.
    let err = common::output_text(&o.stderr);
    assert_eq!(err.matches("interrupted at step").count(), 1, "{err}");
    assert!(err.contains("(SIGTERM, exit status 143)"), "{err}");
    let sample = Command::new(RECUR)
        .args(["sample", "--checkpoint"])
        .arg(out.join("last.safetensors"))
        .args(["--length", "20"])
        .output()
        .unwrap();
    ok(sample, "sampling the checkpoint of the stopped run");
    let _ = std::fs::remove_dir_all(&dir);
}

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// The process id of the rank `rank` of the job whose environment holds `marker`.
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    let want_marker = format!("RECUR_TEST_MARKER={marker}");
    let want_rank = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        let has = |s: &str| vars.contains(&s.as_bytes());
        if has(&want_marker) && has(&want_rank) {
            return Some(pid);
        }
    }
    None
}
