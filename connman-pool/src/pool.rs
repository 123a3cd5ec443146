//! The `pool` module.
