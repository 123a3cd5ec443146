//! Settings of a WebSocket connection, shared by the client and the server side.

use std::time::Duration;

use connman_core::error::InvalidConfig;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How the [`Bytes`](bytes::Bytes) messages a [`Member`](connman_core::member::Member) is given (what a group sends)
/// go out on the wire. It is a default, not a limit: [`WsStream::frames`](crate::WsStream::frames) sends text and
/// binary on the same connection, and received messages keep their kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MessageKind {
    /// Binary frames: any bytes (the default).
    #[default]
    Binary,
    /// Text frames: the bytes must be UTF-8, or the send fails with
    /// [`InvalidUtf8`](crate::error::InvalidUtf8) and nothing is written.
    Text,
}

/// Settings of one WebSocket connection: buffers, limits, heartbeat and timeouts.
///
/// Every default is finite. Build one with [`WsConfig::builder`]; the builder checks the settings together, so a
/// `WsConfig` is always valid.
///
/// ```
/// use connman_ws::{MessageKind, WsConfig};
/// use std::time::Duration;
///
/// let config = WsConfig::builder()
///     .max_message_size(64 * 1024)
///     .heartbeat(Some((Duration::from_secs(10), Duration::from_secs(5))))
///     .message_kind(MessageKind::Text)
///     .build()
///     .unwrap();
/// assert_eq!(config.max_message_size(), 64 * 1024);
///
/// // The pong timeout must be shorter than the ping interval.
/// let bad = WsConfig::builder().heartbeat(Some((Duration::from_secs(5), Duration::from_secs(5))));
/// assert!(bad.build().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsConfig {
    read_buffer_size: usize,
    write_buffer_size: usize,
    max_write_buffer_size: usize,
    max_message_size: usize,
    max_frame_size: usize,
    heartbeat: Option<(Duration, Duration)>,
    handshake_timeout: Duration,
    close_timeout: Duration,
    message_kind: MessageKind,
}

impl WsConfig {
    /// Read buffer per connection: 1 KiB, allocated when the connection opens and kept while it lives (tungstenite's
    /// 128 KiB costs 137 KB per idle connection; with 1 KiB an idle connection in a `Group` costs about 5 KB). One read
    /// from the socket takes at most this much, so a service that receives large messages reads them in more calls:
    /// raise it with [`WsConfigBuilder::read_buffer_size`] there.
    pub const DEFAULT_READ_BUFFER_SIZE: usize = 1024;
    /// Bytes gathered before a write to the socket: 16 KiB (tungstenite: 128 KiB). A flush always writes everything.
    pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 16 * 1024;
    /// Most bytes the write buffer may hold while the socket is not taking them: 4 MiB (tungstenite: unlimited).
    pub const DEFAULT_MAX_WRITE_BUFFER_SIZE: usize = 4 * 1024 * 1024;
    /// Largest incoming message: 1 MiB (tungstenite: 64 MiB; the `ws` package of Node.js: 100 MiB). A larger one
    /// closes the connection with 1009.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
    /// The largest read buffer and the largest message size accepted: 1 GiB. Both are allocated whole: the read
    /// buffer when the connection opens, and a frame's declared length (up to the message size) as soon as its header
    /// arrives, before its payload. Above this, a peer's frame header alone could ask for more memory than a
    /// process can get.
    pub const MAX_ALLOCATION: usize = 1 << 30;
    /// Ping every 25 s (socket.io's `pingInterval`).
    pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
    /// Close with 4201 if no frame arrives within 20 s of a ping (socket.io's `pingTimeout`).
    pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(20);
    /// Time allowed for the opening handshake: 10 s, as connman-tcp's connect timeout (gorilla/websocket's default
    /// dialer allows 45 s; tokio-tungstenite has no limit).
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Time allowed for a close: for our close frame to go out when the connection closes itself on an error, and for
    /// the peer to answer a close we sent: 5 s (RFC 6455 leaves it open; the `ws` package of Node.js allows 30 s).
    pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

    /// A builder starting from the defaults.
    pub const fn builder() -> WsConfigBuilder {
        WsConfigBuilder {
            config: Self::DEFAULT,
        }
    }

    /// Read buffer per connection, in bytes.
    pub const fn read_buffer_size(&self) -> usize {
        self.read_buffer_size
    }

    /// Bytes gathered before a write to the socket.
    pub const fn write_buffer_size(&self) -> usize {
        self.write_buffer_size
    }

    /// Most bytes the write buffer may hold.
    pub const fn max_write_buffer_size(&self) -> usize {
        self.max_write_buffer_size
    }

    /// Largest incoming message, in bytes.
    pub const fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Largest incoming frame, in bytes.
    pub const fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// The ping interval and pong timeout, or `None` without heartbeat.
    pub const fn heartbeat(&self) -> Option<(Duration, Duration)> {
        self.heartbeat
    }

    /// Time allowed for the opening handshake.
    pub const fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Time allowed for our close frame to go out, and for the peer to answer it.
    pub const fn close_timeout(&self) -> Duration {
        self.close_timeout
    }

    /// How outgoing messages are framed.
    pub const fn message_kind(&self) -> MessageKind {
        self.message_kind
    }

    const DEFAULT: Self = Self {
        read_buffer_size: Self::DEFAULT_READ_BUFFER_SIZE,
        write_buffer_size: Self::DEFAULT_WRITE_BUFFER_SIZE,
        max_write_buffer_size: Self::DEFAULT_MAX_WRITE_BUFFER_SIZE,
        max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
        max_frame_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
        heartbeat: Some((Self::DEFAULT_PING_INTERVAL, Self::DEFAULT_PONG_TIMEOUT)),
        handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: Self::DEFAULT_CLOSE_TIMEOUT,
        message_kind: MessageKind::Binary,
    };

    /// The settings in tungstenite's terms.
    pub(crate) fn tungstenite(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(self.write_buffer_size)
            .max_write_buffer_size(self.max_write_buffer_size)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size))
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Builds a [`WsConfig`]; [`WsConfigBuilder::build`] checks the settings.
#[derive(Debug, Clone)]
pub struct WsConfigBuilder {
    config: WsConfig,
}

impl WsConfigBuilder {
    /// Read buffer per connection, in bytes: at least 1, at most [`WsConfig::MAX_ALLOCATION`].
    pub const fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.config.read_buffer_size = bytes;
        self
    }

    /// Bytes gathered before a write to the socket; 0 writes every message at once.
    pub const fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.config.write_buffer_size = bytes;
        self
    }

    /// Most bytes the write buffer may hold; must exceed the write buffer size.
    pub const fn max_write_buffer_size(mut self, bytes: usize) -> Self {
        self.config.max_write_buffer_size = bytes;
        self
    }

    /// Largest incoming message, and largest incoming frame, in bytes: at least 1, at most
    /// [`WsConfig::MAX_ALLOCATION`].
    pub const fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self.config.max_frame_size = bytes;
        self
    }

    /// Ping every `interval` and close with 4201 when nothing arrives within `timeout` of a ping; `None` turns the
    /// heartbeat off. The timeout must be shorter than the interval, and both above zero.
    pub const fn heartbeat(mut self, heartbeat: Option<(Duration, Duration)>) -> Self {
        self.config.heartbeat = heartbeat;
        self
    }

    /// Time allowed for the opening handshake (above zero).
    pub const fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Time allowed for our close frame to go out, and for the peer to answer it (above zero).
    pub const fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// How outgoing messages are framed.
    pub const fn message_kind(mut self, kind: MessageKind) -> Self {
        self.config.message_kind = kind;
        self
    }

    /// Checks the settings together.
    pub const fn build(self) -> Result<WsConfig, InvalidConfig> {
        let c = self.config;
        if c.read_buffer_size == 0 {
            return Err(InvalidConfig::new("read buffer size must be at least 1"));
        }
        if c.max_write_buffer_size <= c.write_buffer_size {
            return Err(InvalidConfig::new(
                "max write buffer size must exceed the write buffer size",
            ));
        }
        if c.max_message_size == 0 {
            return Err(InvalidConfig::new("max message size must be at least 1"));
        }
        if c.read_buffer_size > WsConfig::MAX_ALLOCATION
            || c.max_message_size > WsConfig::MAX_ALLOCATION
        {
            return Err(InvalidConfig::new(
                "read buffer and max message size must be at most 1 GiB",
            ));
        }
        if c.handshake_timeout.is_zero() || c.close_timeout.is_zero() {
            return Err(InvalidConfig::new("timeouts must be above zero"));
        }
        if let Some((interval, timeout)) = c.heartbeat {
            if timeout.is_zero() {
                return Err(InvalidConfig::new("pong timeout must be above zero"));
            }
            if timeout.as_nanos() >= interval.as_nanos() {
                return Err(InvalidConfig::new(
                    "pong timeout must be shorter than the ping interval",
                ));
            }
        }
        Ok(c)
    }
}
