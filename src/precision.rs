//! The precision of the products in training: f32 throughout, or bf16 operands accumulated in
//! f32 (mixed precision).

use std::fmt;
use std::str::FromStr;

use crate::kernels::GemmShape;
use crate::kernels::bf16::{Bf16Kernel, gemm_bf16};
use crate::{Error, Float, Result};

/// What the matrix products of a training step compute in: set on a [`Tape`](crate::Tape) with
/// [`Tape::set_precision`](crate::Tape::set_precision), it covers every product recorded on the
/// tape from then on, forward and backward.
///
/// With [`Precision::Bf16`], the products round both operands to bf16 (8 significant bits,
/// round to nearest even) and accumulate in f32, as `torch.autocast("cpu",
/// dtype=torch.bfloat16)` does for its matrix products: each recurrent layer's input projection
/// over all steps, its recurrent product at every step (and an LSTM's projection `W_hr`), the
/// input- and weight-gradient products, and [`Tape::matmul`](crate::Tape::matmul), which
/// [`Linear`](crate::nn::Linear) uses. Everything else stays f32: the master weights and the optimizer's state, the gate
/// activations, the cell state, the loss and the gradients as they are summed.
///
/// Each product is then accurate to about `2^-7` of the sum of its terms' magnitudes (see
/// the [`bf16` kernels](crate::internals::bf16) for the bound), against `2^-24` times the
/// reduction length in f32: enough for training, as the loss curves in BENCHMARKS.md show,
/// not for finite-difference gradient checks.
///
/// bf16 runs on CPUs with AVX512_BF16 (`vdpbf16ps`, two bf16 products per f32 lane and
/// instruction). Whether that is faster than f32 depends on the instruction's rate on the CPU,
/// which [`cpu::bf16_against_f32`](crate::cpu::bf16_against_f32) measures: on an Intel Xeon
/// (family 6 model 207) it runs at half the rate of f32's fused multiply-adds, and a bf16
/// training step of the medium and large benchmark shapes took 1.7 to 2 times as long as in
/// f32 (BENCHMARKS.md); the command line says so where it is asked for bf16 on such a CPU.
/// On CPUs without AVX512_BF16, [`Tape::set_precision`](crate::Tape::set_precision) returns
/// an error that says so, unless the environment variable `RECUR_BF16_KERNEL` is `portable`:
/// then the products run on the portable kernel, an emulation of the same instruction with
/// AVX2 and FMA where the CPU has them (a scalar model of it elsewhere), which gives the same
/// values bit for bit. It is slower than f32: on an AMD EPYC (Zen 3: AVX2, no AVX-512), a
/// product of 256 x 512 by 512 x 1024 ran at about 0.3 of f32's speed on one thread, and a
/// training step of a 256-unit LSTM (batch 32, 100 steps) took 2.5 to 3.1 times as long as
/// in f32 (BENCHMARKS.md); the scalar model, on CPUs without AVX2, is some 70 times slower
/// than f32. For trying and testing bf16 training on any machine, not for speed. Only `f32`
/// tapes take bf16.
///
/// ```
/// use recur::{Precision, Tape};
///
/// let mut tape = Tape::<f32>::new();
/// assert_eq!(tape.precision(), Precision::F32);
/// match tape.set_precision(Precision::Bf16) {
///     Ok(()) => assert_eq!(tape.precision(), Precision::Bf16),
///     // A CPU without AVX512_BF16 (and RECUR_BF16_KERNEL unset): the tape stays in f32.
///     Err(e) => {
///         assert!(e.to_string().contains("AVX512_BF16"), "{e}");
///         assert_eq!(tape.precision(), Precision::F32);
///     }
/// }
/// assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Every product in the tape's own element type (the default).
    #[default]
    F32,
    /// Products on bf16 operands, accumulated in f32 (mixed precision).
    Bf16,
}

impl Precision {
    /// The name the command line and configs use: `f32` or `bf16` (what [`str::parse`] reads
    /// back).
    ///
    /// ```
    /// use recur::Precision;
    /// assert_eq!(Precision::Bf16.name(), "bf16");
    /// assert_eq!(Precision::F32.name().parse::<Precision>().unwrap(), Precision::F32);
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether a tape of `T` can compute in this precision on this CPU: `Ok`, or the error
    /// [`Tape::set_precision`](crate::Tape::set_precision) would give, so that a program can
    /// refuse a setting before it starts work.
    ///
    /// ```
    /// use recur::Precision;
    /// assert!(Precision::F32.supported::<f64>().is_ok());
    /// assert!(Precision::Bf16.supported::<f64>().is_err());
    /// ```
    pub fn supported<T: Float>(self) -> Result<()> {
        self.kernel::<T>().map(|_| ())
    }

    /// The kernel the products run in this precision on this CPU for a tape of `T`: `None` for
    /// f32, the AVX512_BF16 kernel for bf16 (the portable one, [`Bf16Kernel::portable`], where
    /// `RECUR_BF16_KERNEL` is `portable`); an error naming what is missing otherwise.
    pub(crate) fn kernel<T: Float>(self) -> Result<Option<Bf16Kernel>> {
        match self {
            Precision::F32 => Ok(None),
            Precision::Bf16 => {
                check_f32::<T>()?;
                if std::env::var_os(KERNEL_VAR).is_some_and(|v| v == "portable") {
                    return Ok(Some(Bf16Kernel::portable()));
                }
                Bf16Kernel::detect().map(Some).map_err(|e| {
                    Error::invalid(
                        "precision bf16",
                        format!(
                            "{e} (set {KERNEL_VAR}=portable for the portable kernel, an \
                             emulation slower than f32)"
                        ),
                    )
                })
            }
        }
    }
}

/// The environment variable that, set to `portable`, runs bf16 on the portable kernel
/// ([`Bf16Kernel::portable`]: AVX2 and FMA where the CPU has them, else scalar).
const KERNEL_VAR: &str = "RECUR_BF16_KERNEL";

/// An error unless `T` is `f32`: bf16 products serve f32 training only.
pub(crate) fn check_f32<T: Float>() -> Result<()> {
    if T::as_f32(&[]).is_none() {
        return Err(Error::invalid(
            "precision bf16",
            format!("bf16 products need an f32 tape, not {}", T::DTYPE),
        ));
    }
    Ok(())
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;

    /// `f32` or `bf16` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(Error::invalid(
                "precision",
                format!("unknown precision `{s}` (expected f32 or bf16)"),
            )),
        }
    }
}

/// `C = op(A) op(B) + beta C` with `beta` 0 or 1, `op(A)` `m x k` and `op(B)` `k x n`, each
/// stored row-major and read transposed where its flag says: in `T` ([`Float::gemm`]), or
/// where `bf16` is given on bf16 operands accumulated in f32 (only a bf16 tape, always `f32`,
/// passes one). The products of `Tape::matmul` and of the fused nodes over all time steps.
pub(crate) fn gemm<T: Float>(
    bf16: Option<Bf16Kernel>,
    (m, k, n): (usize, usize, usize),
    (trans_a, trans_b): (bool, bool),
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    let s = GemmShape {
        m,
        k,
        n,
        trans_a,
        trans_b,
    };
    let Some(kernel) = bf16 else {
        return gemm_halves(s, a, b, beta, c);
    };
    debug_assert!(
        beta == T::ZERO || beta == T::ONE,
        "gemm in bf16: beta is 0 or 1"
    );
    let c = &mut c[..m * n];
    if beta == T::ZERO {
        c.fill(T::ZERO);
    }
    gemm_bf16(kernel, s, f32s(a), f32s(b), f32s_mut(c));
}

/// Products of at least this many multiply-adds run in two halves of rows on two threads
/// where the pool has them: waking the other thread costs some tens of microseconds, which a
/// product this large (about 0.1 ms on one core) repays.
const SPLIT_MIN_WORK: usize = 1 << 22;

/// `C = op(A) op(B) + beta C` in `T`, the rows of `C` in two halves on two threads where the
/// pool has more than one ([`crate::threads::parallel`]) and the product is large enough to
/// repay it. Each row of `C` gets the same values either way ([`Float::GEMM_ROWS`]), so the
/// result does not depend on the number of threads.
fn gemm_halves<T: Float>(s: GemmShape, a: &[T], b: &[T], beta: T, c: &mut [T]) {
    let work = s.m.saturating_mul(s.k).saturating_mul(s.n);
    // Cut at a multiple of the product's blocks of rows, where the halves equal the whole.
    let half = (s.m / 2).next_multiple_of(crate::kernels::gemm::ROW_BLOCK);
    let short = c.len() < s.m.saturating_mul(s.n);
    if work < SPLIT_MIN_WORK || half >= s.m || short || !crate::threads::parallel() {
        return T::gemm(s, T::ONE, a, b, beta, c);
    }
    let (top, bottom) = c[..s.m * s.n].split_at_mut(half * s.n);
    crate::threads::join(
        || (T::GEMM_ROWS)(s, 0..half, T::ONE, a, b, beta, top),
        || (T::GEMM_ROWS)(s, half..s.m, T::ONE, a, b, beta, bottom),
    );
}

/// `x` as `f32`: the operands of a bf16 product, which only a bf16 tape (always `f32`) runs.
pub(crate) fn f32s<T: Float>(x: &[T]) -> &[f32] {
    T::as_f32(x).expect("a bf16 product on an f32 tape")
}

/// [`f32s`], mutable.
pub(crate) fn f32s_mut<T: Float>(x: &mut [T]) -> &mut [f32] {
    T::as_f32_mut(x).expect("a bf16 product on an f32 tape")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A product large enough to run in halves on two threads gives what one thread gives, bit
    /// for bit, in each transposition and with `beta` 0 and 1.
    #[test]
    fn products_in_halves_equal_one_thread_bit_for_bit() {
        let (m, k, n) = (203, 160, 131);
        assert!(m * k * n >= SPLIT_MIN_WORK);
        let val = |i: usize| ((i * 7919) % 1009) as f64 / 1009.0 - 0.5;
        let a: Vec<f64> = (0..m * k).map(val).collect();
        let b: Vec<f64> = (0..k * n).map(|i| val(i + 13)).collect();
        let c0: Vec<f64> = (0..m * n).map(|i| val(i + 29)).collect();
        for trans in [(false, false), (false, true), (true, false), (true, true)] {
            for beta in [0.0, 1.0] {
                let run = |threads: usize| {
                    crate::threads::with_threads(threads, || {
                        let mut c = c0.clone();
                        gemm(None, (m, k, n), trans, &a, &b, beta, &mut c);
                        c
                    })
                    .unwrap()
                };
                assert_eq!(run(1), run(2), "{trans:?}, beta {beta}");
            }
        }
    }
}
