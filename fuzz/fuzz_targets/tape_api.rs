//! Arbitrary sequences of calls on the public `Tensor` / `Tape` API with arbitrary shapes,
//! indices and values: every call returns `Ok` or an `Err`, never panics. Gradients that come
//! back have the shape of the value they belong to.

#![no_main]

use libfuzzer_sys::fuzz_target;
use recur::{ParamId, ParamStore, Tape, Tensor, Var};

#[path = "bytes.rs"]
mod bytes;
use bytes::Bytes;

/// No value built here holds more elements than this (the fuzzer should not spend its time
/// multiplying large matrices).
const MAX_ELEMS: usize = 1 << 12;

/// Dimensions: usually 0 to 4 small ones, sometimes a zero or a huge one, sometimes too many.
fn dims(r: &mut Bytes) -> Vec<usize> {
    let n = match r.u8() {
        0..=249 => r.range(0, 4),
        _ => r.range(5, 6),
    };
    (0..n)
        .map(|_| match r.u8() {
            0..=243 => r.range(1, 3),
            244..=249 => 0,
            250..=252 => r.u16() as usize,
            _ => r.u64() as usize,
        })
        .collect()
}

fn value(r: &mut Bytes) -> f64 {
    match r.u8() {
        0..=239 => r.grid(16.0),
        240..=243 => f64::NAN,
        244..=246 => f64::INFINITY,
        247..=249 => f64::NEG_INFINITY,
        _ => f64::from_bits(r.u64()),
    }
}

/// A tensor from one of the constructors, or the error it returned.
fn tensor(r: &mut Bytes) -> recur::Result<Tensor<f64>> {
    let d = dims(r);
    let fits = d
        .iter()
        .try_fold(1usize, |n, &x| n.checked_mul(x))
        .is_some_and(|n| n <= MAX_ELEMS);
    match r.u8() % 6 {
        // Only constructors that allocate what the shape asks for need the size bound.
        0 if fits => Tensor::zeros(&d),
        1 if fits => Tensor::full(&d, value(r)),
        2 if fits => Tensor::from_fn(&d, |i| (i as f64).sin()),
        3 => Ok(Tensor::scalar(value(r))),
        _ => {
            // A data length that may or may not match the shape.
            let n = r.range(0, 24);
            let data: Vec<f64> = (0..n).map(|_| value(r)).collect();
            if r.bool() {
                Tensor::from_vec(data, &d)
            } else {
                Tensor::from_slice(&data, &d)
            }
        }
    }
}

struct State {
    tape: Tape<f64>,
    other: Tape<f64>,
    store: ParamStore<f64>,
    ids: Vec<ParamId>,
    vars: Vec<Var>,
}

impl State {
    /// A variable: usually one of this tape's, sometimes one from another tape or from before a
    /// clear.
    fn var(&mut self, r: &mut Bytes) -> Var {
        let k = r.u8() as usize;
        if k >= 250 || self.vars.is_empty() {
            return self.other.constant(Tensor::scalar(1.0));
        }
        self.vars[k % self.vars.len()]
    }

    fn numel(&self, v: Var) -> usize {
        self.tape.value(v).map_or(0, |t| t.numel())
    }

    fn vars(&mut self, r: &mut Bytes) -> Vec<Var> {
        let n = r.range(0, 4);
        (0..n).map(|_| self.var(r)).collect()
    }

    fn push(&mut self, v: recur::Result<Var>) {
        if let Ok(v) = v {
            let t = self.tape.value(v).expect("a new var is valid");
            assert!(t.numel() == t.shape().numel() && t.dims() == t.shape().dims());
            self.vars.push(v);
        }
    }

    fn step(&mut self, r: &mut Bytes) {
        match r.u8() % 32 {
            0 => {
                if let Ok(t) = tensor(r) {
                    let v = self.tape.input(t);
                    self.vars.push(v);
                }
            }
            1 => {
                if let Ok(t) = tensor(r) {
                    let v = self.tape.constant(t);
                    self.vars.push(v);
                }
            }
            2 => {
                if let Ok(t) = tensor(r) {
                    let name = format!("p{}", r.u8() % 4);
                    if let Ok(id) = self.store.add(name, t) {
                        self.ids.push(id);
                    }
                }
                if let Some(&id) = self.ids.get(r.u8() as usize % (self.ids.len().max(1))) {
                    let v = self.tape.param(&self.store, id);
                    self.push(v);
                }
            }
            3 => {
                let (a, b) = (self.var(r), self.var(r));
                if self.numel(a).saturating_mul(self.numel(b)) <= MAX_ELEMS {
                    let (ta, tb) = (r.bool(), r.bool());
                    let v = self.tape.matmul_t(a, ta, b, tb);
                    self.push(v);
                }
            }
            4 => {
                let (a, b) = (self.var(r), self.var(r));
                if self.numel(a).saturating_mul(self.numel(b)) <= MAX_ELEMS {
                    let v = self.tape.matmul(a, b);
                    self.push(v);
                }
            }
            5 => {
                let (a, b) = (self.var(r), self.var(r));
                let v = self.tape.add(a, b);
                self.push(v);
            }
            6 => {
                let (a, b) = (self.var(r), self.var(r));
                let v = self.tape.sub(a, b);
                self.push(v);
            }
            7 => {
                let (a, b) = (self.var(r), self.var(r));
                let v = self.tape.mul(a, b);
                self.push(v);
            }
            8 => {
                let a = self.var(r);
                let v = self.tape.scale(a, value(r));
                self.push(v);
            }
            9 => {
                let a = self.var(r);
                let v = match r.u8() % 5 {
                    0 => self.tape.sigmoid(a),
                    1 => self.tape.tanh(a),
                    2 => self.tape.relu(a),
                    3 => self.tape.exp(a),
                    _ => self.tape.log(a),
                };
                self.push(v);
            }
            10 => {
                let a = self.var(r);
                let v = if r.bool() {
                    self.tape.sum(a)
                } else {
                    self.tape.mean(a)
                };
                self.push(v);
            }
            11 => {
                let parts = self.vars(r);
                if parts.iter().map(|&v| self.numel(v)).sum::<usize>() <= MAX_ELEMS {
                    let v = self.tape.concat(&parts);
                    self.push(v);
                }
            }
            12 => {
                let items = self.vars(r);
                if items.iter().map(|&v| self.numel(v)).sum::<usize>() <= MAX_ELEMS {
                    let v = self.tape.stack(&items);
                    self.push(v);
                }
            }
            13 => {
                let a = self.var(r);
                let (s, e) = (r.index(), r.index());
                let v = self.tape.slice(a, s, e);
                self.push(v);
            }
            14 => {
                let a = self.var(r);
                let v = self.tape.select(a, r.index());
                self.push(v);
            }
            15 => {
                let a = self.var(r);
                let d = dims(r);
                let v = self.tape.reshape(a, &d);
                self.push(v);
            }
            16 => {
                let a = self.var(r);
                let v = self.tape.swap01(a);
                self.push(v);
            }
            17 => {
                let table = self.var(r);
                let d = dims(r);
                let n = if r.bool() {
                    d.iter()
                        .try_fold(1usize, |n, &x| n.checked_mul(x))
                        .map_or(64, |n| n.min(64))
                } else {
                    r.range(0, 8)
                };
                let ids: Vec<usize> = (0..n).map(|_| r.index()).collect();
                let v = self.tape.embedding(table, &ids, &d);
                self.push(v);
            }
            18 => {
                let logits = self.var(r);
                let n = r.range(0, 12);
                let targets: Vec<usize> = (0..n).map(|_| r.index()).collect();
                let v = if r.bool() {
                    let ignore = r.bool().then(|| r.index());
                    self.tape.cross_entropy(logits, &targets, ignore)
                } else {
                    let m = if r.bool() { n } else { r.range(0, 12) };
                    let mask: Vec<bool> = (0..m).map(|_| r.bool()).collect();
                    self.tape.cross_entropy_masked(logits, &targets, &mask)
                };
                self.push(v);
            }
            19 => {
                let (a, b) = (self.var(r), self.var(r));
                let v = self.tape.mse(a, b);
                self.push(v);
            }
            20 => {
                let a = self.var(r);
                let v = self.tape.detach(a);
                self.push(v);
            }
            21 | 22 => {
                let a = self.var(r);
                let result = if r.bool() {
                    self.tape
                        .backward(a)
                        .map(|g| check_grads(&g, &self.vars, &self.ids))
                } else {
                    match tensor(r) {
                        Ok(seed) => self
                            .tape
                            .backward_with(a, seed)
                            .map(|g| check_grads(&g, &self.vars, &self.ids)),
                        Err(_) => Ok(Vec::new()),
                    }
                };
                // Gradient shapes match the values they belong to.
                if let Ok(shapes) = result {
                    for (v, dims) in shapes {
                        assert_eq!(self.tape.value(v).unwrap().dims(), &dims[..]);
                    }
                }
            }
            23 => {
                let on = r.bool();
                self.tape.set_anomaly_detection(on);
            }
            24 => {
                // Everything from before becomes foreign.
                if r.u8() < 32 {
                    self.tape.clear();
                }
            }
            25 => {
                let a = self.var(r);
                let _ = self.tape.shape(a);
                let _ = self.tape.requires_grad(a);
                let _ = self.tape.param_of(a);
            }
            26 => {
                if let Ok(t) = tensor(r) {
                    let d = dims(r);
                    let _ = t.clone().reshape(&d);
                    let idx: Vec<usize> = (0..r.range(0, 5)).map(|_| r.index()).collect();
                    let _ = t.get(&idx);
                    let mut t2 = t.clone();
                    let _ = t2.set(&idx, 1.0);
                    if let Ok(u) = tensor(r) {
                        let _ = t.max_abs_diff(&u);
                    }
                    let _ = (t.sum(), t.norm(), t.all_finite(), t.cast::<f32>());
                }
            }
            _ => {
                // Elementwise ops on two fresh inputs, to reach broadcasting often.
                let (a, b) = (tensor(r), tensor(r));
                if let (Ok(a), Ok(b)) = (a, b) {
                    let (a, b) = (self.tape.input(a), self.tape.input(b));
                    self.vars.extend([a, b]);
                    let v = self.tape.mul(a, b);
                    self.push(v);
                }
            }
        }
    }
}

/// The shape each gradient should have, for every variable and parameter that has one.
fn check_grads(g: &recur::Grads<'_, f64>, vars: &[Var], ids: &[ParamId]) -> Vec<(Var, Vec<usize>)> {
    for &id in ids {
        let _ = g.param(id);
    }
    let _ = g.param_ids();
    vars.iter()
        .filter_map(|&v| Some((v, g.wrt(v)?.dims().to_vec())))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes::new(data);
    let mut s = State {
        tape: Tape::new(),
        other: Tape::new(),
        store: ParamStore::new(),
        ids: Vec::new(),
        vars: Vec::new(),
    };
    let mut steps = 0;
    while !r.is_empty() && steps < 96 {
        s.step(&mut r);
        steps += 1;
    }
});
