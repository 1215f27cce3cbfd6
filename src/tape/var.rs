//! `Var`: a handle to a value recorded on a tape.

/// A handle to a value on a [`crate::Tape`]: a leaf (parameter, input, constant) or the output of
/// an op. It is a plain index, `Copy`, and valid only on the tape (and tape generation, i.e. until
/// [`crate::Tape::clear`]) that made it; using it elsewhere is an error, not undefined behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var {
    pub(crate) idx: u32,
    pub(crate) key: u32,
}

impl Var {
    /// The variable's position on its tape.
    pub fn index(self) -> usize {
        self.idx as usize
    }
}
