//! `Tape::backward`: one reverse pass over the recorded nodes; `Grads`: what it returns.

use super::ops::{self, GradAcc, Op};
use super::{CustomOp, Tape, Var, check_finite};
use crate::params::ParamId;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// Gradients from one [`Tape::backward`] call, borrowed from the tape.
///
/// The borrow is mutable so that gradients can be modified in place before an optimizer step
/// (clipping, see [`crate::optim::clip_grad_norm`]).
pub struct Grads<'t, T: Float> {
    tape: &'t mut Tape<T>,
}

impl<T: Float> Grads<'_, T> {
    /// The gradient of the loss with respect to `v`, or `None` if the loss does not depend on it.
    pub fn wrt(&self, v: Var) -> Option<&Tensor<T>> {
        let i = self.tape.check("Grads::wrt", v).ok()?;
        self.tape.grads.get(i as usize)?.as_ref()
    }

    /// The gradient with respect to a parameter, or `None` if it was not on the tape or the loss
    /// does not depend on it.
    pub fn param(&self, id: ParamId) -> Option<&Tensor<T>> {
        let s = self.tape.param_slot(id)?;
        self.tape.grads.get(s as usize)?.as_ref()
    }

    /// The gradient with respect to a parameter, mutable (for clipping or scaling in place).
    pub fn param_mut(&mut self, id: ParamId) -> Option<&mut Tensor<T>> {
        let s = self.tape.param_slot(id)?;
        self.tape.grads.get_mut(s as usize)?.as_mut()
    }

    /// Every parameter that has a gradient, in `ParamId` order.
    pub fn param_ids(&self) -> Vec<ParamId> {
        self.tape
            .param_slots
            .iter()
            .enumerate()
            .filter_map(|(k, s)| {
                let s = (*s)? as usize;
                self.tape.grads.get(s)?.as_ref()?;
                Some(ParamId(k as u32))
            })
            .collect()
    }
}

impl<T: Float> Tape<T> {
    /// Records a node computed outside the tape (a fused layer, a user-defined op): its `inputs`,
    /// its `outputs` (which become new `Var`s, returned in order) and the op that knows the
    /// backward rule. See [`CustomOp`].
    pub fn custom<const N: usize>(
        &mut self,
        op: Box<dyn CustomOp<T>>,
        inputs: &[Var],
        outputs: [Tensor<T>; N],
    ) -> Result<[Var; N]> {
        let mut ids = [0u32; 16];
        if inputs.len() > ids.len() {
            return Err(Error::invalid(
                "Tape::custom",
                format!("{} inputs exceed 16", inputs.len()),
            ));
        }
        for (slot, &v) in ids.iter_mut().zip(inputs) {
            *slot = self.check("Tape::custom", v)?;
        }
        let first = self.push_node(Op::Custom(op), &ids[..inputs.len()], outputs)?;
        Ok(std::array::from_fn(|k| self.var(first + k as u32)))
    }

    /// Gradients of the scalar `loss` with respect to every parameter and input it depends on.
    ///
    /// `loss` must hold exactly one element. Backward is a single reverse loop over the nodes
    /// (no recursion); calling it again recomputes from scratch.
    pub fn backward(&mut self, loss: Var) -> Result<Grads<'_, T>> {
        let il = self.check("Tape::backward", loss)?;
        let n = self.slots[il as usize].value.numel();
        if n != 1 {
            return Err(Error::invalid(
                "Tape::backward",
                format!(
                    "loss must be a scalar, got shape {}",
                    self.slots[il as usize].value.shape()
                ),
            ));
        }
        let mut seed = self.alloc(self.slots[il as usize].value.shape());
        seed.data_mut()[0] = T::ONE;
        self.backward_with(loss, seed)
    }

    /// Backward from `v` with an explicit output gradient `grad` (shaped like `v`): computes the
    /// vector-Jacobian product `grad^T dv/d(leaves)`.
    pub fn backward_with(&mut self, v: Var, grad: Tensor<T>) -> Result<Grads<'_, T>> {
        let iv = self.check("Tape::backward_with", v)?;
        let vs = self.slots[iv as usize].value.shape();
        if grad.shape() != vs {
            return Err(Error::ShapeMismatch {
                op: "Tape::backward_with",
                lhs: vs,
                rhs: grad.shape(),
            });
        }
        for g in self.grads.drain(..).flatten() {
            self.pool.give(g.into_vec());
        }
        self.grads.resize_with(self.slots.len(), || None);
        self.grads[iv as usize] = Some(grad);
        let anomaly = self.anomaly_detection();
        let mut nodes = std::mem::take(&mut self.nodes);
        let result = self.run_backward(&mut nodes, iv, anomaly);
        self.nodes = nodes;
        result?;
        Ok(Grads { tape: self })
    }

    /// Gradients computed elsewhere (summed over micro-batches, combined across processes) as
    /// the [`Grads`] an optimizer or [`crate::optim::clip_grad_norm`] takes: the tape is cleared,
    /// every parameter named is recorded on it, and its gradient is the tensor given, which must
    /// have the parameter's shape.
    ///
    /// ```
    /// use recur::{ParamStore, Tape, Tensor};
    /// let mut ps = ParamStore::<f32>::new();
    /// let w = ps.add("w", Tensor::zeros(&[2])?)?;
    /// let mut tape = Tape::new();
    /// let g = tape.grads_from(&ps, vec![(w, Tensor::from_vec(vec![1.0, 2.0], &[2])?)])?;
    /// assert_eq!(g.param(w).unwrap().data(), &[1.0, 2.0]);
    /// assert!(tape.grads_from(&ps, vec![(w, Tensor::zeros(&[3])?)]).is_err());
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn grads_from(
        &mut self,
        store: &crate::params::ParamStore<T>,
        grads: Vec<(ParamId, Tensor<T>)>,
    ) -> Result<Grads<'_, T>> {
        for (id, g) in &grads {
            store.check(*id)?;
            if g.shape() != store.get(*id).shape() {
                return Err(Error::ShapeMismatch {
                    op: "Tape::grads_from",
                    lhs: store.get(*id).shape(),
                    rhs: g.shape(),
                });
            }
        }
        self.clear();
        let mut slots = Vec::with_capacity(grads.len());
        for (id, _) in &grads {
            slots.push(self.param(store, *id)?.idx as usize);
        }
        self.grads.resize_with(self.slots.len(), || None);
        for (s, (_, g)) in slots.into_iter().zip(grads) {
            self.grads[s] = Some(g);
        }
        Ok(Grads { tape: self })
    }

    fn run_backward(
        &mut self,
        nodes: &mut [super::Node<T>],
        from: u32,
        anomaly: bool,
    ) -> Result<()> {
        // Nodes after the one that produced `from` cannot contribute.
        let end = nodes
            .iter()
            .position(|n| n.outputs.contains(&from))
            .map_or(0, |p| p + 1);
        for node in nodes[..end].iter_mut().rev() {
            if node.op.is_leaf() || !self.slots[node.outputs.start as usize].requires_grad {
                continue;
            }
            let started = self.profiler.is_some().then(std::time::Instant::now);
            self.node_backward(node, anomaly)?;
            if let (Some(p), Some(t)) = (&mut self.profiler, started) {
                p.backward(node.op.name(), t.elapsed());
            }
        }
        if let Some(p) = &mut self.profiler {
            p.restart();
        }
        Ok(())
    }

    /// Runs one node's backward rule.
    fn node_backward(&mut self, node: &mut super::Node<T>, anomaly: bool) -> Result<()> {
        let (a, b) = (node.inputs.start as usize, node.inputs.end as usize);
        if let Op::Custom(op) = &mut node.op {
            let ins = self.input_ids[a..b].to_vec();
            self.custom_backward(op.as_mut(), &ins, node.outputs.clone())?;
            if anomaly {
                self.check_input_grads(&ins, op.name())?;
            }
            return Ok(());
        }
        let ins = &self.input_ids[a..b];
        let o = node.outputs.start as usize;
        let Some(gy) = self.grads[o].take() else {
            return Ok(());
        };
        let mut acc = GradAcc {
            grads: &mut self.grads,
            pool: &mut self.pool,
            slots: &self.slots,
        };
        ops::backward(
            &node.op,
            ins,
            node.outputs.clone(),
            &gy,
            &self.aux,
            &mut acc,
        );
        self.grads[o] = Some(gy);
        if anomaly {
            let ins = &self.input_ids[a..b];
            self.check_input_grads(ins, node.op.name())?;
        }
        Ok(())
    }

    fn custom_backward(
        &mut self,
        op: &mut dyn CustomOp<T>,
        ins: &[u32],
        outs: std::ops::Range<u32>,
    ) -> Result<()> {
        let mut gouts: Vec<Option<Tensor<T>>> = outs
            .clone()
            .map(|o| self.grads[o as usize].take())
            .collect();
        if gouts.iter().all(Option::is_none) {
            return Ok(());
        }
        let mut gins: Vec<Option<Tensor<T>>> = Vec::with_capacity(ins.len());
        let overwrites = op.overwrites_grad_inputs();
        for &i in ins {
            let s = &self.slots[i as usize];
            let g = match (s.requires_grad, overwrites) {
                (false, _) => None,
                (true, false) => Some(self.alloc(s.value.shape())),
                (true, true) => Some(self.alloc_dirty(s.value.shape())),
            };
            gins.push(g);
        }
        let result = {
            let in_vals: Vec<&Tensor<T>> =
                ins.iter().map(|&i| &self.slots[i as usize].value).collect();
            let out_vals: Vec<&Tensor<T>> = outs
                .clone()
                .map(|o| &self.slots[o as usize].value)
                .collect();
            let gout_refs: Vec<Option<&Tensor<T>>> = gouts.iter().map(Option::as_ref).collect();
            let mut ws = super::Workspace {
                pool: &mut self.pool,
            };
            op.backward(&in_vals, &out_vals, &gout_refs, &mut gins, &mut ws)
        };
        for (k, o) in outs.enumerate() {
            self.grads[o as usize] = gouts[k].take();
        }
        result?;
        for (k, &i) in ins.iter().enumerate() {
            let Some(g) = gins[k].take() else { continue };
            let want = self.slots[i as usize].value.shape();
            if g.shape() != want {
                return Err(Error::ShapeMismatch {
                    op: "custom op backward (input gradient)",
                    lhs: want,
                    rhs: g.shape(),
                });
            }
            match &mut self.grads[i as usize] {
                Some(existing) => {
                    for (d, &x) in existing.data_mut().iter_mut().zip(g.data()) {
                        *d += x;
                    }
                    self.pool.give(g.into_vec());
                }
                slot @ None => *slot = Some(g),
            }
        }
        Ok(())
    }

    fn check_input_grads(&self, ins: &[u32], name: &str) -> Result<()> {
        for &i in ins {
            if let Some(g) = &self.grads[i as usize] {
                check_finite(g, || format!("backward of {name}"))?;
            }
        }
        Ok(())
    }
}
