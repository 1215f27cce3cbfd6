//! Checkpoints: round trip, every kind of bad file refused with a clear error and nothing
//! changed (neither the file nor the model), and an exact resume in a new process.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::temp_dir;
use recur::io::checkpoint::CHECKSUM_KEY;
use recur::io::checkpoint::{CheckpointInfo, expect_config, load_checkpoint, save_checkpoint};
use recur::io::{Archive, Entry, StoredDtype, save_params, to_bytes, to_bytes_with_checksum};
use recur::nn::loss::sequence_cross_entropy;
use recur::nn::{CellKind, ForwardOptions, Recurrent, RecurrentConfig};
use recur::optim::{
    Adam, AdamConfig, LrSchedule, Optimizer, Sgd, SgdConfig, WarmupCosine, clip_grad_norm,
};
use recur::{Float, ParamId, ParamStore, Rng, Tape, Tensor};

const IN: usize = 3;
const VOCAB: usize = 5;
const T_LEN: usize = 6;
const BATCH: usize = 4;

struct Model {
    rnn: Recurrent,
    head_w: ParamId,
    head_b: ParamId,
}

fn config_json(kind: CellKind, hidden: usize) -> String {
    format!(
        r#"{{"cell":"{}","input_size":{IN},"hidden_size":{hidden},"num_layers":2,"vocab":{VOCAB}}}"#,
        kind.name()
    )
}

fn build<T: Float>(kind: CellKind, hidden: usize, seed: u64) -> (ParamStore<T>, Model) {
    let mut ps = ParamStore::new();
    let mut rng = Rng::new(seed);
    let cfg = RecurrentConfig::new(IN, hidden).num_layers(2).dropout(0.25);
    let rnn = Recurrent::new(&mut ps, "rnn.", kind, cfg, &mut rng).unwrap();
    let b = 1.0 / (hidden as f64).sqrt();
    let head_w = ps
        .add(
            "head.weight",
            Tensor::from_fn(&[VOCAB, hidden], |_| T::from_f64(rng.uniform_range(-b, b))).unwrap(),
        )
        .unwrap();
    let head_b = ps
        .add("head.bias", Tensor::zeros(&[VOCAB]).unwrap())
        .unwrap();
    (
        ps,
        Model {
            rnn,
            head_w,
            head_b,
        },
    )
}

const TOTAL_STEPS: usize = 12;

fn schedule() -> WarmupCosine {
    WarmupCosine::new(0.02, 0.1, 3, TOTAL_STEPS, 1e-4).unwrap()
}

/// Training steps `from..to`: the batch of step `s` is drawn from `Rng::new(1000 + s)`, dropout
/// masks from `rng`, the learning rate from the schedule, gradients clipped to norm 1.
fn train(
    ps: &mut ParamStore<f64>,
    m: &Model,
    opt: &mut dyn Optimizer<f64>,
    rng: &mut Rng,
    from: usize,
    to: usize,
) {
    let mut tape = Tape::new();
    let sched = schedule();
    for s in from..to {
        let mut data = Rng::new(1000 + s as u64);
        let x = Tensor::from_fn(&[T_LEN, BATCH, IN], |_| data.normal()).unwrap();
        let targets: Vec<usize> = (0..T_LEN * BATCH).map(|_| data.below(VOCAB)).collect();
        let lengths: Vec<usize> = (0..BATCH).map(|_| 1 + data.below(T_LEN)).collect();
        tape.clear();
        let xv = tape.constant(x);
        let opts = ForwardOptions {
            lengths: Some(&lengths),
            dropout_rng: Some(&mut *rng),
            ..Default::default()
        };
        let out = m.rnn.forward(&mut tape, ps, xv, opts).unwrap();
        let h = m.rnn.config().hidden_size;
        let y = tape.reshape(out.y, &[T_LEN * BATCH, h]).unwrap();
        let w = tape.param(ps, m.head_w).unwrap();
        let b = tape.param(ps, m.head_b).unwrap();
        let logits = tape.matmul_t(y, false, w, true).unwrap();
        let logits = tape.add(logits, b).unwrap();
        let logits = tape.reshape(logits, &[T_LEN, BATCH, VOCAB]).unwrap();
        let loss = sequence_cross_entropy(&mut tape, logits, &targets, Some(&lengths)).unwrap();
        let mut grads = tape.backward(loss).unwrap();
        clip_grad_norm(&mut grads, 1.0).unwrap();
        opt.set_lr(sched.lr_at(s));
        opt.step(ps, &grads).unwrap();
    }
}

fn adam() -> Adam<f64> {
    Adam::new(AdamConfig::default()).unwrap()
}

/// A trained LSTM checkpoint at step 3, and what was saved.
fn saved_lstm(dir: &Path) -> (PathBuf, ParamStore<f64>, Adam<f64>, Rng) {
    let (mut ps, m) = build::<f64>(CellKind::Lstm, 4, 1);
    let mut opt = adam();
    let mut rng = Rng::new(77);
    train(&mut ps, &m, &mut opt, &mut rng, 0, 3);
    let path = dir.join("lstm.ckpt");
    let info = CheckpointInfo {
        config: config_json(CellKind::Lstm, 4),
        step: 3,
        schedule_step: 3,
    };
    save_checkpoint(&path, &ps, &opt, &rng, &info).unwrap();
    (path, ps, opt, rng)
}

fn same_store(a: &ParamStore<f64>, b: &ParamStore<f64>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(id, n, t)| b.name(id) == n && b.get(id).data() == t.data())
}

fn same_state(a: &dyn Optimizer<f64>, b: &dyn Optimizer<f64>, ps: &ParamStore<f64>) -> bool {
    let (x, y) = (a.state_tensors(ps), b.state_tensors(ps));
    x.len() == y.len()
        && x.iter()
            .zip(&y)
            .all(|((n1, t1), (n2, t2))| n1 == n2 && t1.data() == t2.data())
        && a.state_scalars() == b.state_scalars()
}

#[test]
fn round_trip_restores_everything() {
    let dir = temp_dir("ckpt-roundtrip");
    let (path, ps, opt, rng) = saved_lstm(&dir);
    let (mut ps2, _) = build::<f64>(CellKind::Lstm, 4, 99);
    assert!(!same_store(&ps, &ps2));
    let mut opt2 = adam();
    let mut rng2 = Rng::new(0);
    let info = load_checkpoint(
        &path,
        &mut ps2,
        &mut opt2,
        &mut rng2,
        expect_config(&config_json(CellKind::Lstm, 4)),
    )
    .unwrap();
    assert_eq!((info.step, info.schedule_step), (3, 3));
    assert!(same_store(&ps, &ps2));
    assert!(same_state(&opt, &opt2, &ps));
    assert!(!opt.state_tensors(&ps).is_empty());
    assert_eq!(rng, rng2);
    // Stored under the documented names.
    let ar = Archive::read(&path).unwrap();
    assert!(ar.tensors.contains_key("model.rnn.weight_hh_l1"));
    assert!(ar.tensors.contains_key("optim.rnn.weight_hh_l1.exp_avg_sq"));
    assert_eq!(ar.get("rng.state").unwrap().dtype(), StoredDtype::I64);
    assert_eq!(ar.meta("kind").unwrap(), "recur-checkpoint");
    std::fs::remove_dir_all(&dir).ok();
}

/// Loads `path` into a fresh LSTM model with `check`, expects an error containing every one of
/// `needles`, and checks that the file and the model, optimizer and generator are unchanged.
fn expect_refused(
    path: &Path,
    hidden: usize,
    kind: CellKind,
    check: &str,
    needles: &[&str],
) -> String {
    let bytes_before = std::fs::read(path).unwrap();
    let (mut ps, _) = build::<f64>(kind, hidden, 5);
    let ps_before = ps.clone();
    let mut opt = adam();
    // Give the optimizer some state of its own, which must survive the failed load.
    let mut tape = Tape::new();
    let first = ps.ids().next().unwrap();
    let v = tape.param(&ps, first).unwrap();
    let l = tape.sum(v).unwrap();
    let g = tape.backward(l).unwrap();
    opt.step(&mut ps, &g).unwrap();
    let ps_before_load = ps.clone();
    assert!(!same_store(&ps_before, &ps_before_load));
    let opt_before = opt.clone();
    let mut rng = Rng::new(123);
    let err = load_checkpoint(path, &mut ps, &mut opt, &mut rng, expect_config(check))
        .unwrap_err()
        .to_string();
    for n in needles {
        assert!(err.contains(n), "error `{err}` should mention `{n}`");
    }
    assert!(same_store(&ps, &ps_before_load), "the model changed: {err}");
    assert!(
        same_state(&opt, &opt_before, &ps),
        "the optimizer changed: {err}"
    );
    assert_eq!(rng, Rng::new(123), "the generator changed: {err}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        bytes_before,
        "the file changed"
    );
    err
}

#[test]
fn truncated_and_random_files_are_refused() {
    let dir = temp_dir("ckpt-corrupt");
    let (path, ..) = saved_lstm(&dir);
    let bytes = std::fs::read(&path).unwrap();
    let cfg = config_json(CellKind::Lstm, 4);
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.join(format!("cut{cut}.ckpt"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        expect_refused(
            &p,
            4,
            CellKind::Lstm,
            &cfg,
            &["not a valid safetensors file"],
        );
    }
    let mut r = Rng::new(4);
    let noise: Vec<u8> = (0..4096).map(|_| r.next_u64() as u8).collect();
    let p = dir.join("noise.ckpt");
    std::fs::write(&p, &noise).unwrap();
    expect_refused(
        &p,
        4,
        CellKind::Lstm,
        &cfg,
        &["not a valid safetensors file"],
    );
    let missing = dir.join("does-not-exist.ckpt");
    let (mut ps, _) = build::<f64>(CellKind::Lstm, 4, 5);
    let err = load_checkpoint(&missing, &mut ps, &mut adam(), &mut Rng::new(1), |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does-not-exist.ckpt"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn wrong_shapes_cell_type_and_config_are_refused() {
    let dir = temp_dir("ckpt-mismatch");
    let (path, ..) = saved_lstm(&dir);
    // A model with another hidden size, config check passing: the shape errors name tensors.
    expect_refused(
        &path,
        5,
        CellKind::Lstm,
        &config_json(CellKind::Lstm, 4),
        &[
            "model.rnn.weight_hh_l0",
            "[16, 4]",
            "[20, 5]",
            "model.head.weight",
        ],
    );
    // The config check names the differing key.
    expect_refused(
        &path,
        4,
        CellKind::Gru,
        &config_json(CellKind::Gru, 4),
        &["another model", "`cell` is \"lstm\", expected \"gru\""],
    );
    // A GRU model whose caller does not check the config: the shapes still differ.
    let (mut ps, _) = build::<f64>(CellKind::Gru, 4, 5);
    let before = ps.clone();
    let err = load_checkpoint(&path, &mut ps, &mut adam(), &mut Rng::new(1), |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.rnn.weight_ih_l0 ") || err.contains("`model.rnn.weight_ih_l0`"));
    assert!(same_store(&ps, &before));
    // Another optimizer.
    let (mut ps, _) = build::<f64>(CellKind::Lstm, 4, 5);
    let mut sgd = Sgd::new(SgdConfig::default().momentum(0.9)).unwrap();
    let err = load_checkpoint(&path, &mut ps, &mut sgd, &mut Rng::new(1), |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`adam`") && err.contains("`sgd`"), "{err}");
    // Another float type.
    let (mut ps32, _) = build::<f32>(CellKind::Lstm, 4, 5);
    let mut adam32 = Adam::<f32>::new(AdamConfig::default()).unwrap();
    let err = load_checkpoint(&path, &mut ps32, &mut adam32, &mut Rng::new(1), |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("F64") && err.contains("F32"), "{err}");
    // A plain parameter file is not a checkpoint.
    let (ps, _) = build::<f64>(CellKind::Lstm, 4, 5);
    let plain = dir.join("plain.safetensors");
    save_params(&ps, &plain, &Default::default()).unwrap();
    expect_refused(&plain, 4, CellKind::Lstm, "{}", &["not a recur checkpoint"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// Rewrites a checkpoint without the tensors `drop` selects, and with `edit` applied to the
/// metadata.
fn rewrite(
    src: &Path,
    dst: &Path,
    drop: impl Fn(&str) -> bool,
    edit: impl FnOnce(&mut recur::io::Metadata),
) {
    let ar = Archive::read(src).unwrap();
    let floats: Vec<(String, Tensor<f64>)> = ar
        .tensors
        .iter()
        .filter(|(n, st)| !drop(n) && st.dtype() == StoredDtype::F64)
        .map(|(n, st)| (n.clone(), st.to_tensor(n).unwrap()))
        .collect();
    let ints: Vec<(String, Vec<i64>)> = ar
        .tensors
        .iter()
        .filter(|(n, st)| !drop(n) && st.dtype() == StoredDtype::I64)
        .map(|(n, st)| (n.clone(), st.to_i64(n).unwrap()))
        .collect();
    let mut entries: Vec<(String, Entry<'_, f64>)> = floats
        .iter()
        .map(|(n, t)| (n.clone(), Entry::Float(t)))
        .collect();
    entries.extend(
        ints.iter()
            .map(|(n, v)| (n.clone(), Entry::I64(v.as_slice()))),
    );
    let mut meta = ar.metadata.clone();
    edit(&mut meta);
    // A file that had a checksum gets the one of its new contents, unless `edit` removed it.
    let bytes = if meta.remove(CHECKSUM_KEY).is_some() {
        to_bytes_with_checksum(&entries, &meta, CHECKSUM_KEY).unwrap()
    } else {
        to_bytes(&entries, &meta).unwrap()
    };
    std::fs::write(dst, bytes).unwrap();
}

#[test]
fn damaged_tensor_data_is_refused_by_its_checksum() {
    let dir = temp_dir("ckpt-checksum");
    let (path, ..) = saved_lstm(&dir);
    let cfg = config_json(CellKind::Lstm, 4);
    let ar = Archive::read(&path).unwrap();
    let sum = ar.meta(CHECKSUM_KEY).unwrap();
    assert!(sum.starts_with("fnv1a64:") && sum.len() == 24, "{sum}");
    assert_eq!(sum, ar.tensor_checksum());
    // One flipped bit in the lowest byte of a stored value: finite, well-formed, but damaged.
    let bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data = 8 + header;
    for offset in [
        data,
        data + (bytes.len() - data) / 2 / 8 * 8,
        bytes.len() - 8,
    ] {
        let mut bad = bytes.clone();
        bad[offset] ^= 1;
        let p = dir.join(format!("flip{offset}.ckpt"));
        std::fs::write(&p, &bad).unwrap();
        expect_refused(
            &p,
            4,
            CellKind::Lstm,
            &cfg,
            &["does not match its checksum"],
        );
    }
    // A file written before checksums existed has none and still loads.
    let old = dir.join("old.ckpt");
    rewrite(
        &path,
        &old,
        |_| false,
        |m| {
            m.remove(CHECKSUM_KEY);
        },
    );
    assert!(Archive::read(&old).unwrap().meta(CHECKSUM_KEY).is_err());
    let (mut ps, _) = build::<f64>(CellKind::Lstm, 4, 5);
    load_checkpoint(
        &old,
        &mut ps,
        &mut adam(),
        &mut Rng::new(1),
        expect_config(&cfg),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = temp_dir("ckpt-nonfinite");
    let (path, ..) = saved_lstm(&dir);
    let cfg = config_json(CellKind::Lstm, 4);
    for (tag, target, value) in [
        ("nan", "model.rnn.weight_hh_l1", f64::NAN),
        ("inf", "model.head.bias", f64::INFINITY),
        ("state", "optim.rnn.weight_ih_l0.exp_avg", f64::NEG_INFINITY),
    ] {
        let ar = Archive::read(&path).unwrap();
        let floats: Vec<(String, Tensor<f64>)> = ar
            .tensors
            .iter()
            .filter(|(_, st)| st.dtype() == StoredDtype::F64)
            .map(|(n, st)| {
                let mut t: Tensor<f64> = st.to_tensor(n).unwrap();
                if n == target {
                    let k = t.numel() - 1;
                    t.data_mut()[k] = value;
                }
                (n.clone(), t)
            })
            .collect();
        let ints: Vec<(String, Vec<i64>)> = ar
            .tensors
            .iter()
            .filter(|(_, st)| st.dtype() == StoredDtype::I64)
            .map(|(n, st)| (n.clone(), st.to_i64(n).unwrap()))
            .collect();
        let mut entries: Vec<(String, Entry<'_, f64>)> = floats
            .iter()
            .map(|(n, t)| (n.clone(), Entry::Float(t)))
            .collect();
        entries.extend(
            ints.iter()
                .map(|(n, v)| (n.clone(), Entry::I64(v.as_slice()))),
        );
        // Saved with a valid checksum: the values themselves are what is refused.
        let p = dir.join(format!("{tag}.ckpt"));
        let bytes = to_bytes_with_checksum(&entries, &ar.metadata, CHECKSUM_KEY).unwrap();
        std::fs::write(&p, bytes).unwrap();
        let needle = format!("`{target}` holds non-finite values");
        expect_refused(&p, 4, CellKind::Lstm, &cfg, &[&needle]);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_or_damaged_state_is_refused() {
    let dir = temp_dir("ckpt-state");
    let (path, ..) = saved_lstm(&dir);
    let cfg = config_json(CellKind::Lstm, 4);
    type Case = (
        &'static str,
        Box<dyn Fn(&str) -> bool>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "no-exp-avg",
            Box::new(|n: &str| n == "optim.rnn.weight_hh_l0.exp_avg"),
            &["missing optimizer state `optim.rnn.weight_hh_l0.exp_avg`"],
        ),
        (
            "no-optim",
            Box::new(|n: &str| n.starts_with("optim.")),
            &["missing optimizer state", "optim.head.bias.step"],
        ),
        (
            "no-lr",
            Box::new(|n: &str| n.starts_with("optim_scalar.")),
            &["missing scalar `lr`"],
        ),
        (
            "no-rng",
            Box::new(|n: &str| n == "rng.state"),
            &["missing `rng.state`"],
        ),
        (
            "no-progress",
            Box::new(|n: &str| n == "progress"),
            &["missing `progress`"],
        ),
        (
            "no-param",
            Box::new(|n: &str| n == "model.rnn.bias_hh_l1"),
            &["missing parameter `model.rnn.bias_hh_l1`"],
        ),
    ];
    for (tag, drop, needles) in cases {
        let p = dir.join(format!("{tag}.ckpt"));
        rewrite(&path, &p, drop, |_| {});
        expect_refused(&p, 4, CellKind::Lstm, &cfg, needles);
    }
    let p = dir.join("version.ckpt");
    rewrite(
        &path,
        &p,
        |_| false,
        |m| {
            m.insert("format_version".into(), "99".into());
        },
    );
    expect_refused(&p, 4, CellKind::Lstm, &cfg, &["format version 99"]);
    let p = dir.join("noconfig.ckpt");
    rewrite(
        &path,
        &p,
        |_| false,
        |m| {
            m.remove("config");
        },
    );
    expect_refused(&p, 4, CellKind::Lstm, &cfg, &["`config` is missing"]);
    std::fs::remove_dir_all(&dir).ok();
}

const CHILD_ENV: &str = "RECUR_CHECKPOINT_RESUME_CHILD";
const N: usize = 5;
const M: usize = 4;

/// The second half of `resume_in_a_new_process_is_bit_identical`, run in a child process: loads
/// the checkpoint named by the environment, trains `M` more steps and saves the parameters. Does
/// nothing when run directly.
#[test]
fn resume_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (ckpt, out) = spec.split_once('|').unwrap();
    // A different initialisation, optimizer and generator, all to be replaced by the checkpoint.
    let (mut ps, m) = build::<f64>(CellKind::Lstm, 4, 424242);
    let mut opt = adam();
    let mut rng = Rng::new(31337);
    let info = load_checkpoint(
        Path::new(ckpt),
        &mut ps,
        &mut opt,
        &mut rng,
        expect_config(&config_json(CellKind::Lstm, 4)),
    )
    .unwrap();
    assert_eq!(info.step as usize, N);
    train(
        &mut ps,
        &m,
        &mut opt,
        &mut rng,
        info.schedule_step as usize,
        N + M,
    );
    save_params(&ps, Path::new(out), &Default::default()).unwrap();
}

#[test]
fn resume_in_a_new_process_is_bit_identical() {
    let dir = temp_dir("ckpt-resume");
    // Straight through: N + M steps.
    let (mut ps_a, m) = build::<f64>(CellKind::Lstm, 4, 1);
    let mut opt = adam();
    let mut rng = Rng::new(2024);
    train(&mut ps_a, &m, &mut opt, &mut rng, 0, N + M);

    // N steps, checkpoint, then M steps in another process.
    let (mut ps_b, m) = build::<f64>(CellKind::Lstm, 4, 1);
    let mut opt = adam();
    let mut rng = Rng::new(2024);
    train(&mut ps_b, &m, &mut opt, &mut rng, 0, N);
    let ckpt = dir.join("half.ckpt");
    let info = CheckpointInfo {
        config: config_json(CellKind::Lstm, 4),
        step: N as u64,
        schedule_step: N as u64,
    };
    save_checkpoint(&ckpt, &ps_b, &opt, &rng, &info).unwrap();
    let out = dir.join("resumed.safetensors");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["checkpoint::resume_child", "--exact", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}|{}", ckpt.display(), out.display()))
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "child process failed:\n{}\n{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(String::from_utf8_lossy(&child.stdout).contains("1 passed"));
    let (mut resumed, _) = build::<f64>(CellKind::Lstm, 4, 3);
    recur::io::load_params(&mut resumed, &out).unwrap();
    assert!(
        same_store(&ps_a, &resumed),
        "resumed training differs from straight training"
    );
    assert!(
        !same_store(&ps_a, &ps_b),
        "the second half should have changed the parameters"
    );

    // Resuming without the generator state (a fresh dropout stream) would differ: the RNG
    // state in the checkpoint matters.
    let mut opt2 = adam();
    let (mut ps_c, m) = build::<f64>(CellKind::Lstm, 4, 1);
    let mut rng_c = Rng::new(0);
    load_checkpoint(&ckpt, &mut ps_c, &mut opt2, &mut rng_c, |_| Ok(())).unwrap();
    let mut other = Rng::new(5);
    train(&mut ps_c, &m, &mut opt2, &mut other, N, N + M);
    assert!(!same_store(&ps_a, &ps_c));
    std::fs::remove_dir_all(&dir).ok();
}
