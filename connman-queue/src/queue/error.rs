//! Errors of [`Queue`](super::Queue).

use std::error::Error;
use std::fmt;

use connman_core::error::SharedError;

/// The inner service failed for good (its `poll_ready` returned an error); the queue serves nothing more.
///
/// The inner error is its [`source`](Error::source). A [`Closed`](connman_core::error::Closed) from the inner is not
/// wrapped: the queue closes and reports `Closed` itself.
#[derive(Debug, Clone)]
pub struct ServiceFailed {
    source: SharedError,
}

impl ServiceFailed {
    pub(crate) fn new(source: SharedError) -> Self {
        Self { source }
    }
}

impl fmt::Display for ServiceFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("inner service failed")
    }
}

impl Error for ServiceFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// `call` was used without a successful `poll_ready` first.
#[derive(Debug, Clone, Default)]
pub struct NotReady {
    _private: (),
}

impl NotReady {
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("called before poll_ready")
    }
}

impl Error for NotReady {}
