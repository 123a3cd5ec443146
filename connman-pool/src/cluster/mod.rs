//! A [`Group`](crate::group::Group) across nodes through a broker (Redis, or in-process for tests and demos).
//!
//! Each node runs a [`Cluster`]: a local `Group` plus a link to a [`Broker`]. A broadcast is delivered to the node's
//! own members at once and published once to the broker, which numbers it in its namespace (an [`Epoch`] and an
//! increasing offset) and hands it to every other node subscribed to that namespace (CL-01). A node subscribes when
//! its first member of a namespace joins and unsubscribes when the last one leaves (the group's `on_empty`); it
//! delivers in offset order, reads back from the namespace's bounded history what it missed (a link that blinked, a
//! full inbox), and tells the application with a [`ClusterEvent`] when the history is gone (CL-02).
//!
//! Nodes register with heartbeats and drop out of the registry after a timeout; a node's id is new every time it
//! starts (CL-03). Questions to the whole cluster (members, counts, is-member, send-to-one, close-all, drain) go to the
//! live nodes and come back within a timeout; an [`Answer`] says when some nodes did not answer (CL-04, CL-06).
//!
//! ```
//! use connman_pool::cluster::{Answer, Cluster, ClusterConfig, MemoryHub};
//! use connman_pool::group::{Frame, channel};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let hub = MemoryHub::new();
//! let a = Cluster::start(hub.connect(), ClusterConfig::default())?;
//! let b = Cluster::start(hub.connect(), ClusterConfig::default())?;
//! let (member, mut peer) = channel(8);
//! b.add("chat", "bob", member).map_err(|r| r.to_string())?;
//! b.subscribed("chat").await;
//!
//! // Published on node a, delivered to bob on node b.
//! a.broadcast("chat", "hello").await?;
//! assert_eq!(peer.recv().await, Some(Frame::Message("hello".into())));
//!
//! // Both nodes know each other after a heartbeat; a's count covers b's members.
//! a.wait_nodes(2).await;
//! assert!(matches!(a.count("chat").await, Answer::Complete(1)));
//! # Ok(()) }
//! ```
//!
//! # Decisions
//!
//! * The broker's history and offsets are per namespace (Centrifugo's shape), not one stream for everything
//!   (socket.io's Streams adapter): a node that resumes reads only the namespaces it serves.
//! * A node's inbox is bounded and never blocks the broker link: when it is full, what does not fit is dropped and
//!   read back from the history, in order. Nothing is lost unless the history itself is (then [`ClusterEvent`]s say
//!   so).
//! * Publishes from one node are taken in call order and published in that order; [`Cluster::broadcast`] returns
//!   once the local members have the message, and its future says whether the publish went out (dropping it does
//!   not take the publish back).
//! * Members added with [`Cluster::add`] subscribe the node; members added straight to [`Cluster::group`] do too
//!   (through the group's `on_add`), except in a race with the namespace's last leave, which `Cluster::add` covers.

mod broker;
mod memory;
mod node;
mod redis;
mod wire;

pub use broker::{
    Broker, BrokerFuture, Entry, Envelope, Epoch, History, Inbox, Incoming, NodeId, Position,
};
pub use memory::{DEFAULT_HISTORY, MemoryBroker, MemoryHub};
pub use node::{Answer, Cluster, ClusterConfig, ClusterEvent, Partial, Publish};
pub use redis::{RedisBroker, RedisConfig, RedisError};
pub use wire::Malformed;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Entry points for the fuzz targets of the repository's `fuzz/` folder, built only with `--cfg fuzzing`: the bytes a
/// redis-server or another node may send, through the parsers the cluster uses.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// A redis-server's bytes through the RESP codec (bounded by `max_frame`) and the envelope parser.
    pub fn redis_bytes(data: &[u8], max_frame: usize) {
        super::redis::fuzz_redis_bytes(data, max_frame);
    }

    /// Another node's request or reply: one that decodes encodes back to itself.
    ///
    /// # Panics
    ///
    /// When a decoded message does not survive an encode and a decode unchanged.
    pub fn wire_bytes(data: &[u8]) {
        if let Ok(wire) = super::wire::Wire::decode(bytes::Bytes::copy_from_slice(data)) {
            let again = super::wire::Wire::decode(wire.encode());
            assert_eq!(
                again.as_ref().ok(),
                Some(&wire),
                "a message changed through encode and decode"
            );
        }
    }
}
