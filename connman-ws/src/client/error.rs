//! Errors of the [`WsClient`](super::WsClient), besides those of [`crate::error`] and `connman_core::error`.

use std::error::Error;
use std::fmt;

use connman_core::member::CloseCode;

/// The server closed the connection with a close frame (code 1005, "no code", when its frame carried none).
///
/// Seen as the source of the [`LinkLost`](connman_core::error::LinkLost) that ends a socket, and, when the code is
/// fatal (1008, 4009, or one the close classifier calls fatal), as the error of every send from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedByPeer {
    code: CloseCode,
    reason: String,
}

impl ClosedByPeer {
    pub(crate) fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// The close code.
    pub const fn code(&self) -> CloseCode {
        self.code
    }

    /// The reason, possibly empty.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ClosedByPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "closed by the server with {}", self.code)?;
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

impl Error for ClosedByPeer {}

/// A manual ping found no connection up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotConnected {
    _private: (),
}

impl NotConnected {
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }
}

impl fmt::Display for NotConnected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no connection is up")
    }
}

impl Error for NotConnected {}

/// A request whose id the client's [`correlate`](super::WsClientBuilder::correlate) function could not extract (or a
/// client without one), or whose id is already waiting for a reply on this socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoRequestId {
    _private: (),
}

impl NoRequestId {
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }
}

impl fmt::Display for NoRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request has no id of its own to match a reply")
    }
}

impl Error for NoRequestId {}
