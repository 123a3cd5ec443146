//! Supervised, reconnecting TCP connections for connman.
//!
//! This crate is connman's first runtime leaf: it brings tokio to the runtime-free vocabulary of `connman-core`.
//!
//! * [`TcpConnector`]: a [`Transport`](connman_core::Transport) to a [`SocketAddr`](std::net::SocketAddr) or a
//!   [`HostPort`], with a finite connect timeout, `TCP_NODELAY` and keepalive, and a typed [`ConnectError`].
//! * [`Connection`]: the connman seed done right. One socket, supervised by [`connman_core::Lifecycle`]: it
//!   reconnects with backoff, calls a [`Handler`], and [`Connection::disconnect`] works in every state.
//! * [`pipeline`]: a pipelined client, a `tower::Service` with in-order responses over a framed stream, and its
//!   connector, so a TCP protocol can sit under `connman-queue`'s `Reconnect`.
//! * `tls` (with the `tls` feature): `TlsConnector`, TLS through tokio-rustls over any connector.
//!
//! ```text
//! connman-core    backoff, lifecycle, errors (no runtime)
//!  └─ connman-tcp    TcpConnector, Connection, Pipeline   (this crate)
//!      └─ connman-ws  WebSocket over any IO transport
//! ```
//!
//! # Example
//!
//! An echo server on loopback, a connection that writes once it is up and hands what it reads to a channel:
//!
//! ```
//! use bytes::Bytes;
//! use connman_tcp::{Connection, Handler, Writer};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::sync::mpsc;
//!
//! struct Echo {
//!     received: mpsc::Sender<Bytes>,
//! }
//!
//! impl Handler for Echo {
//!     fn on_connect(&mut self, writer: Writer) {
//!         tokio::spawn(async move { writer.write_all(b"ping").await });
//!     }
//!
//!     fn on_data(&mut self, data: Bytes) {
//!         let _ = self.received.try_send(data);
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut socket, _)) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let mut buf = [0; 1024];
//!             while let Ok(n @ 1..) = socket.read(&mut buf).await {
//!                 if socket.write_all(&buf[..n]).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! });
//!
//! let (tx, mut rx) = mpsc::channel(16);
//! let conn = Connection::connect(addr, Echo { received: tx })?;
//! let echoed = rx.recv().await.expect("an echo");
//! assert_eq!(&echoed[..], b"ping");
//!
//! conn.disconnect();
//! conn.closed().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Decisions
//!
//! * **A failed attempt is not a reset (CN-05).** connman called `onReset` for every failed connect, even before the
//!   first `onConnect`. Here [`Handler::on_reset`] runs only when an *established* link is lost; a failed attempt is an
//!   [`Event::ConnectFailed`](connman_core::Event::ConnectFailed) carrying the error and the delay to the next attempt.
//! * **A controlled disconnect is not a reset (CN-14).** connman's final `close` after `disconnect()` still called
//!   `onReset`. Here [`Connection::disconnect`] ends with [`Event::Closed`](connman_core::Event::Closed) and
//!   [`Handler::on_close`] only; [`Handler::on_reset`] is kept for losses the user did not ask for.
//! * **Ending the socket yourself (CN-15).** connman treats a user's `socket.end()` as a failure and reconnects. The
//!   [`Writer`] never hands the socket out; its [`Writer::shutdown`] half-closes (sends FIN) and the connection stays
//!   supervised, so when the peer closes in turn it is a lost link and it reconnects, as in connman. Ending for good is
//!   always explicit: [`Connection::disconnect`] or [`Writer::disconnect`] (from inside a handler), and dropping the
//!   last [`Connection`] handle disconnects too.
//! * **Callbacks are named, never positional (CN-22).** connman 1.0.0 took `(onOpen, onReset, onData)` callbacks
//!   by position, and its pool passed them in another order than its constructor expected. [`Handler`] names each
//!   callback, so no order can be confused; `onReset` returning a replacement `onOpen` is not carried over.
//! * **`connect` returns the handle (CN-17).** connman's `connect()` returned nothing and `getConnection` its internal
//!   object; [`Connection::connect`] returns the [`Connection`] handle, which named pools hold by key.
//! * **No connect timeout was a bug (CN-11).** Each attempt is bounded, 10 s by default.
//! * **A wrong target is fatal.** An invalid target (port 0, an empty host) closes the connection with
//!   [`CloseReason::Fatal`](connman_core::lifecycle::CloseReason::Fatal) instead of retrying forever (CN-01, CN-10);
//!   other failures retry by the backoff, which can carry a limit on attempts.

mod connection;
mod connector;
pub mod pipeline;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;

pub use connection::{
    Builder, Connection, DEFAULT_EVENT_CAPACITY, DEFAULT_READ_BUFFER, Handler, WriteError,
    WriteErrorKind, Writer,
};
pub use connector::{
    ConnectError, ConnectErrorKind, ConnectFuture, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE,
    HostPort, TcpConnector,
};
pub use pipeline::{Pipeline, PipelineConnector};
