//! Errors of WebSocket connections: one small type per failure mode, carried as
//! [`BoxError`](connman_core::error::BoxError).
//!
//! Besides these, a connection reports core errors: [`Closed`](connman_core::error::Closed) for a send after the
//! close, [`LinkLost`](connman_core::error::LinkLost) (with the IO error as its source) when the socket fails,
//! [`Overloaded`](connman_core::error::Overloaded) when the write buffer is full, and
//! [`NotFound`](connman_core::error::NotFound) when the server's router refuses a path. IO errors during a handshake
//! are passed on as [`std::io::Error`], and a failed connect as the transport's own error.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use connman_core::member::CloseCode;

/// The opening handshake did not finish in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeTimeout {
    after: Duration,
}

impl HandshakeTimeout {
    pub(crate) const fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The time that was allowed.
    pub const fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for HandshakeTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "websocket handshake timed out after {:?}", self.after)
    }
}

impl Error for HandshakeTimeout {}

/// The server answered the opening handshake with an HTTP status other than 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRejected {
    status: u16,
}

impl HttpRejected {
    pub(crate) const fn new(status: u16) -> Self {
        Self { status }
    }

    /// The HTTP status code of the answer.
    pub const fn status(&self) -> u16 {
        self.status
    }
}

impl fmt::Display for HttpRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "websocket handshake rejected with status {}",
            self.status
        )
    }
}

impl Error for HttpRejected {}

/// The peer broke the WebSocket protocol (in the handshake or in a frame); an established connection is closed with
/// 1002. The source is tungstenite's description.
#[derive(Debug)]
pub struct ProtocolViolation {
    source: Box<dyn Error + Send + Sync>,
}

impl ProtocolViolation {
    pub(crate) fn new(source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("websocket protocol violation")
    }
}

impl Error for ProtocolViolation {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// An incoming message was larger than the configured maximum; the connection is closed with 1009.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTooBig {
    size: usize,
    max: usize,
}

impl MessageTooBig {
    pub(crate) const fn new(size: usize, max: usize) -> Self {
        Self { size, max }
    }

    /// The size of the message, as far as it was known.
    pub const fn size(&self) -> usize {
        self.size
    }

    /// The configured maximum.
    pub const fn max(&self) -> usize {
        self.max
    }
}

impl fmt::Display for MessageTooBig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message of {} bytes exceeds the limit of {}",
            self.size, self.max
        )
    }
}

impl Error for MessageTooBig {}

/// A text message was not UTF-8: received ones close the connection with 1007; a text-mode send of such bytes fails
/// without writing anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvalidUtf8 {
    _private: (),
}

impl InvalidUtf8 {
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }
}

impl fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("text message is not valid utf-8")
    }
}

impl Error for InvalidUtf8 {}

/// Nothing arrived within the pong timeout after a ping; the connection is closed with 4201.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PongTimeout {
    after: Duration,
}

impl PongTimeout {
    pub(crate) const fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The pong timeout that passed.
    pub const fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for PongTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no pong within {:?}", self.after)
    }
}

impl Error for PongTimeout {}

/// The close code a connection sends when it closes itself because of `err`, if `err` is one of this crate's.
///
/// ```
/// use connman_core::member::CloseCode;
/// use connman_ws::error::close_code_for;
///
/// let err = connman_core::error::Closed::new().into();
/// assert_eq!(close_code_for(&err), None);
/// ```
pub fn close_code_for(err: &connman_core::error::BoxError) -> Option<CloseCode> {
    if err.is::<MessageTooBig>() {
        Some(CloseCode::TOO_BIG)
    } else if err.is::<InvalidUtf8>() {
        Some(CloseCode(1007))
    } else if err.is::<ProtocolViolation>() {
        Some(CloseCode(1002))
    } else if err.is::<PongTimeout>() {
        Some(CloseCode::IDLE_TIMEOUT)
    } else {
        None
    }
}

/// The request or URL given to the connector is not a usable WebSocket request (no host, an unknown scheme).
#[derive(Debug)]
pub struct InvalidRequest {
    source: Option<Box<dyn Error + Send + Sync>>,
}

impl InvalidRequest {
    pub(crate) fn new(source: Option<Box<dyn Error + Send + Sync>>) -> Self {
        Self { source }
    }
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid websocket request")
    }
}

impl Error for InvalidRequest {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// Maps an error of an opening handshake.
pub(crate) fn handshake_error(
    err: tokio_tungstenite::tungstenite::Error,
) -> connman_core::error::BoxError {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match err {
        WsError::Http(response) => HttpRejected::new(response.status().as_u16()).into(),
        WsError::Io(io) => io.into(),
        other => ProtocolViolation::new(other).into(),
    }
}

/// The server's admission refused the connection: with an HTTP status before the upgrade, or with a close (4009)
/// right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    status: Option<u16>,
    close: Option<(CloseCode, String)>,
}

impl Refused {
    pub(crate) const fn with_status(status: u16) -> Self {
        Self {
            status: Some(status),
            close: None,
        }
    }

    pub(crate) const fn with_close(code: CloseCode, reason: String) -> Self {
        Self {
            status: None,
            close: Some((code, reason)),
        }
    }

    /// The HTTP status the handshake was answered with, for a refusal before the upgrade.
    pub const fn status(&self) -> Option<u16> {
        self.status
    }

    /// The close code the connection was closed with, for a refusal after the upgrade.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.close.as_ref().map(|(code, _)| *code)
    }

    /// The reason of that close.
    pub fn reason(&self) -> Option<&str> {
        self.close.as_ref().map(|(_, reason)| reason.as_str())
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.status, &self.close) {
            (Some(status), _) => write!(f, "websocket connection refused with status {status}"),
            (None, Some((code, reason))) => {
                write!(
                    f,
                    "websocket connection refused with close {code}: {reason}"
                )
            }
            (None, None) => f.write_str("websocket connection refused"),
        }
    }
}

impl Error for Refused {}
