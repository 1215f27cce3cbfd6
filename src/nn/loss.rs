//! Sequence losses.
