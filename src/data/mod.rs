//! Data for sequence models: a character vocabulary, batching of a text corpus into parallel
//! streams for truncated backpropagation through time, and the long-range synthetic tasks the
//! chapter's argument is measured on (the adding problem and the copy-memory task).

mod tasks;
mod text;
mod vocab;

pub use tasks::{AddingBatch, CopyBatch, adding_problem, copy_memory};
pub use text::{TextStreams, split_validation};
pub use vocab::CharVocab;
