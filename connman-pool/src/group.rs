//! The `group` module.
