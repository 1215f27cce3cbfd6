//! Data for sequence models: a character vocabulary, batching of a text corpus into parallel
//! streams for truncated backpropagation through time, and the long-range synthetic tasks the
//! chapter's argument is measured on (the adding problem and the copy-memory task).
//!
//! For sequence-to-one and sequence-to-sequence models: vocabularies of characters or words
//! with padding and unknown ids ([`Vocab`]), class labels ([`Labels`]), `label<TAB>text` files
//! ([`read_labelled`]), padding into the time-major layout with lengths ([`pad_ids`],
//! [`pad_dense`]; lengths need not be sorted), batches bucketed by length and shuffled from a
//! seed ([`BatchPlan`], [`SeqDataset`]), and the [`DataSource`] trait a training loop walks.

mod batch;
mod labelled;
mod stream;
mod tasks;
mod text;
mod tokens;
mod vocab;

pub use batch::{BatchPlan, DataSource, SeqBatch, SeqDataset, Take, pad_dense, pad_ids};
pub use labelled::{Example, parse_labelled, read_labelled};
pub use stream::{LmChunk, LmStreams};
pub use tasks::{AddingBatch, CopyBatch, adding_problem, copy_memory};
pub use text::{TextStreams, split_validation};
pub use tokens::{Labels, Tokenizer, Vocab};
pub use vocab::CharVocab;
