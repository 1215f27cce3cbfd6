//! The fused layer's products in bf16 ([`crate::Precision::Bf16`]): the same products as in
//! f32, each on operands rounded to bf16 and accumulated in f32 by
//! [`crate::kernels::bf16`]. The weights are packed once per pass (`W^T` in forward, `W` in
//! backward); the activations are converted as each product reads them.
//!
//! Only `f32` layers reach here (a bf16 tape is always `f32`), so each function takes its
//! operands as `f32` through [`Float::as_f32`] ([`f32s`]).

use crate::kernels::bf16::{
    AStorage, Bf16Kernel, PackedBf16A, PackedBf16B, gemm_bf16_acc_stored,
    gemm_bf16_acc_stored_cols, gemm_bf16_set_stored, gemm_bf16_stacked, gemm_bf16_stacked_part,
};
use crate::kernels::gemm_nn::{PackedB, Rows, gemm_packed_acc, gemm_packed_set};
use crate::precision::{f32s, f32s_mut};
use crate::tensor::{self, Float};

/// `W_ih` and `W_hh` packed in bf16 for one direction's products, with the kernel they run on.
pub(super) struct Bf16Weights {
    pub(super) kernel: Bf16Kernel,
    /// `W_ih^T` in forward (the input projection), `W_ih` in backward (`dX`).
    pub(super) w_ih: PackedBf16B,
    /// `W_hh^T` in forward (each step's `h_{t-1} W_hh^T`), `W_hh` in backward (`dG W_hh`).
    pub(super) w_hh: PackedBf16B,
}

impl Bf16Weights {
    pub(super) fn new(kernel: Bf16Kernel) -> Self {
        Bf16Weights {
            kernel,
            w_ih: PackedBf16B::new(),
            w_hh: PackedBf16B::new(),
        }
    }

    /// Packs `W_ih^T` and `W_hh^T` (`W_ih` `[G*H, I]`, `W_hh` `[G*H, H]`) for the forward.
    pub(super) fn pack_forward<T: Float>(&mut self, w_ih: &[T], w_hh: &[T], (gh, i, h): Dims) {
        self.w_ih.pack_transposed(self.kernel, f32s(w_ih), gh, i);
        self.w_hh.pack_transposed(self.kernel, f32s(w_hh), gh, h);
    }

    /// Packs `W_hh` and, when `dX` is wanted, `W_ih` for the backward.
    pub(super) fn pack_backward<T: Float>(
        &mut self,
        w_ih: Option<&[T]>,
        w_hh: &[T],
        (gh, i, h): Dims,
    ) {
        if let Some(w_ih) = w_ih {
            self.w_ih.pack(self.kernel, f32s(w_ih), gh, i);
        }
        self.w_hh.pack(self.kernel, f32s(w_hh), gh, h);
    }
}

/// `(G*H, I, H)`: the gates' width, the input size and the hidden size.
type Dims = (usize, usize, usize);

/// `C = A B` (`set`) or `C += A B`, `A` `m x k` as `storage` says, `B` packed (`k x n`), `C`
/// `m x n` row-major.
pub(super) fn product<T: Float>(
    kernel: Bf16Kernel,
    (m, a, storage): (usize, &[T], AStorage),
    b: &PackedBf16B,
    c: &mut [T],
    set: bool,
) {
    let c = f32s_mut(&mut c[..m * b.n()]);
    let a = (m, f32s(a), storage);
    if set {
        gemm_bf16_set_stored(kernel, a, b, c, b.n());
    } else {
        gemm_bf16_acc_stored(kernel, a, b, c, b.n());
    }
}

/// One step's recurrent product over a group of shards' row blocks: `C + bias + A B` for
/// each (see [`Rows`]) over columns `cols` of `B` (whole panels, as
/// [`StepWeight::split_point`](super::weights::StepWeight::split_point) cuts them), each
/// block's `C` holding just those columns, rows `ldc` apart.
pub(super) fn step_product<T: Float>(
    kernel: Bf16Kernel,
    blocks: &mut [Rows<'_, T>],
    b: &PackedBf16B,
    cols: std::ops::Range<usize>,
    ldc: usize,
) {
    let w = cols.len();
    for g in blocks.iter_mut().filter(|g| g.m > 0) {
        let c = &mut g.c[..(g.m - 1) * ldc + w];
        if let Some(bias) = g.bias {
            for row in c.chunks_mut(ldc) {
                tensor::add(&mut row[..w], &bias[cols.clone()]);
            }
        }
        let a = (g.m, f32s(g.a), g.storage);
        gemm_bf16_acc_stored_cols(kernel, a, b, cols.clone(), f32s_mut(c), ldc);
    }
}

/// `dW = dG^T A` (`[G*H, cols]`, set), with `dG` `[rows, G*H]` read in place by columns and
/// `A` `[rows, cols]` given as row blocks stacked in order (`parts`, each whole rows).
pub(super) fn weight_grad<T: Float>(
    kernel: Bf16Kernel,
    (dg, gh): (&[T], usize),
    parts: &[&[T]],
    cols: usize,
    dw: &mut [T],
) {
    let dw = f32s_mut(&mut dw[..gh * cols]);
    dw.fill(0.0);
    let a = (gh, f32s(dg), AStorage::ColMajor { ld: gh });
    gemm_bf16_stacked(kernel, a, &two_parts(parts), cols, dw, cols);
}

/// Two parts as [`weight_grad`]'s, in f32.
fn two_parts<'a, T: Float>(parts: &[&'a [T]]) -> [&'a [f32]; 2] {
    match parts {
        [one] => [f32s(one), &[]],
        [one, two] => [f32s(one), f32s(two)],
        _ => panic!("weight_grad: one or two parts"),
    }
}

thread_local! {
    /// This thread's packing of a shard's `dG^T`, kept between backward passes.
    static DG_T: std::cell::Cell<PackedBf16A> = std::cell::Cell::new(PackedBf16A::new());
}

/// A shard's `dG^T` packed once in bf16 for both weight gradients that read it (the LSTM's and
/// the RNN's `dW_ih = dG^T X` and `dW_hh = dG^T H`; the GRU's `dW_hh` reads another gradient):
/// one conversion of `dG`, which streams from memory, instead of one per product. Holds this
/// thread's buffer, given back when dropped.
pub(super) struct PackedDgT {
    kernel: Bf16Kernel,
    gh: usize,
    packed: PackedBf16A,
}

impl PackedDgT {
    /// `dg` `[rows, G*H]` (`gh = G*H`) packed as `dG^T`.
    pub(super) fn new<T: Float>(kernel: Bf16Kernel, dg: &[T], gh: usize) -> Self {
        let mut packed = DG_T.with(std::cell::Cell::take);
        let a = f32s(dg);
        packed.pack(kernel, a, gh, a.len() / gh, AStorage::ColMajor { ld: gh });
        PackedDgT { kernel, gh, packed }
    }

    /// [`weight_grad`] over rows `rows` of the packed `dG`, if they are whole pairs of it
    /// (`PackedBf16A::holds_part`; the same values as packing those rows alone); `false`, with
    /// nothing done, if not.
    pub(super) fn weight_grad<T: Float>(
        &self,
        rows: std::ops::Range<usize>,
        parts: &[&[T]],
        cols: usize,
        dw: &mut [T],
    ) -> bool {
        if !self.packed.holds_part(&rows) {
            return false;
        }
        let dw = f32s_mut(&mut dw[..self.gh * cols]);
        let a = (&self.packed, rows);
        gemm_bf16_stacked_part(self.kernel, a, &two_parts(parts), cols, (dw, cols));
        true
    }
}

impl Drop for PackedDgT {
    fn drop(&mut self) {
        let packed = std::mem::take(&mut self.packed);
        DG_T.with(|c| c.set(packed));
    }
}

/// A weight packed for the products of each step, `C = A B` or `C += A B` over a few rows: in
/// the layer's type, or in bf16 on a bf16 tape.
pub(super) enum StepPacked<T> {
    /// In `T`, for the small-batch kernel of [`crate::kernels::gemm_nn`].
    Native(PackedB<T>),
    /// In bf16.
    Bf16(PackedBf16B, Bf16Kernel),
}

impl<T: Float> StepPacked<T> {
    /// In bf16 on `bf16`'s kernel where given, else in `T` in the buffer `room` gives.
    pub(super) fn new(bf16: Option<Bf16Kernel>, room: impl FnOnce() -> PackedB<T>) -> Self {
        match bf16 {
            Some(kernel) => StepPacked::Bf16(PackedBf16B::new(), kernel),
            None => StepPacked::Native(room()),
        }
    }

    /// Packs `w^T` for `w` `[n, k]` row-major (forward: `h W^T`).
    pub(super) fn pack_transposed(&mut self, w: &[T], n: usize, k: usize) {
        match self {
            StepPacked::Native(p) => p.pack_transposed(w, n, k),
            StepPacked::Bf16(p, kernel) => p.pack_transposed(*kernel, f32s(w), n, k),
        }
    }

    /// Packs `b` `[k, n]` row-major (backward: `dG W`).
    pub(super) fn pack(&mut self, b: &[T], k: usize, n: usize) {
        match self {
            StepPacked::Native(p) => p.pack(b, k, n),
            StepPacked::Bf16(p, kernel) => p.pack(*kernel, f32s(b), k, n),
        }
    }

    /// Rows of `B` (`k`) and columns (`n`).
    pub(super) fn k_n(&self) -> (usize, usize) {
        match self {
            StepPacked::Native(p) => (p.k(), p.n()),
            StepPacked::Bf16(p, _) => (p.k(), p.n()),
        }
    }

    /// `C += A B`, `A` `m` rows row-major.
    pub(super) fn acc(&self, m: usize, a: &[T], c: &mut [T]) {
        match self {
            StepPacked::Native(p) => gemm_packed_acc(m, a, p, c),
            StepPacked::Bf16(p, kernel) => {
                product(*kernel, (m, a, AStorage::RowMajor), p, c, false)
            }
        }
    }

    /// `C = A B`, `A` `m` rows row-major.
    pub(super) fn set(&self, m: usize, a: &[T], c: &mut [T]) {
        match self {
            StepPacked::Native(p) => gemm_packed_set(m, a, p, c),
            StepPacked::Bf16(p, kernel) => product(*kernel, (m, a, AStorage::RowMajor), p, c, true),
        }
    }

    /// The buffer to give back to the tape's pool (none in bf16).
    pub(super) fn into_buffer(self) -> Vec<T> {
        match self {
            StepPacked::Native(p) => p.into_buffer(),
            StepPacked::Bf16(..) => Vec::new(),
        }
    }
}

impl<T: Float> Default for StepPacked<T> {
    fn default() -> Self {
        StepPacked::Native(PackedB::default())
    }
}
