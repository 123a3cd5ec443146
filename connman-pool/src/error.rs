//! The errors of connman-pool's registry and singleton, in one place.
//!
//! Every failure mode is a small public type: downcast the [`BoxError`] an operation returns with
//! [`downcast_ref`](std::error::Error) or test it with `is::<T>()`. The errors that connman-core defines and this crate
//! returns too are re-exported here, so that one module names them all. [`group`](crate::group) keeps its own in
//! `group::error`.

use std::fmt;

pub use connman_core::error::{
    BoxError, Closed, Duplicate, Elapsed, InvalidConfig, NotFound, SharedError,
};

/// The credentials given do not match the connection's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mismatch {
    _private: (),
}

impl Mismatch {
    /// Creates the error.
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("credentials do not match")
    }
}

impl std::error::Error for Mismatch {}

/// The connect function failed; every waiter of a single-flight create gets a clone.
#[derive(Debug, Clone)]
pub struct ConnectFailed {
    source: SharedError,
}

impl ConnectFailed {
    pub(crate) fn new(source: SharedError) -> Self {
        Self { source }
    }

    /// The connect function's error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connect failed")
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A user callback panicked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Panicked {
    _private: (),
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("callback panicked")
    }
}

impl std::error::Error for Panicked {}
