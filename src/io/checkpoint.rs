//! Training checkpoints: one safetensors file with everything needed to resume training exactly.
//!
//! Contents (tensor names):
//!
//! * `model.{name}`: every parameter, under its `ParamStore` name, in the model's float type;
//! * `optim.{param}.{buffer}`: the optimizer's per-parameter state
//!   ([`Optimizer::state_tensors`]), in the model's float type;
//! * `optim_scalar.{name}`: the optimizer's scalars (the learning rate, ...) as one-element I64
//!   tensors holding the `f64` bit pattern, so they round-trip exactly in any precision;
//! * `rng.state`: the four `u64` words of the [`Rng`] (dropout, shuffling), bit-cast to I64;
//! * `progress`: I64 `[step, schedule_step]`.
//!
//! The header metadata holds `kind` (`recur-checkpoint`), `format_version`, `dtype`,
//! `optimizer` (its name), `optim_state` (a JSON list of the optimizer tensors, so a missing one
//! is detected), `config`, a JSON string describing the model that the caller chooses and
//! checks on load, and `tensor_checksum` ([`Archive::tensor_checksum`]), checked on load so
//! that damaged tensor data is refused (files written before the checksum existed have none and
//! load without the check). Parameters or optimizer state holding NaN or an infinity are refused
//! at load, naming the tensor.
//!
//! The file is written with [`crate::io::atomic_write`]. [`load_checkpoint`] validates the whole
//! file against the model, the optimizer and the expected configuration before changing
//! anything, and its errors say what is wrong (the file is truncated or not a checkpoint, which
//! tensors are missing or mis-shaped, which configuration keys differ).
//!
//! ```
//! use recur::io::checkpoint::{expect_config, load_checkpoint, save_checkpoint, CheckpointInfo};
//! use recur::optim::{Adam, AdamConfig};
//! use recur::{ParamStore, Rng, Tensor};
//!
//! let dir = std::env::temp_dir().join(format!("recur-ckpt-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| recur::Error::io(&dir, e))?;
//! let path = dir.join("run.ckpt.safetensors");
//!
//! let mut ps = ParamStore::<f32>::new();
//! ps.add("w", Tensor::from_vec(vec![1.0, 2.0], &[2])?)?;
//! let opt = Adam::new(AdamConfig::default())?;
//! let rng = Rng::new(9);
//! let info = CheckpointInfo { config: r#"{"cell":"lstm","hidden":2}"#.into(), step: 10, schedule_step: 10 };
//! save_checkpoint(&path, &ps, &opt, &rng, &info)?;
//!
//! let mut ps2 = ParamStore::<f32>::new();
//! let w = ps2.add("w", Tensor::zeros(&[2])?)?;
//! let mut opt2 = Adam::new(AdamConfig::default())?;
//! let mut rng2 = Rng::new(0);
//! let got = load_checkpoint(&path, &mut ps2, &mut opt2, &mut rng2, expect_config(&info.config))?;
//! assert_eq!(got, info);
//! assert_eq!(ps2.get(w).data(), &[1.0, 2.0]);
//! assert_eq!(rng2, rng);
//!
//! // Another model's configuration is refused, and nothing is changed.
//! let err = load_checkpoint(&path, &mut ps2, &mut opt2, &mut rng2,
//!     expect_config(r#"{"cell":"gru","hidden":2}"#)).unwrap_err();
//! assert!(err.to_string().contains("cell"));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), recur::Error>(())
//! ```

use std::path::Path;

use super::{Archive, Entry, Metadata, StoredDtype, atomic_write, to_bytes_with_checksum};
use crate::optim::Optimizer;
use crate::params::ParamStore;
use crate::rng::Rng;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// The `kind` metadata value of a recur checkpoint.
pub const CHECKPOINT_KIND: &str = "recur-checkpoint";

/// The checkpoint format version written by this crate.
pub const FORMAT_VERSION: u32 = 1;

const MODEL: &str = "model.";
const OPTIM: &str = "optim.";
const OPTIM_SCALAR: &str = "optim_scalar.";
const RNG: &str = "rng.state";
const PROGRESS: &str = "progress";
/// The metadata key of the tensors' checksum ([`Archive::tensor_checksum`]).
pub const CHECKSUM_KEY: &str = "tensor_checksum";
/// Prefix of the extra tensors of [`save_checkpoint_with_extras`].
pub const EXTRA: &str = "extra.";

/// What a checkpoint records besides tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The model's configuration as a JSON string (cell kind, sizes, ...): checked on load by the
    /// caller's closure, e.g. [`expect_config`].
    pub config: String,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Position of the learning-rate schedule (the `step` of `lr_at`).
    pub schedule_step: u64,
}

/// Saves parameters, optimizer state, generator state and progress to `path`, atomically.
///
/// Fails if `info.config` is not valid JSON.
pub fn save_checkpoint<T: Float>(
    path: &Path,
    store: &ParamStore<T>,
    optimizer: &dyn Optimizer<T>,
    rng: &Rng,
    info: &CheckpointInfo,
) -> Result<()> {
    save_checkpoint_with_extras(path, store, optimizer, rng, info, &[])
}

/// Like [`save_checkpoint`], with extra named tensors stored as `extra.{name}` (for example the
/// hidden state carried between chunks of truncated backpropagation through time). Read them back
/// with [`Archive::tensor`] on the file; [`load_checkpoint`] ignores them.
pub fn save_checkpoint_with_extras<T: Float>(
    path: &Path,
    store: &ParamStore<T>,
    optimizer: &dyn Optimizer<T>,
    rng: &Rng,
    info: &CheckpointInfo,
    extras: &[(&str, &Tensor<T>)],
) -> Result<()> {
    serde_json::from_str::<serde_json::Value>(&info.config)
        .map_err(|e| Error::invalid("save_checkpoint", format!("config is not valid JSON: {e}")))?;
    let optim_tensors = optimizer.state_tensors(store);
    let scalars: Vec<(String, [i64; 1])> = optimizer
        .state_scalars()
        .into_iter()
        .map(|(n, v)| (n, [v.to_bits() as i64]))
        .collect();
    let rng_words: Vec<i64> = rng.state().iter().map(|&w| w as i64).collect();
    let progress = [to_i64(info.step)?, to_i64(info.schedule_step)?];

    let mut entries: Vec<(String, Entry<'_, T>)> = Vec::new();
    for (_, name, t) in store.iter() {
        entries.push((format!("{MODEL}{name}"), Entry::Float(t)));
    }
    for (name, t) in &optim_tensors {
        entries.push((format!("{OPTIM}{name}"), Entry::Float(t)));
    }
    for (name, v) in &scalars {
        entries.push((format!("{OPTIM_SCALAR}{name}"), Entry::I64(v)));
    }
    entries.push((RNG.to_string(), Entry::I64(&rng_words)));
    entries.push((PROGRESS.to_string(), Entry::I64(&progress)));
    for (name, t) in extras {
        entries.push((format!("{EXTRA}{name}"), Entry::Float(t)));
    }

    let state_names: Vec<&str> = optim_tensors.iter().map(|(n, _)| n.as_str()).collect();
    let mut meta = Metadata::new();
    meta.insert("kind".into(), CHECKPOINT_KIND.into());
    meta.insert("format_version".into(), FORMAT_VERSION.to_string());
    meta.insert("dtype".into(), T::DTYPE.into());
    meta.insert("optimizer".into(), optimizer.name().into());
    meta.insert(
        "optim_state".into(),
        serde_json::to_string(&state_names).expect("a list of strings serialises"),
    );
    meta.insert("config".into(), info.config.clone());
    atomic_write(
        path,
        &to_bytes_with_checksum(&entries, &meta, CHECKSUM_KEY)?,
    )
}

/// Reads only the parameters of a checkpoint written by [`save_checkpoint`] into `store`, for
/// using a trained model (prediction, generation) without its optimizer: returns the stored
/// configuration JSON, which the caller checks. The file is validated as by
/// [`load_checkpoint`] (checksum, kind, version, float type; every parameter of `store` present
/// with its shape and finite, none unexpected); the optimizer state, generator and extra tensors
/// are ignored. On error `store` is unchanged.
///
/// ```
/// use recur::io::checkpoint::{load_checkpoint_params, save_checkpoint, CheckpointInfo};
/// use recur::optim::{Adam, AdamConfig};
/// use recur::{ParamStore, Rng, Tensor};
///
/// let dir = std::env::temp_dir().join(format!("recur-ckpt-params-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).map_err(|e| recur::Error::io(&dir, e))?;
/// let path = dir.join("run.safetensors");
/// let mut ps = ParamStore::<f32>::new();
/// ps.add("w", Tensor::from_vec(vec![1.0, 2.0], &[2])?)?;
/// let info = CheckpointInfo { config: r#"{"hidden":2}"#.into(), step: 3, schedule_step: 3 };
/// save_checkpoint(&path, &ps, &Adam::new(AdamConfig::default())?, &Rng::new(1), &info)?;
///
/// let mut fresh = ParamStore::<f32>::new();
/// let w = fresh.add("w", Tensor::zeros(&[2])?)?;
/// assert_eq!(load_checkpoint_params(&path, &mut fresh)?, info.config);
/// assert_eq!(fresh.get(w).data(), &[1.0, 2.0]);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), recur::Error>(())
/// ```
pub fn load_checkpoint_params<T: Float>(path: &Path, store: &mut ParamStore<T>) -> Result<String> {
    let ctx = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let archive = Archive::from_bytes(&bytes, &ctx)?;
    let config = check_header::<T>(&archive, &ctx)?;
    let mut problems = Vec::new();
    let params = read_params(&archive, store, &mut problems)?;
    if !problems.is_empty() {
        return Err(Error::format(ctx, problems.join("; ")));
    }
    for (id, t) in params {
        *store.get_mut(id) = t;
    }
    Ok(config)
}

/// The stored dtype of `T`.
fn stored_dtype<T: Float>() -> StoredDtype {
    if T::DTYPE == "F32" {
        StoredDtype::F32
    } else {
        StoredDtype::F64
    }
}

/// The value of metadata `key`, or an error naming the missing key.
fn metadata<'a>(archive: &'a Archive, ctx: &str, key: &str) -> Result<&'a str> {
    archive
        .metadata
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| Error::format(ctx, format!("metadata key `{key}` is missing")))
}

/// Checks a checkpoint's checksum, kind, format version and float type; returns its `config`.
fn check_header<T: Float>(archive: &Archive, ctx: &str) -> Result<String> {
    let bad = |msg: String| Error::format(ctx, msg);
    if let Some(stored) = archive.metadata.get(CHECKSUM_KEY) {
        let computed = archive.tensor_checksum();
        if *stored != computed {
            return Err(bad(format!(
                "the tensor data does not match its checksum (stored {stored}, computed \
                 {computed}): the file is damaged"
            )));
        }
    }
    let meta = |key: &str| metadata(archive, ctx, key);
    match archive.metadata.get("kind").map(String::as_str) {
        Some(CHECKPOINT_KIND) => {}
        other => {
            return Err(bad(format!(
                "not a recur checkpoint (metadata `kind` is {other:?}, expected \
                 \"{CHECKPOINT_KIND}\")"
            )));
        }
    }
    let version = meta("format_version")?;
    if version != FORMAT_VERSION.to_string() {
        return Err(bad(format!(
            "format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )));
    }
    let dtype = meta("dtype")?;
    if dtype != T::DTYPE {
        return Err(bad(format!(
            "the checkpoint holds {dtype} parameters but the model is {}",
            T::DTYPE
        )));
    }
    Ok(meta("config")?.to_string())
}

/// Every parameter of `store` from the archive (present, same shape and dtype, finite), and no
/// unexpected one; problems are appended to `problems`.
fn read_params<T: Float>(
    archive: &Archive,
    store: &ParamStore<T>,
    problems: &mut Vec<String>,
) -> Result<Vec<(crate::params::ParamId, Tensor<T>)>> {
    let want_dtype = stored_dtype::<T>();
    let mut params = Vec::with_capacity(store.len());
    for (id, name, t) in store.iter() {
        let key = format!("{MODEL}{name}");
        match archive.tensors.get(&key) {
            None => problems.push(format!("missing parameter `{key}`")),
            Some(st) if st.dims() != t.dims() => problems.push(format!(
                "parameter `{key}` has shape {:?} but the model needs {:?}",
                st.dims(),
                t.dims()
            )),
            Some(st) if st.dtype() != want_dtype => {
                problems.push(format!("parameter `{key}` is not {}", T::DTYPE))
            }
            Some(st) if st.first_non_finite().is_some() => problems.push(non_finite(&key, st)),
            Some(st) => params.push((id, st.to_tensor::<T>(&key)?)),
        }
    }
    for key in archive.tensors.keys() {
        if let Some(name) = key.strip_prefix(MODEL)
            && store.find(name).is_none()
        {
            problems.push(format!("unexpected parameter `{key}` (not in the model)"));
        }
    }
    Ok(params)
}

/// The problem of a tensor holding NaN or an infinity.
fn non_finite(key: &str, st: &super::StoredTensor) -> String {
    let n = st.dims().iter().product::<usize>();
    format!(
        "`{key}` holds non-finite values (NaN or infinity, first at element {} of {n}): the \
         model had diverged when it was saved",
        st.first_non_finite().unwrap_or(0)
    )
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| Error::invalid("save_checkpoint", format!("counter {v} too large")))
}

/// A config check for [`load_checkpoint`]: the stored config must equal `expected` as JSON
/// values (key order and spacing do not matter). The error lists the keys that differ.
pub fn expect_config(expected: &str) -> impl FnOnce(&str) -> Result<()> + '_ {
    move |found: &str| {
        let parse = |s: &str, which: &str| {
            serde_json::from_str::<serde_json::Value>(s).map_err(|e| {
                Error::format(
                    "checkpoint config",
                    format!("{which} config is not JSON: {e}"),
                )
            })
        };
        let (want, got) = (parse(expected, "expected")?, parse(found, "stored")?);
        if want == got {
            return Ok(());
        }
        let mut diffs = Vec::new();
        match (&want, &got) {
            (serde_json::Value::Object(w), serde_json::Value::Object(g)) => {
                for (k, wv) in w {
                    match g.get(k) {
                        None => diffs.push(format!("`{k}` missing (expected {wv})")),
                        Some(gv) if gv != wv => diffs.push(format!("`{k}` is {gv}, expected {wv}")),
                        _ => {}
                    }
                }
                for (k, gv) in g {
                    if !w.contains_key(k) {
                        diffs.push(format!("unexpected `{k}` = {gv}"));
                    }
                }
            }
            _ => diffs.push(format!("stored {got}, expected {want}")),
        }
        Err(Error::format(
            "checkpoint config",
            format!(
                "the checkpoint was made for another model: {}",
                diffs.join("; ")
            ),
        ))
    }
}

/// Loads a checkpoint written by [`save_checkpoint`] into `store`, `optimizer` and `rng`, and
/// returns its [`CheckpointInfo`].
///
/// `check_config` receives the stored configuration JSON and returns an error to refuse it
/// (see [`expect_config`]). Everything is validated before anything is changed: on any error
/// the store, the optimizer and the generator are as they were. Errors name the problem: not a
/// safetensors file (truncated, random bytes), not a recur checkpoint or another format
/// version, another float type, a refused configuration, another optimizer, missing, unexpected
/// or mis-shaped parameters (all of them, by name), missing or mis-shaped optimizer state, a bad
/// generator state or progress record.
pub fn load_checkpoint<T: Float>(
    path: &Path,
    store: &mut ParamStore<T>,
    optimizer: &mut dyn Optimizer<T>,
    rng: &mut Rng,
    check_config: impl FnOnce(&str) -> Result<()>,
) -> Result<CheckpointInfo> {
    let ctx = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let archive = Archive::from_bytes(&bytes, &ctx)?;
    let bad = |msg: String| Error::format(ctx.clone(), msg);
    let config = check_header::<T>(&archive, &ctx)?;
    let meta = |key: &str| metadata(&archive, &ctx, key);
    check_config(&config).map_err(|e| bad(e.to_string()))?;
    let opt_name = meta("optimizer")?;
    if opt_name != optimizer.name() {
        return Err(bad(format!(
            "the checkpoint's optimizer state is for `{opt_name}` but the optimizer is `{}`",
            optimizer.name()
        )));
    }
    let state_names: Vec<String> = serde_json::from_str(meta("optim_state")?).map_err(|e| {
        bad(format!(
            "metadata `optim_state` is not a list of names: {e}"
        ))
    })?;

    // Parameters: every one present with the right shape and dtype, nothing extra.
    let want_dtype = stored_dtype::<T>();
    let mut problems = Vec::new();
    let params = read_params(&archive, store, &mut problems)?;

    // Optimizer state: the listed tensors, all present, nothing unlisted.
    let mut optim_tensors = Vec::with_capacity(state_names.len());
    for name in &state_names {
        let key = format!("{OPTIM}{name}");
        match archive.tensors.get(&key) {
            None => problems.push(format!("missing optimizer state `{key}`")),
            Some(st) if st.dtype() != want_dtype => {
                problems.push(format!("optimizer state `{key}` is not {}", T::DTYPE))
            }
            Some(st) if st.first_non_finite().is_some() => problems.push(non_finite(&key, st)),
            Some(st) => optim_tensors.push((name.clone(), st.to_tensor::<T>(&key)?)),
        }
    }
    for key in archive.tensors.keys() {
        if let Some(name) = key.strip_prefix(OPTIM)
            && !state_names.iter().any(|n| n == name)
        {
            problems.push(format!("unexpected optimizer state `{key}`"));
        }
    }
    let mut scalars = Vec::new();
    for (key, st) in &archive.tensors {
        if let Some(name) = key.strip_prefix(OPTIM_SCALAR) {
            match st.to_i64(key).ok().as_deref() {
                Some(&[bits]) => scalars.push((name.to_string(), f64::from_bits(bits as u64))),
                _ => problems.push(format!("optimizer scalar `{key}` is not one I64 value")),
            }
        }
    }

    // Generator and progress.
    let rng_state = match archive.tensors.get(RNG).map(|st| st.to_i64(RNG)) {
        None => {
            problems.push(format!("missing `{RNG}`"));
            None
        }
        Some(Ok(w)) if w.len() == 4 && w.iter().any(|&x| x != 0) => {
            Some([w[0] as u64, w[1] as u64, w[2] as u64, w[3] as u64])
        }
        Some(_) => {
            problems.push(format!("`{RNG}` is not four I64 words, not all zero"));
            None
        }
    };
    let progress = match archive.tensors.get(PROGRESS).map(|st| st.to_i64(PROGRESS)) {
        None => {
            problems.push(format!("missing `{PROGRESS}`"));
            None
        }
        Some(Ok(p)) if p.len() == 2 && p.iter().all(|&x| x >= 0) => {
            Some((p[0] as u64, p[1] as u64))
        }
        Some(_) => {
            problems.push(format!("`{PROGRESS}` is not two non-negative I64 values"));
            None
        }
    };
    if !problems.is_empty() {
        return Err(bad(problems.join("; ")));
    }
    let (Some(rng_state), Some((step, schedule_step))) = (rng_state, progress) else {
        unreachable!("recorded as problems above");
    };

    // The optimizer validates its state against the parameter shapes (equal to the stored ones)
    // and changes nothing on error; after it, nothing can fail.
    optimizer
        .load_state(store, &optim_tensors, &scalars)
        .map_err(|e| bad(format!("optimizer state: {e}")))?;
    for (id, t) in params {
        *store.get_mut(id) = t;
    }
    *rng = Rng::from_state(rng_state);
    Ok(CheckpointInfo {
        config,
        step,
        schedule_step,
    })
}
