//! Loading from arbitrary bytes: `io::Archive::from_bytes`, `io::load_params_from` into a small
//! model's store and `io::checkpoint::load_checkpoint` (from a file) return `Ok` or `Err`, never
//! panic, hang or allocate far beyond the input's size; a refused load changes nothing; a
//! checkpoint that loads holds finite parameters and matches its checksum. The seeds include
//! checkpoints whose metadata holds non-finite losses and whose weights hold NaN and infinity.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use recur::io::checkpoint::{CHECKSUM_KEY, expect_config, load_checkpoint};
use recur::io::{self, Archive, StoredDtype};
use recur::nn::{CellKind, Recurrent, RecurrentConfig};
use recur::optim::{Adam, AdamConfig, Sgd, SgdConfig};
use recur::{Float, Optimizer, ParamStore, Rng};

/// The model the seeds were written for: an LSTM with input 2, hidden 3, under `lstm.`.
fn model<T: Float>() -> ParamStore<T> {
    let mut ps = ParamStore::new();
    Recurrent::new(
        &mut ps,
        "lstm.",
        CellKind::Lstm,
        RecurrentConfig::new(2, 3),
        &mut Rng::new(1),
    )
    .expect("a valid layer");
    ps
}

const CONFIG: &str = r#"{"cell":"lstm","hidden":3}"#;

fn snapshot<T: Float>(ps: &ParamStore<T>) -> Vec<Vec<u64>> {
    ps.iter()
        .map(|(_, _, t)| t.data().iter().map(|x| x.to_f64().to_bits()).collect())
        .collect()
}

fn params<T: Float>(archive: &Archive) {
    for prefixes in [&[][..], &["optim", "model."][..]] {
        let mut ps = model::<T>();
        let before = snapshot(&ps);
        match io::load_params_from(&mut ps, archive, prefixes) {
            Ok(()) => {
                for (_, name, t) in ps.iter() {
                    assert_eq!(t.dims(), archive.get(name).unwrap().dims());
                }
            }
            Err(_) => assert_eq!(snapshot(&ps), before, "a refused load changed the store"),
        }
    }
}

/// Loads with the strict config check, then with one that accepts any config (so that files
/// whose metadata holds anything, non-finite losses included, reach the tensor checks). A load
/// that succeeds gives finite parameters only, from tensors that match their checksum if the
/// file has one.
fn checkpoint<T: Float>(path: &std::path::Path, opt: &mut dyn Optimizer<T>) {
    checkpoint_with(path, opt, true);
    checkpoint_with(path, opt, false);
}

fn checkpoint_with<T: Float>(path: &std::path::Path, opt: &mut dyn Optimizer<T>, strict: bool) {
    let mut ps = model::<T>();
    let mut rng = Rng::new(5);
    let (before, rng_before) = (snapshot(&ps), rng.clone());
    let loaded = if strict {
        load_checkpoint(path, &mut ps, opt, &mut rng, expect_config(CONFIG))
    } else {
        load_checkpoint(path, &mut ps, opt, &mut rng, |config: &str| {
            // Whatever the config holds parses as JSON or is refused, without panicking.
            serde_json::from_str::<serde_json::Value>(config)
                .map(drop)
                .map_err(|e| recur::Error::format("config", e.to_string()))
        })
    };
    if loaded.is_ok() {
        for (_, name, t) in ps.iter() {
            assert!(
                t.data().iter().all(|x| x.to_f64().is_finite()),
                "`{name}` loaded with non-finite values"
            );
        }
        let archive = Archive::read(path).expect("a loaded checkpoint parses");
        if let Some(sum) = archive.metadata.get(CHECKSUM_KEY) {
            assert_eq!(
                *sum,
                archive.tensor_checksum(),
                "loaded despite its checksum"
            );
        }
    }
    if loaded.is_err() {
        assert_eq!(
            snapshot(&ps),
            before,
            "a refused checkpoint changed the store"
        );
        assert_eq!(
            rng, rng_before,
            "a refused checkpoint changed the generator"
        );
    }
}

/// One scratch file per fuzzing process.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!(
            "recur-fuzz-load-{}.safetensors",
            std::process::id()
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(archive) = Archive::from_bytes(data, "fuzz input") {
        // Whatever parsed lies inside the input: no tensor holds more bytes than were given.
        for (name, st) in &archive.tensors {
            let size = match st.dtype() {
                StoredDtype::F32 => 4,
                StoredDtype::F64 | StoredDtype::I64 => 8,
                StoredDtype::Other => 0,
            };
            let bytes = st
                .dims()
                .iter()
                .try_fold(size, |n: usize, &d| n.checked_mul(d));
            assert!(
                bytes.is_some_and(|n| n <= data.len()),
                "`{name}` {:?}",
                st.dims()
            );
            let _ = archive.tensor::<f32>(name);
            let _ = archive.tensor::<f64>(name);
            let _ = st.to_i64(name);
        }
        params::<f32>(&archive);
        params::<f64>(&archive);
    }
    let path = scratch();
    std::fs::write(path, data).expect("the scratch file is writable");
    checkpoint::<f32>(path, &mut Adam::new(AdamConfig::default()).unwrap());
    checkpoint::<f64>(path, &mut Adam::new(AdamConfig::default()).unwrap());
    checkpoint::<f64>(path, &mut Sgd::new(SgdConfig::default()).unwrap());
});
