//! A module's parameters as a PyTorch `state_dict`: listed under the names PyTorch gives them
//! inside the module, saved to and loaded from safetensors files.
//!
//! Loading is all or nothing: every parameter is read, converted and shape-checked first, and
//! the store is only written once all of them are good. On failure the error lists every
//! missing, mis-shaped and (when strict) unexpected tensor, and the store is unchanged.
//!
//! ```
//! use recur::nn::{Lstm, RecurrentConfig, load_state_dict, state_dict_bytes};
//! use recur::{io::Archive, ParamStore, Rng};
//!
//! let cfg = RecurrentConfig::new(3, 4);
//! let mut a = ParamStore::<f32>::new();
//! let lstm_a = Lstm::new(&mut a, "encoder.", cfg.clone(), &mut Rng::new(1))?;
//! // Written under the module's own names: weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0.
//! let bytes = state_dict_bytes(&lstm_a, &a, "", &Default::default())?;
//!
//! let mut b = ParamStore::<f32>::new();
//! let lstm_b = Lstm::new(&mut b, "", cfg, &mut Rng::new(2))?;
//! load_state_dict(&lstm_b, &mut b, &Archive::from_bytes(&bytes, "lstm")?, "", true)?;
//! assert_eq!(b.get(b.find("weight_hh_l0").unwrap()), a.get(a.find("encoder.weight_hh_l0").unwrap()));
//! # Ok::<(), recur::Error>(())
//! ```

use std::path::Path;

use super::{Cell, Embedding, Gru, GruCell, Linear, Lstm, LstmCell, Recurrent, Rnn, RnnCell};
use crate::io::{self, Archive, Entry, Metadata};
use crate::params::{ParamId, ParamStore};
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// Something with parameters in a [`ParamStore`]: a layer or a model.
pub trait Module {
    /// Every parameter with its name inside the module, as PyTorch's `state_dict` names it
    /// (`weight_ih_l0`, `bias`, ...), in registration order.
    fn named_params(&self) -> Vec<(String, ParamId)>;
}

impl Module for Recurrent {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        let cfg = self.config();
        let mut out = Vec::new();
        for layer in 0..cfg.num_layers {
            for dir in 0..cfg.directions() {
                let p = self
                    .direction_params(layer, dir)
                    .expect("layer and direction in range");
                let sfx = if dir == 1 { "_reverse" } else { "" };
                out.push((format!("weight_ih_l{layer}{sfx}"), p.w_ih));
                out.push((format!("weight_hh_l{layer}{sfx}"), p.w_hh));
                if let (Some(bi), Some(bh)) = (p.b_ih, p.b_hh) {
                    out.push((format!("bias_ih_l{layer}{sfx}"), bi));
                    out.push((format!("bias_hh_l{layer}{sfx}"), bh));
                }
                if let Some(hr) = p.w_hr {
                    out.push((format!("weight_hr_l{layer}{sfx}"), hr));
                }
                if let Some(ln) = p.ln {
                    out.push((format!("ln_ih_weight_l{layer}{sfx}"), ln.gamma_ih));
                    out.push((format!("ln_hh_weight_l{layer}{sfx}"), ln.gamma_hh));
                    if let Some((gc, bc)) = ln.cell {
                        out.push((format!("ln_c_weight_l{layer}{sfx}"), gc));
                        out.push((format!("ln_c_bias_l{layer}{sfx}"), bc));
                    }
                }
            }
        }
        out
    }
}

impl Module for Cell {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        let p = self.params();
        let mut out = vec![
            ("weight_ih".to_string(), p.w_ih),
            ("weight_hh".into(), p.w_hh),
        ];
        if let (Some(bi), Some(bh)) = (p.b_ih, p.b_hh) {
            out.push(("bias_ih".into(), bi));
            out.push(("bias_hh".into(), bh));
        }
        out
    }
}

impl Module for Linear {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        let mut out = vec![("weight".to_string(), self.weight())];
        out.extend(self.bias().map(|b| ("bias".to_string(), b)));
        out
    }
}

impl Module for Embedding {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        vec![("weight".to_string(), self.weight())]
    }
}

/// The typed layers and cells are modules through the engine they wrap.
macro_rules! module_via_deref {
    ($($t:ty),*) => {$(
        impl Module for $t {
            fn named_params(&self) -> Vec<(String, ParamId)> {
                (**self).named_params()
            }
        }
    )*};
}
module_via_deref!(Lstm, Gru, Rnn, LstmCell, GruCell, RnnCell);

/// The module's parameters as `(prefix + name, value)` pairs. `prefix` is empty or ends with a
/// dot, and every name is made of non-empty dotted segments (see [`super::check_prefix`]).
pub fn state_dict<'s, T: Float, M: Module + ?Sized>(
    module: &M,
    store: &'s ParamStore<T>,
    prefix: &str,
) -> Result<Vec<(String, &'s Tensor<T>)>> {
    super::check_prefix(prefix)?;
    let named = module.named_params();
    super::module::check_param_names("state_dict", &named)?;
    named
        .into_iter()
        .map(|(name, id)| {
            store.check(id)?;
            Ok((format!("{prefix}{name}"), store.get(id)))
        })
        .collect()
}

/// The module's parameters serialised as safetensors, each under `prefix` + its PyTorch name.
pub fn state_dict_bytes<T: Float, M: Module + ?Sized>(
    module: &M,
    store: &ParamStore<T>,
    prefix: &str,
    metadata: &Metadata,
) -> Result<Vec<u8>> {
    let entries: Vec<(String, Entry<'_, T>)> = state_dict(module, store, prefix)?
        .into_iter()
        .map(|(n, t)| (n, Entry::Float(t)))
        .collect();
    io::to_bytes(&entries, metadata)
}

/// Saves the module's parameters to a safetensors file (atomically, see [`io::atomic_write`]),
/// under `prefix` + their PyTorch names: the file loads in PyTorch with
/// `module.load_state_dict(safetensors.torch.load_file(path))` when `prefix` is empty.
pub fn save_state_dict<T: Float, M: Module + ?Sized>(
    module: &M,
    store: &ParamStore<T>,
    path: &Path,
    prefix: &str,
    metadata: &Metadata,
) -> Result<()> {
    io::atomic_write(path, &state_dict_bytes(module, store, prefix, metadata)?)
}

/// Loads the module's parameters from `archive`, where each is stored under `prefix` + its
/// PyTorch name. F32 and F64 tensors are accepted and converted to `T`.
///
/// Every parameter must be present with the module's shape. With `strict`, a tensor whose name
/// starts with `prefix` but is not a parameter of the module is an error too (with an empty
/// prefix: every other tensor in the archive); without it, such tensors are ignored. On error
/// nothing is loaded and the message lists every offending name.
pub fn load_state_dict<T: Float, M: Module + ?Sized>(
    module: &M,
    store: &mut ParamStore<T>,
    archive: &Archive,
    prefix: &str,
    strict: bool,
) -> Result<()> {
    super::check_prefix(prefix)?;
    let named = module.named_params();
    super::module::check_param_names("load_state_dict", &named)?;
    let (mut missing, mut mismatched, mut loaded) = (Vec::new(), Vec::new(), Vec::new());
    for (name, id) in &named {
        store.check(*id)?;
        let key = format!("{prefix}{name}");
        let want = store.get(*id).dims();
        match archive.tensors.get(&key) {
            None => missing.push(key),
            Some(st) if st.dims() != want => {
                mismatched.push(format!("{key} (expected {want:?}, found {:?})", st.dims()))
            }
            Some(st) => match st.to_tensor::<T>(&key) {
                Ok(v) if !v.all_finite() => {
                    mismatched.push(format!("{key} (holds a NaN or infinity)"))
                }
                Ok(v) => loaded.push((*id, v)),
                Err(e) => mismatched.push(format!("{key} ({e})")),
            },
        }
    }
    let mut unexpected = Vec::new();
    if strict {
        for k in archive.tensors.keys() {
            let local = k.strip_prefix(prefix);
            if local.is_some_and(|l| !named.iter().any(|(n, _)| n == l)) {
                unexpected.push(k.clone());
            }
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() || !unexpected.is_empty() {
        let mut parts = Vec::new();
        for (what, list) in [
            ("missing", &missing),
            ("wrong shape or type", &mismatched),
            ("unexpected", &unexpected),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        return Err(Error::format("load_state_dict", parts.join("; ")));
    }
    for (id, v) in loaded {
        *store.get_mut(id) = v;
    }
    Ok(())
}

/// Reads a safetensors file and loads the module from it (see [`load_state_dict`]); returns the
/// file's metadata. Errors name the file.
pub fn load_state_dict_file<T: Float, M: Module + ?Sized>(
    module: &M,
    store: &mut ParamStore<T>,
    path: &Path,
    prefix: &str,
    strict: bool,
) -> Result<Metadata> {
    let archive = Archive::read(path)?;
    load_state_dict(module, store, &archive, prefix, strict).map_err(|e| match e {
        Error::Format { msg, .. } => Error::format(path.display().to_string(), msg),
        other => other,
    })?;
    Ok(archive.metadata)
}
