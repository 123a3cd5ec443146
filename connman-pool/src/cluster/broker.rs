//! The trait between a cluster node and its broker, and the values that cross it.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use connman_core::error::BoxError;
use tokio::sync::{Notify, mpsc};

/// What a broker call resolves to.
pub type BrokerFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'static>>;

/// A node's id: fresh for every [`Cluster`](super::Cluster), so a restarted node joins under a new one (CL-03).
///
/// Ids are 16 lower-case hex digits, without `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// A new random id.
    pub fn random() -> Self {
        Self(format!("{:016x}", random_u64()).into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses an id as written by [`NodeId::as_str`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        (!text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| Self(text.into()))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A namespace's history generation. A new epoch means the history before it is gone (the broker lost its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl Epoch {
    /// A new random epoch.
    pub fn random() -> Self {
        Self(random_u64())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a message sits in its namespace's history: the epoch and the offset in it (1, 2, 3, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The namespace's epoch.
    pub epoch: Epoch,
    /// The message's offset in that epoch, from 1.
    pub offset: u64,
}

/// A message of a namespace, as the broker hands it to the nodes subscribed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The namespace.
    pub namespace: String,
    /// Its place in the namespace's history.
    pub position: Position,
    /// The node that published it.
    pub origin: NodeId,
    /// What was published.
    pub payload: Bytes,
}

/// One entry of a namespace's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its offset.
    pub offset: u64,
    /// The node that published it.
    pub origin: NodeId,
    /// What was published.
    pub payload: Bytes,
}

/// A slice of a namespace's history, read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The namespace's epoch; `None` if nothing was ever published to it (or its history is gone).
    pub epoch: Option<Epoch>,
    /// The offset of the newest message (0 if none).
    pub top: u64,
    /// Entries from the requested offset on, oldest first; fewer than asked if the history was trimmed or ends.
    pub entries: Vec<Entry>,
}

/// What arrives for a node from its broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// A message of a namespace this node is subscribed to.
    Message(Envelope),
    /// The subscription to a namespace is in place (again): messages may have been missed before it.
    Subscribed(String),
    /// A message sent to this node alone.
    Direct(Bytes),
    /// The broker link is down (`false`) or back up (`true`).
    Link(bool),
}

/// Where a broker delivers what arrives for a node: a bounded channel that never blocks the broker.
///
/// When the channel is full the item is dropped and the node is told it lagged; it then reads back what it missed
/// from the history, so nothing is lost for good.
#[derive(Debug, Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Incoming>,
    lagged: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl Inbox {
    pub(crate) fn new(capacity: usize) -> (Self, InboxReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        (
            Self {
                tx,
                lagged: lagged.clone(),
                wake: wake.clone(),
            },
            InboxReceiver { rx, lagged, wake },
        )
    }

    /// Hands `item` to the node, or drops it and marks the node as lagging if the channel is full.
    pub fn push(&self, item: Incoming) {
        if self.tx.try_send(item).is_err() {
            self.lagged.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// Whether the node is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

pub(crate) struct InboxReceiver {
    pub(crate) rx: mpsc::Receiver<Incoming>,
    pub(crate) lagged: Arc<AtomicBool>,
    pub(crate) wake: Arc<Notify>,
}

/// A node's link to a broker that carries namespace messages with their history, a node registry and messages to one
/// node.
///
/// One value per node. Calls are taken in the order they are made: two `publish` calls from one node are published
/// in that order, whenever their futures are polled, and dropping a future does not take its request back.
///
/// [`MemoryBroker`](super::MemoryBroker) is the in-process implementation; [`RedisBroker`](super::RedisBroker) the
/// Redis one.
pub trait Broker: Send + Sync + 'static {
    /// Starts delivering to `inbox` what arrives for `node`: its direct messages, and the messages of the namespaces
    /// it subscribes to. Called once, before any other method.
    fn open(&self, node: &NodeId, inbox: Inbox);

    /// Subscribes to a namespace; [`Incoming::Subscribed`] tells when it is in place. Subscribing twice is once.
    fn subscribe(&self, namespace: &str);

    /// Ends the subscription to a namespace.
    fn unsubscribe(&self, namespace: &str);

    /// Appends `payload` to the namespace's history under the next offset and hands it to every node subscribed.
    ///
    /// Starts a new epoch if the namespace's history is gone.
    fn publish(&self, origin: &NodeId, namespace: &str, payload: Bytes) -> BrokerFuture<Position>;

    /// Reads at most `limit` entries of a namespace's history from offset `from` on.
    fn history(&self, namespace: &str, from: u64, limit: usize) -> BrokerFuture<History>;

    /// Says that `node` is alive for `ttl` more, and returns every node alive now (itself included).
    fn heartbeat(&self, node: &NodeId, ttl: Duration) -> BrokerFuture<Vec<NodeId>>;

    /// Takes `node` out of the registry at once.
    fn leave(&self, node: &NodeId) -> BrokerFuture<()>;

    /// Sends `payload` to one node (at most once; a node that is gone never gets it).
    fn send(&self, to: &NodeId, payload: Bytes) -> BrokerFuture<()>;

    /// Closes the links: later calls fail with [`Closed`](connman_core::error::Closed).
    fn close(&self);
}

fn random_u64() -> u64 {
    // A fresh `RandomState` is seeded from the system's randomness once per thread and stepped on every use.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
