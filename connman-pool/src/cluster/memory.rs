//! [`MemoryBroker`]: the broker in one process, for tests and for a demo on a machine without Redis.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use connman_core::error::{BoxError, Closed};
use tokio::time::Instant;

use super::broker::{
    Broker, BrokerFuture, Entry, Envelope, Epoch, History, Inbox, Incoming, NodeId, Position,
};

/// How many entries each namespace's history keeps by default, as the Redis broker's `MAXLEN ~`.
pub const DEFAULT_HISTORY: usize = 10_000;

/// An in-process broker shared by nodes of one process: [`MemoryHub::connect`] gives each node its [`MemoryBroker`].
///
/// It keeps a bounded history per namespace with an epoch and offsets, a node registry with expiries on tokio's clock
/// (so paused time drives it in tests), and faults to test against: [`MemoryHub::cut`] stops one node's deliveries,
/// [`MemoryHub::heal`] brings them back (as a reconnect would), [`MemoryHub::forget`] loses a namespace's history.
///
/// ```
/// use connman_pool::cluster::MemoryHub;
///
/// let hub = MemoryHub::new();
/// let a = hub.connect();
/// let b = hub.connect();
/// # let _ = (a, b);
/// ```
#[derive(Clone, Default)]
pub struct MemoryHub {
    state: Arc<Mutex<Hub>>,
}

#[derive(Default)]
struct Hub {
    namespaces: HashMap<String, Log>,
    nodes: HashMap<NodeId, Attached>,
    registry: HashMap<NodeId, Instant>,
    history: Option<usize>,
}

struct Log {
    epoch: Epoch,
    top: u64,
    entries: VecDeque<Entry>,
}

struct Attached {
    inbox: Inbox,
    subscribed: BTreeSet<String>,
    cut: bool,
}

impl MemoryHub {
    /// A hub keeping [`DEFAULT_HISTORY`] entries per namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub keeping `entries` entries per namespace (at least 1).
    pub fn with_history(entries: usize) -> Self {
        let hub = Self::default();
        hub.lock().history = Some(entries.max(1));
        hub
    }

    /// A broker for one more node.
    pub fn connect(&self) -> MemoryBroker {
        MemoryBroker {
            hub: self.clone(),
            node: OnceLock::new(),
            closed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Stops delivering anything to `node` (its link is cut), without it noticing.
    pub fn cut(&self, node: &NodeId) {
        if let Some(n) = self.lock().nodes.get_mut(node) {
            n.cut = true;
        }
    }

    /// Delivers to `node` again: it is told its link is back and its subscriptions are in place again.
    pub fn heal(&self, node: &NodeId) {
        let mut hub = self.lock();
        if let Some(n) = hub.nodes.get_mut(node)
            && std::mem::take(&mut n.cut)
        {
            n.inbox.push(Incoming::Link(true));
            for ns in &n.subscribed {
                n.inbox.push(Incoming::Subscribed(ns.clone()));
            }
        }
    }

    /// Loses a namespace's history, as a broker restarted without persistence: its next publish starts a new epoch.
    pub fn forget(&self, namespace: &str) {
        self.lock().namespaces.remove(namespace);
    }

    /// The nodes subscribed to `namespace`.
    pub fn subscribers(&self, namespace: &str) -> Vec<NodeId> {
        let hub = self.lock();
        let mut nodes: Vec<NodeId> = hub
            .nodes
            .iter()
            .filter(|(_, n)| n.subscribed.contains(namespace))
            .map(|(id, _)| id.clone())
            .collect();
        nodes.sort();
        nodes
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hub = self.lock();
        f.debug_struct("MemoryHub")
            .field("namespaces", &hub.namespaces.len())
            .field("nodes", &hub.nodes.len())
            .finish()
    }
}

/// One node's link to a [`MemoryHub`].
#[derive(Debug)]
pub struct MemoryBroker {
    hub: MemoryHub,
    node: OnceLock<NodeId>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryBroker {
    fn check(&self) -> Result<(), BoxError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Closed::new().into());
        }
        Ok(())
    }

    fn with_node(&self, f: impl FnOnce(&mut Attached)) {
        if let Some(node) = self.node.get()
            && let Some(n) = self.hub.lock().nodes.get_mut(node)
        {
            f(n);
        }
    }
}

impl Drop for MemoryBroker {
    /// The node's links go with it; its registry entry stays until its heartbeats are overdue, as after a crash.
    fn drop(&mut self) {
        self.close();
    }
}

fn ready<T: Send + 'static>(value: Result<T, BoxError>) -> BrokerFuture<T> {
    Box::pin(std::future::ready(value))
}

impl Broker for MemoryBroker {
    fn open(&self, node: &NodeId, inbox: Inbox) {
        if self.node.set(node.clone()).is_ok() {
            self.hub.lock().nodes.insert(
                node.clone(),
                Attached {
                    inbox,
                    subscribed: BTreeSet::new(),
                    cut: false,
                },
            );
        }
    }

    fn subscribe(&self, namespace: &str) {
        self.with_node(|n| {
            if n.subscribed.insert(namespace.to_owned()) && !n.cut {
                n.inbox.push(Incoming::Subscribed(namespace.to_owned()));
            }
        });
    }

    fn unsubscribe(&self, namespace: &str) {
        self.with_node(|n| {
            n.subscribed.remove(namespace);
        });
    }

    fn publish(&self, origin: &NodeId, namespace: &str, payload: Bytes) -> BrokerFuture<Position> {
        if let Err(e) = self.check() {
            return ready(Err(e));
        }
        let mut hub = self.hub.lock();
        let keep = hub.history.unwrap_or(DEFAULT_HISTORY);
        let log = hub
            .namespaces
            .entry(namespace.to_owned())
            .or_insert_with(|| Log {
                epoch: Epoch::random(),
                top: 0,
                entries: VecDeque::new(),
            });
        log.top += 1;
        let position = Position {
            epoch: log.epoch,
            offset: log.top,
        };
        log.entries.push_back(Entry {
            offset: log.top,
            origin: origin.clone(),
            payload: payload.clone(),
        });
        while log.entries.len() > keep {
            log.entries.pop_front();
        }
        let envelope = Envelope {
            namespace: namespace.to_owned(),
            position,
            origin: origin.clone(),
            payload,
        };
        for n in hub.nodes.values() {
            if !n.cut && n.subscribed.contains(namespace) {
                n.inbox.push(Incoming::Message(envelope.clone()));
            }
        }
        ready(Ok(position))
    }

    fn history(&self, namespace: &str, from: u64, limit: usize) -> BrokerFuture<History> {
        if let Err(e) = self.check() {
            return ready(Err(e));
        }
        let hub = self.hub.lock();
        let history = match hub.namespaces.get(namespace) {
            None => History::default(),
            Some(log) => History {
                epoch: Some(log.epoch),
                top: log.top,
                entries: log
                    .entries
                    .iter()
                    .filter(|e| e.offset >= from)
                    .take(limit)
                    .cloned()
                    .collect(),
            },
        };
        ready(Ok(history))
    }

    fn heartbeat(&self, node: &NodeId, ttl: Duration) -> BrokerFuture<Vec<NodeId>> {
        if let Err(e) = self.check() {
            return ready(Err(e));
        }
        let now = Instant::now();
        let mut hub = self.hub.lock();
        hub.registry.insert(node.clone(), now + ttl);
        hub.registry.retain(|_, until| *until > now);
        let mut live: Vec<NodeId> = hub.registry.keys().cloned().collect();
        live.sort();
        ready(Ok(live))
    }

    fn leave(&self, node: &NodeId) -> BrokerFuture<()> {
        self.hub.lock().registry.remove(node);
        ready(Ok(()))
    }

    fn send(&self, to: &NodeId, payload: Bytes) -> BrokerFuture<()> {
        if let Err(e) = self.check() {
            return ready(Err(e));
        }
        if let Some(n) = self.hub.lock().nodes.get(to)
            && !n.cut
        {
            n.inbox.push(Incoming::Direct(payload));
        }
        ready(Ok(()))
    }

    fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(node) = self.node.get() {
            let mut hub = self.hub.lock();
            hub.nodes.remove(node);
        }
    }
}
