//! Diagnostics: gradient checking by finite differences.
