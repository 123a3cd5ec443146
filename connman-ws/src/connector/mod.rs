//! The client side: [`WsConnector`] connects through any IO transport, then performs the handshake with a timeout.
//!
//! The inner transport is any `tower_service::Service<HostPort>` whose connection is `AsyncRead + AsyncWrite`:
//! connman-tcp's `TcpConnector`, its `tls::TlsConnector` (feature `tls` of connman-tcp) for `wss://`, or a function
//! handing out an in-memory `tokio::io::duplex` in tests. The target is anything tungstenite turns into a request: a
//! `ws://` URL as `&str`, `String` or `Uri`, an `http::Request<()>`, or a
//! [`ClientRequestBuilder`](tokio_tungstenite::tungstenite::ClientRequestBuilder) with headers and subprotocols.
//! The host and port come from the URL (port 80 for `ws://` and 443 for `wss://` when none is given).
//!
//! A connector is a [`Transport`](connman_core::Transport). connman-queue's `Reconnect` makes connections with
//! any transport whose connection is itself a `tower_service::Service`; a [`WsStream`](crate::WsStream) is a stream
//! and a sink of messages, so a request/response protocol over it sits between the two.

mod future;
mod layer;
mod service;

pub use future::WsConnectFuture;
pub use layer::WsConnectorLayer;
pub use service::WsConnector;
