//! The `registry` module.
