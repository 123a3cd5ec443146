//! Errors of [`Heartbeat`](super::Heartbeat).

use std::error::Error;
use std::fmt;
use std::time::Duration;

use connman_core::error::SharedError;

/// A ping got no answer within the timeout: the link is taken for dead (a half-open link, a stalled peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingTimeout {
    timeout: Duration,
}

impl PingTimeout {
    pub(crate) const fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// The timeout that passed.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for PingTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no ping answer within {:?}", self.timeout)
    }
}

impl Error for PingTimeout {}

/// A ping failed: the remote could not answer it (UP-10: a remote without `ping`), or the connection refused it.
#[derive(Debug, Clone)]
pub struct PingFailed {
    source: SharedError,
}

impl PingFailed {
    pub(crate) fn new(source: SharedError) -> Self {
        Self { source }
    }
}

impl fmt::Display for PingFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ping failed")
    }
}

impl Error for PingFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}
