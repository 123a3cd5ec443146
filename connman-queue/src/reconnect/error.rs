//! Errors of [`Reconnect`](super::Reconnect).

use std::error::Error;
use std::fmt;

use connman_core::error::SharedError;

/// The backoff policy gave up: no more connect attempts will be made.
#[derive(Debug, Clone)]
pub struct GaveUp {
    source: Option<SharedError>,
}

impl GaveUp {
    pub(crate) fn new(source: Option<SharedError>) -> Self {
        Self { source }
    }
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reconnect gave up")
    }
}

impl Error for GaveUp {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// A connect attempt (or its on-up hook) failed in a way the classifier called fatal.
#[derive(Debug, Clone)]
pub struct FatalConnect {
    source: Option<SharedError>,
}

impl FatalConnect {
    pub(crate) fn new(source: Option<SharedError>) -> Self {
        Self { source }
    }
}

impl fmt::Display for FatalConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connect failed for good")
    }
}

impl Error for FatalConnect {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}
