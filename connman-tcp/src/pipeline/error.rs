//! [`PipelineError`]: why a pipelined connection died, or why one request could not be encoded.

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::Arc;

use connman_core::error::{BoxError, SharedError};
use tokio_util::codec::{AnyDelimiterCodecError, LinesCodecError};

/// What went wrong on a [`Pipeline`](super::Pipeline).
///
/// # The codec rule
///
/// An error from a codec's `decode` is either a lost link or bad bytes, and the two are handled apart: a lost link
/// fails the requests in flight as `MaybeDelivered` and the connection is replaced; bad bytes are the peer's fault and
/// reported as [`PipelineErrorKind::Codec`]. [`PipelineErrorKind::of_decode_error`] is the rule:
///
/// * an [`io::Error`] (bare, or inside tokio-util's `LinesCodecError::Io` / `AnyDelimiterCodecError::Io`) is a
///   [`LinkLost`](PipelineErrorKind::LinkLost), **unless** its kind is [`io::ErrorKind::InvalidData`]: that kind is
///   how codecs say "bad bytes" (`LengthDelimitedCodec` for an oversized frame, `LinesCodec` for invalid UTF-8);
/// * any other error is a [`Codec`](PipelineErrorKind::Codec) error.
///
/// A codec of one's own follows it by returning `io::ErrorKind::InvalidData` (or its own error type) for bad input
/// and passing socket errors through.
///
/// ```
/// use connman_tcp::pipeline::PipelineErrorKind;
/// use std::io;
///
/// let reset = io::Error::from(io::ErrorKind::ConnectionReset);
/// assert_eq!(PipelineErrorKind::of_decode_error(&reset), PipelineErrorKind::LinkLost);
/// let oversized = io::Error::new(io::ErrorKind::InvalidData, "frame too big");
/// assert_eq!(PipelineErrorKind::of_decode_error(&oversized), PipelineErrorKind::Codec);
/// let utf8 = tokio_util::codec::LinesCodecError::MaxLineLengthExceeded;
/// assert_eq!(PipelineErrorKind::of_decode_error(&utf8), PipelineErrorKind::Codec);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipelineErrorKind {
    /// The socket failed or the peer closed it.
    LinkLost,
    /// The peer sent bytes the codec rejected: malformed, or a frame over the codec's limit.
    Codec,
    /// The peer sent a response while no request was waiting for one.
    Unsolicited,
    /// The codec could not encode one request; the connection is unharmed.
    Encode,
    /// `call` without a successful `poll_ready` first.
    NotReady,
    /// The pipeline was shut down.
    Closed,
}

/// Why a pipelined connection died (returned by `poll_ready` from then on), or why one request was refused.
///
/// Requests carry it as the [`source`](Error::source) of their [`NotSent`](connman_core::error::NotSent) or
/// [`MaybeDelivered`](connman_core::error::MaybeDelivered) error. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PipelineError {
    kind: PipelineErrorKind,
    source: Option<SharedError>,
}

impl PipelineError {
    /// What went wrong.
    pub const fn kind(&self) -> PipelineErrorKind {
        self.kind
    }

    /// Whether the socket failed or the peer closed it.
    pub const fn is_link_lost(&self) -> bool {
        matches!(self.kind, PipelineErrorKind::LinkLost)
    }

    /// Whether the peer sent something the codec rejected (including a frame over its limit).
    pub const fn is_codec(&self) -> bool {
        matches!(self.kind, PipelineErrorKind::Codec)
    }

    /// Whether the peer answered a request nobody made.
    pub const fn is_unsolicited(&self) -> bool {
        matches!(self.kind, PipelineErrorKind::Unsolicited)
    }

    /// Whether one request could not be encoded.
    pub const fn is_encode(&self) -> bool {
        matches!(self.kind, PipelineErrorKind::Encode)
    }

    pub(crate) fn new(kind: PipelineErrorKind, source: Option<BoxError>) -> Self {
        Self {
            kind,
            source: source.map(Arc::from),
        }
    }

    pub(crate) fn closed() -> Self {
        Self::new(PipelineErrorKind::Closed, None)
    }

    pub(crate) fn not_ready() -> Self {
        Self::new(PipelineErrorKind::NotReady, None)
    }

    /// Sorts an error of the read side by [the codec rule](PipelineErrorKind#the-codec-rule).
    pub(crate) fn from_decode(error: BoxError) -> Self {
        Self::new(PipelineErrorKind::of_decode_error(&*error), Some(error))
    }
}

impl PipelineErrorKind {
    /// The codec rule: whether an error from a codec's `decode` is a [`LinkLost`](PipelineErrorKind::LinkLost) or a
    /// [`Codec`](PipelineErrorKind::Codec) error. See [the type's docs](PipelineErrorKind#the-codec-rule).
    pub fn of_decode_error(error: &(dyn Error + 'static)) -> Self {
        if is_link_failure(error) {
            PipelineErrorKind::LinkLost
        } else {
            PipelineErrorKind::Codec
        }
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            PipelineErrorKind::LinkLost => "pipeline link lost",
            PipelineErrorKind::Codec => "peer sent an invalid frame",
            PipelineErrorKind::Unsolicited => "peer sent a response nobody asked for",
            PipelineErrorKind::Encode => "request could not be encoded",
            PipelineErrorKind::NotReady => "call without poll_ready",
            PipelineErrorKind::Closed => "pipeline closed",
        })
    }
}

impl Error for PipelineError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// Whether a codec error stands for a failed socket rather than bad bytes.
///
/// Codecs carry I/O errors inside their own error types; the ones of tokio-util are recognised. An `io::Error` of kind
/// `InvalidData` is a codec's complaint, wherever it is carried: `LengthDelimitedCodec` reports an oversized frame that
/// way, and `LinesCodec` invalid UTF-8.
fn is_link_failure(error: &(dyn Error + 'static)) -> bool {
    let io_error = if let Some(e) = error.downcast_ref::<io::Error>() {
        Some(e)
    } else if let Some(LinesCodecError::Io(e)) = error.downcast_ref::<LinesCodecError>() {
        Some(e)
    } else if let Some(AnyDelimiterCodecError::Io(e)) =
        error.downcast_ref::<AnyDelimiterCodecError>()
    {
        Some(e)
    } else {
        None
    };
    io_error.is_some_and(|e| e.kind() != io::ErrorKind::InvalidData)
}
