//! WebSocket connections for connman, over any IO transport.
//!
//! tokio-tungstenite does all the framing; this crate adds what a server with many connections and a client that
//! reconnects need around it:
//!
//! * [`WsConnector`] (and [`WsConnectorLayer`]): a tower layer over any IO transport (connman-tcp's `TcpConnector`,
//!   TLS, an in-memory duplex) that connects, then performs the handshake within a timeout, for a `ws://` URL or a
//!   request with headers and subprotocols. It is a [`Transport`](connman_core::Transport).
//! * [`accept`]: the server handshake within a timeout, giving a [`WsConnection`] with an id and a namespace.
//!   [`WsConnection::split`] gives a [`WsMember`] (a [`Member`](connman_core::member::Member) for a
//!   `connman_pool::group::Group`) and a [`WsReceiver`] (the stream of incoming messages).
//! * `upgrade::upgrade` (the `hyper` feature): the same connection from a request that hyper or axum serves, with
//!   the 101 response to return and a future of the upgraded stream.
//! * [`AcceptConfig::admit`]: an admission callback that sees the handshake's path, query and headers and names the
//!   namespace and id, or refuses (an HTTP status before the upgrade, 4009 after it); [`AcceptConfig::draining`]
//!   turns newcomers away with 4200 during a drain.
//! * TLS (`wss://`): [`accept`] takes any IO, so a `tokio_rustls::server::TlsStream` too; [`WsConnector`] over
//!   connman-tcp's `TlsConnector` speaks `wss://`.
//! * [`WsConfig`]: a 1 KiB read buffer instead of tungstenite's 128 KiB, a bounded write buffer, a 1 MiB message
//!   limit (closing with 1009), a ping/pong heartbeat (closing with 4201), and finite handshake and close timeouts.
//!
//! A connection that misbehaves (a message over the limit, invalid UTF-8 in a text message, a protocol violation, a
//! missing pong) is closed with the matching code, and its receiver yields a typed error from [`error`]; no other
//! connection notices. After sending such a close, the receiver reads and discards until the peer's close (or the
//! close timeout), then ends the TCP stream with a FIN, so the peer reads the code instead of a reset (1006).
//!
//! A [`WsMember`] in a group leaves it by itself when its connection ends (the peer closed, vanished, misbehaved or
//! missed its pongs): the group's writer watches [`Member::poll_ended`](connman_core::member::Member::poll_ended).
//! Every inbound frame, pongs included, counts as activity for the group's idle timeout
//! ([`Member::last_heard`](connman_core::member::Member::last_heard)). A connection carries text and binary: a
//! group's [`Bytes`](bytes::Bytes) go out as the connection's [`MessageKind`], and [`WsStream::frames`] sends either
//! kind ([`Outgoing`]), so an echo of text is text.
//!
//! Where it sits:
//!
//! ```text
//! connman-core
//!  └─ connman-tcp     TcpConnector: Service<HostPort> -> TcpStream
//!      └─ connman-ws  WsConnector<TcpConnector>: Service<&str | Uri | Request> -> WsStream<TcpStream>
//! ```
//!
//! A server that puts connections in a group by the path `/app/<namespace>`, a client through
//! `WsConnector<TcpConnector>`, a broadcast, then a close of the namespace with 4200 ("reconnect shortly"):
//!
//! ```
//! use connman_core::member::CloseCode;
//! use connman_pool::group::Group;
//! use connman_tcp::TcpConnector;
//! use connman_ws::{AcceptConfig, PeerClose, Received, WsConfig, WsConnector, accept};
//! use futures_util::StreamExt;
//! use tokio::net::TcpListener;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let group = Group::new();
//! let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap();
//! let config = AcceptConfig::new(WsConfig::default())
//!     .route(|request| request.uri().path().strip_prefix("/app/").map(str::to_owned));
//!
//! let server_group = group.clone();
//! tokio::spawn(async move {
//!     loop {
//!         let Ok((tcp, _)) = listener.accept().await else { return };
//!         let (group, config) = (server_group.clone(), config.clone());
//!         tokio::spawn(async move {
//!             let Ok(conn) = accept(tcp, &config).await else { return };
//!             let (ns, id) = (conn.namespace().to_owned(), conn.id().to_owned());
//!             let (member, mut incoming) = conn.split();
//!             if group.add(ns, id, member).is_err() {
//!                 return;
//!             }
//!             // Reading answers pings and finishes the close handshake. Every frame, pongs included, keeps the
//!             // member from idling out; when the connection ends, the member leaves the group by itself.
//!             while let Some(Ok(_)) = incoming.next().await {}
//!         });
//!     }
//! });
//!
//! let connector = WsConnector::new(TcpConnector::new(), WsConfig::default());
//! let url = format!("ws://{addr}/app/lobby");
//! let mut client = connector.oneshot(url).await.unwrap();
//! while group.namespace_len("lobby") == 0 {
//!     tokio::task::yield_now().await;
//! }
//!
//! group.broadcast("lobby", "hello", &[]);
//! let got = client.next().await.unwrap().unwrap();
//! assert_eq!(got.into_bytes().unwrap(), "hello");
//!
//! for closing in group.close_all("lobby", CloseCode::RECONNECT, "bye") {
//!     closing.await;
//! }
//! let close = client.next().await.unwrap().unwrap();
//! assert_eq!(
//!     close,
//!     Received::Close(Some(PeerClose { code: CloseCode::RECONNECT, reason: "bye".into() }))
//! );
//! # }
//! ```

mod accept;
pub mod client;
mod config;
mod connector;
pub mod error;
mod stream;
#[cfg(feature = "hyper")]
pub mod upgrade;
mod watch;

pub use accept::{AcceptConfig, Admission, Handshake, WsConnection, accept};
pub use client::{Incoming, WsClient, WsClientBuilder};
pub use config::{MessageKind, WsConfig, WsConfigBuilder};
pub use connector::{WsConnectFuture, WsConnector, WsConnectorLayer};
pub use stream::{Frames, Outgoing, PeerClose, Received, WsMember, WsReceiver, WsStream};

/// tokio-tungstenite's protocol crate, for request types ([`tungstenite::ClientRequestBuilder`], `http::Request`).
pub use tokio_tungstenite::tungstenite;
