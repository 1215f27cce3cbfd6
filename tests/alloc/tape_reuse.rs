//! A cleared tape reuses its buffers: a steady-state step of elementwise ops, forward and
//! backward, makes no heap allocation at all. (Counted on this thread.)

use recur::{Tape, Tensor};

use crate::counted;

#[test]
fn steady_state_step_allocates_nothing() {
    let mut tape = Tape::<f32>::new();
    let x0 = Tensor::from_fn(&[8, 16], |i| (i as f32 * 0.01).sin()).unwrap();
    let b0 = Tensor::from_fn(&[16], |i| i as f32 * 0.1).unwrap();
    let mut x_in = x0.clone();
    let mut b_in = b0.clone();
    let step =
        |tape: &mut Tape<f32>, x: Tensor<f32>, b: Tensor<f32>| -> (Tensor<f32>, Tensor<f32>) {
            tape.clear();
            let xv = tape.input(x);
            let bv = tape.input(b);
            let y = tape.add(xv, bv).unwrap();
            let y = tape.tanh(y).unwrap();
            let z = tape.sigmoid(y).unwrap();
            let z = tape.mul(z, y).unwrap();
            let s = tape.slice(z, 2, 10).unwrap();
            let l = tape.mean(s).unwrap();
            let g = tape.backward(l).unwrap();
            assert!(g.wrt(xv).is_some());
            // hand the input buffers back to the caller for the next step
            (
                tape.value(xv).unwrap().clone(),
                tape.value(bv).unwrap().clone(),
            )
        };
    for _ in 0..3 {
        (x_in, b_in) = step(&mut tape, x_in, b_in);
    }
    // Measure only the tape work: the two clones above allocate, so count them separately.
    let before = counted().0;
    (x_in, b_in) = step(&mut tape, x_in, b_in);
    let used = counted().0 - before;
    assert_eq!(
        used, 2,
        "only the two returned clones may allocate, saw {used}"
    );
    assert_eq!(x_in, x0);
    assert_eq!(b_in, b0);
}
