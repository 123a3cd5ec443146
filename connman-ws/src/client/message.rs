//! [`Message`]: what a [`WsClient`](super::WsClient) sends and receives.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

/// A WebSocket data message: text or binary, on the same connection.
///
/// Cheap to clone (the payload is shared), as the queue keeps a copy of every message until it is written, so that one
/// that never reached the socket can be replayed.
///
/// ```
/// use connman_ws::client::Message;
///
/// let text = Message::from("hello");
/// assert!(text.is_text());
/// assert_eq!(text.as_bytes(), b"hello");
/// let binary = Message::from(vec![1u8, 2, 3]);
/// assert_eq!(binary.len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// A text message: valid UTF-8.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a text message.
    pub const fn is_text(&self) -> bool {
        matches!(self, Self::Text(_))
    }

    /// The payload.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(text) => text.as_bytes(),
            Self::Binary(bytes) => bytes,
        }
    }

    /// The payload, as shared bytes.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Self::Text(text) => text.into(),
            Self::Binary(bytes) => bytes,
        }
    }

    pub(crate) fn into_frame(self) -> tungstenite::Message {
        match self {
            Self::Text(text) => tungstenite::Message::Text(text),
            Self::Binary(bytes) => tungstenite::Message::Binary(bytes),
        }
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Self::Text(text.into())
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Self::Text(text.into())
    }
}

impl From<Utf8Bytes> for Message {
    fn from(text: Utf8Bytes) -> Self {
        Self::Text(text)
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Self::Binary(bytes)
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Binary(bytes.into())
    }
}

impl From<&[u8]> for Message {
    fn from(bytes: &[u8]) -> Self {
        Self::Binary(Bytes::copy_from_slice(bytes))
    }
}

/// A message on its way down the client's stack: a plain send, or a request that waits for the reply with `reply`.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) msg: Message,
    pub(crate) reply: Option<u64>,
}

/// Extracts the id that matches a reply to its request, from either (request mode).
pub(crate) type Correlate = std::sync::Arc<dyn Fn(&Message) -> Option<u64> + Send + Sync>;
