//! Reading and writing tensors as [safetensors](https://github.com/huggingface/safetensors)
//! files, under PyTorch `state_dict` names, so a model moves between recur and PyTorch unchanged.
//!
//! Every file recur writes goes to a temporary file in the same directory first and is renamed
//! over the target only once complete ([`atomic_write`]): an interrupted save never replaces a
//! good file with half of a new one.
//!
//! ```
//! use recur::{io, ParamStore, Tensor};
//!
//! let dir = std::env::temp_dir().join(format!("recur-io-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| recur::Error::io(&dir, e))?;
//! let path = dir.join("model.safetensors");
//!
//! let mut ps = ParamStore::<f32>::new();
//! ps.add("weight", Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2])?)?;
//! io::save_params(&ps, &path, &Default::default())?;
//!
//! let mut fresh = ParamStore::<f32>::new();
//! let w = fresh.add("weight", Tensor::zeros(&[2, 2])?)?;
//! io::load_params(&mut fresh, &path)?;
//! assert_eq!(fresh.get(w).data(), &[1.0, 2.0, 3.0, 4.0]);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), recur::Error>(())
//! ```

pub mod checkpoint;
pub mod checksum;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::params::ParamStore;
use crate::tensor::{Float, Shape, Tensor};
use crate::{Error, Result};

/// Free-form string metadata stored in a safetensors header (`__metadata__`).
pub type Metadata = BTreeMap<String, String>;

/// The element type of a stored tensor, as far as recur reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
    /// 64-bit signed integer (read for step counters and token ids).
    I64,
    /// Any other safetensors dtype: listed, never converted.
    Other,
}

/// One tensor as read from a file: its dtype, shape and raw little-endian bytes.
#[derive(Clone, Debug)]
pub struct StoredTensor {
    dtype: StoredDtype,
    dtype_name: String,
    dims: Vec<usize>,
    bytes: Vec<u8>,
}

impl StoredTensor {
    /// The stored element type.
    pub fn dtype(&self) -> StoredDtype {
        self.dtype
    }

    /// The stored shape.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The raw little-endian bytes as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The flat index of the first NaN or infinity in a float tensor (`None` when every element
    /// is finite, or for integer tensors).
    pub fn first_non_finite(&self) -> Option<usize> {
        match self.dtype {
            StoredDtype::F32 => self
                .bytes
                .chunks_exact(4)
                .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
            StoredDtype::F64 => self
                .bytes
                .chunks_exact(8)
                .position(|b| !f64::from_le_bytes(b.try_into().expect("chunks of 8")).is_finite()),
            _ => None,
        }
    }

    /// Converts to a recur tensor of element type `T` (F32 and F64 are accepted and cast).
    /// `name` is used in the error message.
    pub fn to_tensor<T: Float>(&self, name: &str) -> Result<Tensor<T>> {
        let values: Vec<f64> = match self.dtype {
            StoredDtype::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
            StoredDtype::F64 => self
                .bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")))
                .collect(),
            _ => {
                return Err(Error::format(
                    format!("tensor `{name}`"),
                    format!("dtype {} is not a float type (F32 or F64)", self.dtype_name),
                ));
            }
        };
        let shape = if self.dims.is_empty() {
            Shape::scalar()
        } else {
            Shape::new(&self.dims).map_err(|e| {
                Error::format(format!("tensor `{name}`"), format!("unusable shape: {e}"))
            })?
        };
        Tensor::from_vec_shape(values.into_iter().map(T::from_f64).collect(), shape)
    }

    /// Reads an I64 tensor as integers.
    pub fn to_i64(&self, name: &str) -> Result<Vec<i64>> {
        if self.dtype != StoredDtype::I64 {
            return Err(Error::format(
                format!("tensor `{name}`"),
                format!("expected dtype I64, found {}", self.dtype_name),
            ));
        }
        Ok(self
            .bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("chunks of 8")))
            .collect())
    }
}

/// The contents of a safetensors file: named tensors and header metadata.
#[derive(Clone, Debug, Default)]
pub struct Archive {
    /// Tensors by name.
    pub tensors: BTreeMap<String, StoredTensor>,
    /// The header's `__metadata__` map (empty when absent).
    pub metadata: Metadata,
}

impl Archive {
    /// Parses a safetensors byte buffer. Never panics on bad input: a truncated file, a lying
    /// header or random bytes give [`Error::Format`].
    pub fn from_bytes(bytes: &[u8], context: &str) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(context, format!("not a valid safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::format(context, format!("not a valid safetensors file: {e}")))?;
        let metadata = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let dtype = match view.dtype() {
                Dtype::F32 => StoredDtype::F32,
                Dtype::F64 => StoredDtype::F64,
                Dtype::I64 => StoredDtype::I64,
                _ => StoredDtype::Other,
            };
            tensors.insert(
                name.to_string(),
                StoredTensor {
                    dtype,
                    dtype_name: format!("{:?}", view.dtype()),
                    dims: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                },
            );
        }
        Ok(Archive { tensors, metadata })
    }

    /// Reads and parses a safetensors file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// The tensor called `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&StoredTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::format("safetensors archive", format!("missing tensor `{name}`")))
    }

    /// The tensor called `name` converted to `Tensor<T>`.
    pub fn tensor<T: Float>(&self, name: &str) -> Result<Tensor<T>> {
        self.get(name)?.to_tensor(name)
    }

    /// A checksum of every tensor ([`checksum::Fnv64`] over each tensor's name, dtype, shape
    /// and bytes, in name order), written as `fnv1a64:` and 16 hex digits. The metadata is not
    /// covered.
    pub fn tensor_checksum(&self) -> String {
        checksum_of(self.tensors.iter().map(|(name, t)| {
            (
                name.as_str(),
                t.dtype_name.clone(),
                t.dims.as_slice(),
                t.bytes.as_slice(),
            )
        }))
    }

    /// The metadata value under `key`, or an error naming the key.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::format("safetensors metadata", format!("missing key `{key}`")))
    }
}

/// A tensor to write: float data of either precision, or integers.
#[derive(Clone, Debug)]
pub enum Entry<'a, T: Float> {
    /// A float tensor, written in `T`'s dtype.
    Float(&'a Tensor<T>),
    /// A one-dimensional I64 tensor.
    I64(&'a [i64]),
}

/// Serialises named tensors and metadata to safetensors bytes.
pub fn to_bytes<T: Float>(
    entries: &[(String, Entry<'_, T>)],
    metadata: &Metadata,
) -> Result<Vec<u8>> {
    serialise(encode(entries), metadata)
}

/// Like [`to_bytes`], with the tensors' checksum ([`Archive::tensor_checksum`] of the result)
/// stored in the metadata under `key`.
pub fn to_bytes_with_checksum<T: Float>(
    entries: &[(String, Entry<'_, T>)],
    metadata: &Metadata,
    key: &str,
) -> Result<Vec<u8>> {
    let buffers = encode(entries);
    let mut sorted: Vec<&(String, Dtype, Vec<usize>, Vec<u8>)> = buffers.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let sum = checksum_of(
        sorted
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), format!("{d:?}"), s.as_slice(), b.as_slice())),
    );
    let mut metadata = metadata.clone();
    metadata.insert(key.to_string(), sum);
    serialise(buffers, &metadata)
}

/// The checksum of tensors given in name order as (name, dtype name, shape, bytes).
fn checksum_of<'a>(
    tensors: impl Iterator<Item = (&'a str, String, &'a [usize], &'a [u8])>,
) -> String {
    let mut h = checksum::Fnv64::new();
    for (name, dtype, dims, bytes) in tensors {
        h.field(name.as_bytes());
        h.field(dtype.as_bytes());
        h.update(&(dims.len() as u64).to_le_bytes());
        for &d in dims {
            h.update(&(d as u64).to_le_bytes());
        }
        h.field(bytes);
    }
    format!("fnv1a64:{:016x}", h.finish())
}

type Buffer = (String, Dtype, Vec<usize>, Vec<u8>);

/// Each entry's name, dtype, shape and little-endian bytes.
fn encode<T: Float>(entries: &[(String, Entry<'_, T>)]) -> Vec<Buffer> {
    let mut buffers: Vec<Buffer> = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        match entry {
            Entry::Float(t) => {
                let mut bytes = Vec::with_capacity(t.numel() * std::mem::size_of::<T>());
                let dtype = if T::DTYPE == "F32" {
                    Dtype::F32
                } else {
                    Dtype::F64
                };
                for &v in t.data() {
                    if dtype == Dtype::F32 {
                        bytes.extend_from_slice(&(v.to_f64() as f32).to_le_bytes());
                    } else {
                        bytes.extend_from_slice(&v.to_f64().to_le_bytes());
                    }
                }
                buffers.push((name.clone(), dtype, t.dims().to_vec(), bytes));
            }
            Entry::I64(v) => {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                buffers.push((name.clone(), Dtype::I64, vec![v.len()], bytes));
            }
        }
    }
    buffers
}

fn serialise(buffers: Vec<Buffer>, metadata: &Metadata) -> Result<Vec<u8>> {
    let views = buffers
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::format(format!("tensor `{n}`"), e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let info: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| Error::format("safetensors serialisation", e.to_string()))?;
    sort_header(&mut bytes)?;
    Ok(bytes)
}

/// Rewrites the JSON header of serialised safetensors bytes with its keys sorted, so that the
/// same tensors and metadata always give the same bytes (the serialiser iterates a hash map).
/// The header keeps its length: the same JSON tokens in another order, padded as before.
fn sort_header(bytes: &mut [u8]) -> Result<()> {
    let bad = |m: &str| Error::format("safetensors serialisation", m.to_string());
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = bytes.get(8..8 + n).ok_or_else(|| bad("header length"))?;
    let text = std::str::from_utf8(header).map_err(|_| bad("header is not UTF-8"))?;
    // serde_json's map is ordered by key, so a round trip through `Value` sorts every object.
    let value: serde_json::Value =
        serde_json::from_str(text.trim_end()).map_err(|e| bad(&e.to_string()))?;
    let sorted = serde_json::to_string(&value).map_err(|e| bad(&e.to_string()))?;
    if sorted.len() > n {
        return Err(bad("sorted header is longer than the original"));
    }
    bytes[8..8 + sorted.len()].copy_from_slice(sorted.as_bytes());
    bytes[8 + sorted.len()..8 + n].fill(b' ');
    Ok(())
}

/// Distinguishes the temporary files of concurrent saves within one process.
static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: into a temporary file beside it, flushed to disk, then
/// renamed over `path`. A crash or error part-way leaves any existing file at `path` untouched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        Error::invalid(
            "atomic_write",
            format!("`{}` is not a file path", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable where the platform allows opening a directory.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Removes the temporary files that [`atomic_write`] leaves in `dir` when its process is killed
/// part-way (`.{name}.tmp-{pid}-{n}`), except those of processes still running (checked through
/// `/proc` where it exists; without `/proc` every such file is removed). Returns the paths
/// removed. Other files are never touched.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let proc = Path::new("/proc/self").exists();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_pid) else {
            continue;
        };
        let alive = pid == std::process::id()
            || (proc && Path::new("/proc").join(pid.to_string()).exists());
        if alive || !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    removed.sort();
    Ok(removed)
}

/// The writer's process id if `name` is a temporary file name of [`atomic_write`].
fn temporary_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(".tmp-")?;
    if at == 0 {
        return None;
    }
    let (pid, n) = rest[at + 5..].split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Saves every parameter of `store` under its name (PyTorch `state_dict` names for recur's
/// layers), with `metadata` in the header, atomically.
pub fn save_params<T: Float>(
    store: &ParamStore<T>,
    path: &Path,
    metadata: &Metadata,
) -> Result<()> {
    let entries: Vec<(String, Entry<'_, T>)> = store
        .iter()
        .map(|(_, name, t)| (name.to_string(), Entry::Float(t)))
        .collect();
    atomic_write(path, &to_bytes(&entries, metadata)?)
}

/// Loads a `state_dict` into `store` from an archive, strictly: every parameter of the store must
/// be present with the same shape. Tensors whose names start with one of `ignore_prefixes` are
/// skipped; any other extra tensor is an error. On error nothing is changed, and the message lists
/// every missing, unexpected and mis-shaped tensor.
pub fn load_params_from<T: Float>(
    store: &mut ParamStore<T>,
    archive: &Archive,
    ignore_prefixes: &[&str],
) -> Result<()> {
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut loaded = Vec::new();
    for (id, name, t) in store.iter() {
        match archive.tensors.get(name) {
            None => missing.push(name.to_string()),
            Some(st) if st.dims() != t.dims() => mismatched.push(format!(
                "{name}: expected {:?}, found {:?}",
                t.dims(),
                st.dims()
            )),
            Some(st) => match st.to_tensor::<T>(name) {
                Ok(v) => loaded.push((id, v)),
                Err(e) => mismatched.push(format!("{name}: {e}")),
            },
        }
    }
    let unexpected: Vec<&String> = archive
        .tensors
        .keys()
        .filter(|k| store.find(k).is_none() && !ignore_prefixes.iter().any(|p| k.starts_with(p)))
        .collect();
    if !missing.is_empty() || !mismatched.is_empty() || !unexpected.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing: {}", missing.join(", ")));
        }
        if !unexpected.is_empty() {
            let names: Vec<&str> = unexpected.iter().map(|s| s.as_str()).collect();
            parts.push(format!("unexpected: {}", names.join(", ")));
        }
        if !mismatched.is_empty() {
            parts.push(format!("mismatched: {}", mismatched.join("; ")));
        }
        return Err(Error::format("load_params", parts.join("; ")));
    }
    for (id, v) in loaded {
        *store.get_mut(id) = v;
    }
    Ok(())
}

/// Reads a safetensors file into `store` (see [`load_params_from`]); returns the file's metadata.
pub fn load_params<T: Float>(store: &mut ParamStore<T>, path: &Path) -> Result<Metadata> {
    let archive = Archive::read(path)?;
    load_params_from(store, &archive, &[]).map_err(|e| match e {
        Error::Format { msg, .. } => Error::format(path.display().to_string(), msg),
        other => other,
    })?;
    Ok(archive.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised_exactly() {
        assert_eq!(temporary_pid(".last.safetensors.tmp-123-4"), Some(123));
        assert_eq!(temporary_pid(".a.tmp-1.tmp-7-0"), Some(7));
        for other in [
            "last.safetensors",
            "last.safetensors.tmp-1-2",
            "..tmp-1-2",
            ".x.tmp-1-",
            ".x.tmp--2",
            ".x.tmp-1-2b",
            ".x.tmp-12",
        ] {
            assert_eq!(temporary_pid(other), None, "{other}");
        }
    }

    #[test]
    fn serialised_bytes_do_not_depend_on_hash_order() {
        let t = Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0], &[3]).unwrap();
        let mut md = Metadata::new();
        for k in 0..40 {
            md.insert(format!("key{k}"), format!("välue \"{k}\"\n"));
        }
        let entries: Vec<(String, Entry<'_, f32>)> = (0..20)
            .map(|k| (format!("t{k}"), Entry::Float(&t)))
            .collect();
        let a = to_bytes(&entries, &md).unwrap();
        for _ in 0..5 {
            assert_eq!(to_bytes(&entries, &md).unwrap(), a);
        }
        let back = Archive::from_bytes(&a, "test").unwrap();
        assert_eq!(back.metadata, md);
        assert_eq!(back.tensor::<f32>("t7").unwrap().data(), t.data());
    }
}
