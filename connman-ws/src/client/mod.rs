//! A reconnecting WebSocket client: [`WsClient`], one logical connection over as many sockets as it takes.
//!
//! Assembled from the crates connman has, not a loop of its own:
//!
//! ```text
//! WsClient ─▶ Queue ─▶ Reconnect ─▶ MakeLink ─▶ WsConnector ─▶ transport (TCP, TLS, duplex)
//!   │          │           │            └─ each socket a WsLink: Service<Message, Response = ()>
//!   │          │           └─ lifecycle, backoff, on-up hook, state watch (connman-queue)
//!   │          └─ bounded, ordered, replays what was never written (connman-queue)
//!   └─ Incoming: one stream of received messages that outlives every socket
//! ```
//!
//! # What a send's outcome means
//!
//! `Ok` means **written**: the frame was handed to the socket. WebSocket has no receipt. Every send ends in exactly
//! one outcome: `Ok`; [`NotSent`](connman_core::error::NotSent) only after its replays ran out (a send that provably
//! never reached a socket goes back to its place in the queue and out again, in order, after the next on-up hook);
//! [`MaybeDelivered`](connman_core::error::MaybeDelivered) when it was written to a socket that then failed; or a
//! typed error saying why it was refused. A full queue holds `poll_ready` (backpressure) or, with
//! [`reject_when_full`](WsClientBuilder::reject_when_full), fails with
//! [`Overloaded`](connman_core::error::Overloaded): nothing is dropped silently.
//!
//! # Request mode
//!
//! Where the application has receipts, [`WsClient::request`] sends a message and resolves with the received message
//! that answers it, matched by an id that the [`correlate`](WsClientBuilder::correlate) function reads from both (as
//! socket.io's `emitWithAck`). A request is completed only when answered; one lost with its socket is
//! `MaybeDelivered`, or sent again on the next socket with [`WsClient::request_idempotent`].
//!
//! # Close codes
//!
//! | server's close | the client |
//! |---|---|
//! | 1001, 1012, 4200 | reconnects after a random delay in `[0, come_back_within]`, so a drained server's clients spread out; a reason that ends with [`ComeBack`](connman_core::member::ComeBack) advice (a paced drain gives zero: its closes are spread already) narrows that range to the advice |
//! | 1008, 4009 | ends: every queued and later send fails with [`ClosedByPeer`] |
//! | the answer to our close | ends: sends fail with [`Closed`](connman_core::error::Closed) |
//! | any other | [`classify_close`](WsClientBuilder::classify_close) decides (default: reconnect with the backoff) |
//!
//! # Heartbeat
//!
//! The client pings every interval and takes a socket whose pong is later than the pong timeout (shorter than the
//! interval) for dead, and replaces it. The round trip time is in [`WsClient::rtt`] and in [`ClientEvent::Pong`];
//! [`WsClient::ping`] pings at once.
//!
//! # Example
//!
//! A server that echoes, a client that re-subscribes on every socket:
//!
//! ```
//! use connman_ws::client::{Message, WsClient};
//! use futures_util::{SinkExt, StreamExt};
//! use tokio::net::TcpListener;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), connman_core::error::BoxError> {
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((tcp, _)) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
//!             while let Some(Ok(msg)) = ws.next().await {
//!                 if msg.is_text() || msg.is_binary() {
//!                     let _ = ws.send(msg).await;
//!                 }
//!             }
//!         });
//!     }
//! });
//!
//! let (mut client, mut incoming) = WsClient::builder(&format!("ws://{addr}/feed"))
//!     .on_up(|mut link| async move { link.send("subscribe prices").await })
//!     .build()?;
//! client.send("hello").await?;
//! assert_eq!(incoming.recv().await, Some(Message::from("subscribe prices")));
//! assert_eq!(incoming.recv().await, Some(Message::from("hello")));
//! client.close().await;
//! assert!(client.send("late").await.is_err());
//! # Ok(()) }
//! ```

mod builder;
mod control;
pub mod error;
mod link;
mod make;
mod message;
mod service;
mod stack;

pub use builder::WsClientBuilder;
pub use control::{ClientEvent, CloseAction, EVENT_CAPACITY};
pub use error::{ClosedByPeer, NoRequestId, NotConnected};
pub use link::{SendFuture, WsLink};
pub use message::Message;
pub use service::{ClientFuture, Incoming, WsClient};
