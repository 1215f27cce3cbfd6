//! Writes the seed inputs under `fuzz/seeds/<target>/`: valid parameter files and checkpoints
//! for `load_bytes` (the fuzzer mutates them into lying headers and truncated files), and a few
//! decoded configurations for the other targets. Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.

use std::fs;
use std::path::Path;

use recur::io::checkpoint::{CheckpointInfo, save_checkpoint};
use recur::io::{self, Metadata};
use recur::nn::{CellKind, Recurrent, RecurrentConfig};
use recur::optim::{Adam, AdamConfig, Sgd, SgdConfig};
use recur::{Float, ParamStore, Rng};

fn model<T: Float>() -> ParamStore<T> {
    let mut ps = ParamStore::new();
    Recurrent::new(
        &mut ps,
        "lstm.",
        CellKind::Lstm,
        RecurrentConfig::new(2, 3),
        &mut Rng::new(1),
    )
    .unwrap();
    ps
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn checkpoint_bytes<T: Float>(opt: &dyn recur::Optimizer<T>) -> Vec<u8> {
    checkpoint_with(opt, r#"{"cell":"lstm","hidden":3}"#, &model::<T>())
}

fn checkpoint_with<T: Float>(
    opt: &dyn recur::Optimizer<T>,
    config: &str,
    store: &ParamStore<T>,
) -> Vec<u8> {
    let path = std::env::temp_dir().join(format!("recur-seed-{}.safetensors", std::process::id()));
    let info = CheckpointInfo {
        config: config.into(),
        step: 3,
        schedule_step: 3,
    };
    save_checkpoint(&path, store, opt, &Rng::new(2), &info).unwrap();
    let bytes = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    bytes
}

/// Pseudo-random bytes.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.uniform() * 256.0) as u8).collect()
}

fn main() {
    // load_bytes
    let mut meta = Metadata::new();
    meta.insert("note".into(), "seed".into());
    let ps32 = model::<f32>();
    let e32: Vec<_> = ps32
        .iter()
        .map(|(_, n, t)| (n.to_string(), io::Entry::Float(t)))
        .collect();
    write(
        "load_bytes",
        "params_f32",
        &io::to_bytes(&e32, &meta).unwrap(),
    );
    let ps64 = model::<f64>();
    let e64: Vec<_> = ps64
        .iter()
        .map(|(_, n, t)| (n.to_string(), io::Entry::Float(t)))
        .collect();
    write(
        "load_bytes",
        "params_f64",
        &io::to_bytes(&e64, &Metadata::new()).unwrap(),
    );
    let adam = Adam::<f32>::new(AdamConfig::default()).unwrap();
    write(
        "load_bytes",
        "checkpoint_adam_f32",
        &checkpoint_bytes(&adam),
    );
    let adam = Adam::<f64>::new(AdamConfig::default()).unwrap();
    write(
        "load_bytes",
        "checkpoint_adam_f64",
        &checkpoint_bytes(&adam),
    );
    let sgd = Sgd::<f64>::new(SgdConfig::default()).unwrap();
    write("load_bytes", "checkpoint_sgd_f64", &checkpoint_bytes(&sgd));
    // Metadata holding non-finite losses, as `recur train` writes them now (strings) and as
    // earlier versions did (null), and weights holding NaN and infinity.
    let adam = Adam::<f32>::new(AdamConfig::default()).unwrap();
    let history = r#"{"cell":"lstm","hidden":3,"best_val":null,"interval_loss":"inf","history":{"train":[[5,"inf"],[10,2.5]],"val":[[5,"NaN"],[10,null],[15,"-inf"]]}}"#;
    write(
        "load_bytes",
        "checkpoint_nonfinite_history",
        &checkpoint_with(&adam, history, &model::<f32>()),
    );
    let mut bad = model::<f32>();
    let ids: Vec<_> = bad.ids().collect();
    bad.get_mut(ids[0]).data_mut()[0] = f32::NAN;
    bad.get_mut(ids[1]).data_mut()[1] = f32::INFINITY;
    write(
        "load_bytes",
        "checkpoint_nonfinite_weights",
        &checkpoint_with(&adam, r#"{"cell":"lstm","hidden":3}"#, &bad),
    );
    write("load_bytes", "empty", &[]);

    // fused_vs_reference: the first 13 bytes pick the configuration, the rest are values.
    for (k, head) in [
        [0u8, 2, 1, 2, 3, 0, 0, 0, 2, 1, 2, 3, 4],
        [129, 5, 3, 4, 9, 1, 1, 1, 14, 5, 6, 7, 8],
        [2, 3, 2, 1, 5, 0, 1, 1, 6, 9, 9, 9, 9],
        [131, 1, 0, 3, 2, 1, 0, 0, 10, 1, 1, 1, 1],
        [3, 4, 1, 2, 7, 1, 1, 0, 15, 3, 2, 1, 0],
        [130, 5, 3, 0, 4, 0, 1, 1, 12, 8, 7, 6, 5],
        // LSTMs with a projection (flag 0x10, proj_size from the top three bits): f64, T 5,
        // B 3, H 7, two bidirectional layers, lengths [5, 2, 3], P 3; f32, batch-first, T 4,
        // B 2, H 8, lengths [4, 2], P 2.
        [2, 4, 2, 2, 6, 1, 1, 1, 0, 126, 4, 1, 2],
        [130, 3, 1, 3, 6, 0, 1, 1, 1, 94, 3, 1, 0],
        // The regularizers (first byte: bit 2 recurrent dropout, 3 weight drop, 4 zoneout,
        // 5 training): an f64 LSTM with all three in training; an f32 GRU likewise; an f64
        // RNN with zoneout in evaluation; an f32 relu RNN with recurrent dropout in training;
        // the f64 projected LSTM above with weight drop in training.
        [62, 4, 2, 2, 6, 1, 1, 1, 2, 5, 6, 7, 8],
        [191, 5, 3, 4, 9, 1, 1, 0, 14, 5, 6, 7, 8],
        [16, 3, 2, 1, 5, 0, 1, 1, 6, 9, 9, 9, 9],
        [165, 4, 3, 3, 6, 1, 0, 0, 12, 1, 1, 1, 1],
        [42, 4, 2, 2, 6, 1, 1, 1, 0, 126, 4, 1, 2],
        // Layer normalization (first byte bit 6): an f64 LSTM, two bidirectional layers with
        // lengths; an f32 GRU in training, with lengths; an f64 LSTM with zoneout (refused by
        // both paths).
        [66, 4, 2, 2, 6, 1, 1, 1, 0, 2, 4, 1, 2],
        [227, 5, 3, 4, 9, 1, 1, 0, 14, 6, 6, 7, 8],
        [82, 3, 2, 1, 5, 0, 1, 1, 6, 9, 9, 9, 9],
    ]
    .iter()
    .enumerate()
    {
        let mut bytes = head.to_vec();
        bytes.extend(noise(k as u64, 120));
        write("fused_vs_reference", &format!("case{k}"), &bytes);
    }

    // tape_api and simd_math: noise of a few lengths.
    for k in 0..6 {
        write("tape_api", &format!("ops{k}"), &noise(100 + k, 64 << k));
        write("simd_math", &format!("values{k}"), &noise(200 + k, 32 << k));
    }
}
