//! Sharing, groups and drain for connman.
//!
//! connman-pool brings together three of the systems connman unifies, each done right:
//!
//! * [`registry`] (connection-manager): one connection shared by id between the scopes of a program, counted through
//!   [`connman_core::RefHandle`], torn down after a grace period when the last scope lets go; create is single-flight
//!   and listeners follow the connection across reconnects.
//! * [`singleton`]: the same idea as a tower layer: one made connection handed out as refcounted clones, remade with
//!   backoff after a failure (the role of hyper-util's `Singleton`).
//! * [`pool`] (connman): named pools of supervised connections and single connections by key, with
//!   `disconnect_all`; a duplicate name is an error, never an orphaned live socket.
//! * [`group`] (@soketi/connections): members by namespace and id, with send, broadcast (one shared buffer, coalesced
//!   writes, a slow-consumer policy), close and close-all, and an idle timeout refreshed both ways.
//! * [`drain`]: stop admitting, then close every member at a global rate or spread over a window, resolving when the
//!   last close is done; and a [`drain::DrainLayer`] that turns away new work once draining has begun.
//!
//! ```text
//! connman-core    Backoff, Lifecycle, RefHandle, Member (no runtime)
//!  └─ connman-pool   Registry, Singleton, Pool, Group, Drain   (this crate; tokio time + sync)
//! ```
//!
//! A group with two namespaces, a broadcast, and a drain at 2 closes per second on paused time:
//!
//! ```
//! use connman_core::member::CloseCode;
//! use connman_pool::drain::DrainConfig;
//! use connman_pool::group::{Frame, Group, channel};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let group = Group::new();
//! let mut peers = Vec::new();
//! for (ns, id) in [("chat", "a"), ("chat", "b"), ("chat", "c"), ("news", "d")] {
//!     let (member, peer) = channel(16);
//!     group.add(ns, id, member).map_err(|r| r.to_string())?;
//!     peers.push(peer);
//! }
//! assert_eq!(group.broadcast("chat", "hello", &[]).delivered, 3);
//!
//! let start = tokio::time::Instant::now();
//! let drain = group.drain(DrainConfig::max_per_second(2)?)?;
//! // Admission stops at once.
//! let (late, _) = channel(1);
//! assert!(group.add("chat", "late", late).is_err());
//! let done = drain.await;
//! assert_eq!(done.closed, 4);
//! // Four members at two per second: closes begin at 0, 0.5, 1 and 1.5 s.
//! assert!(start.elapsed() >= std::time::Duration::from_secs(1));
//!
//! // Every member got the broadcast (chat only), then a close with 4200, "reconnect shortly".
//! for peer in &mut peers {
//!     let mut last = None;
//!     while let Some(frame) = peer.recv().await {
//!         last = Some(frame);
//!     }
//!     assert!(matches!(last, Some(Frame::Close(CloseCode::RECONNECT, _))));
//! }
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "redis")]
pub mod cluster;
pub mod drain;
pub mod error;
pub mod group;
pub mod pool;
pub mod registry;
pub mod singleton;
