//! The `drain` module.
